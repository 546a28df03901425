/*
 * rebalance.c - partitions of the input coming and going.
 *
 * Design notes
 * - Before partitions are revoked, outputs are flushed, their offsets released and
 *   committed, so the new owner starts where this one stopped. Then the users of
 *   those partitions are dropped (their new owner rebuilds them) and the tracker
 *   forgets the partitions, so an offset of a partition that moved is never stored
 *   here. When they were lost (session timeout), committing is futile: only the
 *   dropping happens.
 * - Leaving the group at shutdown, with every output acknowledged, the users are
 *   written to local snapshots (state.dir) before they are dropped.
 * - Messages of partitions no longer assigned may still be in the fetch queue: the
 *   batch path skips them (ch_rebalance_owns()).
 */
#include "pipeline_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bool ch_rebalance_owns(const ch_pipeline_t *p, int32_t partition) {
    return partition >= 0 && (size_t)partition < p->n_assigned_cap && p->assigned[partition];
}

void ch_rebalance_assigned(void *opaque, const int32_t *parts, size_t n) {
    ch_pipeline_t *p = opaque;
    p->rebalances++;
    for (size_t i = 0; i < n; i++) {
        if (parts[i] < 0) {
            continue;
        }
        if ((size_t)parts[i] >= p->n_assigned_cap) {
            size_t cap = (size_t)parts[i] + 64;
            bool *na = realloc(p->assigned, cap * sizeof(*na));
            if (!na) {
                ch_log(CH_LOG_ERR, "out of memory on partition assignment");
                p->failed = true;
                return;
            }
            memset(na + p->n_assigned_cap, 0, (cap - p->n_assigned_cap) * sizeof(*na));
            p->assigned = na;
            p->n_assigned_cap = cap;
        }
        p->assigned[parts[i]] = true;
        ch_restore_begin(p, parts[i]);
    }
    ch_log(CH_LOG_INFO, "assigned %zu partition(s) of %s (now %zu)", n, p->cfg->input_topic,
           ch_consumer_assigned(p->clients.consumer));
}

typedef struct on_part {
    const ch_users_t *users;
    int32_t partition;
} on_part_t;

static bool user_on_partition(void *opaque, const ch_user_t *u) {
    const on_part_t *op = opaque;
    return ch_userrec(op->users, u)->partition == op->partition;
}

size_t ch_rebalance_drop(ch_pipeline_t *p, int32_t partition) {
    on_part_t op = {p->users, partition};
    p->dropping = true; /* the state moves to the partition's next owner: not deleted */
    size_t n = ch_users_evict_if(p->users, user_on_partition, &op);
    p->dropping = false;
    return n;
}

void ch_rebalance_revoked(void *opaque, const int32_t *parts, size_t n, bool lost) {
    ch_pipeline_t *p = opaque;
    if (!lost) {
        /* Everything consumed so far has been processed; write the changelog and wait
         * for every output so the offsets can be committed before the partitions move.
         * (On shutdown the close itself commits the stored offsets, so no extra
         * synchronous commit.) When lost, the new owner may already be writing their
         * state: nothing more of theirs is written here. */
        if (!ch_pipeline_failed(p)) {
            ch_changelog_flush(p, true);
        }
        int ms = ch_budget_ms(p, fmin(p->cfg->shutdown_timeout_ms, 600000));
        bool acked = ch_outputs_settle(p, ch_now_s() + ms / 1000.0) == 0;
        if (!acked) {
            ch_log(CH_LOG_WARNING,
                   "revoke: outputs still unacknowledged after %d ms; the new owner will "
                   "reprocess them",
                   ms);
        }
        char err[256];
        if (!p->stopping &&
            ch_consumer_commit(p->clients.consumer, COMMIT_TIMEOUT_MS, err, sizeof(err)) < 0) {
            ch_log(CH_LOG_WARNING, "revoke: %s", err);
        }
        if (p->stopping && acked && !ch_pipeline_failed(p)) {
            /* leaving: every output is acknowledged and the close commits right after;
             * a snapshot now lets the next start skip the changelog */
            ch_snapshot_now(p);
        }
    } else if (p->txn.open) {
        ch_txn_abort(p, "partitions were lost (session timeout) with the transaction open");
    }
    size_t dropped = 0;
    p->rebalances++;
    for (size_t i = 0; i < n; i++) {
        if (ch_rebalance_owns(p, parts[i])) {
            p->assigned[parts[i]] = false;
        }
        ch_tracker_revoke(p->tracker, parts[i]);
        ch_restore_cancel(p, parts[i]);
        ch_snapshot_forget(p, parts[i]);
        ch_changelog_revoked(p, parts[i]);
        ch_txn_revoked(p, parts[i]);
        ch_schemafetch_revoked(p, parts[i]);
        dropped += ch_rebalance_drop(p, parts[i]);
    }
    p->st.users_evicted_revoke += dropped;
    ch_log(CH_LOG_INFO, "%s %zu partition(s) of %s; dropped the state of %zu user(s)",
           lost ? "lost" : "revoked", n, p->cfg->input_topic, dropped);
}
