/*
 * changelog.c - the state changelog: every user's whole state, written once per
 * commit.interval, to the partition of the input it came from (README "Delivery guarantees").
 *
 * Design notes
 * - Write-combining: a user touched in a batch joins the dirty set (record pointers;
 *   the user's record keeps the input offset of its latest event); a flush encodes
 *   each dirty user once (staterec.h: the record says which input offset it reflects).
 * - Offsets wait for the flush: with the changelog on, a batch is not sealed when it
 *   is processed but joins the pending list. A flush attaches its records to the
 *   OLDEST pending batch and then seals them all. The tracker releases in order, so
 *   no offset of any pending batch is stored before every record of the flush is
 *   acknowledged: a committed input offset never runs ahead of the changelog.
 * - And a committed offset is always where a flush ended: the flush moves every
 *   pending batch's offsets into the NEWEST (ch_tracker_merge), so they are stored at
 *   once, when the last of them is acknowledged. A user's record reflects its latest
 *   event when the flush ran; had an older batch's offset been committed alone (its
 *   outputs acknowledged before a later batch's), a user with events on both sides of
 *   it would have no record of its state at that offset, and a restore would take an
 *   older one and never fold the events in between (the record of the newer state
 *   reflects uncommitted input, which a restore skips). Built with
 *   CH_CHECK_INVARIANTS, every offset stored is checked against the flushes' ends.
 * - A flush happens when commit.interval has passed since the last (checked on every
 *   drain, and by the loop's 100 ms safety timer when idle), when the tracker is full,
 *   before partitions are revoked and at shutdown.
 * - An evicted record leaves the dirty set (its pointer may be reused by the next
 *   insert, which touches it again), and the user is tombstoned by the next flush (a
 *   null value, so a compacted changelog forgets it; header cohortd-offset: the input
 *   offset of its last event, so a restore applies it only if that is committed, like
 *   any record). A flush writes its tombstones before its states: a user evicted and
 *   seen again within one interval ends with its new state. Users dropped because
 *   their partition moved (or by a restore) are not tombstoned: their state lives on.
 * - Every record carries header cohortd-writer, 8 random bytes drawn at start: the
 *   watch (restore.c) skips its own records when it reads the tail back.
 * - The topic must exist with the input's partition count (record partition = input
 *   partition); cohortd does not create it (the embedded broker has no CreateTopics;
 *   a production topic wants cleanup.policy=compact, set by whoever creates it).
 */
#include "pipeline_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "le.h"
#include "staterec.h"

#define METADATA_TIMEOUT_MS 10000

static size_t slot_of(const ch_changelog_t *cl, const ch_user_t *u) {
    uint64_t h = (uint64_t)(uintptr_t)u * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 20) & (cl->idx_cap - 1);
}

/* The index slot holding u, or the empty slot where it belongs. */
static size_t find(const ch_changelog_t *cl, const ch_user_t *u) {
    size_t i = slot_of(cl, u);
    while (cl->idx[i] && cl->dirty[cl->idx[i] - 1].u != u) {
        i = (i + 1) & (cl->idx_cap - 1);
    }
    return i;
}

/* Both arrays or neither: a dirty array grown past its index's half would let the
 * index fill up, and find() would never stop. */
static int grow(ch_changelog_t *cl) {
    size_t cap = cl->cap_dirty ? 2 * cl->cap_dirty : 1024;
    uint32_t *ni = calloc(2 * cap, sizeof(*ni));
    if (!ni) {
        return -ENOMEM;
    }
    ch_dirty_t *nd = realloc(cl->dirty, cap * sizeof(*nd));
    if (!nd) {
        free(ni);
        return -ENOMEM;
    }
    cl->dirty = nd;
    cl->cap_dirty = cap;
    free(cl->idx);
    cl->idx = ni;
    cl->idx_cap = 2 * cap;
    for (size_t k = 0; k < cl->n_dirty; k++) {
        if (cl->dirty[k].u) {
            cl->idx[find(cl, cl->dirty[k].u)] = (uint32_t)(k + 1);
        }
    }
    return 0;
}

int ch_changelog_init(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    ch_changelog_t *cl = &p->cl;
    memset(cl, 0, sizeof(*cl));
    const ch_config_t *cfg = p->cfg;
    if (!cfg->state_changelog[0]) {
        return 0;
    }
    char why[512];
    int in = ch_consumer_partition_count(p->clients.consumer, cfg->input_topic, METADATA_TIMEOUT_MS,
                                         why, sizeof(why));
    if (in < 0) {
        snprintf(errbuf, errlen, "state.changelog: cannot tell the partitions of input %s: %s",
                 cfg->input_topic, why);
        return in == -ENOENT ? -ENOENT : -EIO;
    }
    int n = ch_consumer_partition_count(p->clients.consumer, cfg->state_changelog,
                                        METADATA_TIMEOUT_MS, why, sizeof(why));
    if (n == -ENOENT || (n > 0 && n != in)) {
        char have[64] = "does not exist";
        if (n > 0) {
            snprintf(have, sizeof(have), "has %d partition%s", n, n == 1 ? "" : "s");
        }
        snprintf(errbuf, errlen,
                 "state.changelog: topic %s %s; it needs %d, as many as %s (each user's state "
                 "goes to its input partition). Create it, e.g. kafka-topics.sh --create "
                 "--topic %s --partitions %d --config cleanup.policy=compact",
                 cfg->state_changelog, have, in, cfg->input_topic, cfg->state_changelog, in);
        return -ENOENT;
    }
    if (n < 0) {
        snprintf(errbuf, errlen, "state.changelog: %s", why);
        return -EIO;
    }
    if (ch_staterec_layout(p->fs, cfg->features_half_life_ms, &cl->layout) < 0) {
        snprintf(errbuf, errlen, "state.changelog: cannot fingerprint the feature layout");
        return -EIO;
    }
    cl->pending = calloc((size_t)cfg->batch_max_inflight, sizeof(*cl->pending));
    cl->rec = malloc(ch_staterec_size(ch_features_state_len(p->fs)));
    if (!cl->pending || !cl->rec || grow(cl) < 0) {
        return -ENOMEM;
    }
    if (getrandom(cl->writer, sizeof(cl->writer), GRND_NONBLOCK) != (ssize_t)sizeof(cl->writer)) {
        uint64_t w = (uint64_t)getpid() << 32 ^ (uint64_t)(ch_now_s() * 1e6);
        memcpy(cl->writer, &w, sizeof(w));
    }
#ifdef CH_CHECK_INVARIANTS
    cl->flush_ends = calloc((size_t)in, sizeof(*cl->flush_ends));
    if (!cl->flush_ends) {
        return -ENOMEM;
    }
    for (int i = 0; i < in; i++) {
        cl->flush_ends[i].consumed = -1;
    }
#endif
    cl->partitions = in;
    cl->on = true;
    cl->flushed_s = ch_now_s();
    return 0;
}

void ch_changelog_done(ch_pipeline_t *p) {
#ifdef CH_CHECK_INVARIANTS
    for (int32_t i = 0; p->cl.flush_ends && i < p->cl.partitions; i++) {
        free(p->cl.flush_ends[i].ends);
    }
    free(p->cl.flush_ends);
#endif
    free(p->cl.tomb);
    free(p->cl.dirty);
    free(p->cl.idx);
    free(p->cl.pending);
    free(p->cl.rec);
    memset(&p->cl, 0, sizeof(p->cl));
}

void ch_changelog_touch(ch_pipeline_t *p, ch_user_t *u, int64_t offset) {
    ch_changelog_t *cl = &p->cl;
    if (!cl->on) {
        return;
    }
    if (cl->n_dirty == cl->cap_dirty && grow(cl) < 0) {
        ch_log(CH_LOG_ERR, "out of memory tracking changed users; stopping");
        p->failed = true;
        return;
    }
    ch_userrec(p->users, u)->offset = offset;
    size_t i = find(cl, u);
    if (cl->idx[i]) {
        return;
    }
    cl->dirty[cl->n_dirty] = (ch_dirty_t){u};
    cl->idx[i] = (uint32_t)++cl->n_dirty;
}

void ch_changelog_forget(ch_pipeline_t *p, const ch_user_t *u) {
    ch_changelog_t *cl = &p->cl;
    if (!cl->on || cl->n_dirty == 0) {
        return;
    }
    size_t i = find(cl, u);
    if (cl->idx[i]) {
        /* the dense entry stays (its user is gone); the index slot is emptied and the
         * rest of its cluster re-inserted, so lookups past the hole still succeed */
        cl->dirty[cl->idx[i] - 1].u = NULL;
        cl->idx[i] = 0;
        for (size_t j = (i + 1) & (cl->idx_cap - 1); cl->idx[j]; j = (j + 1) & (cl->idx_cap - 1)) {
            uint32_t v = cl->idx[j];
            cl->idx[j] = 0;
            cl->idx[find(cl, cl->dirty[v - 1].u)] = v;
        }
    }
}

void ch_changelog_tombstone(ch_pipeline_t *p, int32_t partition, int64_t offset, const char *key,
                            size_t key_len) {
    ch_changelog_t *cl = &p->cl;
    size_t need = 14 + key_len;
    if (cl->tomb_len + need > cl->tomb_cap) {
        size_t cap = cl->tomb_cap ? 2 * cl->tomb_cap : 4096;
        while (cap < cl->tomb_len + need) {
            cap *= 2;
        }
        unsigned char *nt = realloc(cl->tomb, cap);
        if (!nt) {
            ch_log(CH_LOG_ERR, "out of memory recording an evicted user; stopping");
            p->failed = true;
            return;
        }
        cl->tomb = nt;
        cl->tomb_cap = cap;
    }
    unsigned char *t = cl->tomb + cl->tomb_len;
    ch_put32(t, (uint32_t)partition);
    ch_put64(t + 4, (uint64_t)offset);
    ch_put16(t + 12, (uint16_t)key_len);
    memcpy(t + 14, key, key_len);
    cl->tomb_len += need;
    cl->n_tomb++;
}

void ch_changelog_evicted(ch_pipeline_t *p, const ch_user_t *u) {
    ch_changelog_t *cl = &p->cl;
    ch_changelog_forget(p, u);
    if (!cl->on || p->dropping) {
        return;
    }
    const ch_userrec_t *ur = ch_userrec(p->users, u);
    ch_changelog_tombstone(p, ur->partition, ur->offset, ch_users_key(p->users, u), u->key_len);
}

#ifdef CH_CHECK_INVARIANTS
static struct ch_flush_ends *flush_ends(ch_pipeline_t *p, int32_t partition) {
    return p->cl.on && !p->txn.on && partition >= 0 && partition < p->cl.partitions
               ? &p->cl.flush_ends[partition]
               : NULL;
}

void ch_changelog_consumed(ch_pipeline_t *p, int32_t partition, int64_t offset) {
    struct ch_flush_ends *f = flush_ends(p, partition);
    if (f && offset + 1 > f->consumed) {
        f->consumed = offset + 1;
    }
}

/* A flush ran: what each partition was consumed up to is where offsets may be stored. */
static void flush_ended(ch_pipeline_t *p) {
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        struct ch_flush_ends *f = flush_ends(p, i);
        if (!f || f->consumed < 0 || (f->n > 0 && f->ends[f->n - 1] >= f->consumed)) {
            continue;
        }
        if (f->n == f->cap) {
            size_t cap = f->cap ? 2 * f->cap : 16;
            int64_t *ne = realloc(f->ends, cap * sizeof(*ne));
            if (!ne) {
                ch_log(CH_LOG_ERR, "out of memory checking invariants; stopping");
                p->failed = true;
                return;
            }
            f->ends = ne;
            f->cap = cap;
        }
        f->ends[f->n++] = f->consumed;
    }
}

bool ch_changelog_flush_ended(ch_pipeline_t *p, int32_t partition, int64_t next_offset) {
    struct ch_flush_ends *f = flush_ends(p, partition);
    if (!f) {
        return true;
    }
    size_t k = 0;
    while (k < f->n && f->ends[k] < next_offset) {
        k++; /* ends passed over: a later one was stored (merged batches) */
    }
    bool ok = k < f->n && f->ends[k] == next_offset;
    memmove(f->ends, f->ends + k, (f->n - k) * sizeof(*f->ends));
    f->n -= k;
    return ok;
}
#endif

void ch_changelog_revoked(ch_pipeline_t *p, int32_t partition) {
    /* a lost partition's new owner may be writing its users already: a tombstone from
     * here, landing after their new state, would delete them */
    ch_changelog_t *cl = &p->cl;
#ifdef CH_CHECK_INVARIANTS
    struct ch_flush_ends *f = flush_ends(p, partition);
    if (f) {
        f->consumed = -1; /* a new owner's, or ours again from the committed offset */
        f->n = 0;
    }
#endif
    size_t out = 0;
    for (size_t at = 0; at < cl->tomb_len;) {
        size_t len = 14 + ch_get16(cl->tomb + at + 12);
        if ((int32_t)ch_get32(cl->tomb + at) != partition) {
            memmove(cl->tomb + out, cl->tomb + at, len);
            out += len;
        } else {
            cl->n_tomb--;
        }
        at += len;
    }
    cl->tomb_len = out;
}

/* The tombstones of the users evicted since the last flush, into batch b. */
static void write_tombstones(ch_pipeline_t *p, ch_tracked_t *b) {
    ch_changelog_t *cl = &p->cl;
    for (size_t at = 0; at < cl->tomb_len && !p->failed;) {
        const unsigned char *t = cl->tomb + at;
        int32_t partition = (int32_t)ch_get32(t);
        size_t key_len = ch_get16(t + 12);
        ch_header_t h[2] = {{CH_TOMBSTONE_OFFSET_HEADER, t + 4, 8},
                            {CH_WRITER_HEADER, cl->writer, sizeof(cl->writer)}};
        if (partition >= 0 &&
            ch_outputs_send(p, b, OUT_CHANGELOG, p->cfg->state_changelog, partition, t + 14,
                            key_len, NULL, 0, h, 2) == 0) {
            p->st.changelog_tombstones++;
            p->st.changelog_sent++;
        }
        at += 14 + key_len;
    }
    cl->tomb_len = cl->n_tomb = 0;
}

/* The epoch records of changelog partitions that have none yet (snapshot.c), into b. */
static void write_epochs(ch_pipeline_t *p, ch_tracked_t *b) {
    ch_snapshot_t *sn = &p->sn;
    for (int32_t i = 0; sn->on && sn->epochs_queued > 0 && i < p->cl.partitions && !p->failed;
         i++) {
        if (!sn->epoch_queued[i]) {
            continue;
        }
        ch_header_t h[2] = {{CH_EPOCH_HEADER, "1", 1},
                            {CH_WRITER_HEADER, p->cl.writer, sizeof(p->cl.writer)}};
        sn->epoch_queued[i] = false;
        sn->epochs_queued--;
        if (ch_outputs_send(p, b, OUT_CHANGELOG, p->cfg->state_changelog, i, CH_EPOCH_KEY,
                            sizeof(CH_EPOCH_KEY) - 1, sn->epoch[i], 16, h, 2) == 0) {
            sn->epoch_pending[i] = true;
            p->st.changelog_sent++;
        }
    }
}

void ch_changelog_batch_done(ch_pipeline_t *p, ch_tracked_t *b) {
    ch_changelog_t *cl = &p->cl;
    if (!cl->on) {
        ch_outputs_sealed(p, b);
        return;
    }
    cl->pending[cl->n_pending++] = b;
    ch_changelog_flush(p, false);
}

void ch_changelog_flush(ch_pipeline_t *p, bool force) {
    ch_changelog_t *cl = &p->cl;
    /* Every change by an event is made inside a batch that joins the pending list before
     * any flush can run; without a pending batch there can still be the tombstones of idle
     * evictions and the users a restore or the watch found a stale record for. */
    if (!cl->on ||
        (cl->n_pending == 0 && cl->n_tomb == 0 && cl->n_dirty == 0 && p->sn.epochs_queued == 0)) {
        return;
    }
    double now = ch_now_s();
    bool full = !ch_tracker_has_room(p->tracker);
    if (!force && !full && (now - cl->flushed_s) * 1000.0 < p->cfg->commit_interval_ms) {
        return;
    }
    if (cl->n_pending == 0) { /* an empty batch carries them */
        ch_tracked_t *e = full ? NULL : ch_tracker_open(p->tracker);
        if (!e) {
            return; /* the next flush takes them */
        }
        cl->pending[cl->n_pending++] = e;
    }
    ch_tracked_t *b = cl->pending[0];
    write_epochs(p, b);
    write_tombstones(p, b);
    size_t state_len = ch_features_state_len(p->fs), size = ch_staterec_size(state_len);
    ch_header_t wh = {CH_WRITER_HEADER, cl->writer, sizeof(cl->writer)};
    for (size_t k = 0; k < cl->n_dirty && !p->failed; k++) {
        const ch_dirty_t *d = &cl->dirty[k];
        if (!d->u) {
            continue;
        }
        const ch_userrec_t *ur = ch_userrec(p->users, d->u);
        ch_staterec_encode(cl->layout, ur->offset, d->u, state_len, ur, cl->rec);
        if (ch_outputs_send(p, b, OUT_CHANGELOG, p->cfg->state_changelog, ur->partition,
                            ch_users_key(p->users, d->u), d->u->key_len, cl->rec, size, &wh,
                            1) == 0) {
            p->st.changelog_sent++;
            p->st.changelog_bytes += size;
        }
    }
    memset(cl->idx, 0, cl->idx_cap * sizeof(*cl->idx));
    cl->n_dirty = 0;
    ch_tracked_t *last = cl->pending[cl->n_pending - 1];
    for (size_t k = 0; k + 1 < cl->n_pending; k++) {
        if (ch_tracker_merge(cl->pending[k], last) < 0) {
            ch_log(CH_LOG_ERR, "out of memory tracking offsets; stopping");
            ch_tracker_fail(cl->pending[k]); /* nothing from it on is released */
            p->failed = true;
            break;
        }
    }
#ifdef CH_CHECK_INVARIANTS
    flush_ended(p);
#endif
    for (size_t k = 0; k < cl->n_pending; k++) {
        ch_outputs_sealed(p, cl->pending[k]);
    }
    cl->n_pending = 0;
    cl->flushed_s = now;
    p->st.changelog_flushes++;
    ch_outputs_release(p);
    ch_txn_commit(p); /* exactly_once: everything since the last flush, with its offsets */
}
