/*
 * txn.c - processing.guarantee = exactly_once: outputs, dead letters, changelog records
 * and the input offsets they answer commit in one Kafka transaction per changelog flush
 * (every commit.interval; README "Delivery guarantees").
 *
 * Design notes
 * - A transaction begins with the first output after the last commit and commits at
 *   the end of the next changelog flush (which also runs before partitions are
 *   revoked and at shutdown): the input offsets past every message processed since
 *   are sent to it with the consumer's group metadata (KIP-447: an instance that lost
 *   its partitions in a rebalance cannot commit them), then it commits, which first
 *   delivers every message in it. So a read_committed consumer sees all of a flush's
 *   outputs or none, and the input offsets move with them.
 * - Offsets are not stored by the delivery tracker in this mode (an acknowledged
 *   output of an open transaction is not committed). After a commit the same offsets
 *   are stored and committed once more outside the transaction: redundant on Kafka,
 *   where the transaction committed them, and what lets a broker that drops
 *   transactional offset commits (the embedded one) resume where the outputs end.
 *   This commit is synchronous and completes before the next transaction begins, so it
 *   can never overwrite a later transaction's offsets with older ones.
 * - A transaction that fails is aborted (its messages are never shown to read_committed
 *   consumers) and the daemon stops non-zero; on restart it resumes from the last
 *   committed offsets and restores its users from the changelog up to them, which is
 *   the state those offsets reflect. A fenced producer (another with the same
 *   transactional.id, or a newer incarnation) cannot abort: the coordinator aborts its
 *   transaction. The same holds when partitions are lost (session timeout): the open
 *   transaction holds work of every partition, so it is aborted and the daemon stops.
 */
#include "pipeline_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TXN_TIMEOUT_MS 60000
#define TXN_RETRIES 3

int ch_txn_init(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    ch_txn_t *t = &p->txn;
    memset(t, 0, sizeof(*t));
    if (p->cfg->processing_guarantee != CH_EXACTLY_ONCE) {
        return 0;
    }
    (void)errbuf;
    (void)errlen;
    t->next = malloc((size_t)p->cl.partitions * sizeof(*t->next));
    t->offs = malloc((size_t)p->cl.partitions * sizeof(*t->offs));
    if (!t->next || !t->offs) {
        return -ENOMEM;
    }
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        t->next[i] = -1;
    }
    t->on = true;
    ch_log(CH_LOG_NOTICE, "exactly_once: transactional.id %s, one transaction per %.0f ms",
           p->clients.txn_id, p->cfg->commit_interval_ms);
    return 0;
}

void ch_txn_done(ch_pipeline_t *p) {
    free(p->txn.next);
    free(p->txn.offs);
    memset(&p->txn, 0, sizeof(p->txn));
}

void ch_txn_consumed(ch_pipeline_t *p, int32_t partition, int64_t offset) {
    ch_txn_t *t = &p->txn;
    if (t->on && partition >= 0 && partition < p->cl.partitions &&
        offset + 1 > t->next[partition]) {
        t->next[partition] = offset + 1;
    }
}

void ch_txn_revoked(ch_pipeline_t *p, int32_t partition) {
    if (p->txn.on && partition >= 0 && partition < p->cl.partitions) {
        p->txn.next[partition] = -1;
    }
}

int ch_txn_ensure(ch_pipeline_t *p) {
    ch_txn_t *t = &p->txn;
    if (!t->on || t->open) {
        return 0;
    }
    char err[512];
    if (ch_producer_txn_begin(p->clients.producer, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "%s; stopping", err);
        p->failed = true;
        return -EIO;
    }
    t->open = true;
    return 0;
}

void ch_txn_abort(ch_pipeline_t *p, const char *why) {
    ch_txn_t *t = &p->txn;
    p->failed = true;
    if (!t->on || !t->open) {
        return;
    }
    char err[512];
    t->open = false;
    t->aborts++;
    int r = ch_producer_txn_abort(p->clients.producer, ch_budget_ms(p, TXN_TIMEOUT_MS), err,
                                  sizeof(err));
    if (r == -EPERM) {
        /* fenced (or failed for good): the coordinator aborted the open transaction when
         * the producer that fenced this one initialized */
        ch_log(CH_LOG_ERR,
               "%s: this producer is fenced or failed for good; the coordinator has already "
               "aborted its open transaction",
               err);
    } else if (r < 0) {
        ch_log(CH_LOG_ERR,
               "%s: the abort was not confirmed; the coordinator aborts the open transaction "
               "at transaction.timeout.ms",
               err);
    }
    ch_log(CH_LOG_ERR,
           "transaction aborted: %s; stopping: a restart resumes from the last committed "
           "offsets and restores its users from the changelog up to them",
           why);
}

void ch_txn_commit(ch_pipeline_t *p) {
    ch_txn_t *t = &p->txn;
    if (!t->on || !t->open || p->failed) {
        return;
    }
    ch_next_offset_t *offs = t->offs;
    size_t n = 0;
    char err[512];
    int r = 0;
    double t0 = ch_now_s();
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        if (t->next[i] >= 0 && ch_rebalance_owns(p, i)) {
            offs[n++] = (ch_next_offset_t){i, t->next[i]};
        }
    }
    for (int k = 0; k < TXN_RETRIES; k++) {
        r = ch_producer_txn_commit(p->clients.producer, p->clients.consumer, offs, n,
                                   ch_budget_ms(p, TXN_TIMEOUT_MS), err, sizeof(err));
        if (r != -ETIMEDOUT || (p->stopping && ch_budget_ms(p, TXN_TIMEOUT_MS) == 0)) {
            break;
        }
        ch_log(CH_LOG_WARNING, "%s; retrying", err);
    }
    t->seconds += ch_now_s() - t0;
    if (r == -EPERM) {
        t->open = false;
        p->failed = true;
        ch_log(CH_LOG_ERR,
               "%s: fenced or failed for good (is another instance running with "
               "transactional.id %s?); stopping, nothing of this transaction is committed",
               err, p->clients.txn_id);
        return;
    }
    if (r < 0) {
        ch_txn_abort(p, err);
        return;
    }
    t->open = false;
    t->commits++;
    ch_producer_poll(p->clients.producer); /* the delivery reports of what it delivered */
    ch_outputs_release(p);
    for (size_t i = 0; i < n; i++) {
        if (ch_consumer_store(p->clients.consumer, offs[i].partition, offs[i].next, err,
                              sizeof(err)) == 0) {
            ch_consumer_mark_committed(p->clients.consumer, offs[i].partition, offs[i].next);
            ch_snapshot_stored(p, offs[i].partition, offs[i].next);
        }
        if (t->next[offs[i].partition] == offs[i].next) {
            t->next[offs[i].partition] = -1;
        }
    }
    if (ch_consumer_commit(p->clients.consumer, ch_budget_ms(p, COMMIT_TIMEOUT_MS), err,
                           sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "after a transaction: %s", err);
    }
}
