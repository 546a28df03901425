/*
 * restore.c - a partition gained is paused, its users rebuilt from the changelog up to
 * the committed input offset, then resumed (README "Delivery guarantees").
 *
 * Design notes
 * - On assignment (the rebalance hook, right after the assign) the input partition is
 *   held (ch_consumer_hold: nothing of it is handed out) and the changelog reader
 *   starts on the same partition number from its beginning. Other partitions keep
 *   flowing; restoring is budgeted per loop iteration like the batch path.
 * - Where consumption resumes is looked up at assignment (ch_consumer_start_offset);
 *   unknown (the lookup failed), the partition stays held and the lookup is retried
 *   with backoff from the loop (retry_lookups): its users never start empty.
 * - A record is applied only if the input offset it reflects is below where
 *   consumption of the partition resumes (the committed offset): work that was not
 *   committed is reprocessed from the input instead, so a restore never folds an
 *   event twice, even on a broker that shows aborted transactional records.
 * - Among the applicable records of a user the one reflecting the newest input offset
 *   wins, not the last in topic order: an instance paused past its session timeout
 *   delivers its in-flight records after the new owner's newer ones. Equal offsets
 *   reflect the same events: the later record wins. A tombstone is a record too (the
 *   cohortd-offset header): a state record at or below it, read after it, is stale, and
 *   so is a tombstone below the user's state. Tombstoned keys are remembered until the
 *   end (rp->tombs), and so are the users a stale record was read for (rp->stale_keys):
 *   at the end those are written again (their state, or their tombstone), so the
 *   changelog's last record of each is its newest, which is what compaction keeps.
 * - The watch (state.changelog_watch): once restored, the partition's changelog keeps
 *   being read. A record written by another process (header cohortd-writer) for a
 *   user whose state here reflects a newer input offset is stale: the user is written
 *   again by the next flush. The watch ends when the partition is revoked.
 * - At the partition's end (an end-of-partition entry from the reader) the hold is
 *   released. A revoke in between stops the reading; the users already rebuilt are
 *   dropped with the partition's others.
 * - Records of another layout (another feature configuration) or damaged ones are
 *   counted and skipped: those users start empty, and the log says so.
 * - With state.dir, the partition's snapshot is checked against the changelog first:
 *   the record at the epoch offset it names must be the epoch record it names
 *   (verify_epoch), read with the reader started there and stopped again; otherwise the
 *   snapshot belongs to another cluster or an earlier topic of the same name, and is
 *   ignored. The epoch record itself is never a user (apply and watch skip it).
 * - With state.dir, the partition's snapshot (snapshot.c) is loaded first, in budgeted
 *   steps, and the changelog is read from the offset it names. It is ignored, with a
 *   log line, and the whole changelog read instead, when it is missing, damaged or
 *   truncated (checked at open, and by its checksum at its end: users already loaded
 *   from it are dropped), of another partition count or feature layout, when it
 *   reflects input past the committed offset (written after work that was never
 *   committed), or when the changelog no longer holds the offset it names (retention
 *   deleted part of the tail; a compacted changelog from its start is complete).
 * - Seeds (seed.h, written by featurize --state-out from history): while the group has
 *   no committed offset for the partition (ch_consumer_start_committed), its seed in
 *   state.dir is loaded instead of a snapshot, then the whole changelog is read (a
 *   crash before the first commit left records there that reflect no committed input,
 *   skipped as usual, or the seed's own, reflecting offset -1). Once the seed proved
 *   whole, its users are touched (seed_to_changelog), so the next flush writes them
 *   before any of the partition's offsets can be committed; after that commit the
 *   seed is never read again and the changelog holds them. A seed that does not fit is
 *   refused with an error: those users start empty.
 */
#include "pipeline_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "le.h"
#include "seed.h"
#include "staterec.h"

#define RESTORE_BUDGET 4096
#define LOG_START_TIMEOUT_MS 10000

int ch_restore_init(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    ch_restore_t *rs = &p->rs;
    memset(rs, 0, sizeof(*rs));
    if (!p->cl.on) {
        return 0;
    }
    rs->msgs = calloc(RESTORE_BUDGET, sizeof(*rs->msgs));
    rs->parts = calloc((size_t)p->cl.partitions, sizeof(*rs->parts)); /* one per changelog's */
    if (!rs->msgs || !rs->parts) {
        return -ENOMEM;
    }
    rs->n_parts = (size_t)p->cl.partitions;
    return ch_clients_reader(&p->clients, p->cfg, p->cfg->state_changelog, errbuf, errlen);
}

void ch_restore_done(ch_pipeline_t *p) {
    for (size_t i = 0; i < p->rs.n_parts; i++) {
        ch_snapr_close(p->rs.parts[i].snap);
        ch_keyset_free(p->rs.parts[i].tombs);
        ch_keyset_free(p->rs.parts[i].stale_keys);
    }
    free(p->rs.msgs);
    free(p->rs.parts);
    memset(&p->rs, 0, sizeof(p->rs));
}

/* A partition's restore, or NULL: the changelog has no partition of that number. */
static ch_restore_part_t *part(ch_pipeline_t *p, int32_t partition) {
    return partition >= 0 && (size_t)partition < p->rs.n_parts ? &p->rs.parts[partition] : NULL;
}

/* The partition's snapshot if it can be used, else NULL (the log says why). */
static ch_snapr_t *open_snapshot(ch_pipeline_t *p, int32_t partition, int64_t upto,
                                 ch_restore_part_t *rp) {
    if (!p->sn.on) {
        return NULL;
    }
    char name[600], why[600] = "";
    ch_snapshot_name(p, partition, name, sizeof(name));
    ch_snaphdr_t want = {.partition = partition,
                         .partitions = p->cl.partitions,
                         .state_len = (uint32_t)ch_features_state_len(p->fs),
                         .layout = p->cl.layout},
                 got;
    memcpy(want.identity, p->sn.identity, sizeof(want.identity));
    memcpy(want.cluster, p->sn.cluster, sizeof(want.cluster));
    uint64_t users = 0;
    int64_t max_offset = -1, log_start = -1, log_end = -1;
    ch_snapr_t *r = NULL;
    int rc = ch_snapr_open(p->cfg->state_dir, name, &want, &r, &got, &users, &max_offset, why,
                           sizeof(why));
    if (rc == -ENOENT) {
        ch_log(CH_LOG_INFO, "restore of partition %d: no snapshot in %s; reading the changelog",
               partition, p->cfg->state_dir);
        return NULL;
    }
    if (rc == 0 && max_offset >= upto) {
        snprintf(why, sizeof(why),
                 "it reflects input offset %lld, past the committed offset %lld (written after "
                 "work that was never committed)",
                 (long long)max_offset, (long long)upto);
        rc = -ESTALE;
    }
    if (rc == 0 && ch_reader_log_bounds(p->clients.reader, partition, LOG_START_TIMEOUT_MS,
                                        &log_start, &log_end, why, sizeof(why)) < 0) {
        rc = -EIO;
    }
    if (rc == 0 && got.changelog_from > log_end) {
        snprintf(why, sizeof(why),
                 "it continues from changelog offset %lld, past the changelog's end %lld (the "
                 "topic was recreated, or this is another cluster's)",
                 (long long)got.changelog_from, (long long)log_end);
        rc = -ESTALE;
    }
    if (rc == 0 && (got.epoch_offset < log_start || got.epoch_offset >= log_end)) {
        snprintf(why, sizeof(why),
                 "the changelog's epoch record it names (offset %lld) is not in the changelog "
                 "(offsets %lld..%lld): the topic was recreated, or this is another cluster's",
                 (long long)got.epoch_offset, (long long)log_start, (long long)log_end - 1);
        rc = -ESTALE;
    }
    if (rc == 0 && log_start > got.changelog_from) {
        snprintf(why, sizeof(why),
                 "the changelog now starts at offset %lld, past offset %lld the snapshot "
                 "continues from",
                 (long long)log_start, (long long)got.changelog_from);
        rc = -ESTALE;
    }
    if (rc < 0) {
        p->rs.snap_ignored++;
        ch_log(CH_LOG_WARNING,
               "restore of partition %d: snapshot %s/%s ignored: %s; reading the whole changelog",
               partition, p->cfg->state_dir, name, why[0] ? why : strerror(-rc));
        ch_snapr_close(r);
        return NULL;
    }
    rp->from = got.changelog_from;
    rp->verify = true; /* its epoch record is read back before a user is loaded */
    rp->verify_at = got.epoch_offset;
    memcpy(rp->verify_val, got.epoch, sizeof(rp->verify_val));
    return r;
}

/* The partition's seed (seed.h) if state.dir has one that fits, else NULL (the log
 * says why, unless there is none). */
static ch_snapr_t *open_seed(ch_pipeline_t *p, int32_t partition, ch_restore_part_t *rp) {
    if (!p->sn.on) {
        return NULL;
    }
    char name[600], why[600] = "";
    ch_seed_name(p->cfg->input_topic, partition, name, sizeof(name));
    ch_snaphdr_t want = {.partition = partition,
                         .partitions = p->cl.partitions,
                         .state_len = (uint32_t)ch_features_state_len(p->fs),
                         .layout = p->cl.layout},
                 got;
    if (ch_seed_identity(p->cfg->input_topic, want.identity) < 0) {
        ch_log(CH_LOG_ERR, "restore of partition %d: cannot compute the seed's identity",
               partition);
        return NULL;
    }
    uint64_t users = 0;
    int64_t max_offset = -1;
    ch_snapr_t *r = NULL;
    int rc = ch_snapr_open(p->cfg->state_dir, name, &want, &r, &got, &users, &max_offset, why,
                           sizeof(why));
    if (rc == -ENOENT) {
        return NULL;
    }
    if (rc == 0 && max_offset >= 0) {
        snprintf(why, sizeof(why), "its records reflect input offsets (a seed's reflect none)");
        rc = -EINVAL;
    }
    if (rc < 0) {
        p->rs.seed_ignored++;
        ch_log(CH_LOG_ERR,
               "restore of partition %d: seed %s/%s refused: %s; the partition's users start "
               "without their history",
               partition, p->cfg->state_dir, name, why[0] ? why : strerror(-rc));
        ch_snapr_close(r);
        return NULL;
    }
    ch_log(CH_LOG_NOTICE,
           "restore of partition %d: the group has no committed offset for it; loading the "
           "%llu user(s) of seed %s/%s",
           partition, (unsigned long long)users, p->cfg->state_dir, name);
    rp->seed = true;
    rp->from = CH_READ_BEGINNING; /* then the whole changelog, as without a snapshot */
    return r;
}

/* The committed offset is known: restore up to it (its snapshot first, if any; a seed
 * instead while the group has no committed offset for the partition). */
static void start(ch_pipeline_t *p, int32_t partition, ch_restore_part_t *rp, int64_t upto) {
    char err[512];
    ch_snapshot_stored(p, partition, upto); /* what it resumes from is committed */
    rp->upto = upto;
    rp->snap = NULL;
    if (!ch_consumer_start_committed(p->clients.consumer, partition)) {
        rp->snap = open_seed(p, partition, rp);
    }
    if (!rp->snap) {
        rp->snap = open_snapshot(p, partition, upto, rp);
    }
    if (rp->seed) {
        return; /* the reader starts once the seed is loaded (load_snapshot) */
    }
    if (ch_reader_start(p->clients.reader, partition, rp->snap ? rp->verify_at : rp->from, err,
                        sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "restore: %s; stopping", err);
        p->failed = true;
    }
}

#define LOOKUP_TIMEOUT_MS 250
#define LOOKUP_BACKOFF_MIN_S 0.5
#define LOOKUP_BACKOFF_MAX_S 10.0

void ch_restore_begin(ch_pipeline_t *p, int32_t partition) {
    if (!p->clients.reader) {
        return;
    }
    ch_restore_part_t *rp = part(p, partition);
    char err[512];
    if (!rp) {
        ch_log(CH_LOG_ERR,
               "restore: %s[%d] has no changelog partition (%s has %d; did the input gain "
               "partitions?); stopping",
               p->cfg->input_topic, partition, p->cfg->state_changelog, p->cl.partitions);
        p->failed = true;
        return;
    }
    if (ch_consumer_hold(p->clients.consumer, partition, true) < 0) {
        ch_log(CH_LOG_ERR, "out of memory restoring partition %d; stopping", partition);
        p->failed = true;
        return;
    }
    ch_snapshot_forget(p, partition);
    ch_snapr_close(rp->snap);
    rp->snap = NULL;
    if (rp->watching && ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "restore: %s", err);
    }
    if (rp->lookup) {
        p->rs.lookups--;
    }
    ch_keyset_t *tombs = rp->tombs, *stale_keys = rp->stale_keys;
    if (!tombs && ch_keyset_new(&tombs) < 0) {
        tombs = NULL;
    }
    if (!stale_keys && ch_keyset_new(&stale_keys) < 0) {
        stale_keys = NULL;
    }
    if (!tombs || !stale_keys) {
        ch_keyset_free(tombs);
        ch_keyset_free(stale_keys);
        *rp = (ch_restore_part_t){0};
        ch_log(CH_LOG_ERR, "out of memory restoring partition %d; stopping", partition);
        p->failed = true;
        return;
    }
    ch_keyset_clear(tombs);
    ch_keyset_clear(stale_keys);
    *rp = (ch_restore_part_t){.on = true,
                              .upto = -1,
                              .from = CH_READ_BEGINNING,
                              .epoch_at = -1,
                              .t0 = ch_now_s(),
                              .tombs = tombs,
                              .stale_keys = stale_keys};
    p->rs.active++;
    int64_t upto = ch_consumer_start_offset(p->clients.consumer, partition);
    if (upto >= 0) {
        start(p, partition, rp, upto);
        return;
    }
    /* Unknown where consumption resumes: none of the changelog can be shown to be
     * committed, and its users must not start empty while the input resumes from the
     * committed offset anyway. Held (the aligner buffers, then pauses) and asked again. */
    rp->lookup = true;
    rp->backoff_s = LOOKUP_BACKOFF_MIN_S;
    rp->next_try_s = ch_now_s() + rp->backoff_s;
    p->rs.lookups++;
    p->rs.lookup_failures++;
    ch_log(CH_LOG_WARNING,
           "restore: where %s[%d] resumes is unknown (the committed-offset lookup at "
           "assignment failed); the partition is held and the lookup retried",
           p->cfg->input_topic, partition);
}

/* Ask again for the committed offsets of the held partitions whose time has come. */
static void retry_lookups(ch_pipeline_t *p) {
    double now = ch_now_s();
    for (size_t i = 0; p->rs.lookups > 0 && i < p->rs.n_parts && !p->failed; i++) {
        ch_restore_part_t *rp = &p->rs.parts[i];
        if (!rp->on || !rp->lookup || now < rp->next_try_s) {
            continue;
        }
        char why[512];
        int64_t upto = -1;
        int r = ch_consumer_lookup_start(p->clients.consumer, (int32_t)i, LOOKUP_TIMEOUT_MS,
                                         &upto, why, sizeof(why));
        if (r == 0) {
            rp->lookup = false;
            p->rs.lookups--;
            ch_log(CH_LOG_NOTICE, "restore: %s[%d] resumes at offset %lld; restoring",
                   p->cfg->input_topic, (int)i, (long long)upto);
            start(p, (int32_t)i, rp, upto);
            continue;
        }
        p->rs.lookup_failures++;
        rp->backoff_s = rp->backoff_s * 2 < LOOKUP_BACKOFF_MAX_S ? rp->backoff_s * 2
                                                                 : LOOKUP_BACKOFF_MAX_S;
        rp->next_try_s = ch_now_s() + rp->backoff_s;
        uint64_t dropped = 0;
        if (ch_ratelimit_allow(&p->bad_rl, &dropped)) {
            ch_log(CH_LOG_WARNING, "restore: %s; %s[%d] stays held, next try in %.1f s", why,
                   p->cfg->input_topic, (int)i, rp->backoff_s);
        }
    }
}

void ch_restore_cancel(ch_pipeline_t *p, int32_t partition) {
    ch_restore_part_t *rp = part(p, partition);
    char err[512];
    if (rp && rp->watching) {
        rp->watching = false;
        if (ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
            ch_log(CH_LOG_WARNING, "restore: %s", err);
        }
        return;
    }
    if (!rp || !rp->on) {
        return;
    }
    if (rp->lookup) {
        rp->lookup = false; /* nothing was started */
        p->rs.lookups--;
    } else if (rp->snap && !rp->verify) {
        rp->snap = ch_snapr_close(rp->snap);
    } else {
        rp->snap = ch_snapr_close(rp->snap);
        rp->verify = false;
        if (ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
            ch_log(CH_LOG_WARNING, "restore: %s", err);
        }
    }
    rp->on = false;
    p->rs.active--;
    ch_log(CH_LOG_INFO, "restore of %s[%d] abandoned: the partition was revoked",
           p->cfg->state_changelog, partition);
}

/* Write again every user a stale record was read for: its state, or its tombstone.
 * @returns how many. */
static size_t repair(ch_pipeline_t *p, int32_t partition, ch_restore_part_t *rp) {
    size_t cursor = 0, n = 0, len;
    const void *key;
    while (ch_keyset_next(rp->stale_keys, &cursor, &key, &len, NULL)) {
        ch_user_t *u = ch_users_find(p->users, key, len);
        int64_t t;
        if (u) {
            ch_changelog_touch(p, u, ch_userrec(p->users, u)->offset);
            n++;
        } else if (ch_keyset_get(rp->tombs, key, len, &t)) {
            ch_changelog_tombstone(p, partition, t, key, len);
            n++;
        }
    }
    ch_keyset_clear(rp->stale_keys);
    ch_keyset_clear(rp->tombs);
    p->rs.repaired += n;
    return n;
}

static void finish(ch_pipeline_t *p, int32_t partition, ch_restore_part_t *rp, int64_t end) {
    char err[512];
    rp->watching = p->cfg->state_changelog_watch;
    if (!rp->watching && ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "restore: %s", err);
    }
    size_t repaired = repair(p, partition, rp);
    if (rp->epoch_at >= 0) {
        ch_snapshot_epoch(p, partition, rp->epoch_at, rp->epoch);
    } else {
        ch_snapshot_new_epoch(p, partition); /* snapshots name it; none yet */
    }
    double dt = ch_now_s() - rp->t0;
    rp->on = false;
    p->rs.active--;
    p->rs.partitions++;
    p->rs.seconds += dt;
    ch_snapshot_durable(p, partition, end); /* the changelog holds nothing of it past end */
    ch_consumer_hold(p->clients.consumer, partition, false);
    char from[96] = "";
    if (rp->seed) {
        snprintf(from, sizeof(from), "%llu user(s) from the seed, then from the beginning ",
                 (unsigned long long)rp->from_snapshot);
    } else if (rp->from != CH_READ_BEGINNING) {
        snprintf(from, sizeof(from), "%llu user(s) from the snapshot, then from offset %lld ",
                 (unsigned long long)rp->from_snapshot, (long long)rp->from);
    }
    ch_log(CH_LOG_INFO,
           "restored %s[%d]: %s%llu record(s) read, %llu applied, %llu past the committed "
           "offset %lld, %llu refused, %llu stale, in %.3f s",
           p->cfg->state_changelog, partition, from, (unsigned long long)rp->read,
           (unsigned long long)rp->applied, (unsigned long long)rp->uncommitted,
           (long long)rp->upto, (unsigned long long)rp->refused, (unsigned long long)rp->stale,
           dt);
    if (repaired > 0) {
        ch_log(CH_LOG_WARNING,
               "restore of %s[%d]: %llu record(s) reflected older input than a record read "
               "before them (a late write of an instance that had lost the partition); not "
               "applied, and %zu user(s) are written again so their newest state is last",
               p->cfg->state_changelog, partition, (unsigned long long)rp->stale, repaired);
    }
}

enum { PUT_APPLIED, PUT_STALE, PUT_REFUSED };

/* A stale record of key: counted, and the user is written again at the end. */
static int stale(ch_pipeline_t *p, ch_restore_part_t *rp, const char *key, size_t key_len) {
    rp->stale++;
    p->rs.stale_restore++;
    if (ch_keyset_put(rp->stale_keys, key, key_len, 0) < 0) {
        ch_log(CH_LOG_ERR, "out of memory restoring; stopping");
        p->failed = true;
    }
    return PUT_STALE;
}

/* Make a user's state the record's, unless the user's state (or tombstone) already
 * reflects newer input. */
static int put(ch_pipeline_t *p, ch_restore_part_t *rp, const char *key, size_t key_len,
               const ch_staterec_t *s, int32_t partition) {
    int64_t tomb;
    if (ch_keyset_get(rp->tombs, key, key_len, &tomb) && s->input_offset <= tomb) {
        return stale(p, rp, key, key_len);
    }
    ch_user_t *u = ch_users_find(p->users, key, key_len);
    if (u && ch_userrec(p->users, u)->offset > s->input_offset) {
        return stale(p, rp, key, key_len);
    }
    int r = ch_users_upsert(p->users, key, key_len, &u);
    if (r < 0) {
        return PUT_REFUSED;
    }
    int32_t before = r == 1 ? -1 : u->segment;
    ch_staterec_apply(s, u, ch_userrec(p->users, u), partition);
    if (!p->segs || !ch_segments_ready(p->segs) || u->segment < 0 ||
        (size_t)u->segment >= p->cfg->segments.k) {
        /* segments off, not seeded here (no centroids: a seed's segments without
         * segments.state_file), or fewer of them now: assigned on its next event */
        u->segment = -1;
        u->seg_gen = 0;
    }
    if (p->segs) {
        ch_segments_moved(p->segs, before, u->segment);
    }
    return PUT_APPLIED;
}

/* Whether a changelog record is a partition's epoch record (its key first: the header
 * lookup is the dearer test, and every other record is a user's). */
static bool is_epoch(const ch_msg_t *m) {
    const void *v = NULL;
    size_t len = 0;
    return m->key && m->key_len == sizeof(CH_EPOCH_KEY) - 1 &&
           memcmp(m->key, CH_EPOCH_KEY, m->key_len) == 0 &&
           ch_msg_header(m, CH_EPOCH_HEADER, &v, &len) == 0;
}

/* The input offset a tombstone reflects; -1 without the header (applies as before). */
static int64_t tombstone_offset(const ch_msg_t *m) {
    const void *v = NULL;
    size_t len = 0;
    if (ch_msg_header(m, CH_TOMBSTONE_OFFSET_HEADER, &v, &len) == 0 && v && len == 8) {
        return (int64_t)ch_get64(v);
    }
    return -1;
}

static void apply(ch_pipeline_t *p, const ch_msg_t *m, ch_restore_part_t *rp) {
    ch_restore_t *rs = &p->rs;
    rp->read++;
    rs->records++;
    rs->bytes += m->value_len + m->key_len;
    if (is_epoch(m)) {
        if (m->value && m->value_len == sizeof(rp->epoch)) { /* the partition's epoch */
            rp->epoch_at = m->offset;
            memcpy(rp->epoch, m->value, sizeof(rp->epoch));
        }
        return;
    }
    if (!m->key || m->key_len == 0) {
        rp->refused++;
        rs->refused++;
        return;
    }
    if (!m->value) { /* tombstone: the user was evicted for good */
        int64_t t = tombstone_offset(m);
        if (t >= rp->upto) {
            rp->uncommitted++; /* evicted after input that was never committed */
            rs->uncommitted++;
            return;
        }
        ch_user_t *u = ch_users_find(p->users, m->key, m->key_len);
        if (u && ch_userrec(p->users, u)->offset > t) {
            stale(p, rp, m->key, m->key_len); /* evicted before state read earlier */
            return;
        }
        p->dropping = true; /* the eviction hook keeps the segment counts */
        ch_users_remove(p->users, m->key, m->key_len);
        p->dropping = false;
        if (ch_keyset_put(rp->tombs, m->key, m->key_len, t) < 0) {
            ch_log(CH_LOG_ERR, "out of memory restoring; stopping");
            p->failed = true;
        }
        rp->applied++;
        rs->applied++;
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
    int put_r = put(p, rp, m->key, m->key_len, &s, m->partition);
    if (put_r == PUT_APPLIED) {
        rp->applied++;
        rs->applied++;
    } else if (put_r == PUT_REFUSED) {
        rp->refused++;
        rs->refused++;
    }
}

/* A record read back after the restore: another writer's record of a user whose state
 * here reflects newer input is stale, and the user is written again. */
static void watch(ch_pipeline_t *p, const ch_msg_t *m) {
    const void *w = NULL;
    size_t wlen = 0;
    if (!m->key || m->key_len == 0 ||
        (ch_msg_header(m, CH_WRITER_HEADER, &w, &wlen) == 0 && wlen == sizeof(p->cl.writer) &&
         memcmp(w, p->cl.writer, wlen) == 0)) {
        return; /* ours, in the order written */
    }
    if (is_epoch(m)) {
        return; /* not a user */
    }
    ch_user_t *u = ch_users_find(p->users, m->key, m->key_len);
    if (!u) {
        return;
    }
    ch_userrec_t *ur = ch_userrec(p->users, u);
    int64_t reflects;
    if (!m->value) {
        reflects = tombstone_offset(m);
    } else {
        ch_staterec_t s;
        if (ch_staterec_decode(m->value, m->value_len, p->cl.layout,
                               ch_features_state_len(p->fs), &s) < 0) {
            return;
        }
        reflects = s.input_offset;
    }
    if (ur->partition != m->partition || reflects >= ur->offset) {
        return;
    }
    p->rs.stale_watch++;
    p->rs.repaired++;
    uint64_t dropped = 0;
    if (ch_ratelimit_allow(&p->bad_rl, &dropped)) {
        ch_log(CH_LOG_WARNING,
               "changelog %s[%d]@%lld: another writer's record reflects input offset %lld, "
               "older than this instance's state of that user (%lld): a late write of an "
               "instance that had lost the partition; the user is written again",
               p->cfg->state_changelog, m->partition, (long long)m->offset, (long long)reflects,
               (long long)ur->offset);
    }
    ch_changelog_touch(p, u, ur->offset);
}

/* A seed proved whole (its checksum at its end): its users, who reflect no input offset,
 * are written to the changelog by the next flush, before any offset of the partition can
 * be committed (the partition is held until its restore ends, and a flush releases
 * offsets only once its records are acknowledged). After that commit a restart restores
 * them from the changelog; before it, from the seed again. */
static void seed_to_changelog(ch_pipeline_t *p, int32_t partition) {
    size_t cursor = 0;
    ch_user_t *u;
    while ((u = ch_users_next(p->users, &cursor))) {
        ch_userrec_t *ur = ch_userrec(p->users, u);
        if (ur->partition == partition && ur->offset < 0) {
            ch_changelog_touch(p, u, ur->offset);
        }
    }
}

/* Load up to budget users of a partition's snapshot; at its end, read the changelog
 * from where it says (or, if it proved damaged, drop what it gave and read it all).
 * @returns users loaded. */
static size_t load_snapshot(ch_pipeline_t *p, int32_t partition, ch_restore_part_t *rp,
                            size_t budget) {
    size_t state_len = ch_features_state_len(p->fs), n = 0;
    int r = 1;
    const char *why = NULL;
    while (n < budget) {
        const char *key;
        const unsigned char *rec;
        size_t key_len, rec_len;
        ch_staterec_t s;
        r = ch_snapr_next(rp->snap, &key, &key_len, &rec, &rec_len);
        if (r <= 0) {
            break;
        }
        n++;
        /* a record that does not fit refuses the whole snapshot (the checksum is only
         * known at its end) */
        why = ch_staterec_decode(rec, rec_len, p->cl.layout, state_len, &s) < 0
                  ? "damaged: a state record does not decode"
              : s.input_offset >= rp->upto ? "a record reflects input past the committed offset"
              : put(p, rp, key, key_len, &s, partition) == PUT_REFUSED
                  ? "the user table refused a user"
                  : NULL;
        if (why) {
            r = -EINVAL;
            break;
        }
        rp->from_snapshot++;
    }
    if (r > 0) {
        return n;
    }
    char name[600], err[512];
    if (rp->seed) {
        ch_seed_name(p->cfg->input_topic, partition, name, sizeof(name));
    } else {
        ch_snapshot_name(p, partition, name, sizeof(name));
    }
    if (r < 0) {
        size_t dropped = ch_rebalance_drop(p, partition);
        if (rp->seed) {
            p->rs.seed_ignored++;
        } else {
            p->rs.snap_ignored++;
        }
        ch_log(rp->seed ? CH_LOG_ERR : CH_LOG_WARNING,
               "restore of partition %d: %s %s/%s ignored: %s; dropped the %zu user(s) "
               "loaded from it, reading the whole changelog",
               partition, rp->seed ? "seed" : "snapshot", p->cfg->state_dir, name,
               why ? why : ch_snapr_why(rp->snap), dropped);
        rp->from = CH_READ_BEGINNING;
        rp->from_snapshot = 0;
        rp->seed = false;
    } else if (rp->seed) {
        p->rs.seed_loaded++;
        p->rs.seed_users += rp->from_snapshot;
        seed_to_changelog(p, partition);
    } else {
        p->rs.snap_loaded++;
        p->rs.snap_users += rp->from_snapshot;
    }
    rp->snap = ch_snapr_close(rp->snap);
    if (ch_reader_start(p->clients.reader, partition, rp->from, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "restore: %s; stopping", err);
        p->failed = true;
    }
    return n;
}

/* The first record read at the snapshot's epoch offset: the snapshot is loaded if it is
 * the epoch record the snapshot names, else ignored and the whole changelog read. */
static void verify_epoch(ch_pipeline_t *p, const ch_msg_t *m, ch_restore_part_t *rp) {
    char err[512], name[600];
    int32_t partition = m->partition;
    bool ok = !m->eof && m->offset == rp->verify_at && is_epoch(m) && m->value &&
              m->value_len == sizeof(rp->verify_val) &&
              memcmp(m->value, rp->verify_val, sizeof(rp->verify_val)) == 0;
    rp->verify = false;
    if (ch_reader_stop(p->clients.reader, partition, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "restore: %s", err);
    }
    if (ok) { /* the snapshot is loaded next, then the changelog read from rp->from */
        rp->epoch_at = rp->verify_at;
        memcpy(rp->epoch, rp->verify_val, sizeof(rp->epoch));
        return;
    }
    ch_snapshot_name(p, partition, name, sizeof(name));
    p->rs.snap_ignored++;
    ch_log(CH_LOG_WARNING,
           "restore of partition %d: snapshot %s/%s ignored: the changelog's record at offset "
           "%lld is not the epoch record it names (%s): it was written for another cluster or "
           "an earlier topic of that name; reading the whole changelog",
           partition, p->cfg->state_dir, name, (long long)rp->verify_at,
           m->eof ? "the changelog ends there" : "another record");
    rp->snap = ch_snapr_close(rp->snap);
    rp->from = CH_READ_BEGINNING;
    if (ch_reader_start(p->clients.reader, partition, rp->from, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "restore: %s; stopping", err);
        p->failed = true;
    }
}

bool ch_restore_drain(ch_pipeline_t *p) {
    ch_restore_t *rs = &p->rs;
    if (!p->clients.reader || p->stopping || ch_pipeline_failed(p)) {
        return false;
    }
    retry_lookups(p);
    size_t loaded = 0;
    for (size_t i = 0; i < rs->n_parts && loaded < RESTORE_BUDGET; i++) {
        if (rs->parts[i].on && rs->parts[i].snap && !rs->parts[i].verify) {
            loaded += load_snapshot(p, (int32_t)i, &rs->parts[i], RESTORE_BUDGET - loaded);
        }
    }
    bool more = loaded >= RESTORE_BUDGET;
    int n = ch_reader_drain(p->clients.reader, rs->msgs, RESTORE_BUDGET);
    rs->drains++;
    for (int i = 0; i < n; i++) {
        const ch_msg_t *m = &rs->msgs[i];
        if (m->err) {
            ch_clients_error(&p->clients, m->err_fatal, "changelog reader",
                             m->errstr ? m->errstr : "error");
            continue;
        }
        ch_restore_part_t *rp = part(p, m->partition);
        if (rp && rp->watching) {
            if (!m->eof) {
                watch(p, m);
            }
            continue;
        }
        if (!rp || !rp->on) {
            continue; /* read before a cancel */
        }
        if (rp->verify) {
            verify_epoch(p, m, rp);
            rp->skip_drain = rs->drains; /* the rest of this read is of a reading given up */
            continue;
        }
        if (rp->snap || rp->skip_drain == rs->drains) {
            continue; /* read before a cancel and a new assignment; reading restarts */
        }
        if (m->eof) {
            finish(p, m->partition, rp, m->offset);
        } else {
            apply(p, m, rp);
        }
    }
    return more || n >= RESTORE_BUDGET; /* more may be waiting (held lookups: the safety timer) */
}
