/*
 * restore.c - a partition gained is paused, its users rebuilt from the changelog up to
 * the committed input offset, then resumed (DESIGN.md section 9).
 *
 * Design notes
 * - On assignment (the rebalance hook, right after the assign) the input partition is
 *   held (ch_consumer_hold: nothing of it is handed out) and the changelog reader
 *   starts on the same partition number from its beginning. Other partitions keep
 *   flowing; restoring is budgeted per loop iteration like the batch path.
 * - A record is applied only if the input offset it reflects is below where
 *   consumption of the partition resumes (the committed offset): work that was not
 *   committed is reprocessed from the input instead, so a restore never folds an
 *   event twice, even on a broker that shows aborted transactional records. Records
 *   are read in order, so a user ends with its last applicable record.
 * - At the partition's end (an end-of-partition entry from the reader) the hold is
 *   released. A revoke in between stops the reading; the users already rebuilt are
 *   dropped with the partition's others.
 * - Records of another layout (another feature configuration) or damaged ones are
 *   counted and skipped: those users start empty, and the log says so.
 */
#include "pipeline_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "staterec.h"

#define RESTORE_BUDGET 4096

int ch_restore_init(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    ch_restore_t *rs = &p->rs;
    memset(rs, 0, sizeof(*rs));
    if (!p->cl.on) {
        return 0;
    }
    rs->msgs = calloc(RESTORE_BUDGET, sizeof(*rs->msgs));
    if (!rs->msgs) {
        return -ENOMEM;
    }
    return ch_clients_reader(&p->clients, p->cfg, p->cfg->state_changelog, errbuf, errlen);
}

void ch_restore_done(ch_pipeline_t *p) {
    free(p->rs.msgs);
    free(p->rs.parts);
    memset(&p->rs, 0, sizeof(p->rs));
}

static ch_restore_part_t *part(ch_pipeline_t *p, int32_t partition, bool grow) {
    ch_restore_t *rs = &p->rs;
    if (partition < 0) {
        return NULL;
    }
    if ((size_t)partition >= rs->n_parts) {
        if (!grow) {
            return NULL;
        }
        size_t cap = (size_t)partition + 64;
        ch_restore_part_t *np = realloc(rs->parts, cap * sizeof(*np));
        if (!np) {
            return NULL;
        }
        memset(np + rs->n_parts, 0, (cap - rs->n_parts) * sizeof(*np));
        rs->parts = np;
        rs->n_parts = cap;
    }
    return &rs->parts[partition];
}

void ch_restore_begin(ch_pipeline_t *p, int32_t partition) {
    if (!p->clients.reader) {
        return;
    }
    ch_restore_part_t *rp = part(p, partition, true);
    char err[512];
    if (!rp || ch_consumer_hold(p->clients.consumer, partition, true) < 0) {
        ch_log(CH_LOG_ERR, "out of memory restoring partition %d; stopping", partition);
        p->failed = true;
        return;
    }
    if (ch_reader_start(p->clients.reader, partition, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "restore: %s; stopping", err);
        p->failed = true;
        return;
    }
    int64_t upto = ch_consumer_start_offset(p->clients.consumer, partition);
    if (upto < 0) {
        ch_log(CH_LOG_WARNING,
               "restore: where %s[%d] resumes is unknown; its users start empty (none of "
               "the changelog can be shown to be committed)",
               p->cfg->input_topic, partition);
        upto = 0;
    }
    *rp = (ch_restore_part_t){.on = true, .upto = upto, .t0 = ch_now_s()};
    p->rs.active++;
}

void ch_restore_cancel(ch_pipeline_t *p, int32_t partition) {
    ch_restore_part_t *rp = part(p, partition, false);
    if (!rp || !rp->on) {
        return;
    }
    char err[512];
    if (ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "restore: %s", err);
    }
    rp->on = false;
    p->rs.active--;
    ch_log(CH_LOG_INFO, "restore of %s[%d] abandoned: the partition was revoked",
           p->cfg->state_changelog, partition);
}

static void finish(ch_pipeline_t *p, int32_t partition, ch_restore_part_t *rp) {
    char err[512];
    if (ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "restore: %s", err);
    }
    double dt = ch_now_s() - rp->t0;
    rp->on = false;
    p->rs.active--;
    p->rs.partitions++;
    p->rs.seconds += dt;
    ch_consumer_hold(p->clients.consumer, partition, false);
    ch_log(CH_LOG_INFO,
           "restored %s[%d]: %llu record(s) read, %llu applied, %llu past the committed "
           "offset %lld, %llu refused, in %.3f s",
           p->cfg->state_changelog, partition, (unsigned long long)rp->read,
           (unsigned long long)rp->applied, (unsigned long long)rp->uncommitted,
           (long long)rp->upto, (unsigned long long)rp->refused, dt);
}

static void apply(ch_pipeline_t *p, const ch_msg_t *m, ch_restore_part_t *rp) {
    ch_restore_t *rs = &p->rs;
    rp->read++;
    rs->records++;
    rs->bytes += m->value_len + m->key_len;
    if (!m->key || m->key_len == 0) {
        rp->refused++;
        rs->refused++;
        return;
    }
    if (!m->value) { /* tombstone: the user was dropped for good */
        ch_user_t *gone = ch_users_find(p->users, m->key, m->key_len);
        if (gone) {
            if (p->segs) {
                ch_segments_moved(p->segs, gone->segment, -1);
            }
            ch_changelog_forget(p, gone);
            ch_users_remove(p->users, m->key, m->key_len);
        }
        rp->applied++;
        return;
    }
    ch_staterec_t s;
    size_t state_len = ch_features_state_len(p->fs);
    int r = ch_staterec_decode(m->value, m->value_len, p->cl.layout, state_len, &s);
    if (r < 0) {
        rp->refused++;
        rs->refused++;
        uint64_t dropped = 0;
        if (ch_ratelimit_allow(&p->bad_rl, &dropped)) {
            ch_log(CH_LOG_WARNING, "restore: %s[%d]@%lld refused (%s); that user starts empty",
                   p->cfg->state_changelog, m->partition, (long long)m->offset,
                   r == -ESTALE ? "written for another feature layout" : "damaged record");
        }
        return;
    }
    if (s.input_offset >= rp->upto) {
        rp->uncommitted++;
        rs->uncommitted++;
        return;
    }
    ch_user_t *u = NULL;
    r = ch_users_upsert(p->users, m->key, m->key_len, &u);
    if (r < 0) {
        rp->refused++;
        rs->refused++;
        return;
    }
    int32_t before = r == 1 ? -1 : u->segment;
    ch_staterec_apply(&s, u, ch_userrec(p->users, u), m->partition);
    if (!p->segs || u->segment < 0 || (size_t)u->segment >= p->cfg->segments.k) {
        u->segment = -1; /* segments off, or fewer of them now: assigned on its next event */
        u->seg_gen = 0;
    }
    if (p->segs) {
        ch_segments_moved(p->segs, before, u->segment);
    }
    rp->applied++;
    rs->applied++;
}

bool ch_restore_drain(ch_pipeline_t *p) {
    ch_restore_t *rs = &p->rs;
    if (!p->clients.reader || p->stopping || ch_pipeline_failed(p)) {
        return false;
    }
    int n = ch_reader_drain(p->clients.reader, rs->msgs, RESTORE_BUDGET);
    for (int i = 0; i < n; i++) {
        const ch_msg_t *m = &rs->msgs[i];
        if (m->err) {
            ch_clients_error(&p->clients, m->err_fatal, "changelog reader",
                             m->errstr ? m->errstr : "error");
            continue;
        }
        ch_restore_part_t *rp = part(p, m->partition, false);
        if (!rp || !rp->on) {
            continue; /* read before a cancel */
        }
        if (m->eof) {
            finish(p, m->partition, rp);
        } else {
            apply(p, m, rp);
        }
    }
    return n >= RESTORE_BUDGET; /* more may be waiting */
}
