/*
 * pipeline.h - consume, featurize, publish; commit only what is acknowledged.
 *
 * The batch path is pipeline.c; publishing and delivery outputs.c; partitions
 * rebalance.c; the read side pipeline_view.c; construction pipeline_life.c.
 */
#ifndef CH_PIPELINE_H
#define CH_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
#include "ch/kafka.h"
#include "config.h"
#include "events.h"
#include "histogram.h"

typedef struct ch_pipeline_stats {
    uint64_t consumed;         /* messages taken from the input topic */
    uint64_t events_ok;        /* events folded into user state */
    uint64_t bad[CH_BAD_N];    /* bad input by reason */
    uint64_t bad_total;
    uint64_t profiles_sent, profiles_acked;
    uint64_t risk_sent, risk_acked;
    uint64_t segment_updates_sent, segment_updates_acked;
    uint64_t scored; /* rows scored by the risk model */
    uint64_t alerts; /* risk scores >= risk.threshold */
    uint64_t model_reloads, model_reload_failures;
    bool segments_ready;
    uint64_t segment_reseeds;
    uint64_t segment_refused; /* vectors with a value not finite, kept out of the segments */
    size_t segment_exports;   /* GET /segments/export streams running */
    uint64_t input_jumps, input_skipped; /* input the broker deleted before it was consumed */
    uint64_t input_before_start;         /* records stamped before input.start_at, skipped */
    uint64_t segment_refreshes, segment_restarts;
    /* population passes (seeding and refreshes) with their reassignment done */
    uint64_t segment_passes, segment_moves;
    bool segment_pass_running;
    size_t segment_pass_users;
    double segment_pass_seconds, segment_pass_inertia;
    /* segments.sync_topic */
    bool segments_shared, segments_coordinator;
    uint64_t segments_version, segment_rounds_done, segment_rounds_dropped, segment_stats_sent;
    uint64_t dlq_sent, dlq_acked;
    uint64_t changelog_sent, changelog_acked, changelog_bytes, changelog_flushes;
    uint64_t changelog_tombstones; /* of evicted users, handed to the producer */
    uint64_t txn_commits, txn_aborts; /* processing.guarantee = exactly_once */
    double txn_seconds;               /* spent committing transactions */
    size_t restoring;            /* partitions being restored now */
    uint64_t restored_partitions, restore_records, restore_bytes, restore_applied;
    uint64_t restore_uncommitted, restore_refused;
    uint64_t changelog_stale_restore, changelog_stale_watch, changelog_repaired;
    size_t offset_lookups_held;      /* partitions held until their committed offset is known */
    uint64_t offset_lookup_failures; /* committed-offset lookups that failed */
    uint64_t restore_snapshots, restore_snapshots_ignored, restore_snapshot_users;
    uint64_t restore_seeds, restore_seeds_refused, restore_seed_users;
    double restore_seconds;
    uint64_t snapshot_files, snapshot_users, snapshot_failures; /* written by this process */
    double snapshot_last_seconds;
    uint64_t delivery_failures;
    uint64_t dlq_truncated;   /* dead letters cut to fit the producer's largest message */
    uint64_t outputs_refused; /* records the broker refused, dead-lettered in reduced form */
    uint64_t kafka_errors;
    bool registry_on, registry_up; /* schema.registry.url set; answering */
    uint64_t registry_requests, registry_fetched, registry_not_found, registry_failures;
    uint64_t registry_holds; /* times a partition was held for a schema */
    size_t registry_waiting; /* partitions held now */
    uint64_t batches;
    uint64_t users_evicted_idle, users_evicted_cap, users_evicted_revoke;
    size_t users;
    size_t users_bytes;
    size_t inflight_batches;
    size_t assigned_partitions;
    int64_t stream_time_ms;
    ch_consumer_align_stats_t align; /* timestamp alignment (input.max_skew), zero if off */
    ch_histogram_t batch_events;   /* messages per batch */
    ch_histogram_t batch_seconds;  /* decode to enqueue of a batch's outputs */
    ch_histogram_t latency_event;  /* event ts -> outputs acknowledged, seconds */
    ch_histogram_t latency_kafka;  /* Kafka message timestamp -> outputs acknowledged */
} ch_pipeline_stats_t;

/* What the loop does for the schema registry client: watch fds, run one timer. */
typedef struct ch_pipeline_loop {
    void (*watch)(void *opaque, int fd, bool read, bool write); /* neither: stop */
    void (*timer)(void *opaque, long timeout_ms); /* then ch_pipeline_registry_timeout; -1 off */
    void *opaque;
} ch_pipeline_loop_t;

typedef struct ch_pipeline ch_pipeline_t;

/**
 * @brief Build the whole pipeline from a validated config: features, user table,
 *        schemas and decoder, producer, and a consumer subscribed to input.topic.
 * @returns 0, -EINVAL (errbuf says which setting, as file:line where known), -ENOMEM, -EIO.
 */
int ch_pipeline_new(const ch_config_t *cfg, ch_pipeline_t **ret_pipeline, char *errbuf,
                    size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_pipeline_t *ch_pipeline_free(ch_pipeline_t *p);

int ch_pipeline_consumer_fd(const ch_pipeline_t *p);

/** @brief Wire the schema registry client (schema.registry.url) to the loop; before this,
 *  no fetch starts. No-op without a registry. */
void ch_pipeline_registry_loop(ch_pipeline_t *p, const ch_pipeline_loop_t *loop);

/** @brief A registry fd the loop watches is ready. */
void ch_pipeline_registry_socket(ch_pipeline_t *p, int fd, bool readable, bool writable);

/** @brief The registry client's timer expired. */
void ch_pipeline_registry_timeout(ch_pipeline_t *p);

/** @brief The changelog reader's fd (readable when restore records wait), -1 if none. */
int ch_pipeline_reader_fd(const ch_pipeline_t *p);

/** @brief The segments.sync_topic reader's fd (readable when its records wait), -1 if
 *  none. */
int ch_pipeline_sync_fd(const ch_pipeline_t *p);

/** @brief The live evaluation's labels reader fd, or -1 when evaluation is off. */
int ch_pipeline_eval_fd(const ch_pipeline_t *p);

/** @brief Live evaluation counters and figures. @returns 0, -ENOENT (off), -ENOMEM. */
struct ch_evaluate_status;
int ch_pipeline_evaluation(ch_pipeline_t *p, struct ch_evaluate_status *ret);

/** @brief Ask for a refresh of the segments on the population (POST /segments/refresh).
 *  @returns 0, -ENOENT (segments off), -EAGAIN (not seeded yet). */
int ch_pipeline_segments_refresh(ch_pipeline_t *p);

/** @brief The segments as JSON (GET /segments): the last pass and each segment's id,
 *  generation, users, weight and centroid in the transformed space.
 *  @returns 0, -ENOENT (segments off), -ENOMEM. */
int ch_pipeline_segments_json(ch_pipeline_t *p, ch_buf_t *out);

/* GET /segments/export, streamed: that JSON on the first line, then one line per user in
 * the table: user_id, segment, generation, last_event_ts (the user's stream time), ts and
 * the vector read at the stream time the export began, raw (x) and transformed (z, with
 * the model as it was then). Written in steps between batches; users that arrive or
 * leave meanwhile may or may not appear. */
typedef struct ch_export ch_export_t;
#define CH_EXPORTS_MAX 4 /* exports at once; a further one is answered 503 */

/** @brief Start an export: the first line into out.
 *  @returns 0, -ENOENT (segments off), -EBUSY (CH_EXPORTS_MAX running), -ENOMEM. */
int ch_pipeline_export_begin(ch_pipeline_t *p, ch_buf_t *out, ch_export_t **ret);

/** @brief Append up to budget users' lines to out.
 *  @returns 1 (more to come), 0 (the end), -ENOMEM. */
int ch_pipeline_export_step(ch_pipeline_t *p, ch_export_t *e, ch_buf_t *out, size_t budget);

/** @brief Finish an export (done, or its client gone). Accepts NULL. @returns NULL. */
ch_export_t *ch_pipeline_export_end(ch_pipeline_t *p, ch_export_t *e);

/** @brief One budget of background work: restoring partitions (snapshot users, changelog
 *  records), writing a snapshot when one is due, a slice of the segments' population
 *  pass (seeding, refresh, reassignment). @returns 1 if more may be waiting. */
int ch_pipeline_background(ch_pipeline_t *p);
int ch_pipeline_producer_fd(const ch_pipeline_t *p);

/**
 * @brief Process one batch (at most batch.max_events messages) without blocking.
 * @returns messages taken (>= 0); -EAGAIN when batch.max_inflight batches await
 *          acknowledgement (call again after ch_pipeline_poll_producer()).
 */
int ch_pipeline_drain(ch_pipeline_t *p);

/** @brief Serve delivery reports; stores offsets of fully acknowledged batches. */
void ch_pipeline_poll_producer(ch_pipeline_t *p);

/** @brief Periodic housekeeping (idle eviction, a bounded slice per call). */
void ch_pipeline_tick(ch_pipeline_t *p);

/**
 * @brief Load model.path aside and swap it in (call between batches, from the loop).
 *        A file that does not load keeps the current model; the reason is logged.
 * @returns 0, or the load error (-ENOENT, -EBADMSG, -EINVAL, ...).
 */
int ch_pipeline_reload_model(ch_pipeline_t *p);

/** @brief The loaded model's version, NULL without a model. */
const char *ch_pipeline_model_version(const ch_pipeline_t *p);

/** @brief Save the segment model to segments.state_file (if set). @returns 0, -EIO. */
int ch_pipeline_save_segments(ch_pipeline_t *p);

/** @brief Whether an output could not be delivered: stop, and exit non-zero. */
bool ch_pipeline_failed(const ch_pipeline_t *p);

/** @brief Counters and gauges. */
void ch_pipeline_stats(const ch_pipeline_t *p, ch_pipeline_stats_t *ret_stats);

/**
 * @brief The lag of each assigned input partition (see ch_consumer_lag()).
 * @returns the number of assigned partitions (may exceed cap), -EIO.
 */
int ch_pipeline_lag(ch_pipeline_t *p, ch_partition_lag_t *out, size_t cap);

/**
 * @brief Whether the daemon is ready to serve: subscribed, model loaded (if
 *        configured), partitions assigned, and the lag of each one known.
 * @param why receives the first unmet condition when not ready.
 */
bool ch_pipeline_ready(ch_pipeline_t *p, char *why, size_t len);

/** @brief Segment j (< segments.k): users currently in it, centroid weight, generation.
 *  @returns 0, -ENOENT (no segments, or j out of range). */
int ch_pipeline_segment(const ch_pipeline_t *p, size_t j, uint64_t *ret_users,
                        double *ret_weight, uint32_t *ret_generation);

/**
 * @brief One user's current state as a JSON object (replacing out's contents): the
 *        features at the user's stream time (by name), segment, and the risk score of
 *        those features under the loaded model with its reasons. Call between batches.
 * @returns 0, -ENOENT (unknown user), -ENOMEM.
 */
int ch_pipeline_user_json(ch_pipeline_t *p, const char *user_id, size_t len, ch_buf_t *out);

/** @brief The metric label of a bad-input reason. */
const char *ch_pipeline_bad_reason_name(ch_bad_reason_t r);

/** @brief The risk updates' schema: risk_update_v2.avsc with a challenger, else v1. */
const char *ch_pipeline_risk_schema(const ch_config_t *cfg);

/** @brief The challenger model's version, NULL without one. */
const char *ch_pipeline_challenger_version(const ch_pipeline_t *p);

/**
 * @brief Feature drift of the risk model's inputs: feature j's name and PSI over the
 *        window (j < d), the window's vectors and the warnings logged.
 * @returns d, or 0 when drift is not checked (no model, or no training bins in it).
 */
size_t ch_pipeline_drift(const ch_pipeline_t *p, size_t j, const char **ret_name, double *ret_psi,
                         size_t *ret_vectors, uint64_t *ret_warnings);

/* What a stop left undone. */
typedef struct ch_pipeline_stop {
    size_t unacked;              /* outputs unacknowledged: their events will be reprocessed */
    size_t uncommitted_parts;    /* partitions whose acknowledged offsets are not committed */
    int64_t uncommitted_records; /* events in them (where the last commit is known) */
} ch_pipeline_stop_t;

/**
 * @brief Stop consuming, wait for outputs to be acknowledged, commit their offsets and
 *        leave the group, every blocking step within the budget up to deadline_s
 *        (ch_now_s() clock); what is not done by then is given up.
 * @returns 0; -ETIMEDOUT (some outputs unacknowledged); -EIO (an output failed, or
 *          acknowledged work could not be committed: ret says how much).
 */
int ch_pipeline_shutdown(ch_pipeline_t *p, double deadline_s, ch_pipeline_stop_t *ret);

#endif
