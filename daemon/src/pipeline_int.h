/*
 * pipeline_int.h - the pipeline's state, shared by the files that make it up:
 * pipeline.c (the batch path), outputs.c (publishing and what acknowledgements
 * release), rebalance.c (partitions coming and going), pipeline_view.c (what the
 * loop reads between batches) and pipeline_life.c (construction and teardown).
 * Nothing else includes it.
 */
#ifndef CH_PIPELINE_INT_H
#define CH_PIPELINE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
#include "ch/features.h"
#include "ch/json.h"
#include "ch/kafka.h"
#include "ch/keyset.h"
#include "ch/kmeans.h"
#include "ch/registry.h"
#include "ch/tracker.h"
#include "ch/users.h"
#include "clients.h"
#include "events.h"
#include "foldrow.h"
#include "log.h"
#include "pipeline.h"
#include "pseudonym.h"
#include "scorer.h"
#include "segments.h"
#include "snapfile.h"
#include "userrec.h"

/* A user changed since the last changelog flush (its record says the input offset of
 * its latest event). */
typedef struct ch_dirty {
    ch_user_t *u; /* NULL: evicted since */
} ch_dirty_t;

/* The state changelog (changelog.c): users changed since the last flush, and the
 * batches whose offsets wait for that flush. */
typedef struct ch_changelog {
    bool on;
    uint64_t layout;
    int32_t partitions; /* of the input (and the changelog) at start */
    ch_dirty_t *dirty;
    size_t n_dirty, cap_dirty;
    uint32_t *idx; /* open addressing over record pointers: 0 empty, else dirty index + 1 */
    size_t idx_cap;
    ch_tracked_t **pending; /* batch.max_inflight */
    size_t n_pending;
    double flushed_s;
    unsigned char *rec;
    /* users evicted since the last flush, tombstoned by it: i32 partition, i64 input
     * offset of the user's last event, u16 key length, key */
    unsigned char *tomb;
    size_t tomb_len, tomb_cap, n_tomb;
    unsigned char writer[8]; /* random per process: header cohortd-writer of its records */
#ifdef CH_CHECK_INVARIANTS
    /* per input partition: consumed up to (exclusive), and the ends of flushes not yet
     * stored for commit, oldest first: an offset stored must be one of them */
    struct ch_flush_ends {
        int64_t consumed;
        int64_t *ends;
        size_t n, cap;
    } *flush_ends;
#endif
} ch_changelog_t;

/* Restoring one partition's users from the changelog (restore.c). */
typedef struct ch_restore_part {
    bool on;
    bool watching; /* restored: reading the tail for stale records (state.changelog_watch) */
    bool lookup;   /* held until the committed offset is known: asked again at next_try_s */
    double next_try_s, backoff_s;
    int64_t upto; /* apply records reflecting offsets below this (the committed offset) */
    ch_snapr_t *snap; /* loading the partition's snapshot first; NULL: reading the changelog */
    int64_t from;     /* the changelog offset reading starts at */
    double t0;
    uint64_t read, applied, uncommitted, refused, stale, from_snapshot;
    bool verify; /* the snapshot's epoch record is being read back before it is loaded */
    bool seed;   /* snap is a seed (seed.h): its users are written to the changelog */
    uint64_t skip_drain; /* the rest of this drain's records (rs.drains) are of a reading
                          * given up: verified, or restarted from the beginning */
    int64_t verify_at; /* where the snapshot says the epoch record is, and its value */
    unsigned char verify_val[16];
    int64_t epoch_at; /* the epoch record read (-1 none yet) and its value */
    unsigned char epoch[16];
    ch_keyset_t *tombs; /* users tombstoned so far -> the input offset of the tombstone */
    ch_keyset_t *stale_keys; /* users a stale record was read for: rewritten at the end */
} ch_restore_part_t;

typedef struct ch_restore {
    ch_restore_part_t *parts; /* by partition: as many as the changelog has */
    size_t n_parts;
    size_t active; /* partitions restoring now */
    uint64_t partitions, records, bytes, applied, uncommitted, refused;
    uint64_t stale_restore, stale_watch, repaired; /* stale records found, users rewritten */
    size_t lookups;           /* partitions held until their committed offset is known */
    uint64_t drains;          /* ch_restore_drain calls */
    uint64_t lookup_failures; /* committed-offset lookups that failed (at assignment too) */
    uint64_t snap_loaded, snap_ignored, snap_users; /* snapshots used, ignored; users from them */
    uint64_t seed_loaded, seed_ignored, seed_users; /* seeds (seed.h) used, refused; users */
    double seconds;
    ch_msg_t *msgs;
} ch_restore_t;

/* Local snapshots (snapshot.c); arrays by input partition, 0 .. cl.partitions - 1. */
typedef struct ch_snapshot {
    bool on;
    unsigned char identity[32];            /* the cluster and topics snapshots belong to */
    char cluster[CH_SNAPFILE_CLUSTER_MAX]; /* the cluster id */
    int64_t *epoch_at;            /* changelog offset of each partition's epoch record; -1 */
    unsigned char (*epoch)[16];   /* its value */
    bool *epoch_queued;           /* one is to be written by the next changelog flush */
    bool *epoch_pending;          /* one is written (delivery reports look for it) */
    size_t epochs_queued;
    int64_t *cl_next; /* changelog offset past the last record known durable; -1 unknown */
    int64_t *stored;  /* input offset stored for commit (all before it processed); -1 unknown */
    ch_snapw_t **w;   /* the file being written; NULL none */
    size_t writing;   /* files open */
    bool sealed;      /* every user visited: the files wait for their input to be committed */
    size_t cursor;    /* user-table position of the snapshot being written */
    double next_s, t0, sealed_s;
    uint64_t files, users, failures; /* written (committed), users in them, failed files */
    double last_seconds;
} ch_snapshot_t;

/* processing.guarantee = exactly_once (txn.c): the open transaction and the input
 * offsets it will commit. */
typedef struct ch_txn {
    bool on, open;
    int64_t *next;          /* by input partition: past the last message processed in it; -1 none */
    ch_next_offset_t *offs; /* scratch for a commit */
    uint64_t commits, aborts;
    double seconds; /* in commit calls */
} ch_txn_t;

/* schema.registry.* (schemafetch.c): ids being fetched and the partitions waiting. */
#define CH_SCHEMAFETCH_MAX_PENDING 64
typedef struct ch_schemafetch_id {
    int32_t id;
    bool in_flight;
    double next_try_s; /* not in flight: when to ask again */
    double backoff_s;  /* the wait after the next failure */
    uint32_t failures;
} ch_schemafetch_id_t;
typedef ch_pipeline_loop_t ch_schemafetch_loop_t;
typedef struct ch_schemafetch {
    ch_registry_t *reg; /* NULL: no registry */
    ch_schemafetch_loop_t loop;
    bool hooked;      /* loop set: fetches may start */
    int32_t *waiting; /* by partition: the schema id it waits for, -1 none */
    size_t n_waiting;
    size_t partitions_waiting;
    ch_schemafetch_id_t pending[CH_SCHEMAFETCH_MAX_PENDING];
    size_t n_pending;
    bool up; /* no failure since the last answer */
    char last_error[512];
    uint64_t requests, fetched, not_found, failures, holds;
    ch_ratelimit_t rl;
} ch_schemafetch_t;
/* The reassignment of every user after a population pass of the segments (reassign.c). */
typedef struct ch_reassign {
    bool on;
    size_t cursor; /* user-table position */
    int64_t at_ms; /* the stream time vectors are read at */
    uint64_t users, moved;
    double *sums;     /* k x features: members' raw vectors, for the segment updates */
    uint64_t *counts; /* k */
    bool publish_all; /* segments.topic: every segment's update is due */
} ch_reassign_t;

/* An event folded into user state in this batch, awaiting scoring and outputs. */
typedef struct ch_row {
    ch_user_t *u; /* re-checked against the key before use (a later insert may evict) */
    const char *uid, *eid;
    size_t uid_len, eid_len;
    const char *item, *cat; /* for the segments' trending values; NULL: none */
    size_t item_len, cat_len;
    int64_t ev_ms; /* the event's own time */
    int64_t ts_ms; /* the user's stream time after the event */
} ch_row_t;

struct ch_pipeline {
    const ch_config_t *cfg;
    ch_features_t *fs;
    double idle_evict_ms; /* state.idle_evict in effect (auto resolved); 0: never */
    ch_pseudonym_t *pseud; /* privacy.pseudonymize; NULL: off */
    int drop_mask;         /* privacy.drop_fields (CH_DROP_*) */
    char *pseud_ids;       /* batch.max_events x CH_PSEUDONYM_LEN: this batch's user keys */
    const char **feat_names;
    size_t n_feats;
    ch_users_t *users;
    ch_schemas_t *schemas;
    ch_events_t *events;
    ch_scorer_t scorer;
    ch_scorer_t challenger; /* model.challenger_path; its model NULL when none */
    ch_segments_t *segs; /* NULL: segments.k = 0 */
    ch_clients_t clients;
    ch_tracker_t *tracker;
    int32_t profile_schema_id, risk_schema_id, segment_schema_id;
    /* tags.*: one profile's values (the v2 schema is used when there are any) */
    ch_tag_values_t tagv[CH_TAGS_MAX];
    const char *tag_vals[CH_TAGS_MAX][CH_TAG_TOP_MAX];
    size_t tag_lens[CH_TAGS_MAX][CH_TAG_TOP_MAX];

    /* batch scratch: batch.max_events rows */
    ch_msg_t *msgs;
    ch_row_t *rows;
    size_t n_rows;
    float *X, *scores, *scores2; /* scores2: the challenger's */
    int32_t *prev_seg;
    uint32_t *prev_gen;
    ch_kmeans_assign_t *assign;
    ch_reason_t *reasons;
    double *feats;
    ch_buf_t out;

    /* per tracker slot: the event and Kafka times of its events, for latency */
    int64_t *ev_ts, *kafka_ts; /* slots x batch.max_events */
    size_t *n_ts;
    bool *observed;

    bool *assigned; /* by partition number */
    size_t n_assigned_cap;
    uint64_t rebalances;     /* assignments and revocations so far */
    struct ch_segsync *sync; /* segments.sync_topic; else NULL */
    struct ch_evaluate *eval; /* evaluation.labels_topic; else NULL */

    ch_changelog_t cl;
    ch_restore_t rs;
    ch_snapshot_t sn;
    size_t exports; /* GET /segments/export streams running (pipeline_view.c) */
    ch_txn_t txn;
    ch_schemafetch_t sf;
    ch_reassign_t ra;
    bool refreshing; /* profile updates being sent come from a segment refresh */

    struct ch_refused **refused; /* reduced dead letters waiting to be sent (outputs.c) */
    size_t n_refused, cap_refused;

    bool stopping;
    double deadline_s; /* stopping: every blocking call ends by then (ch_now_s clock) */
    bool failed;
    bool dropping; /* users dropped for a reason other than eviction: no tombstones */
    ch_ratelimit_t bad_rl, out_rl;
    ch_pipeline_stats_t st;
};

#define COMMIT_TIMEOUT_MS 60000 /* a synchronous offset commit while running */

/* A blocking call's timeout: ms, or less if stopping and the stop's budget is shorter. */
static inline int ch_budget_ms(const ch_pipeline_t *p, double ms) {
    if (p->stopping) {
        double left = (p->deadline_s - ch_now_s()) * 1000.0;
        ms = left < ms ? left : ms;
    }
    return ms <= 0 ? 0 : ms > 3600000 ? 3600000 : (int)ms;
}

/* User u's raw feature vector read at at_ms, or at its own last event if later (decay
 * never runs backwards), as n_feats floats into x (p->feats is the scratch).
 * @returns the time it was read at. */
static inline int64_t ch_user_vector(ch_pipeline_t *p, const ch_user_t *u, int64_t at_ms,
                                     float *x) {
    return ch_read_row_at(p->fs, u, at_ms, p->feats, x, p->n_feats);
}

/* outputs.c */
void ch_outputs_profile(ch_pipeline_t *p, ch_tracked_t *b, size_t i, ch_user_t *u);
void ch_outputs_risk(ch_pipeline_t *p, ch_tracked_t *b, size_t i, ch_user_t *u);
void ch_outputs_dead_letter(ch_pipeline_t *p, ch_tracked_t *b, const ch_msg_t *m,
                            const ch_event_view_t *ev, ch_bad_reason_t reason,
                            const char *why); /* ev: the decoded event, NULL if it was not */
void ch_outputs_delivered(void *opaque, void *msg_opaque, int32_t partition, int64_t offset,
                          int err, const char *errstr);
void ch_outputs_sealed(ch_pipeline_t *p, ch_tracked_t *b);
void ch_outputs_release(ch_pipeline_t *p); /* sends reduced dead letters, stores offsets */
int ch_outputs_settle(ch_pipeline_t *p, double deadline_s); /* flush until acked; -ETIMEDOUT */
void ch_outputs_done(ch_pipeline_t *p);

/* outputs.c: one output of batch b (kind OUT_*), to partition (-1: by key) */
#define OUT_PROFILE ((uintptr_t)0)
#define OUT_DLQ ((uintptr_t)1)
#define OUT_RISK ((uintptr_t)2)
#define OUT_CHANGELOG ((uintptr_t)3)
#define OUT_SEGMENT ((uintptr_t)4)
#define CH_TOMBSTONE_OFFSET_HEADER "cohortd-offset" /* i64 LE: the user's last event */
#define CH_WRITER_HEADER "cohortd-writer" /* 8 random bytes per process: who wrote it */
#define CH_EPOCH_HEADER "cohortd-epoch"   /* on a changelog partition's epoch record */
/* its key: with NUL bytes no user id from a text field has; compaction keeps it (it is
 * written once per partition) and restore skips it */
#define CH_EPOCH_KEY "\0cohortd.epoch\0"
int ch_outputs_send(ch_pipeline_t *p, ch_tracked_t *b, uintptr_t kind, const char *topic,
                    int32_t partition, const void *key, size_t key_len, const void *value,
                    size_t value_len, const ch_header_t *h, size_t n_h);

/* reassign.c: one slice of the segments' population pass; true if more is waiting */
bool ch_reassign_step(ch_pipeline_t *p);
void ch_reassign_begin(ch_pipeline_t *p); /* new centroids are live: walk every user */

/* changelog.c */
int ch_changelog_init(ch_pipeline_t *p, char *errbuf, size_t errlen);
void ch_changelog_done(ch_pipeline_t *p);
void ch_changelog_touch(ch_pipeline_t *p, ch_user_t *u, int64_t offset);
void ch_changelog_forget(ch_pipeline_t *p, const ch_user_t *u);
void ch_changelog_evicted(ch_pipeline_t *p, const ch_user_t *u); /* forget, tombstone */
/* a tombstone for the next flush: key on partition, reflecting input offset */
void ch_changelog_tombstone(ch_pipeline_t *p, int32_t partition, int64_t offset, const char *key,
                            size_t key_len);
void ch_changelog_revoked(ch_pipeline_t *p, int32_t partition);   /* its tombstones go */
void ch_changelog_batch_done(ch_pipeline_t *p, ch_tracked_t *b);
void ch_changelog_flush(ch_pipeline_t *p, bool force);
/* Checked when built with CH_CHECK_INVARIANTS: an input offset is stored for commit only
 * where a changelog flush ended (what was consumed of that partition when it ran). */
#ifdef CH_CHECK_INVARIANTS
void ch_changelog_consumed(ch_pipeline_t *p, int32_t partition, int64_t offset);
bool ch_changelog_flush_ended(ch_pipeline_t *p, int32_t partition, int64_t next_offset);
#else
static inline void ch_changelog_consumed(ch_pipeline_t *p, int32_t partition, int64_t offset) {
    (void)p, (void)partition, (void)offset;
}
static inline bool ch_changelog_flush_ended(ch_pipeline_t *p, int32_t partition,
                                            int64_t next_offset) {
    (void)p, (void)partition, (void)next_offset;
    return true;
}
#endif

/* restore.c */
int ch_restore_init(ch_pipeline_t *p, char *errbuf, size_t errlen);
void ch_restore_done(ch_pipeline_t *p);
void ch_restore_begin(ch_pipeline_t *p, int32_t partition);
void ch_restore_cancel(ch_pipeline_t *p, int32_t partition);
bool ch_restore_drain(ch_pipeline_t *p); /* one budget; true if more may be waiting */

/* snapshot.c */
int ch_snapshot_init(ch_pipeline_t *p, char *errbuf, size_t errlen);
void ch_snapshot_done(ch_pipeline_t *p);
void ch_snapshot_name(const ch_pipeline_t *p, int32_t partition, char *buf, size_t len);
void ch_snapshot_durable(ch_pipeline_t *p, int32_t partition, int64_t next); /* cl_next */
void ch_snapshot_stored(ch_pipeline_t *p, int32_t partition, int64_t next);  /* stored */
void ch_snapshot_forget(ch_pipeline_t *p, int32_t partition); /* revoked or restoring */
/* the partition's epoch record is known: at offset, with value (16 bytes) */
void ch_snapshot_epoch(ch_pipeline_t *p, int32_t partition, int64_t offset,
                       const unsigned char *value);
/* a changelog record acknowledged at offset (inside its delivery report): durable up to
 * it, and if it is the epoch record being written, the epoch is known now */
void ch_snapshot_delivered(ch_pipeline_t *p, int32_t partition, int64_t offset);
/* write an epoch record for the partition with the next flush (none was found) */
void ch_snapshot_new_epoch(ch_pipeline_t *p, int32_t partition);
bool ch_snapshot_step(ch_pipeline_t *p); /* one budget; true if more waits */
void ch_snapshot_now(ch_pipeline_t *p);  /* a whole snapshot at once (shutdown) */

/* txn.c */
int ch_txn_init(ch_pipeline_t *p, char *errbuf, size_t errlen);
void ch_txn_done(ch_pipeline_t *p);
void ch_txn_consumed(ch_pipeline_t *p, int32_t partition, int64_t offset);
int ch_txn_ensure(ch_pipeline_t *p);                  /* begin one if none is open */
void ch_txn_commit(ch_pipeline_t *p);                 /* failure: p->failed */
void ch_txn_abort(ch_pipeline_t *p, const char *why); /* and p->failed */
void ch_txn_revoked(ch_pipeline_t *p, int32_t partition);

/* schemafetch.c */
int ch_schemafetch_init(ch_pipeline_t *p, const char *profile_schema, char *errbuf,
                        size_t errlen); /* the client; registers outputs (sets their ids) */
void ch_schemafetch_done(ch_pipeline_t *p);
bool ch_schemafetch_registers_outputs(const ch_config_t *cfg);
void ch_schemafetch_hook(ch_pipeline_t *p, const ch_schemafetch_loop_t *loop);
bool ch_schemafetch_waits(ch_pipeline_t *p, const ch_msg_t *m); /* true: skip m (held) */
void ch_schemafetch_revoked(ch_pipeline_t *p, int32_t partition);
void ch_schemafetch_tick(ch_pipeline_t *p); /* starts retries that are due */
bool ch_schemafetch_ready(const ch_pipeline_t *p, char *why, size_t len);
/* rebalance.c */
bool ch_rebalance_owns(const ch_pipeline_t *p, int32_t partition);
void ch_rebalance_assigned(void *opaque, const int32_t *parts, size_t n);
void ch_rebalance_revoked(void *opaque, const int32_t *parts, size_t n, bool lost);
size_t ch_rebalance_drop(ch_pipeline_t *p, int32_t partition); /* its users; how many */

/* The user's tags (tags.*) into p->tagv, as the user's state holds them now (u NULL:
 * none). @returns the number of tags declared. */
size_t ch_pipeline_tags(ch_pipeline_t *p, const ch_user_t *u);

#endif
