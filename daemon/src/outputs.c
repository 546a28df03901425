/*
 * outputs.c - publishing: profile and risk updates and dead letters, encoded and
 * handed to the producer under their batch; acknowledgements and what they release.
 *
 * Design notes
 * - Every output is counted in its batch of the delivery tracker before it is
 *   enqueued; the delivery report counts it back. The message opaque is the batch
 *   handle with the output's kind in its low two bits (handles are 8-aligned).
 * - A batch whose outputs are all acknowledged records its events' end-to-end
 *   latency at that moment; the tracker then releases the offsets of the oldest
 *   complete batches in order, and they are stored for librdkafka's commit.
 * - A failed delivery freezes the tracker (nothing after it is committed) and
 *   stops the daemon non-zero, so a restart reprocesses from the last commit.
 */
#include "pipeline_int.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "emit.h"

#define OUT_MASK ((uintptr_t)3)

/* End-to-end latency of a complete batch's events. Clock skew between producers and
 * this host can make a latency negative: it is counted as 0. */
static void observe(ch_pipeline_t *p, ch_tracked_t *b) {
    size_t slot = ch_tracker_slot(p->tracker, b);
    if (p->observed[slot]) {
        return;
    }
    p->observed[slot] = true;
    size_t base = slot * (size_t)p->cfg->batch_max_events;
    double now = ch_wall_ms();
    for (size_t i = 0; i < p->n_ts[slot]; i++) {
        ch_histogram_observe(&p->st.latency_event,
                             fmax(0, now - (double)p->ev_ts[base + i]) / 1000.0);
        if (p->kafka_ts[base + i] >= 0) {
            ch_histogram_observe(&p->st.latency_kafka,
                                 fmax(0, now - (double)p->kafka_ts[base + i]) / 1000.0);
        }
    }
}

void ch_outputs_delivered(void *opaque, void *msg_opaque, int32_t partition, int64_t offset,
                          int err, const char *errstr) {
    ch_pipeline_t *p = opaque;
    uintptr_t kind = (uintptr_t)msg_opaque & OUT_MASK;
    ch_tracked_t *b = (ch_tracked_t *)((uintptr_t)msg_opaque & ~OUT_MASK);
    bool complete = ch_tracker_acked(b, err == 0);
    if (!err) {
        if (kind == OUT_DLQ) {
            p->st.dlq_acked++;
        } else if (kind == OUT_CHANGELOG) {
            p->st.changelog_acked++;
            ch_snapshot_durable(p, partition, offset + 1);
        } else if (kind == OUT_RISK) {
            p->st.risk_acked++;
        } else {
            p->st.profiles_acked++;
        }
    } else {
        p->failed = true;
        p->st.delivery_failures++;
        uint64_t dropped = 0;
        if (ch_ratelimit_allow(&p->out_rl, &dropped)) {
            ch_log(CH_LOG_ERR,
                   "output not delivered: %s; offsets from this batch on will not be committed",
                   errstr ? errstr : "unknown error");
        }
    }
    if (complete) {
        observe(p, b);
    }
    ch_outputs_release(p);
}

void ch_outputs_sealed(ch_pipeline_t *p, ch_tracked_t *b) {
    if (ch_tracker_seal(b)) { /* no outputs, or all acknowledged already */
        observe(p, b);
    }
}

static void store(void *opaque, int32_t partition, int64_t next_offset) {
    ch_pipeline_t *p = opaque;
    if (p->txn.on) {
        return; /* exactly_once: offsets commit with their transaction (txn.c) */
    }
    char err[256];
    if (ch_consumer_store(p->clients.consumer, partition, next_offset, err, sizeof(err)) < 0) {
        /* The partition was revoked; its new owner reprocesses from the last
         * commit, so nothing is lost. */
        ch_log(CH_LOG_DEBUG, "not storing offset: %s", err);
        return;
    }
    ch_snapshot_stored(p, partition, next_offset);
}

void ch_outputs_release(ch_pipeline_t *p) { ch_tracker_advance(p->tracker, store, p); }

int ch_outputs_send(ch_pipeline_t *p, ch_tracked_t *b, uintptr_t kind, const char *topic,
                    int32_t partition, const void *key, size_t key_len, const void *value,
                    size_t value_len, const ch_header_t *h, size_t n_h) {
    char err[512];
    void *tagged = (void *)((uintptr_t)b | kind);
    if (ch_txn_ensure(p) < 0) {
        ch_tracker_fail(b);
        return -EIO;
    }
    for (;;) {
        int r = ch_producer_send(p->clients.producer, topic, partition, key, key_len, value,
                                 value_len, h, n_h,
                                 tagged, 0, err, sizeof(err));
        if (r == -ENOBUFS) {
            /* The local queue is full: wait for acknowledgements (rare; the tracker
             * bounds what is in flight). */
            ch_producer_flush(p->clients.producer, 100);
            continue;
        }
        if (r < 0) {
            ch_log(CH_LOG_ERR, "%s", err);
            ch_tracker_fail(b);
            p->failed = true;
            return r;
        }
        ch_tracker_sent(b);
        return 0;
    }
}

void ch_outputs_dead_letter(ch_pipeline_t *p, ch_tracked_t *b, const ch_msg_t *m,
                            ch_bad_reason_t reason, const char *why) {
    const char *name = ch_events_bad_name(reason);
    p->st.bad[reason]++;
    p->st.bad_total++;
    uint64_t dropped = 0;
    if (ch_ratelimit_allow(&p->bad_rl, &dropped)) {
        ch_log(CH_LOG_WARNING, "bad input %s[%d]@%lld (%s): %s; sent to %s%s", m->topic,
               m->partition, (long long)m->offset, name, why, p->cfg->dlq_topic,
               dropped ? " (more bad input was not logged, see metrics)" : "");
    }
    char part[16], off[24];
    snprintf(part, sizeof(part), "%d", m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    const ch_header_t h[] = {
        {"cohortd.error.reason", name, strlen(name)},
        {"cohortd.error.detail", why, strlen(why)},
        {"cohortd.source.topic", m->topic, strlen(m->topic)},
        {"cohortd.source.partition", part, strlen(part)},
        {"cohortd.source.offset", off, strlen(off)},
    };
    if (ch_outputs_send(p, b, OUT_DLQ, p->cfg->dlq_topic, -1, m->key, m->key_len, m->value,
                        m->value_len, h, 5) == 0) {
        p->st.dlq_sent++;
    }
}

/* Send the update just encoded into p->out for row r (encoded: the encoder's result). */
static void publish(ch_pipeline_t *p, ch_tracked_t *b, uintptr_t kind, const ch_row_t *r,
                    int encoded) {
    bool risk = kind == OUT_RISK;
    if (encoded < 0) {
        ch_log(CH_LOG_ERR, "out of memory encoding a %s; stopping",
               risk ? "risk update" : "profile update");
        ch_tracker_fail(b);
        p->failed = true;
        return;
    }
    if (ch_outputs_send(p, b, kind, risk ? p->cfg->risk_topic : p->cfg->profile_topic, -1,
                        r->uid, r->uid_len, p->out.data, p->out.len, NULL, 0) == 0) {
        (*(risk ? &p->st.risk_sent : &p->st.profiles_sent))++;
    }
}

void ch_outputs_profile(ch_pipeline_t *p, ch_tracked_t *b, size_t i, ch_user_t *u) {
    const ch_row_t *r = &p->rows[i];
    const ch_kmeans_assign_t *a = p->segs ? &p->assign[i] : NULL;
    bool has_seg = a && a->segment >= 0;
    bool changed = has_seg && (a->segment != p->prev_seg[i] || a->generation != p->prev_gen[i]);
    if (u) {
        ch_userrec_t *ur = ch_userrec(p->users, u);
        if (!ch_emit_profile_due(p->cfg, ur, r->ts_ms, changed)) {
            return;
        }
        ur->last_emit_ms = r->ts_ms;
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
                         .model_version = ch_scorer_version(&p->scorer)};
    publish(p, b, OUT_PROFILE, r,
            p->cfg->output_format == CH_FORMAT_JSON
                ? ch_json_encode_profile(&p->out, &prof)
                : ch_encode_profile(&p->out, p->cfg->output_framing, p->profile_schema_id,
                                    &prof));
}

void ch_outputs_risk(ch_pipeline_t *p, ch_tracked_t *b, size_t i, ch_user_t *u) {
    const ch_row_t *r = &p->rows[i];
    float score = p->scores[i], thr = (float)p->cfg->risk_threshold;
    bool alert = score >= thr;
    if (alert) {
        p->st.alerts++;
    }
    if (u) {
        ch_userrec_t *ur = ch_userrec(p->users, u);
        if (!ch_emit_risk_due(p->cfg, ur, r->ts_ms, score)) {
            return;
        }
        ur->last_risk_ms = r->ts_ms;
        ur->last_score = score;
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
                    .n_reasons = alert ? ch_scorer_reasons(&p->scorer, i, p->reasons) : 0,
                    .model_version = ch_scorer_version(&p->scorer)};
    publish(p, b, OUT_RISK, r,
            p->cfg->output_format == CH_FORMAT_JSON
                ? ch_json_encode_risk(&p->out, &rk)
                : ch_encode_risk(&p->out, p->cfg->output_framing, p->risk_schema_id, &rk));
}
