/*
 * outputs.c - publishing: profile and risk updates and dead letters, encoded and
 * handed to the producer under their batch; acknowledgements and what they release.
 *
 * Design notes
 * - Every output is counted in its batch of the delivery tracker before it is
 *   enqueued; the delivery report counts it back. The message opaque is the batch
 *   handle with the output's kind in its low three bits (handles are 8-aligned).
 * - A batch whose outputs are all acknowledged records its events' end-to-end
 *   latency at that moment; the tracker then releases the offsets of the oldest
 *   complete batches in order, and they are stored for librdkafka's commit.
 * - A failed delivery freezes the tracker (nothing after it is committed) and
 *   stops the daemon non-zero, so a restart reprocesses from the last commit.
 * - No record can stall a partition. Every output is bounded: ids copied from input
 *   are capped (events.c), and a dead letter larger than the producer's
 *   message.max.bytes is cut to fit, with headers giving the original size and
 *   SHA-256. A record the broker refuses for itself (too large for the topic,
 *   invalid) is replaced by a reduced dead letter (1 KiB of key and value, the same
 *   headers, the refusal) in the same batch, so its offsets commit once that lands.
 *   Refusals of changelog records, of a reduced dead letter, and any refusal under
 *   exactly_once (the transaction is already doomed) keep the stop rule, as do
 *   broker-side failures.
 */
#include "pipeline_int.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emit.h"
#include "evaluate.h"

#define OUT_MASK ((uintptr_t)7)
#define REDUCED_BYTES 1024 /* of key and of value kept in a reduced dead letter */
#define FRAMING_BYTES 512  /* kept free of message.max.bytes for the record's framing */
#define MAX_HEADERS 12

/* A dead letter's headers, with room for the values they point to. */
typedef struct dl_headers {
    ch_header_t h[MAX_HEADERS];
    size_t n;
    char part[16], off[24], size[24], key_size[24], sha[2 * EVP_MAX_MD_SIZE + 1];
} dl_headers_t;

/* A reduced dead letter that replaces a refused record, sent outside the delivery
 * callback (ch_outputs_release) under the refused record's batch. */
typedef struct ch_refused {
    ch_tracked_t *b;
    size_t key_len, value_len;
    char key[REDUCED_BYTES], value[REDUCED_BYTES];
    char topic[256], detail[1024], src[3][256];
    dl_headers_t dh;
} refused_t;

static void add(dl_headers_t *d, const char *name, const void *value, size_t len) {
    if (d->n < MAX_HEADERS) {
        d->h[d->n++] = (ch_header_t){name, value, len};
    }
}

static void add_str(dl_headers_t *d, const char *name, const char *value) {
    add(d, name, value, strlen(value));
}

static size_t headers_size(const dl_headers_t *d) {
    size_t n = 0;
    for (size_t i = 0; i < d->n; i++) {
        n += strlen(d->h[i].name) + d->h[i].value_len + 12; /* two lengths, two varints */
    }
    return n;
}

/* The original's sizes and the SHA-256 of its value. */
static void add_original(dl_headers_t *d, size_t key_len, const void *value, size_t value_len) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(value, value_len, md, &n, EVP_sha256(), NULL)) {
        n = 0;
    }
    for (unsigned int i = 0; i < n; i++) {
        snprintf(d->sha + 2 * i, 3, "%02x", md[i]);
    }
    d->sha[2 * n] = '\0';
    snprintf(d->size, sizeof(d->size), "%zu", value_len);
    snprintf(d->key_size, sizeof(d->key_size), "%zu", key_len);
    add_str(d, "cohortd.original.size", d->size);
    add_str(d, "cohortd.original.key_size", d->key_size);
    add_str(d, "cohortd.original.sha256", d->sha);
}

/* The truncation headers: it was cut, and what the original was. */
static void add_cut(dl_headers_t *d, size_t key_len, const void *value, size_t value_len) {
    add_str(d, "cohortd.truncated", "true");
    add_original(d, key_len, value, value_len);
}

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

static void advance(ch_pipeline_t *p);

/* The reduced dead letter that replaces record m (refused by the broker or the
 * producer: why), or NULL (out of memory). */
static refused_t *reduce(ch_tracked_t *b, const ch_msg_t *m, const char *why) {
    refused_t *r = calloc(1, sizeof(*r));
    if (!r) {
        return NULL;
    }
    r->b = b;
    r->key_len = m->key_len < REDUCED_BYTES ? m->key_len : REDUCED_BYTES;
    r->value_len = m->value_len < REDUCED_BYTES ? m->value_len : REDUCED_BYTES;
    if (r->key_len) {
        memcpy(r->key, m->key, r->key_len);
    }
    if (r->value_len) {
        memcpy(r->value, m->value, r->value_len);
    }
    snprintf(r->topic, sizeof(r->topic), "%s", m->topic);
    /* a refused dead letter keeps its reason and source */
    const void *v = NULL;
    size_t n = 0;
    const char *reason = "", *sep = "";
    char was[256] = "";
    if (ch_msg_header(m, "cohortd.error.reason", &v, &n) == 0 && v) {
        snprintf(was, sizeof(was), "%.*s", (int)n, (const char *)v);
        reason = was;
        sep = "; it was a dead letter: ";
    }
    snprintf(r->detail, sizeof(r->detail), "%s refused a record of %zu bytes for %s%s%s", r->topic,
             m->key_len + m->value_len, why, sep, reason);
    dl_headers_t *d = &r->dh;
    add_str(d, "cohortd.error.reason", "record_refused");
    add_str(d, "cohortd.error.detail", r->detail);
    add_str(d, "cohortd.original.topic", r->topic);
    static const char *const src[3] = {"cohortd.source.topic", "cohortd.source.partition",
                                       "cohortd.source.offset"};
    for (int i = 0; i < 3; i++) {
        if (ch_msg_header(m, src[i], &v, &n) == 0 && v) {
            snprintf(r->src[i], sizeof(r->src[i]), "%.*s", (int)n, (const char *)v);
            add_str(d, src[i], r->src[i]);
        }
    }
    add_cut(d, m->key_len, m->value, m->value_len);
    return r;
}

static bool is_reduced(const ch_msg_t *m) {
    const void *v = NULL;
    size_t n = 0;
    return ch_msg_header(m, "cohortd.error.reason", &v, &n) == 0 && n == 14 &&
           memcmp(v, "record_refused", 14) == 0;
}

/* Queue the reduced form of the record being reported (batch b); false if it cannot
 * be (a changelog record, exactly_once, already reduced, out of memory). */
static bool replace_refused(ch_pipeline_t *p, ch_tracked_t *b, uintptr_t kind, const char *why) {
    ch_msg_t m;
    if (kind == OUT_CHANGELOG || kind == OUT_SEGMENT || p->txn.on ||
        ch_producer_reported(p->clients.producer, &m) < 0 || is_reduced(&m)) {
        return false;
    }
    if (p->n_refused == p->cap_refused) {
        size_t cap = p->cap_refused ? 2 * p->cap_refused : 16;
        refused_t **q = realloc(p->refused, cap * sizeof(*q));
        if (!q) {
            return false;
        }
        p->refused = q;
        p->cap_refused = cap;
    }
    refused_t *r = reduce(b, &m, why);
    if (!r) {
        return false;
    }
    p->refused[p->n_refused++] = r;
    p->st.outputs_refused++;
    uint64_t dropped = 0;
    if (ch_ratelimit_allow(&p->out_rl, &dropped)) {
        ch_log(CH_LOG_WARNING, "%s; sending a reduced dead letter to %s instead", r->detail,
               p->cfg->dlq_topic);
    }
    return true;
}

void ch_outputs_delivered(void *opaque, void *msg_opaque, int32_t partition, int64_t offset,
                          int err, const char *errstr) {
    ch_pipeline_t *p = opaque;
    uintptr_t kind = (uintptr_t)msg_opaque & OUT_MASK;
    ch_tracked_t *b = (ch_tracked_t *)((uintptr_t)msg_opaque & ~OUT_MASK);
    if (err == -EMSGSIZE && replace_refused(p, b, kind, errstr ? errstr : "itself")) {
        return; /* b still counts it: the reduced dead letter's report counts it back */
    }
    bool complete = ch_tracker_acked(b, err == 0);
    if (!err) {
        if (kind == OUT_DLQ) {
            p->st.dlq_acked++;
        } else if (kind == OUT_CHANGELOG) {
            p->st.changelog_acked++;
            ch_snapshot_delivered(p, partition, offset);
        } else if (kind == OUT_RISK) {
            p->st.risk_acked++;
        } else if (kind == OUT_SEGMENT) {
            p->st.segment_updates_acked++;
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
    advance(p); /* reduced dead letters wait: nothing is produced from this callback */
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
    if (!ch_changelog_flush_ended(p, partition, next_offset)) {
        if (!p->failed) {
            ch_log(CH_LOG_ERR,
                   "invariant broken: offset %lld of %s[%d] would be committed, and no "
                   "changelog flush ended there (a user with events on both sides has no "
                   "record of its state at it: a restore would lose the events before it "
                   "since the user's last record); stopping",
                   (long long)next_offset, p->cfg->input_topic, partition);
        }
        p->failed = true;
        return;
    }
    if (ch_consumer_store(p->clients.consumer, partition, next_offset, err, sizeof(err)) < 0) {
        /* The partition was revoked; its new owner reprocesses from the last
         * commit, so nothing is lost. */
        ch_log(CH_LOG_DEBUG, "not storing offset: %s", err);
        return;
    }
    ch_snapshot_stored(p, partition, next_offset);
}

static void advance(ch_pipeline_t *p) { ch_tracker_advance(p->tracker, store, p); }

static int produce(ch_pipeline_t *p, ch_tracked_t *b, uintptr_t kind, const char *topic,
                   int32_t partition, const void *key, size_t key_len, const void *value,
                   size_t value_len, const ch_header_t *h, size_t n_h, char *err, size_t errlen) {
    void *tagged = (void *)((uintptr_t)b | kind);
    for (;;) {
        int r = ch_producer_send(p->clients.producer, topic, partition, key, key_len, value,
                                 value_len, h, n_h, tagged, 0, err, errlen);
        if (r != -ENOBUFS) {
            return r;
        }
        /* The local queue is full: wait for acknowledgements (rare; the tracker bounds
         * what is in flight). */
        ch_producer_flush(p->clients.producer, 100);
    }
}

/* Send the reduced dead letters queued by delivery reports. */
static void send_refused(ch_pipeline_t *p) {
    for (size_t i = 0; i < p->n_refused; i++) {
        refused_t *r = p->refused[i];
        char err[512];
        if (produce(p, r->b, OUT_DLQ, p->cfg->dlq_topic, -1, r->key, r->key_len, r->value,
                    r->value_len, r->dh.h, r->dh.n, err, sizeof(err)) == 0) {
            p->st.dlq_sent++;
        } else {
            ch_log(CH_LOG_ERR, "reduced dead letter: %s; stopping", err);
            p->st.delivery_failures++;
            p->failed = true;
            ch_tracker_acked(r->b, false);
        }
        free(r);
    }
    p->n_refused = 0;
}

void ch_outputs_release(ch_pipeline_t *p) {
    send_refused(p);
    advance(p);
}

int ch_outputs_settle(ch_pipeline_t *p, double deadline_s) {
    for (;;) {
        double left = deadline_s - ch_now_s();
        int r = ch_producer_flush(p->clients.producer, left > 0 ? (int)(left * 1000) : 0);
        bool more = p->n_refused > 0; /* reduced dead letters from the reports just served */
        ch_outputs_release(p);
        if (!more) {
            return r;
        }
    }
}

void ch_outputs_done(ch_pipeline_t *p) {
    for (size_t i = 0; i < p->n_refused; i++) {
        free(p->refused[i]);
    }
    free(p->refused);
    p->refused = NULL;
    p->n_refused = p->cap_refused = 0;
}

int ch_outputs_send(ch_pipeline_t *p, ch_tracked_t *b, uintptr_t kind, const char *topic,
                    int32_t partition, const void *key, size_t key_len, const void *value,
                    size_t value_len, const ch_header_t *h, size_t n_h) {
    char err[512];
    if (ch_txn_ensure(p) < 0) {
        ch_tracker_fail(b);
        return -EIO;
    }
    int r = produce(p, b, kind, topic, partition, key, key_len, value, value_len, h, n_h, err,
                    sizeof(err));
    if (r == -EMSGSIZE && kind != OUT_CHANGELOG) {
        /* larger than message.max.bytes (an output of a very long feature vector, say):
         * its reduced dead letter goes instead */
        ch_msg_t m = {.topic = topic,
                      .key = key,
                      .key_len = key_len,
                      .value = value,
                      .value_len = value_len,
                      .timestamp_ms = -1};
        refused_t *rf = reduce(b, &m, "exceeding message.max.bytes");
        if (rf) {
            p->st.outputs_refused++;
            ch_log(CH_LOG_WARNING, "%s; sending a reduced dead letter to %s instead", rf->detail,
                   p->cfg->dlq_topic);
            r = produce(p, b, OUT_DLQ, p->cfg->dlq_topic, -1, rf->key, rf->key_len, rf->value,
                        rf->value_len, rf->dh.h, rf->dh.n, err, sizeof(err));
            free(rf);
            if (r == 0) {
                p->st.dlq_sent++;
            }
        }
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

#define LIT(b, s) ch_buf_append((b), (s), sizeof(s) - 1)

/* privacy.drop_fields: the decoded event as JSON without the dropped fields (user_id as
 * its pseudonym under privacy.pseudonymize) into p->out. @returns 0, -ENOMEM, -EIO. */
static int redact(ch_pipeline_t *p, const ch_event_view_t *ev) {
    ch_buf_t *o = &p->out;
    int m = p->drop_mask, r = LIT(o, "{");
    const char *sep = "";
#define FIELD(bit, name)                                                                           \
    (!(m & (bit)) && !r && !(r = ch_buf_printf(o, "%s\"" name "\":", sep)) && (sep = ",", 1))
    if (FIELD(CH_DROP_EVENT_ID, "event_id")) {
        r = ch_json_string(o, ev->event_id, ev->event_id_len);
    }
    if (FIELD(CH_DROP_USER_ID, "user_id")) {
        char id[CH_PSEUDONYM_LEN];
        if (p->pseud && ch_pseudonym_of(p->pseud, ev->user_id, ev->user_id_len, id) < 0) {
            return -EIO;
        }
        r = p->pseud ? ch_json_string(o, id, sizeof(id))
                     : ch_json_string(o, ev->user_id, ev->user_id_len);
    }
    if (FIELD(CH_DROP_TS, "ts")) {
        r = ch_buf_printf(o, "%lld", (long long)ev->ts_ms);
    }
    if (FIELD(CH_DROP_TYPE, "type")) {
        r = ch_json_string(o, ev->type, ev->type_len);
    }
    if (FIELD(CH_DROP_AMOUNT, "amount")) {
        r = ev->has_amount ? ch_json_double(o, ev->amount) : LIT(o, "null");
    }
    if (FIELD(CH_DROP_ITEM, "item")) {
        r = ev->item ? ch_json_string(o, ev->item, ev->item_len) : LIT(o, "null");
    }
    if (FIELD(CH_DROP_CATEGORY, "category")) {
        r = ev->category ? ch_json_string(o, ev->category, ev->category_len) : LIT(o, "null");
    }
    if (FIELD(CH_DROP_ATTRS, "attrs")) {
        r = LIT(o, "{");
        for (size_t i = 0; !r && i < ev->n_attrs; i++) {
            r = i ? LIT(o, ",") : 0;
            r = r ? r : ch_json_string(o, ev->attrs[i].key, ev->attrs[i].key_len);
            r = r ? r : LIT(o, ":");
            r = r ? r : ch_json_double(o, ev->attrs[i].value);
        }
        r = r ? r : LIT(o, "}");
    }
#undef FIELD
    return r ? r : LIT(o, "}");
}

void ch_outputs_dead_letter(ch_pipeline_t *p, ch_tracked_t *b, const ch_msg_t *m,
                            const ch_event_view_t *ev, ch_bad_reason_t reason, const char *why) {
    const char *name = ch_events_bad_name(reason);
    if (p->drop_mask & CH_DROP_TS && (reason == CH_BAD_TS_NEGATIVE || reason == CH_BAD_TS_FUTURE)) {
        why = "the event time is out of range (its value withheld: privacy.drop_fields)";
    } else if (p->drop_mask & (CH_DROP_ATTRS | CH_DROP_AMOUNT) && reason == CH_BAD_NON_FINITE) {
        why = "a numeric field is not finite (which one withheld: privacy.drop_fields)";
    }
    p->st.bad[reason]++;
    p->st.bad_total++;
    uint64_t dropped = 0;
    if (ch_ratelimit_allow(&p->bad_rl, &dropped)) {
        ch_log(CH_LOG_WARNING, "bad input %s[%d]@%lld (%s): %s; sent to %s%s", m->topic,
               m->partition, (long long)m->offset, name, why, p->cfg->dlq_topic,
               dropped ? " (more bad input was not logged, see metrics)" : "");
    }
    dl_headers_t d = {.n = 0};
    snprintf(d.part, sizeof(d.part), "%d", m->partition);
    snprintf(d.off, sizeof(d.off), "%lld", (long long)m->offset);
    add_str(&d, "cohortd.error.reason", name);
    add_str(&d, "cohortd.error.detail", why);
    add_str(&d, "cohortd.source.topic", m->topic);
    add_str(&d, "cohortd.source.partition", d.part);
    add_str(&d, "cohortd.source.offset", d.off);
    const void *key = m->key, *value = m->value;
    size_t key_len = m->key_len, value_len = m->value_len;
    if (p->drop_mask) {
        /* none of the dropped fields may reach the dead letter: the decoded event without
         * them, or nothing of a record that could not be decoded */
        add_str(&d, "cohortd.redacted", p->cfg->privacy_drop_fields);
        add_original(&d, m->key_len, m->value, m->value_len);
        p->out.len = 0;
        if (ev && redact(p, ev) < 0) {
            ch_log(CH_LOG_ERR, "out of memory redacting a dead letter; stopping");
            ch_tracker_fail(b);
            p->failed = true;
            return;
        }
        value = ev ? p->out.data : NULL;
        value_len = ev ? p->out.len : 0;
        if (p->drop_mask & CH_DROP_KEY) {
            key = NULL;
            key_len = 0;
        }
    }
    size_t max = ch_producer_max_message(p->clients.producer);
    size_t room = max > FRAMING_BYTES + 2048 ? max - FRAMING_BYTES : 2048;
    if (!p->drop_mask && key_len + value_len + headers_size(&d) > room) {
        /* It would not fit: a copy cut to fit, saying so (what was cut, its hash). */
        add_cut(&d, m->key_len, m->value, m->value_len);
        key_len = key_len < REDUCED_BYTES ? key_len : REDUCED_BYTES;
        size_t used = key_len + headers_size(&d);
        size_t left = room > used ? room - used : 0;
        value_len = value_len < left ? value_len : left;
        p->st.dlq_truncated++;
    }
    if (ch_outputs_send(p, b, OUT_DLQ, p->cfg->dlq_topic, -1, key, key_len, value, value_len, d.h,
                        d.n) == 0) {
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
    static const ch_header_t cause = {"cohortd-cause", "segment-refresh", 15};
    bool marked = !risk && p->refreshing;
    if (ch_outputs_send(p, b, kind, risk ? p->cfg->risk_topic : p->cfg->profile_topic, -1, r->uid,
                        r->uid_len, p->out.data, p->out.len, marked ? &cause : NULL,
                        marked ? 1 : 0) == 0) {
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
    prof.n_tags = ch_pipeline_tags(p, u); /* as of the batch: see README "Interest tags" */
    prof.with_tags = prof.n_tags > 0;
    prof.tags = p->tagv;
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
    bool has2 = p->challenger.model != NULL;
    if (p->eval && r->eid_len) { /* every scored event, whatever the emit policy */
        ch_evaluate_scored(p->eval, r->eid, r->eid_len, r->ts_ms, score,
                           has2 ? p->scores2[i] : NAN);
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
                    .model_version = ch_scorer_version(&p->scorer),
                    .with_challenger = p->cfg->model_challenger_path[0] != '\0',
                    .has_challenger = has2,
                    .challenger_score = has2 ? p->scores2[i] : 0,
                    .challenger_alert = has2 && p->scores2[i] >= thr,
                    .challenger_version = ch_scorer_version(&p->challenger)};
    publish(p, b, OUT_RISK, r,
            p->cfg->output_format == CH_FORMAT_JSON
                ? ch_json_encode_risk(&p->out, &rk)
                : ch_encode_risk(&p->out, p->cfg->output_framing, p->risk_schema_id, &rk));
}
