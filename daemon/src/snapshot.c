/*
 * snapshot.c - local snapshots of each partition's users (state.dir), so a restart
 * replays only the changelog written after them (README "Delivery guarantees").
 *
 * Design notes
 * - A snapshot of partition P says the changelog offset F from which replaying
 *   completes it. F is the offset past the last changelog record of P known durable
 *   (a delivery report, or the end a restore read up to) when the snapshot starts.
 *   Every record produced afterwards lands at F or later, in order.
 * - So the snapshot need not be one instant: it is written in budgeted steps on the
 *   loop while events keep flowing, walking the user table's slab. A user captured at
 *   any moment after the start is in a state the changelog from F on either repeats
 *   or overwrites (records are whole states, replayed in order), a user created after
 *   the start is wholly in the changelog from F, and one evicted meanwhile is gone as
 *   it would be anyway.
 * - A user may be captured in a state whose input is not committed yet, and a restore
 *   must never start from such a state. So a file whose walk is done is sealed, not
 *   published: it waits until the input offsets stored for commit pass the highest
 *   offset any of its records reflects (outputs and changelog of that input durable),
 *   then the offsets are committed synchronously and only then is it renamed into
 *   place (snapfile.c: write, fsync, rename, fsync the directory). A crash before that
 *   leaves the previous snapshot, which was published the same way. The trailer keeps
 *   that highest offset, and restore.c still ignores a snapshot it is not below the
 *   committed offset of (offsets reset by hand, say).
 * - Only partitions owned, not restoring and with a known F when it starts are
 *   written; a partition revoked meanwhile has its file abandoned. Files are named
 *   <dir>/<changelog topic>-<partition>.snap. A sealed snapshot not published within
 *   60 s (input stuck) is abandoned with a log line.
 * - A snapshot belongs to one changelog: its header names the cluster id, a digest of
 *   the cluster id and the input and changelog topic names, and the partition's epoch
 *   record (its offset and 16 random bytes). The epoch record is written once per
 *   changelog partition, by the first restore that finds none (ch_snapshot_new_epoch;
 *   the next flush writes it, its delivery report says where it landed); a partition
 *   whose epoch is not known yet is not snapshotted. Its key is no user's, so
 *   compaction keeps it; a restore reads it back before loading a snapshot
 *   (restore.c), which catches a recreated topic or another cluster with the same
 *   names, where the cluster id cannot (the embedded broker's id is the same in every
 *   run; librdkafka 2.0.2 does not expose topic ids).
 */
#include "pipeline_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "staterec.h"

#define CLUSTER_ID_TIMEOUT_MS 10000

#define SNAPSHOT_BUDGET 16384 /* users visited per loop iteration */
#define PUBLISH_WAIT_S 60

int ch_snapshot_init(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    ch_snapshot_t *sn = &p->sn;
    memset(sn, 0, sizeof(*sn));
    const char *dir = p->cfg->state_dir;
    if (!dir[0] || !p->cl.on) {
        return 0;
    }
    if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
        snprintf(errbuf, errlen, "state.dir: cannot create %s: %s", dir, strerror(errno));
        return -EIO;
    }
    if (access(dir, R_OK | W_OK | X_OK) < 0) {
        snprintf(errbuf, errlen, "state.dir: %s is not a writable directory: %s", dir,
                 strerror(errno));
        return -EIO;
    }
    /* A snapshot belongs to one cluster and its input and changelog topics: after the
     * cluster is rebuilt or the topics recreated elsewhere with the same names, another
     * cluster's users must not come back. (librdkafka 2.0.2 does not expose topic ids;
     * a changelog recreated on the same cluster is caught by the restore's check that
     * the offset a snapshot continues from lies within the changelog.) */
    if (ch_consumer_cluster_id(p->clients.consumer, CLUSTER_ID_TIMEOUT_MS, sn->cluster,
                               sizeof(sn->cluster)) < 0) {
        snprintf(errbuf, errlen,
                 "state.dir: the cluster's id is unknown (no metadata within %d ms, or a broker "
                 "that has none); snapshots must name the cluster they belong to",
                 CLUSTER_ID_TIMEOUT_MS);
        return -EIO;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    const char *parts[] = {"cohortd-snapshot", sn->cluster, p->cfg->input_topic,
                           p->cfg->state_changelog};
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (size_t i = 0; ok && i < sizeof(parts) / sizeof(parts[0]); i++) {
        ok = EVP_DigestUpdate(md, parts[i], strlen(parts[i]) + 1); /* with its NUL */
    }
    unsigned int dlen = 0;
    ok = ok && EVP_DigestFinal_ex(md, sn->identity, &dlen) && dlen == sizeof(sn->identity);
    EVP_MD_CTX_free(md);
    if (!ok) {
        snprintf(errbuf, errlen, "state.dir: cannot compute the snapshots' identity (SHA-256)");
        return -EIO;
    }
    size_t n = (size_t)p->cl.partitions;
    sn->cl_next = malloc(n * sizeof(*sn->cl_next));
    sn->stored = malloc(n * sizeof(*sn->stored));
    sn->w = calloc(n, sizeof(*sn->w));
    sn->epoch_at = malloc(n * sizeof(*sn->epoch_at));
    sn->epoch = calloc(n, sizeof(*sn->epoch));
    sn->epoch_queued = calloc(n, sizeof(*sn->epoch_queued));
    sn->epoch_pending = calloc(n, sizeof(*sn->epoch_pending));
    if (!sn->cl_next || !sn->stored || !sn->w || !sn->epoch_at || !sn->epoch ||
        !sn->epoch_queued || !sn->epoch_pending) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        sn->cl_next[i] = sn->stored[i] = sn->epoch_at[i] = -1;
    }
    sn->on = true;
    sn->next_s = ch_now_s() + p->cfg->state_snapshot_interval_ms / 1000.0;
    return 0;
}

static void abandon(ch_snapshot_t *sn, int32_t partition) {
    if (sn->w[partition]) {
        ch_snapw_abort(sn->w[partition]);
        sn->w[partition] = NULL;
        sn->writing--;
    }
}

void ch_snapshot_done(ch_pipeline_t *p) {
    ch_snapshot_t *sn = &p->sn;
    if (sn->on) {
        for (int32_t i = 0; i < p->cl.partitions; i++) {
            abandon(sn, i);
        }
    }
    free(sn->cl_next);
    free(sn->stored);
    free(sn->w);
    free(sn->epoch_at);
    free(sn->epoch);
    free(sn->epoch_queued);
    free(sn->epoch_pending);
    memset(sn, 0, sizeof(*sn));
}

void ch_snapshot_name(const ch_pipeline_t *p, int32_t partition, char *buf, size_t len) {
    snprintf(buf, len, "%s-%d.snap", p->cfg->state_changelog, partition);
}

static bool in_range(const ch_pipeline_t *p, int32_t partition) {
    return p->sn.on && partition >= 0 && partition < p->cl.partitions;
}

void ch_snapshot_durable(ch_pipeline_t *p, int32_t partition, int64_t next) {
    if (in_range(p, partition) && next > p->sn.cl_next[partition]) {
        p->sn.cl_next[partition] = next;
    }
}

void ch_snapshot_stored(ch_pipeline_t *p, int32_t partition, int64_t next) {
    if (in_range(p, partition) && next > p->sn.stored[partition]) {
        p->sn.stored[partition] = next;
    }
}

static void epoch_unknown(ch_snapshot_t *sn, int32_t partition) {
    if (sn->epoch_queued[partition]) {
        sn->epoch_queued[partition] = false;
        sn->epochs_queued--;
    }
    sn->epoch_pending[partition] = false;
    sn->epoch_at[partition] = -1;
}

void ch_snapshot_epoch(ch_pipeline_t *p, int32_t partition, int64_t offset,
                       const unsigned char *value) {
    if (in_range(p, partition)) {
        epoch_unknown(&p->sn, partition);
        p->sn.epoch_at[partition] = offset;
        memcpy(p->sn.epoch[partition], value, 16);
    }
}

void ch_snapshot_new_epoch(ch_pipeline_t *p, int32_t partition) {
    if (!in_range(p, partition)) {
        return;
    }
    ch_snapshot_t *sn = &p->sn;
    epoch_unknown(sn, partition);
    if (getrandom(sn->epoch[partition], 16, GRND_NONBLOCK) != 16) {
        uint64_t v[2] = {(uint64_t)getpid() << 32 ^ (uint64_t)partition,
                         (uint64_t)(ch_now_s() * 1e9)};
        memcpy(sn->epoch[partition], v, 16);
    }
    sn->epoch_queued[partition] = true;
    sn->epochs_queued++;
}

void ch_snapshot_delivered(ch_pipeline_t *p, int32_t partition, int64_t offset) {
    ch_snapshot_durable(p, partition, offset + 1);
    const void *v = NULL;
    size_t len = 0;
    ch_msg_t m;
    if (in_range(p, partition) && p->sn.epoch_pending[partition] &&
        ch_producer_reported(p->clients.producer, &m) == 0 &&
        ch_msg_header(&m, CH_EPOCH_HEADER, &v, &len) == 0 && m.value && m.value_len == 16 &&
        memcmp(m.value, p->sn.epoch[partition], 16) == 0) {
        p->sn.epoch_pending[partition] = false;
        p->sn.epoch_at[partition] = offset;
    }
}

void ch_snapshot_forget(ch_pipeline_t *p, int32_t partition) {
    if (in_range(p, partition)) {
        abandon(&p->sn, partition);
        epoch_unknown(&p->sn, partition);
        p->sn.cl_next[partition] = p->sn.stored[partition] = -1;
        if (p->sn.writing == 0) {
            p->sn.sealed = false;
        }
    }
}

static bool restoring(const ch_pipeline_t *p, int32_t partition) {
    return (size_t)partition < p->rs.n_parts && p->rs.parts[partition].on;
}

/* Open a file for every partition that can be written now. @returns how many. */
static size_t begin(ch_pipeline_t *p) {
    ch_snapshot_t *sn = &p->sn;
    ch_snaphdr_t h = {.partitions = p->cl.partitions,
                      .state_len = (uint32_t)ch_features_state_len(p->fs),
                      .layout = p->cl.layout};
    memcpy(h.identity, sn->identity, sizeof(h.identity));
    memcpy(h.cluster, sn->cluster, sizeof(h.cluster));
    char name[600], err[600];
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        if (!ch_rebalance_owns(p, i) || restoring(p, i) || sn->cl_next[i] < 0 ||
            sn->epoch_at[i] < 0) {
            continue; /* an epoch record not yet durable: the next snapshot */
        }
        h.partition = i;
        h.changelog_from = sn->cl_next[i];
        h.epoch_offset = sn->epoch_at[i];
        memcpy(h.epoch, sn->epoch[i], 16);
        ch_snapshot_name(p, i, name, sizeof(name));
        if (ch_snapw_open(p->cfg->state_dir, name, &h, &sn->w[i], err, sizeof(err)) < 0) {
            sn->failures++;
            ch_log(CH_LOG_WARNING, "snapshot of partition %d not written: %s", i,
                   err[0] ? err : "out of memory");
            continue;
        }
        sn->writing++;
    }
    sn->cursor = 0;
    sn->sealed = false;
    sn->t0 = ch_now_s();
    return sn->writing;
}

/* Whether every file's input is stored for commit. */
static bool publishable(const ch_pipeline_t *p) {
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        if (p->sn.w[i] && p->sn.stored[i] <= ch_snapw_max_offset(p->sn.w[i])) {
            return false;
        }
    }
    return true;
}

static void abandon_all(ch_pipeline_t *p, const char *why) {
    if (p->sn.writing > 0) {
        ch_log(CH_LOG_WARNING, "snapshot abandoned: %s; the previous one stays", why);
    }
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        abandon(&p->sn, i);
    }
    p->sn.sealed = false;
    p->sn.next_s = ch_now_s() + p->cfg->state_snapshot_interval_ms / 1000.0;
}

/* Commit the input offsets, then rename the files into place. */
static void publish(ch_pipeline_t *p) {
    ch_snapshot_t *sn = &p->sn;
    char err[600];
    if (ch_consumer_commit(p->clients.consumer, ch_budget_ms(p, COMMIT_TIMEOUT_MS), err,
                           sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "snapshot: committing its input failed: %s", err);
        abandon_all(p, "its input could not be committed");
        return;
    }
    size_t files = 0;
    uint64_t users = 0;
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        if (!sn->w[i]) {
            continue;
        }
        uint64_t n = ch_snapw_users(sn->w[i]);
        int r = ch_snapw_commit(sn->w[i], err, sizeof(err));
        sn->w[i] = NULL;
        sn->writing--;
        if (r < 0) {
            sn->failures++;
            ch_log(CH_LOG_WARNING, "%s", err);
            continue;
        }
        files++;
        users += n;
    }
    sn->sealed = false;
    sn->files += files;
    sn->users += users;
    sn->last_seconds = ch_now_s() - sn->t0;
    sn->next_s = ch_now_s() + p->cfg->state_snapshot_interval_ms / 1000.0;
    ch_log(CH_LOG_INFO, "snapshot: %zu partition(s), %llu user(s) written to %s in %.3f s", files,
           (unsigned long long)users, p->cfg->state_dir, sn->last_seconds);
}

/* Visit up to budget users of the table. @returns true when the walk is complete. */
static bool walk(ch_pipeline_t *p, size_t budget) {
    ch_snapshot_t *sn = &p->sn;
    size_t state_len = ch_features_state_len(p->fs);
    for (size_t k = 0; k < budget; k++) {
        ch_user_t *u = ch_users_next(p->users, &sn->cursor);
        if (!u) {
            return true;
        }
        const ch_userrec_t *ur = ch_userrec(p->users, u);
        if (!in_range(p, ur->partition) || !sn->w[ur->partition]) {
            continue;
        }
        ch_staterec_encode(p->cl.layout, ur->offset, u, state_len, ur, p->cl.rec);
        if (ch_snapw_add(sn->w[ur->partition], ch_users_key(p->users, u), u->key_len, p->cl.rec,
                         ur->offset) < 0) {
            /* the commit reports it; nothing more goes to a file that failed */
            sn->failures++;
            ch_log(CH_LOG_WARNING, "snapshot of partition %d not written: write failed",
                   ur->partition);
            abandon(sn, ur->partition);
            if (sn->writing == 0) {
                return true;
            }
        }
    }
    return false;
}

bool ch_snapshot_step(ch_pipeline_t *p) {
    ch_snapshot_t *sn = &p->sn;
    if (!sn->on || p->stopping || ch_pipeline_failed(p)) {
        return false;
    }
    if (sn->sealed) { /* checked again by the housekeeping timer, without spinning */
        if (sn->writing == 0) {
            sn->sealed = false;
        } else if (publishable(p)) {
            publish(p);
        } else if (ch_now_s() - sn->sealed_s > PUBLISH_WAIT_S) {
            abandon_all(p, "its input was not committed within 60 s");
        }
        return false;
    }
    if (sn->writing == 0) {
        if (p->cfg->state_snapshot_interval_ms <= 0 || ch_now_s() < sn->next_s ||
            p->rs.active > 0) {
            return false;
        }
        if (begin(p) == 0) {
            sn->next_s = ch_now_s() + p->cfg->state_snapshot_interval_ms / 1000.0;
            return false;
        }
    }
    if (!walk(p, SNAPSHOT_BUDGET)) {
        return true;
    }
    sn->sealed = true;
    sn->sealed_s = ch_now_s();
    return false;
}

void ch_snapshot_now(ch_pipeline_t *p) {
    ch_snapshot_t *sn = &p->sn;
    if (!sn->on) {
        return;
    }
    for (int32_t i = 0; i < p->cl.partitions; i++) {
        abandon(sn, i); /* a periodic one under way: its F is older */
    }
    if (begin(p) == 0) {
        return;
    }
    walk(p, SIZE_MAX);
    if (!publishable(p)) {
        abandon_all(p, "outputs of its input are not all acknowledged");
        return;
    }
    publish(p);
}
