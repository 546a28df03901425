/*
 * pipeline.c - where stream/ and model/ meet.
 *
 * Design notes
 * - One drain = one batch: up to batch.max_events messages are decoded,
 *   validated, folded into user state and their outputs enqueued, all on the
 *   loop thread, with no allocation per event (decoder views borrow from the
 *   Kafka messages; scratch arrays are sized at start-up).
 * - Delivery and commit (at-least-once, nothing lost): each batch is a slot in
 *   a ring of batch.max_inflight slots, recording the highest offset+1 it
 *   consumed per partition and how many of its outputs (profiles and dead
 *   letters) await acknowledgement. Offsets are stored for librdkafka's
 *   auto-commit only when the OLDEST batch has every output acknowledged, so a
 *   committed offset never passes an unacknowledged output, whatever order
 *   acknowledgements arrive in across output partitions. A failed delivery
 *   freezes the ring (nothing after it is ever committed) and the daemon exits
 *   non-zero so that a restart reprocesses from the last commit.
 * - Bad input is never dropped: it is forwarded unchanged to the dead-letter
 *   topic with cohortd.error.* headers, counted and logged (rate-limited), and
 *   its offset is committed only once the dead letter is acknowledged.
 * - Rebalance: before partitions are revoked, outputs are flushed and offsets
 *   committed, and the users of those partitions are dropped (their new owner
 *   rebuilds them); messages of partitions no longer assigned are skipped.
 */
#include "pipeline.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ch/codec.h"
#include "ch/features.h"
#include "ch/json.h"
#include "ch/kafka.h"
#include "ch/kmeans.h"
#include "ch/onnx.h"
#include "ch/users.h"
#include "log.h"

typedef struct part_off {
    int32_t partition;
    int64_t next_offset;
} part_off_t;

typedef struct batch {
    size_t outstanding;
    bool sealed;
    bool failed;
    bool observed; /* latency recorded */
    part_off_t *parts;
    size_t n_parts, cap_parts;
    int64_t *ev_ts, *kafka_ts; /* per folded event, batch.max_events each */
    size_t n_ts;
} batch_t;

/* An event folded into user state in this batch, awaiting scoring and outputs. */
typedef struct row {
    ch_user_t *u; /* re-checked against the key before use (a later insert may evict) */
    const char *uid, *eid;
    size_t uid_len, eid_len;
    int64_t ts_ms; /* the user's stream time after the event */
} row_t;

typedef enum field_kind {
    FIELD_AMOUNT,
    FIELD_ATTR,
} field_kind_t;

typedef struct field_map {
    field_kind_t kind;
    const char *attr; /* FIELD_ATTR: key within attrs (borrowed from the feature set) */
    size_t attr_len;
} field_map_t;

static const char *const bad_names[CH_BAD_N] = {
    [CH_BAD_DECODE] = "decode_error",
    [CH_BAD_SCHEMA] = "schema_error",
    [CH_BAD_TOO_MANY_ATTRS] = "too_many_attrs",
    [CH_BAD_EMPTY_USER_ID] = "empty_user_id",
    [CH_BAD_USER_ID_TOO_LONG] = "user_id_too_long",
    [CH_BAD_NON_FINITE] = "non_finite",
    [CH_BAD_TS_NEGATIVE] = "ts_negative",
    [CH_BAD_TS_FUTURE] = "ts_in_future",
};

struct ch_pipeline {
    const ch_config_t *cfg;
    ch_features_t *fs;
    ch_users_t *users;
    ch_schemas_t *schemas;
    ch_decoder_t *dec;
    ch_producer_t *producer;
    ch_consumer_t *consumer;
    int32_t profile_schema_id, risk_schema_id;
    ch_onnx_t *model; /* NULL: no risk scoring */
    ch_kmeans_t *km;  /* NULL: segments.k = 0 */
    const char **feat_names;

    /* batch scratch, batch.max_events rows */
    row_t *rows;
    size_t n_rows;
    float *X, *scores, *contrib;
    int32_t *prev_seg;
    uint32_t *prev_gen;
    ch_kmeans_assign_t *seg;
    ch_reason_t *reasons;

    batch_t *ring;
    size_t ring_cap, ring_head, ring_count;

    ch_msg_t *msgs;
    size_t n_fields, n_feats;
    field_map_t *fields;
    double *values;
    double *feats;
    float *feats_f;
    ch_buf_t out;

    bool *assigned;
    size_t n_assigned_cap;

    uint64_t *seg_users; /* users currently in each segment */

    bool stopping;
    bool failed;
    ch_ratelimit_t bad_rl, kafka_rl;
    ch_pipeline_stats_t st;
};

/* Histogram buckets: batch sizes in messages; times in seconds. */
static const double batch_event_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                            10000, 20000, 65536};
static const double batch_second_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   0.5,   1};
static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,  0.25,
                                        0.5,   1,      2.5,   5,    10,   30,   60,   300, 3600};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))


const char *ch_pipeline_bad_reason_name(ch_bad_reason_t r) {
    return r < CH_BAD_N ? bad_names[r] : "unknown";
}

/* ---------------------------------------------------------------- delivery ring */

static batch_t *ring_at(ch_pipeline_t *p, size_t i) {
    return &p->ring[(p->ring_head + i) % p->ring_cap];
}

static batch_t *ring_push(ch_pipeline_t *p) {
    batch_t *b = ring_at(p, p->ring_count++);
    b->outstanding = 0;
    b->sealed = false;
    b->failed = false;
    b->observed = false;
    b->n_parts = 0;
    b->n_ts = 0;
    return b;
}

static int track_offset(batch_t *b, int32_t partition, int64_t offset) {
    for (size_t i = 0; i < b->n_parts; i++) {
        if (b->parts[i].partition == partition) {
            if (offset + 1 > b->parts[i].next_offset) {
                b->parts[i].next_offset = offset + 1;
            }
            return 0;
        }
    }
    if (b->n_parts == b->cap_parts) {
        size_t cap = b->cap_parts ? b->cap_parts * 2 : 16;
        part_off_t *np = realloc(b->parts, cap * sizeof(*np));
        if (!np) {
            return -ENOMEM;
        }
        b->parts = np;
        b->cap_parts = cap;
    }
    b->parts[b->n_parts++] = (part_off_t){partition, offset + 1};
    return 0;
}

/* Stores the offsets of the oldest batches whose outputs are all acknowledged. */
static void advance(ch_pipeline_t *p) {
    while (p->ring_count) {
        batch_t *b = ring_at(p, 0);
        if (!b->sealed || b->outstanding || b->failed) {
            return;
        }
        for (size_t i = 0; i < b->n_parts; i++) {
            char err[256];
            if (ch_consumer_store(p->consumer, b->parts[i].partition, b->parts[i].next_offset,
                                  err, sizeof(err)) < 0) {
                /* The partition was revoked; its new owner reprocesses from the last
                 * commit, so nothing is lost. */
                ch_log(CH_LOG_DEBUG, "not storing offset: %s", err);
            }
        }
        p->ring_head = (p->ring_head + 1) % p->ring_cap;
        p->ring_count--;
    }
}

/* End-to-end latency of a batch's events, once all its outputs are acknowledged
 * (the moment its offsets may be committed). Clock skew between producers and
 * this host can make a latency negative: it is counted as 0. */
static void observe_if_done(ch_pipeline_t *p, batch_t *b) {
    if (!b->sealed || b->outstanding || b->failed || b->observed) {
        return;
    }
    b->observed = true;
    if (b->n_ts == 0) {
        return;
    }
    double now = ch_wall_ms();
    for (size_t i = 0; i < b->n_ts; i++) {
        ch_histogram_observe(&p->st.latency_event, fmax(0, now - (double)b->ev_ts[i]) / 1000.0);
        if (b->kafka_ts[i] >= 0) {
            ch_histogram_observe(&p->st.latency_kafka,
                                 fmax(0, now - (double)b->kafka_ts[i]) / 1000.0);
        }
    }
}

/* The delivery opaque is the batch pointer; its two low bits say which output. */
#define OUT_PROFILE ((uintptr_t)0)
#define OUT_DLQ ((uintptr_t)1)
#define OUT_RISK ((uintptr_t)2)
#define OUT_MASK ((uintptr_t)3)

static void on_delivery(void *opaque, void *msg_opaque, int err, const char *errstr) {
    ch_pipeline_t *p = opaque;
    uintptr_t kind = (uintptr_t)msg_opaque & OUT_MASK;
    batch_t *b = (batch_t *)((uintptr_t)msg_opaque & ~OUT_MASK);
    b->outstanding--;
    if (!err) {
        if (kind == OUT_DLQ) {
            p->st.dlq_acked++;
        } else if (kind == OUT_RISK) {
            p->st.risk_acked++;
        } else {
            p->st.profiles_acked++;
        }
    }
    if (err) {
        b->failed = true;
        p->failed = true;
        p->st.delivery_failures++;
        uint64_t dropped = 0;
        if (ch_ratelimit_allow(&p->kafka_rl, &dropped)) {
            ch_log(CH_LOG_ERR,
                   "output not delivered: %s; offsets from this batch on will not be committed",
                   errstr ? errstr : "unknown error");
        }
    }
    observe_if_done(p, b);
    advance(p);
}

/* ---------------------------------------------------------------- outputs */

static int send_out(ch_pipeline_t *p, batch_t *b, uintptr_t kind, const char *topic,
                    const void *key, size_t key_len, const void *value, size_t value_len,
                    const ch_header_t *h, size_t n_h) {
    char err[512];
    void *tagged = (void *)((uintptr_t)b | kind);
    for (;;) {
        int r = ch_producer_send(p->producer, topic, key, key_len, value, value_len, h, n_h,
                                 tagged, err, sizeof(err));
        if (r == -ENOBUFS) {
            /* The local queue is full: wait for acknowledgements (rare; the ring bounds
             * what is in flight). */
            ch_producer_flush(p->producer, 100);
            continue;
        }
        if (r < 0) {
            ch_log(CH_LOG_ERR, "%s", err);
            b->failed = true;
            p->failed = true;
            return r;
        }
        b->outstanding++;
        return 0;
    }
}

static void dead_letter(ch_pipeline_t *p, batch_t *b, const ch_msg_t *m, ch_bad_reason_t reason,
                        const char *why) {
    p->st.bad[reason]++;
    p->st.bad_total++;
    uint64_t dropped = 0;
    if (ch_ratelimit_allow(&p->bad_rl, &dropped)) {
        ch_log(CH_LOG_WARNING, "bad input %s[%d]@%lld (%s): %s; sent to %s%s", m->topic,
               m->partition, (long long)m->offset, bad_names[reason], why, p->cfg->dlq_topic,
               dropped ? " (more bad input was not logged, see metrics)" : "");
    }
    char part[16], off[24];
    snprintf(part, sizeof(part), "%d", m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    const ch_header_t h[] = {
        {"cohortd.error.reason", bad_names[reason], strlen(bad_names[reason])},
        {"cohortd.error.detail", why, strlen(why)},
        {"cohortd.source.topic", m->topic, strlen(m->topic)},
        {"cohortd.source.partition", part, strlen(part)},
        {"cohortd.source.offset", off, strlen(off)},
    };
    if (send_out(p, b, OUT_DLQ, p->cfg->dlq_topic, m->key, m->key_len, m->value, m->value_len, h, 5) ==
        0) {
        p->st.dlq_sent++;
    }
}

/* ---------------------------------------------------------------- processing */

static int validate(const ch_pipeline_t *p, const ch_event_view_t *ev, double now_ms, char *why,
                    size_t len) {
    if (ev->user_id_len == 0) {
        snprintf(why, len, "user_id is empty");
        return CH_BAD_EMPTY_USER_ID;
    }
    if (ev->user_id_len > (size_t)p->cfg->state_key_max_bytes) {
        snprintf(why, len, "user_id of %zu bytes exceeds state.key_max_bytes = %ld",
                 ev->user_id_len, p->cfg->state_key_max_bytes);
        return CH_BAD_USER_ID_TOO_LONG;
    }
    if (ev->has_amount && !isfinite(ev->amount)) {
        snprintf(why, len, "amount is %f", ev->amount);
        return CH_BAD_NON_FINITE;
    }
    for (size_t i = 0; i < ev->n_attrs; i++) {
        if (!isfinite(ev->attrs[i].value)) {
            snprintf(why, len, "attrs[%.*s] is %f", (int)ev->attrs[i].key_len, ev->attrs[i].key,
                     ev->attrs[i].value);
            return CH_BAD_NON_FINITE;
        }
    }
    if (ev->ts_ms < 0) {
        snprintf(why, len, "ts %lld is before 1970", (long long)ev->ts_ms);
        return CH_BAD_TS_NEGATIVE;
    }
    if ((double)ev->ts_ms > now_ms + p->cfg->input_max_future_ms) {
        snprintf(why, len, "ts %lld is %.0f s in the future (input.max_future)",
                 (long long)ev->ts_ms, ((double)ev->ts_ms - now_ms) / 1000.0);
        return CH_BAD_TS_FUTURE;
    }
    return -1;
}

static void build_obs(ch_pipeline_t *p, const ch_event_view_t *ev, ch_obs_t *obs) {
    obs->ts_ms = ev->ts_ms;
    obs->type_mask = ch_features_type_mask(p->fs, ev->type, ev->type_len);
    obs->present_mask = 0;
    obs->values = p->values;
    for (size_t f = 0; f < p->n_fields; f++) {
        const field_map_t *fm = &p->fields[f];
        if (fm->kind == FIELD_AMOUNT) {
            if (ev->has_amount) {
                p->values[f] = ev->amount;
                obs->present_mask |= UINT64_C(1) << f;
            }
            continue;
        }
        for (size_t a = 0; a < ev->n_attrs; a++) {
            if (ev->attrs[a].key_len == fm->attr_len &&
                memcmp(ev->attrs[a].key, fm->attr, fm->attr_len) == 0) {
                p->values[f] = ev->attrs[a].value;
                obs->present_mask |= UINT64_C(1) << f;
                break;
            }
        }
    }
}

static void process(ch_pipeline_t *p, batch_t *b, const ch_msg_t *m, double now_ms) {
    char why[512];
    ch_event_view_t ev;
    int r = ch_decoder_decode(p->dec, m->value, m->value_len, &ev, why, sizeof(why));
    if (r < 0) {
        dead_letter(p, b, m,
                    r == -EPROTO  ? CH_BAD_SCHEMA
                    : r == -E2BIG ? CH_BAD_TOO_MANY_ATTRS
                                  : CH_BAD_DECODE,
                    why);
        return;
    }
    int bad = validate(p, &ev, now_ms, why, sizeof(why));
    if (bad >= 0) {
        dead_letter(p, b, m, (ch_bad_reason_t)bad, why);
        return;
    }
    ch_user_t *u = NULL;
    r = ch_users_upsert(p->users, ev.user_id, ev.user_id_len, &u);
    if (r < 0) {
        ch_log(CH_LOG_ERR, "user table: %s; stopping", strerror(-r));
        b->failed = true;
        p->failed = true;
        return;
    }
    bool created = r == 1;
    if (created) {
        ch_features_state_init(p->fs, u->state);
    }
    u->partition = m->partition;
    ch_obs_t obs;
    build_obs(p, &ev, &obs);
    ch_features_update(p->fs, u->state, &u->t_ref_ms, &obs);
    if (ev.ts_ms > p->st.stream_time_ms) {
        p->st.stream_time_ms = ev.ts_ms;
    }
    p->st.events_ok++;
    /* The vector after this event; scoring and outputs happen for the whole batch. */
    row_t *row = &p->rows[p->n_rows];
    *row = (row_t){u, ev.user_id, ev.event_id, ev.user_id_len, ev.event_id_len, u->t_ref_ms};
    ch_features_read(p->fs, u->state, u->t_ref_ms, p->feats);
    float *x = p->X + p->n_rows * p->n_feats;
    for (size_t i = 0; i < p->n_feats; i++) {
        x[i] = (float)p->feats[i];
    }
    p->prev_seg[p->n_rows] = u->segment;
    p->prev_gen[p->n_rows] = u->seg_gen;
    p->n_rows++;
    b->ev_ts[b->n_ts] = ev.ts_ms;
    b->kafka_ts[b->n_ts++] = m->timestamp_ms;
}

/* The row's user record, or NULL if it was evicted later in the same batch. */
static ch_user_t *row_user(ch_pipeline_t *p, const row_t *r) {
    if (r->u->key_len == r->uid_len &&
        memcmp(ch_users_key(p->users, r->u), r->uid, r->uid_len) == 0) {
        return r->u;
    }
    return ch_users_find(p->users, r->uid, r->uid_len);
}

static void fail_batch(ch_pipeline_t *p, batch_t *b, const char *what) {
    ch_log(CH_LOG_ERR, "out of memory encoding a %s; stopping", what);
    b->failed = true;
    p->failed = true;
}

static void emit_profile(ch_pipeline_t *p, batch_t *b, size_t i, ch_user_t *u) {
    const row_t *r = &p->rows[i];
    const ch_kmeans_assign_t *a = p->km ? &p->seg[i] : NULL;
    bool has_seg = a && a->segment >= 0;
    bool changed = has_seg && (a->segment != p->prev_seg[i] || a->generation != p->prev_gen[i]);
    if (u) {
        if (p->cfg->emit_policy == CH_EMIT_CHANGE && u->last_emit_ms != INT64_MIN && !changed &&
            (double)(r->ts_ms - u->last_emit_ms) < p->cfg->emit_heartbeat_ms) {
            return;
        }
        u->last_emit_ms = r->ts_ms;
    }
    ch_profile_t prof = {.user_id = r->uid,
                         .user_id_len = r->uid_len,
                         .event_id = r->eid,
                         .event_id_len = r->eid_len,
                         .ts_ms = r->ts_ms,
                         .has_segment = has_seg,
                         .segment = has_seg ? a->segment : 0,
                         .segment_generation = has_seg ? (int32_t)a->generation : 0,
                         .segment_distance = has_seg ? a->distance : 0,
                         .previous_segment = has_seg && changed ? p->prev_seg[i] : -1,
                         .features = p->X + i * p->n_feats,
                         .n_features = p->n_feats,
                         .model_version = p->model ? ch_onnx_version(p->model) : NULL};
    if ((p->cfg->output_format == CH_FORMAT_JSON
             ? ch_json_encode_profile(&p->out, &prof)
             : ch_encode_profile(&p->out, (ch_framing_t)p->cfg->output_framing,
                                 p->profile_schema_id, &prof)) < 0) {
        fail_batch(p, b, "profile update");
        return;
    }
    if (send_out(p, b, OUT_PROFILE, p->cfg->profile_topic, r->uid, r->uid_len, p->out.data,
                 p->out.len, NULL, 0) == 0) {
        p->st.profiles_sent++;
    }
}

/* The top risk.reasons features by contribution, largest first. */
static size_t top_reasons(ch_pipeline_t *p, size_t i) {
    size_t k = (size_t)p->cfg->risk_reasons, d = p->n_feats, n = 0;
    if (k == 0 || ch_onnx_contributions(p->model, i, p->contrib) < 0) {
        return 0;
    }
    for (; n < k && n < d; n++) {
        size_t best = d;
        for (size_t j = 0; j < d; j++) {
            if (!isnan(p->contrib[j]) && (best == d || p->contrib[j] > p->contrib[best])) {
                best = j;
            }
        }
        if (best == d) {
            break;
        }
        p->reasons[n] = (ch_reason_t){p->feat_names[best], p->contrib[best]};
        p->contrib[best] = NAN;
    }
    return n;
}

static void emit_risk(ch_pipeline_t *p, batch_t *b, size_t i, ch_user_t *u) {
    const row_t *r = &p->rows[i];
    float score = p->scores[i], thr = (float)p->cfg->risk_threshold;
    bool alert = score >= thr;
    if (alert) {
        p->st.alerts++;
    }
    if (u) {
        bool was_alert = !isnan(u->last_score) && u->last_score >= thr;
        bool quiet = p->cfg->risk_emit == CH_EMIT_CHANGE && u->last_risk_ms != INT64_MIN &&
                     alert == was_alert && fabsf(score - u->last_score) <= p->cfg->risk_delta &&
                     (double)(r->ts_ms - u->last_risk_ms) < p->cfg->emit_heartbeat_ms;
        if (quiet) {
            return;
        }
        u->last_risk_ms = r->ts_ms;
        u->last_score = score;
    }
    ch_risk_t rk = {.user_id = r->uid,
                    .user_id_len = r->uid_len,
                    .event_id = r->eid,
                    .event_id_len = r->eid_len,
                    .ts_ms = r->ts_ms,
                    .score = score,
                    .alert = alert,
                    .threshold = thr,
                    .reasons = p->reasons,
                    .n_reasons = alert ? top_reasons(p, i) : 0,
                    .model_version = ch_onnx_version(p->model)};
    if ((p->cfg->output_format == CH_FORMAT_JSON
             ? ch_json_encode_risk(&p->out, &rk)
             : ch_encode_risk(&p->out, (ch_framing_t)p->cfg->output_framing, p->risk_schema_id,
                              &rk)) < 0) {
        fail_batch(p, b, "risk update");
        return;
    }
    if (send_out(p, b, OUT_RISK, p->cfg->risk_topic, r->uid, r->uid_len, p->out.data, p->out.len,
                 NULL, 0) == 0) {
        p->st.risk_sent++;
    }
}

/* Score and segment the batch's rows at once, then publish in event order. */
static void finish_batch(ch_pipeline_t *p, batch_t *b) {
    size_t n = p->n_rows;
    p->n_rows = 0;
    if (n == 0 || p->failed) {
        return;
    }
    if (p->model) {
        ch_onnx_eval(p->model, p->X, n, p->scores);
        p->st.scored += n;
    }
    if (p->km) {
        ch_kmeans_update(p->km, p->X, n, p->st.stream_time_ms, p->prev_seg, p->prev_gen, p->seg);
    }
    for (size_t i = 0; i < n && !p->failed; i++) {
        ch_user_t *u = row_user(p, &p->rows[i]);
        emit_profile(p, b, i, u);
        if (p->model) {
            emit_risk(p, b, i, u);
        }
        if (u && p->km && p->seg[i].segment >= 0) {
            if (u->segment != p->seg[i].segment) {
                if (u->segment >= 0) {
                    p->seg_users[u->segment]--;
                }
                p->seg_users[p->seg[i].segment]++;
            }
            u->segment = (int16_t)p->seg[i].segment;
            u->seg_gen = p->seg[i].generation;
        }
    }
}

static bool is_assigned(const ch_pipeline_t *p, int32_t partition) {
    return partition >= 0 && (size_t)partition < p->n_assigned_cap && p->assigned[partition];
}

int ch_pipeline_drain(ch_pipeline_t *p) {
    if (p->stopping || p->failed) {
        return 0;
    }
    if (p->ring_count == p->ring_cap) {
        return -EAGAIN;
    }
    int n = ch_consumer_drain(p->consumer, p->msgs, (size_t)p->cfg->batch_max_events);
    if (n <= 0) {
        return 0;
    }
    batch_t *b = ring_push(p);
    p->st.batches++;
    ch_histogram_observe(&p->st.batch_events, n);
    double t0 = ch_now_s();
    /* One wall-clock reading per batch bounds ts_in_future (input.max_future is coarse). */
    double now_ms = ch_wall_ms();
    for (int i = 0; i < n && !p->failed; i++) {
        const ch_msg_t *m = &p->msgs[i];
        if (m->err) {
            p->st.kafka_errors++;
            uint64_t dropped = 0;
            if (m->err_fatal || ch_ratelimit_allow(&p->kafka_rl, &dropped)) {
                ch_log(m->err_fatal ? CH_LOG_ERR : CH_LOG_WARNING, "kafka consumer: %s",
                       m->errstr ? m->errstr : "error");
            }
            if (m->err_fatal) {
                p->failed = true;
            }
            continue;
        }
        if (!is_assigned(p, m->partition)) {
            continue; /* fetched before a revoke: the new owner processes it */
        }
        p->st.consumed++;
        if (track_offset(b, m->partition, m->offset) < 0) {
            ch_log(CH_LOG_ERR, "out of memory tracking offsets; stopping");
            b->failed = true;
            p->failed = true;
            break;
        }
        process(p, b, m, now_ms);
    }
    finish_batch(p, b);
    b->sealed = true;
    ch_histogram_observe(&p->st.batch_seconds, ch_now_s() - t0);
    ch_producer_poll(p->producer);
    observe_if_done(p, b); /* a batch without outputs (or acknowledged already) */
    advance(p);
    return n;
}

void ch_pipeline_poll_producer(ch_pipeline_t *p) {
    ch_producer_poll(p->producer);
    advance(p);
}

void ch_pipeline_tick(ch_pipeline_t *p) {
    if (p->cfg->state_idle_evict_ms > 0 && p->st.stream_time_ms > 0 &&
        isfinite(p->cfg->state_idle_evict_ms)) {
        int64_t before = p->st.stream_time_ms - (int64_t)p->cfg->state_idle_evict_ms;
        p->st.users_evicted_idle += ch_users_evict_idle(p->users, before, 100000);
    }
}

bool ch_pipeline_failed(const ch_pipeline_t *p) {
    return p->failed;
}

int ch_pipeline_lag(ch_pipeline_t *p, ch_partition_lag_t *out, size_t cap) {
    return ch_consumer_lag(p->consumer, out, cap);
}

bool ch_pipeline_ready(ch_pipeline_t *p, char *why, size_t len) {
    if (p->failed || p->stopping) {
        snprintf(why, len, "%s", p->failed ? "failed: stopping" : "stopping");
        return false;
    }
    if (p->cfg->model_path[0] && !p->model) {
        snprintf(why, len, "no model loaded");
        return false;
    }
    static ch_partition_lag_t lag[4096]; /* loop thread only */
    int n = ch_consumer_lag(p->consumer, lag, N_OF(lag));
    if (n <= 0) {
        snprintf(why, len, "no partitions of %s assigned%s", p->cfg->input_topic,
                 n < 0 ? " (assignment unavailable)" : "");
        return false;
    }
    for (int i = 0; i < n && i < (int)N_OF(lag); i++) {
        if (lag[i].lag < 0) {
            snprintf(why, len, "lag of %s[%d] not known yet", p->cfg->input_topic,
                     lag[i].partition);
            return false;
        }
    }
    return true;
}

int ch_pipeline_segment(const ch_pipeline_t *p, size_t j, uint64_t *ret_users,
                        double *ret_weight, uint32_t *ret_generation) {
    if (!p->km || j >= (size_t)p->cfg->segments_k) {
        return -ENOENT;
    }
    double w = 0;
    uint32_t gen = 0;
    ch_kmeans_centroid(p->km, j, &w, &gen);
    *ret_users = p->seg_users[j];
    *ret_weight = w;
    *ret_generation = gen;
    return 0;
}

#define LIT(b, s) ch_buf_append((b), (s), sizeof(s) - 1)

int ch_pipeline_user_json(ch_pipeline_t *p, const char *user_id, size_t len, ch_buf_t *out) {
    ch_user_t *u = ch_users_find(p->users, user_id, len);
    if (!u) {
        return -ENOENT;
    }
    /* Between batches the batch scratch is free: row 0 holds this user's vector. */
    ch_features_read(p->fs, u->state, u->t_ref_ms, p->feats);
    for (size_t i = 0; i < p->n_feats; i++) {
        p->X[i] = (float)p->feats[i];
    }
    out->len = 0;
    int r = LIT(out, "{\"user_id\":");
    r = r ? r : ch_json_string(out, user_id, len);
    r = r ? r : ch_buf_printf(out, ",\"partition\":%d,\"ts\":%lld,\"features\":{",
                              (int)u->partition, (long long)u->t_ref_ms);
    for (size_t i = 0; !r && i < p->n_feats; i++) {
        r = i ? LIT(out, ",") : 0;
        r = r ? r : ch_json_string(out, p->feat_names[i], strlen(p->feat_names[i]));
        r = r ? r : LIT(out, ":");
        r = r ? r : ch_json_float(out, p->X[i]);
    }
    r = r ? r : LIT(out, "},\"segment\":");
    if (!r && u->segment >= 0) {
        r = ch_buf_printf(out, "%d,\"segment_generation\":%u", (int)u->segment,
                          (unsigned)u->seg_gen);
    } else if (!r) {
        r = LIT(out, "null,\"segment_generation\":null");
    }
    r = r ? r : LIT(out, ",\"risk\":");
    if (!r && p->model) {
        ch_onnx_eval(p->model, p->X, 1, p->scores);
        float score = p->scores[0];
        size_t nr = top_reasons(p, 0);
        r = LIT(out, "{\"score\":");
        r = r ? r : ch_json_float(out, score);
        r = r ? r : ch_buf_printf(out, ",\"alert\":%s,\"threshold\":",
                                  score >= (float)p->cfg->risk_threshold ? "true" : "false");
        r = r ? r : ch_json_float(out, (float)p->cfg->risk_threshold);
        r = r ? r : LIT(out, ",\"reasons\":");
        r = r ? r : ch_json_reasons(out, p->reasons, nr);
        r = r ? r : LIT(out, ",\"model_version\":");
        r = r ? r : ch_json_string(out, ch_onnx_version(p->model), strlen(ch_onnx_version(p->model)));
        r = r ? r : LIT(out, "}");
    } else if (!r) {
        r = LIT(out, "null");
    }
    r = r ? r : LIT(out, ",\"last_published_score\":");
    r = r ? r : ch_json_float(out, u->last_score);
    r = r ? r : LIT(out, "}");
    return r;
}

void ch_pipeline_stats(const ch_pipeline_t *p, ch_pipeline_stats_t *ret_stats) {
    *ret_stats = p->st;
    ret_stats->users = ch_users_count(p->users);
    ret_stats->users_bytes = ch_users_memory_bytes(p->users);
    ret_stats->users_evicted_cap = ch_users_cap_evictions(p->users);
    ret_stats->inflight_batches = p->ring_count;
    ret_stats->assigned_partitions = ch_consumer_assigned(p->consumer);
    ret_stats->segments_ready = p->km && ch_kmeans_ready(p->km);
    ret_stats->segment_reseeds = p->km ? ch_kmeans_reseeds(p->km) : 0;
}

/* ---------------------------------------------------------------- rebalance */

static void on_assign(void *opaque, const int32_t *parts, size_t n) {
    ch_pipeline_t *p = opaque;
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
    }
    ch_log(CH_LOG_INFO, "assigned %zu partition(s) of %s (now %zu)", n, p->cfg->input_topic,
           ch_consumer_assigned(p->consumer));
}

static void on_revoke(void *opaque, const int32_t *parts, size_t n, bool lost) {
    ch_pipeline_t *p = opaque;
    if (!lost) {
        /* Everything consumed so far has been processed; wait for its outputs so the
         * offsets can be committed before the partitions move. (On shutdown the close
         * itself commits the stored offsets, so no extra synchronous commit.) */
        if (ch_producer_flush(p->producer, (int)fmin(p->cfg->shutdown_timeout_ms, 600000)) < 0) {
            ch_log(CH_LOG_WARNING, "revoke: outputs still unacknowledged after %.0f ms; the new "
                                   "owner will reprocess them",
                   p->cfg->shutdown_timeout_ms);
        }
        advance(p);
        char err[256];
        if (!p->stopping && ch_consumer_commit_sync(p->consumer, err, sizeof(err)) < 0) {
            ch_log(CH_LOG_WARNING, "revoke: %s", err);
        }
    }
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_assigned(p, parts[i])) {
            p->assigned[parts[i]] = false;
        }
        dropped += ch_users_evict_partition(p->users, parts[i]);
    }
    p->st.users_evicted_revoke += dropped;
    ch_log(CH_LOG_INFO, "%s %zu partition(s) of %s; dropped the state of %zu user(s)",
           lost ? "lost" : "revoked", n, p->cfg->input_topic, dropped);
}

/* ---------------------------------------------------------------- life cycle */

static void on_user_evicted(void *opaque, const ch_user_t *rec) {
    ch_pipeline_t *p = opaque;
    if (rec->segment >= 0 && p->seg_users) {
        p->seg_users[rec->segment]--;
    }
}

static void kafka_log(void *opaque, int level, const char *fac, const char *msg) {
    (void)opaque;
    /* A connection failure is also reported to the error callback (counted and
     * rate-limited there): its FAIL log line would say the same thing twice. */
    if (strcmp(fac, "FAIL") == 0) {
        level = CH_LOG_DEBUG;
    }
    ch_log(level < CH_LOG_ERR ? CH_LOG_ERR : level, "librdkafka %s: %s", fac, msg);
}

/* Client-level errors; librdkafka retries the transient ones by itself. */
static void kafka_error(void *opaque, bool fatal, const char *reason) {
    ch_pipeline_t *p = opaque;
    p->st.kafka_errors++;
    uint64_t dropped = 0;
    if (fatal || ch_ratelimit_allow(&p->kafka_rl, &dropped)) {
        ch_log(fatal ? CH_LOG_ERR : CH_LOG_WARNING, "kafka: %s%s", reason,
               dropped ? " (similar errors were not logged, see cohortd_kafka_errors_total)"
                       : "");
    }
    if (fatal) {
        p->failed = true; /* the client cannot continue: exit, restart reprocesses */
    }
}

/* Defaults cohortd sets for librdkafka, before the user's kafka.* pairs. */
static const char *const consumer_defaults[][2] = {
    {"group.id", "cohortd"},
    {"auto.offset.reset", "earliest"},
    {"enable.auto.commit", "true"},
    {"auto.commit.interval.ms", "1000"},
    {"enable.auto.offset.store", "false"},
    {"partition.assignment.strategy", "cooperative-sticky"},
    {"enable.partition.eof", "false"},
};
static const char *const producer_defaults[][2] = {
    {"enable.idempotence", "true"},
    {"partitioner", "murmur2_random"},
    {"linger.ms", "5"},
};

/* librdkafka properties that only one client understands: a kafka.* (both) key among
 * them goes to that client only, so neither warns about the other's settings. */
static const char *const consumer_only[] = {
    "group.id", "group.instance.id", "partition.assignment.strategy", "session.timeout.ms",
    "heartbeat.interval.ms", "group.protocol.type", "coordinator.query.interval.ms",
    "max.poll.interval.ms", "enable.auto.commit", "auto.commit.interval.ms",
    "enable.auto.offset.store", "queued.min.messages", "queued.max.messages.kbytes",
    "fetch.wait.max.ms", "fetch.message.max.bytes", "fetch.max.bytes", "fetch.min.bytes",
    "fetch.error.backoff.ms", "auto.offset.reset", "isolation.level", "check.crcs",
    "enable.partition.eof", NULL};
static const char *const producer_only[] = {
    "transactional.id", "transaction.timeout.ms", "enable.idempotence",
    "enable.gapless.guarantee", "queue.buffering.max.messages", "queue.buffering.max.kbytes",
    "queue.buffering.max.ms", "linger.ms", "message.send.max.retries", "retries",
    "retry.backoff.ms", "compression.codec", "compression.type", "compression.level",
    "batch.num.messages", "batch.size", "delivery.report.only.error", "acks",
    "request.required.acks", "request.timeout.ms", "message.timeout.ms", "delivery.timeout.ms",
    "partitioner", "sticky.partitioning.linger.ms", NULL};

static bool in_list(const char *const *list, const char *key) {
    for (; *list; list++) {
        if (strcmp(*list, key) == 0) {
            return true;
        }
    }
    return false;
}

static int make_kafka_conf(const ch_config_t *cfg, int scope, const char *const (*dflt)[2],
                           size_t n_dflt, const char ***ret_keys, const char ***ret_vals,
                           size_t *ret_n) {
    size_t cap = n_dflt + cfg->n_kafka;
    const char **k = calloc(cap ? cap : 1, sizeof(*k));
    const char **v = calloc(cap ? cap : 1, sizeof(*v));
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < n_dflt; i++, n++) {
        k[n] = dflt[i][0];
        v[n] = dflt[i][1];
    }
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        const char *key = cfg->kafka[i].key;
        bool other_only = in_list(scope == CH_KAFKA_CONSUMER ? producer_only : consumer_only, key);
        if ((cfg->kafka[i].scope == CH_KAFKA_BOTH && !other_only) ||
            cfg->kafka[i].scope == scope) {
            k[n] = cfg->kafka[i].key;
            v[n++] = cfg->kafka[i].value;
        }
    }
    *ret_keys = k;
    *ret_vals = v;
    *ret_n = n;
    return 0;
}

static int build_features(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    const ch_config_t *cfg = p->cfg;
    int r = ch_features_new(cfg->features_half_life_ms, &p->fs);
    if (r < 0) {
        return r;
    }
    for (size_t i = 0; i < cfg->n_features; i++) {
        char why[256];
        r = ch_features_add(p->fs, cfg->features[i].key, cfg->features[i].value, why,
                            sizeof(why));
        if (r < 0) {
            snprintf(errbuf, errlen, "%s: feature.%s: %s", cfg->features[i].where,
                     cfg->features[i].key, why);
            return -EINVAL;
        }
    }
    if ((r = ch_features_seal(p->fs)) < 0) {
        return r;
    }
    p->n_feats = ch_features_count(p->fs);
    p->n_fields = ch_features_field_count(p->fs);
    p->fields = calloc(p->n_fields ? p->n_fields : 1, sizeof(*p->fields));
    p->values = calloc(p->n_fields ? p->n_fields : 1, sizeof(*p->values));
    p->feats = calloc(p->n_feats, sizeof(*p->feats));
    p->feats_f = calloc(p->n_feats, sizeof(*p->feats_f));
    if (!p->fields || !p->values || !p->feats || !p->feats_f) {
        return -ENOMEM;
    }
    for (size_t f = 0; f < p->n_fields; f++) {
        const char *name = ch_features_field_name(p->fs, f);
        if (strcmp(name, "amount") == 0) {
            p->fields[f].kind = FIELD_AMOUNT;
        } else {
            p->fields[f].kind = FIELD_ATTR;
            p->fields[f].attr = name + 6; /* after "attrs." */
            p->fields[f].attr_len = strlen(name + 6);
        }
    }
    return 0;
}

static int load_model(const ch_pipeline_t *p, ch_onnx_t **ret_model, char *errbuf,
                      size_t errlen) {
    return ch_onnx_load(p->cfg->model_path, p->n_feats, p->feat_names,
                        (size_t)p->cfg->batch_max_events, ret_model, errbuf, errlen);
}

/* The id under which an output schema is registered, needed to frame outputs the
 * Confluent way. */
static int output_schema_id(const ch_pipeline_t *p, const char *file, const char *when,
                            int32_t *ret_id, char *errbuf, size_t errlen) {
    if (p->cfg->output_framing != CH_FRAMING_CONFLUENT ||
        ch_schemas_id_of(p->schemas, file, ret_id) == 0) {
        return 0;
    }
    snprintf(errbuf, errlen,
             "%s/ids registers no id for %s (needed by output.framing = confluent%s)",
             p->cfg->schema_dir, file, when);
    return -EINVAL;
}

/* Batch scratch, the risk model and the segmenter. */
static int build_scoring(ch_pipeline_t *p, char *errbuf, size_t errlen) {
    const ch_config_t *cfg = p->cfg;
    size_t rows = (size_t)cfg->batch_max_events, d = p->n_feats;
    p->feat_names = calloc(d, sizeof(*p->feat_names));
    p->rows = calloc(rows, sizeof(*p->rows));
    p->X = calloc(rows * d, sizeof(float));
    p->scores = calloc(rows, sizeof(float));
    p->contrib = calloc(d, sizeof(float));
    p->prev_seg = calloc(rows, sizeof(int32_t));
    p->prev_gen = calloc(rows, sizeof(uint32_t));
    p->seg = calloc(rows, sizeof(*p->seg));
    p->reasons = calloc(d, sizeof(*p->reasons));
    if (!p->feat_names || !p->rows || !p->X || !p->scores || !p->contrib || !p->prev_seg ||
        !p->prev_gen || !p->seg || !p->reasons) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < d; i++) {
        p->feat_names[i] = ch_features_name(p->fs, i);
    }
    int r;
    if (cfg->model_path[0]) {
        if ((r = load_model(p, &p->model, errbuf, errlen)) < 0) {
            return r;
        }
        if ((r = output_schema_id(p, "risk_update.avsc", " with model.path set",
                                  &p->risk_schema_id, errbuf, errlen)) < 0) {
            return r;
        }
        ch_log(CH_LOG_INFO, "model %s loaded: version %s, %zu nodes", cfg->model_path,
               ch_onnx_version(p->model), ch_onnx_nodes(p->model));
    }
    if (cfg->segments_k > 0) {
        ch_kmeans_opts_t o;
        ch_kmeans_opts_default(&o, (size_t)cfg->segments_k, d);
        o.warmup = (size_t)cfg->segments_warmup;
        o.max_batch = rows;
        o.half_life_ms = cfg->segments_half_life_ms;
        o.stats_half_life_ms = cfg->segments_stats_half_life_ms;
        o.dead_ratio = cfg->segments_dead_ratio;
        o.hysteresis = cfg->segments_hysteresis;
        o.log1p = cfg->segments_log1p != 0;
        o.seed = (uint64_t)cfg->segments_seed;
        char why[256];
        if ((r = ch_kmeans_new(&o, &p->km, why, sizeof(why))) < 0) {
            snprintf(errbuf, errlen, "segments: %s", why);
            return r;
        }
        if (cfg->segments_state_file[0]) {
            r = ch_kmeans_load(p->km, cfg->segments_state_file, why, sizeof(why));
            if (r == 0) {
                ch_log(CH_LOG_INFO, "segments restored from %s (%s)", cfg->segments_state_file,
                       ch_kmeans_ready(p->km) ? "centroids ready" : "still warming up");
            } else if (r != -ENOENT) {
                ch_log(CH_LOG_WARNING, "segments: not restoring: %s; starting fresh", why);
            }
        }
    }
    return 0;
}

int ch_pipeline_reload_model(ch_pipeline_t *p) {
    if (!p->cfg->model_path[0]) {
        ch_log(CH_LOG_NOTICE, "reload: no model configured (model.path is empty)");
        return 0;
    }
    char err[512];
    ch_onnx_t *m = NULL;
    int r = load_model(p, &m, err, sizeof(err));
    if (r < 0) {
        p->st.model_reload_failures++;
        ch_log(CH_LOG_ERR, "model reload failed, keeping version %s: %s",
               p->model ? ch_onnx_version(p->model) : "(none)", err);
        return r;
    }
    /* Called from the loop between batches: no batch holds the old model. */
    if (p->model && strcmp(ch_onnx_version(p->model), ch_onnx_version(m)) == 0) {
        ch_log(CH_LOG_INFO, "model reload: %s unchanged (version %s)", p->cfg->model_path,
               ch_onnx_version(m));
    } else {
        ch_log(CH_LOG_NOTICE, "model reloaded: version %s -> %s",
               p->model ? ch_onnx_version(p->model) : "(none)", ch_onnx_version(m));
    }
    ch_onnx_free(p->model);
    p->model = m;
    p->st.model_reloads++;
    return 0;
}

int ch_pipeline_save_segments(ch_pipeline_t *p) {
    if (!p->km || !p->cfg->segments_state_file[0]) {
        return 0;
    }
    char err[512];
    int r = ch_kmeans_save(p->km, p->cfg->segments_state_file, err, sizeof(err));
    if (r < 0) {
        ch_log(CH_LOG_WARNING, "segments: cannot save: %s", err);
    }
    return r;
}

const char *ch_pipeline_model_version(const ch_pipeline_t *p) {
    return p->model ? ch_onnx_version(p->model) : NULL;
}

int ch_pipeline_new(const ch_config_t *cfg, ch_pipeline_t **ret_pipeline, char *errbuf,
                    size_t errlen) {
    ch_pipeline_t *p = calloc(1, sizeof(*p));
    if (!p) {
        return -ENOMEM;
    }
    p->cfg = cfg;
    ch_buf_init(&p->out);
    ch_histogram_init(&p->st.batch_events, batch_event_bounds, N_OF(batch_event_bounds));
    ch_histogram_init(&p->st.batch_seconds, batch_second_bounds, N_OF(batch_second_bounds));
    ch_histogram_init(&p->st.latency_event, latency_bounds, N_OF(latency_bounds));
    ch_histogram_init(&p->st.latency_kafka, latency_bounds, N_OF(latency_bounds));
    ch_ratelimit_init(&p->bad_rl, (double)cfg->log_bad_input_per_min);
    ch_ratelimit_init(&p->kafka_rl, 10);
    const char **keys = NULL, **vals = NULL;
    int r = build_features(p, errbuf, errlen);
    if (r < 0) {
        goto out_fail;
    }
    r = ch_users_new((size_t)cfg->state_max_users, (size_t)cfg->state_key_max_bytes,
                     ch_features_state_len(p->fs), &p->users);
    if (r < 0) {
        snprintf(errbuf, errlen,
                 "cannot reserve the user table for state.max_users = %ld: %s (lower it)",
                 cfg->state_max_users, strerror(-r));
        goto out_fail;
    }
    ch_users_set_evict_hook(p->users, on_user_evicted, p);
    r = ch_schemas_load(cfg->schema_dir, &p->schemas, errbuf, errlen);
    if (r < 0) {
        goto out_fail;
    }
    char reader[CH_CONF_STR + 32];
    if (cfg->input_schema[0]) {
        snprintf(reader, sizeof(reader), "%s", cfg->input_schema);
    } else {
        snprintf(reader, sizeof(reader), "%s/user_event.avsc", cfg->schema_dir);
    }
    r = ch_decoder_new(p->schemas, reader, (ch_framing_t)cfg->input_framing,
                       cfg->input_writer_schema[0] ? cfg->input_writer_schema : NULL, &p->dec,
                       errbuf, errlen);
    if (r < 0) {
        goto out_fail;
    }
    if ((r = output_schema_id(p, "profile_update.avsc", "", &p->profile_schema_id, errbuf,
                              errlen)) < 0) {
        goto out_fail;
    }

    if ((r = build_scoring(p, errbuf, errlen)) < 0) {
        goto out_fail;
    }

    p->ring_cap = (size_t)cfg->batch_max_inflight;
    p->ring = calloc(p->ring_cap, sizeof(*p->ring));
    p->msgs = calloc((size_t)cfg->batch_max_events, sizeof(*p->msgs));
    p->seg_users = calloc(cfg->segments_k > 0 ? (size_t)cfg->segments_k : 1, sizeof(uint64_t));
    if (!p->ring || !p->msgs || !p->seg_users) {
        r = -ENOMEM;
        goto out_fail;
    }
    for (size_t i = 0; i < p->ring_cap; i++) {
        p->ring[i].ev_ts = calloc((size_t)cfg->batch_max_events, sizeof(int64_t));
        p->ring[i].kafka_ts = calloc((size_t)cfg->batch_max_events, sizeof(int64_t));
        if (!p->ring[i].ev_ts || !p->ring[i].kafka_ts) {
            r = -ENOMEM;
            goto out_fail;
        }
    }

    size_t n = 0;
    if ((r = make_kafka_conf(cfg, CH_KAFKA_PRODUCER, producer_defaults,
                             sizeof(producer_defaults) / sizeof(producer_defaults[0]), &keys,
                             &vals, &n)) < 0) {
        goto out_fail;
    }
    ch_kafka_conf_t kc = {keys, vals, n, kafka_log, kafka_error, p};
    r = ch_producer_new(&kc, on_delivery, p, &p->producer, errbuf, errlen);
    free(keys);
    free(vals);
    keys = vals = NULL;
    if (r < 0) {
        goto out_fail;
    }
    if ((r = make_kafka_conf(cfg, CH_KAFKA_CONSUMER, consumer_defaults,
                             sizeof(consumer_defaults) / sizeof(consumer_defaults[0]), &keys,
                             &vals, &n)) < 0) {
        goto out_fail;
    }
    kc = (ch_kafka_conf_t){keys, vals, n, kafka_log, kafka_error, p};
    ch_rebalance_hooks_t hooks = {on_assign, on_revoke, p};
    r = ch_consumer_new(&kc, cfg->input_topic, &hooks, &p->consumer, errbuf, errlen);
    free(keys);
    free(vals);
    if (r < 0) {
        goto out_fail;
    }
    *ret_pipeline = p;
    return 0;

out_fail:
    if (r == -ENOMEM && errbuf && !errbuf[0]) {
        snprintf(errbuf, errlen, "out of memory");
    }
    ch_pipeline_free(p);
    return r;
}

int ch_pipeline_shutdown(ch_pipeline_t *p) {
    p->stopping = true;
    int r = 0;
    int timeout = (int)fmin(p->cfg->shutdown_timeout_ms, 3600000);
    if (ch_producer_flush(p->producer, timeout) < 0) {
        ch_log(CH_LOG_ERR,
               "%zu output(s) unacknowledged after %d ms; their offsets are not committed and "
               "will be reprocessed on restart",
               ch_producer_outstanding(p->producer), timeout);
        r = -ETIMEDOUT;
    }
    advance(p);
    char err[256];
    if (ch_consumer_close(p->consumer, timeout, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "%s", err);
        r = r ? r : -EIO;
    }
    if (p->failed && r == 0) {
        r = -EIO;
    }
    return r;
}

ch_pipeline_t *ch_pipeline_free(ch_pipeline_t *p) {
    if (!p) {
        return NULL;
    }
    p->consumer = ch_consumer_free(p->consumer);
    p->producer = ch_producer_free(p->producer);
    ch_decoder_free(p->dec);
    ch_schemas_free(p->schemas);
    ch_users_free(p->users);
    ch_features_free(p->fs);
    ch_onnx_free(p->model);
    ch_kmeans_free(p->km);
    free(p->feat_names);
    free(p->rows);
    free(p->X);
    free(p->scores);
    free(p->contrib);
    free(p->prev_seg);
    free(p->prev_gen);
    free(p->seg);
    free(p->reasons);
    if (p->ring) {
        for (size_t i = 0; i < p->ring_cap; i++) {
            free(p->ring[i].parts);
            free(p->ring[i].ev_ts);
            free(p->ring[i].kafka_ts);
        }
    }
    free(p->ring);
    free(p->msgs);
    free(p->fields);
    free(p->values);
    free(p->feats);
    free(p->feats_f);
    free(p->assigned);
    free(p->seg_users);
    ch_buf_done(&p->out);
    free(p);
    return NULL;
}

int ch_pipeline_consumer_fd(const ch_pipeline_t *p) {
    return ch_consumer_fd(p->consumer);
}

int ch_pipeline_producer_fd(const ch_pipeline_t *p) {
    return ch_producer_fd(p->producer);
}
