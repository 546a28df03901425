/*
 * evaluate.c - live evaluation: labels joined to the scores cohortd gave the events.
 *
 * Design notes
 * - Every scored event with an id goes into a bounded store (model/scorestore.c:
 *   evaluation.score_ttl of event time, evaluation.max_scores entries), whatever
 *   risk.emit publishes, so the figures are those of the model and not of the emit
 *   policy. With risk.emit = every (the default) they are the published scores.
 * - Labels are read from every partition of evaluation.labels_topic from its end, by
 *   a reader outside the group: each instance holds the scores of its own partitions'
 *   events, so each label matches on the one instance that scored its event and is
 *   unknown on the others. The store lives in memory: labels of events scored before
 *   a restart are unknown after it.
 * - The join follows event time. A label whose event is held matches at once. One
 *   whose event is not held waits while the stream time (the newest score's event
 *   time) is before the label's time, since the event may still come (a replay, or an
 *   input partition behind the labels); once the stream time passes it, it is
 *   unknown. At most PENDING_MAX labels wait; beyond that the oldest is dropped and
 *   counted.
 * - The window holds (score, label, label time) of matched labels: those within
 *   evaluation.window of the newest label time, at most evaluation.window_max. The
 *   figures are computed from it when asked (/metrics, a record), one sort each.
 * - A label that does not parse is bad input: counted, logged (rate-limited) and sent
 *   to output.dlq_topic with the reason, through this module's own producer (the
 *   labels are never committed: nothing to hold back).
 */
#include "evaluate.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ch/json.h"
#include "clients.h"
#include "log.h"
#include "pipeline_int.h"

#define READ_BUDGET 256
#define PENDING_MAX 100000
#define PARTS_TIMEOUT_MS 10000

typedef struct pending {
    char *id;
    size_t len;
    int64_t ts;
    uint8_t label;
} pending_t;

typedef struct wpair {
    float score, score2; /* score2: the challenger's, NaN without one */
    uint8_t label;
    int64_t ts;
} wpair_t;

struct ch_evaluate {
    const ch_config_t *cfg;
    ch_producer_t *prod;
    ch_reader_t *reader;
    ch_scorestore_t *store;
    pending_t *pend; /* ring of PENDING_MAX */
    size_t pend_head, pend_n;
    wpair_t *win; /* ring of eval_window_max */
    size_t win_head, win_n;
    int64_t newest_label;
    float *tmp_s;
    uint8_t *tmp_y;
    uint64_t matched, unknown, bad, pending_dropped, records;
    int parts, parts_ready; /* labels partitions, and those whose end was reached once */
    double next_record_s;
    char instance[128];
    ch_ratelimit_t rl;
    ch_buf_t out;
};

static void on_sent(void *opaque, void *msg_opaque, int32_t partition, int64_t offset, int err,
                    const char *errstr) {
    ch_evaluate_t *e = opaque;
    (void)msg_opaque;
    (void)partition;
    (void)offset;
    uint64_t quiet = 0;
    if (err && ch_ratelimit_allow(&e->rl, &quiet)) {
        ch_log(CH_LOG_WARNING, "evaluation: a record was not written: %s (%llu more quiet)",
               errstr ? errstr : "unknown error", (unsigned long long)quiet);
    }
}

ch_evaluate_t *ch_evaluate_free(ch_evaluate_t *e) {
    if (!e) {
        return NULL;
    }
    if (e->prod && ch_producer_flush(e->prod, 1000) < 0) {
        ch_producer_purge(e->prod);
    }
    e->prod = ch_producer_free(e->prod);
    e->reader = ch_reader_free(e->reader);
    e->store = ch_scorestore_free(e->store);
    for (size_t i = 0; e->pend && i < e->pend_n; i++) {
        free(e->pend[(e->pend_head + i) % PENDING_MAX].id);
    }
    free(e->pend);
    free(e->win);
    free(e->tmp_s);
    free(e->tmp_y);
    ch_buf_done(&e->out);
    free(e);
    return NULL;
}

static int topic_parts(ch_pipeline_t *p, const char *key, const char *topic, char *errbuf,
                       size_t errlen) {
    char why[512];
    int n =
        ch_consumer_partition_count(p->clients.consumer, topic, PARTS_TIMEOUT_MS, why, sizeof(why));
    if (n == -ENOENT) {
        snprintf(errbuf, errlen,
                 "%s: topic %s does not exist. Create it, e.g. kafka-topics.sh --create "
                 "--topic %s",
                 key, topic, topic);
    } else if (n < 0) {
        snprintf(errbuf, errlen, "%s %s: %s", key, topic, why);
    }
    return n;
}

int ch_evaluate_new(ch_pipeline_t *p, ch_evaluate_t **ret, char *errbuf, size_t errlen) {
    const ch_config_t *cfg = p->cfg;
    ch_evaluate_t *e = calloc(1, sizeof(*e));
    if (!e) {
        return -ENOMEM;
    }
    e->cfg = cfg;
    ch_buf_init(&e->out);
    ch_ratelimit_init(&e->rl, 10);
    e->newest_label = INT64_MIN;
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(e->instance, sizeof(e->instance), "%s-%ld", host, (long)getpid());
    int r = ch_scorestore_new(cfg->eval_max_scores, (int64_t)cfg->eval_score_ttl_ms, &e->store);
    e->pend = calloc(PENDING_MAX, sizeof(pending_t));
    e->win = calloc(cfg->eval_window_max, sizeof(wpair_t));
    e->tmp_s = calloc(cfg->eval_window_max, sizeof(float));
    e->tmp_y = calloc(cfg->eval_window_max, sizeof(uint8_t));
    if (r == 0 && (!e->pend || !e->win || !e->tmp_s || !e->tmp_y)) {
        r = -ENOMEM;
    }
    int parts = 0;
    if (r == 0) {
        parts = topic_parts(p, "evaluation.labels_topic", cfg->eval_labels_topic, errbuf, errlen);
        r = parts < 0 ? parts : 0;
    }
    if (r == 0 && cfg->eval_metrics_topic[0]) {
        int m = topic_parts(p, "evaluation.metrics_topic", cfg->eval_metrics_topic, errbuf, errlen);
        r = m < 0 ? m : 0;
    }
    if (r == 0) {
        r = ch_clients_side(&p->clients, cfg, cfg->eval_labels_topic, on_sent, e, &e->prod,
                            &e->reader, errbuf, errlen);
    }
    for (int i = 0; r == 0 && i < parts; i++) {
        char why[512];
        if ((r = ch_reader_start(e->reader, i, CH_READ_END, why, sizeof(why))) < 0) {
            snprintf(errbuf, errlen, "evaluation.labels_topic %s: %s", cfg->eval_labels_topic, why);
        }
    }
    if (r < 0) {
        ch_evaluate_free(e);
        return r;
    }
    e->parts = parts;
    e->next_record_s = ch_now_s() + cfg->eval_interval_ms / 1000.0;
    ch_log(CH_LOG_INFO,
           "evaluation: labels from %s (%d partitions, from their end); scores wait %.0f s of "
           "event time (at most %zu); window %.0f s of label time (at most %zu pairs)%s%s",
           cfg->eval_labels_topic, parts, cfg->eval_score_ttl_ms / 1000.0, cfg->eval_max_scores,
           cfg->eval_window_ms / 1000.0, cfg->eval_window_max,
           cfg->eval_metrics_topic[0] ? "; records to " : "", cfg->eval_metrics_topic);
    *ret = e;
    return 0;
}

int ch_evaluate_fd(const ch_evaluate_t *e) { return ch_reader_fd(e->reader); }

void ch_evaluate_scored(ch_evaluate_t *e, const char *event_id, size_t len, int64_t ts_ms,
                        float score, float challenger_score) {
    float sc[CH_SCORESTORE_MODELS] = {score, challenger_score};
    ch_scorestore_put(e->store, event_id, len, ts_ms, sc);
}

/* ---- labels -------------------------------------------------------------- */

static void window_add(ch_evaluate_t *e, const float *score, uint8_t label, int64_t ts) {
    size_t cap = e->cfg->eval_window_max;
    if (e->win_n == cap) {
        e->win_head = (e->win_head + 1) % cap;
        e->win_n--;
    }
    e->win[(e->win_head + e->win_n) % cap] =
        (wpair_t){.score = score[0], .score2 = score[1], .label = label, .ts = ts};
    e->win_n++;
    if (ts > e->newest_label) {
        e->newest_label = ts;
    }
}

/* Join a label to its score: 0 matched, -ENOENT not held. */
static int join(ch_evaluate_t *e, const char *id, size_t len, uint8_t label, int64_t ts) {
    float sc[CH_SCORESTORE_MODELS];
    int64_t scored_ts;
    if (ch_scorestore_take(e->store, id, len, sc, &scored_ts) < 0) {
        return -ENOENT;
    }
    window_add(e, sc, label, ts);
    e->matched++;
    return 0;
}

static void dead_letter(ch_evaluate_t *e, const ch_msg_t *m, const char *why) {
    e->bad++;
    uint64_t quiet = 0;
    if (ch_ratelimit_allow(&e->rl, &quiet)) {
        ch_log(CH_LOG_WARNING, "bad label %s[%d]@%lld: %s; sent to %s%s", m->topic, m->partition,
               (long long)m->offset, why, e->cfg->dlq_topic,
               quiet ? " (more bad labels were not logged, see metrics)" : "");
    }
    char part[16], off[24];
    snprintf(part, sizeof(part), "%d", m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    /* with privacy.drop_fields, a label that did not parse may hold any of them: its
     * bytes stay out of the dead letter, as an undecodable event's do */
    const char *drop = e->cfg->privacy_drop_fields;
    bool redact = drop[0] != '\0';
    ch_header_t h[] = {
        {"cohortd.error.reason", "bad_label", 9},
        {"cohortd.error.detail", why, strlen(why)},
        {"cohortd.source.topic", m->topic, strlen(m->topic)},
        {"cohortd.source.partition", part, strlen(part)},
        {"cohortd.source.offset", off, strlen(off)},
        {"cohortd.redacted", drop, strlen(drop)},
    };
    char err[256];
    if (ch_producer_send(e->prod, e->cfg->dlq_topic, -1, redact ? NULL : m->key,
                         redact ? 0 : m->key_len, redact ? NULL : m->value,
                         redact ? 0 : m->value_len, h, sizeof(h) / sizeof(h[0]) - !redact, NULL, -1,
                         err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "evaluation: a bad label could not be sent to %s: %s",
               e->cfg->dlq_topic, err);
    }
}

static void on_label(ch_evaluate_t *e, const ch_msg_t *m) {
    json_error_t jerr;
    json_t *o = json_loadb(m->value ? m->value : "", m->value_len, JSON_REJECT_DUPLICATES, &jerr);
    char why[200];
    if (!o || !json_is_object(o)) {
        snprintf(why, sizeof(why), "not a JSON object%s%s", o ? "" : ": ", o ? "" : jerr.text);
        json_decref(o);
        dead_letter(e, m, why);
        return;
    }
    json_t *id = json_object_get(o, "event_id"), *lb = json_object_get(o, "label");
    json_t *ts = json_object_get(o, "ts");
    const char *err = NULL;
    int64_t t = m->timestamp_ms;
    int label = -1;
    if (json_is_boolean(lb)) {
        label = json_is_true(lb);
    } else if (json_is_integer(lb) &&
               (json_integer_value(lb) == 0 || json_integer_value(lb) == 1)) {
        label = (int)json_integer_value(lb);
    }
    if (!json_is_string(id) || json_string_length(id) == 0) {
        err = "event_id is missing or not a non-empty string";
    } else if (json_string_length(id) > (size_t)e->cfg->input_event_id_max_bytes) {
        err = "event_id is longer than input.event_id_max_bytes";
    } else if (label < 0) {
        err = "label is missing or not 0, 1, false or true";
    } else if (ts && !json_is_integer(ts)) {
        err = "ts is not an integer (milliseconds since the epoch)";
    } else if (ts) {
        t = json_integer_value(ts);
    }
    if (!err && t < 0) {
        err = "the label has no time (no ts and no record timestamp)";
    }
    if (err) {
        json_decref(o);
        dead_letter(e, m, err);
        return;
    }
    const char *s = json_string_value(id);
    size_t len = json_string_length(id);
    if (join(e, s, len, (uint8_t)label, t) < 0) {
        if (t > ch_scorestore_newest(e->store)) { /* its event may still come */
            if (e->pend_n == PENDING_MAX) {
                pending_t *old = &e->pend[e->pend_head];
                free(old->id);
                e->pend_head = (e->pend_head + 1) % PENDING_MAX;
                e->pend_n--;
                e->pending_dropped++;
            }
            pending_t *q = &e->pend[(e->pend_head + e->pend_n) % PENDING_MAX];
            *q = (pending_t){.id = malloc(len), .len = len, .ts = t, .label = (uint8_t)label};
            if (q->id) {
                memcpy(q->id, s, len);
                e->pend_n++;
            } else {
                e->pending_dropped++;
            }
        } else {
            e->unknown++;
        }
    }
    json_decref(o);
}

/* Labels whose time the stream has reached: joined now, or unknown. */
static void settle_pending(ch_evaluate_t *e) {
    int64_t now = ch_scorestore_newest(e->store);
    while (e->pend_n) {
        pending_t *q = &e->pend[e->pend_head];
        if (join(e, q->id, q->len, q->label, q->ts) < 0) {
            if (q->ts > now) {
                break; /* its event may still come */
            }
            e->unknown++;
        }
        free(q->id);
        e->pend_head = (e->pend_head + 1) % PENDING_MAX;
        e->pend_n--;
    }
}

/* ---- figures and records --------------------------------------------------- */

int ch_evaluate_status(ch_evaluate_t *e, ch_evaluate_status_t *ret) {
    memset(ret, 0, sizeof(*ret));
    size_t cap = e->cfg->eval_window_max;
    int64_t span = (int64_t)e->cfg->eval_window_ms;
    int64_t from = e->newest_label < INT64_MIN + span ? INT64_MIN : e->newest_label - span;
    while (e->win_n && e->win[e->win_head].ts < from) {
        e->win_head = (e->win_head + 1) % cap;
        e->win_n--;
    }
    size_t n = 0;
    int64_t lo = INT64_MAX;
    for (size_t i = 0; i < e->win_n; i++) {
        const wpair_t *w = &e->win[(e->win_head + i) % cap];
        if (w->ts < from) {
            continue; /* a label time out of order, older than the window */
        }
        e->tmp_s[n] = w->score;
        e->tmp_y[n] = w->label;
        lo = w->ts < lo ? w->ts : lo;
        n++;
    }
    ret->labels_matched = e->matched;
    ret->labels_unknown = e->unknown;
    ret->labels_bad = e->bad;
    ret->labels_pending = e->pend_n;
    ret->labels_pending_dropped = e->pending_dropped;
    ret->records_sent = e->records;
    ret->label_partitions = e->parts;
    ret->label_partitions_ready = e->parts_ready;
    ret->window_from_ms = n ? lo : 0;
    ret->window_to_ms = n ? e->newest_label : 0;
    ch_scorestore_stats(e->store, &ret->store);
    int r = ch_eval_figures(e->tmp_s, e->tmp_y, n, e->cfg->risk_threshold, &ret->fig);
    /* the challenger's figures, over the pairs it scored */
    size_t n2 = 0;
    for (size_t i = 0; r == 0 && i < e->win_n; i++) {
        const wpair_t *w = &e->win[(e->win_head + i) % cap];
        if (w->ts >= from && !isnan(w->score2)) {
            e->tmp_s[n2] = w->score2;
            e->tmp_y[n2] = w->label;
            n2++;
        }
    }
    ret->challenger = n2 > 0;
    return r ? r : ch_eval_figures(e->tmp_s, e->tmp_y, n2, e->cfg->risk_threshold, &ret->fig2);
}

#define LIT(b, s) ch_buf_append((b), (s), sizeof(s) - 1)

int ch_evaluate_encode_figures(ch_buf_t *b, const ch_eval_figures_t *f) {
    int r = ch_buf_printf(b, "\"pairs\":%zu,\"positives\":%zu", f->n, f->positives);
    const struct {
        const char *name;
        double v;
    } figs[] = {{"roc_auc", f->roc_auc},
                {"average_precision", f->average_precision},
                {"precision", f->precision},
                {"recall", f->recall},
                {"log_loss", f->log_loss}};
    for (size_t i = 0; !r && i < sizeof(figs) / sizeof(figs[0]); i++) {
        r = ch_buf_printf(b, ",\"%s\":", figs[i].name);
        r = r ? r : ch_json_double(b, figs[i].v);
    }
    r = r ? r
          : ch_buf_printf(b, ",\"alerts\":%zu,\"true_alerts\":%zu,\"calibration\":[", f->alerts,
                          f->true_alerts);
    for (int d = 0; !r && d < CH_EVAL_BINS; d++) {
        r = ch_buf_printf(b, "%s{\"decile\":%d,\"pairs\":%zu,\"mean_score\":", d ? "," : "", d + 1,
                          f->bin_n[d]);
        r = r ? r : ch_json_double(b, f->bin_score[d]);
        r = r ? r : LIT(b, ",\"positive_rate\":");
        r = r ? r : ch_json_double(b, f->bin_positive[d]);
        r = r ? r : LIT(b, "}");
    }
    return r ? r : LIT(b, "]");
}

static int encode_record(ch_buf_t *b, const ch_evaluate_status_t *s, const char *instance,
                         const char *version, const char *version2, double threshold) {
    int r = ch_buf_printf(b, "{\"instance\":");
    r = r ? r : ch_json_string(b, instance, strlen(instance));
    r = r ? r : ch_buf_printf(b, ",\"ts\":%lld,\"model_version\":", (long long)(ch_now_s() * 1e3));
    r = r ? r : ch_json_string(b, version, strlen(version));
    r = r ? r
          : ch_buf_printf(b, ",\"window\":{\"from\":%lld,\"to\":%lld},\"threshold\":",
                          (long long)s->window_from_ms, (long long)s->window_to_ms);
    r = r ? r : ch_json_double(b, threshold);
    r = r ? r : LIT(b, ",");
    r = r ? r : ch_evaluate_encode_figures(b, &s->fig);
    r = r ? r : LIT(b, ",\"challenger\":");
    if (!r && s->challenger) {
        r = LIT(b, "{\"model_version\":");
        r = r ? r : ch_json_string(b, version2 ? version2 : "", version2 ? strlen(version2) : 0);
        r = r ? r : LIT(b, ",");
        r = r ? r : ch_evaluate_encode_figures(b, &s->fig2);
        r = r ? r : LIT(b, "}");
    } else if (!r) {
        r = LIT(b, "null");
    }
    return r ? r
             : ch_buf_printf(b,
                             ",\"labels\":{\"matched\":%llu,\"unknown\":%llu,\"bad\":%llu,"
                             "\"pending\":%zu,\"pending_dropped\":%llu},\"scores_held\":%zu}",
                             (unsigned long long)s->labels_matched,
                             (unsigned long long)s->labels_unknown,
                             (unsigned long long)s->labels_bad, s->labels_pending,
                             (unsigned long long)s->labels_pending_dropped, s->store.held);
}

static void send_record(ch_pipeline_t *p, ch_evaluate_t *e) {
    ch_evaluate_status_t s;
    if (ch_evaluate_status(e, &s) < 0) {
        ch_log(CH_LOG_WARNING, "evaluation: out of memory computing the figures");
        return;
    }
    const char *version = ch_scorer_version(&p->scorer);
    e->out.len = 0;
    char err[256];
    if (encode_record(&e->out, &s, e->instance, version ? version : "",
                      ch_scorer_version(&p->challenger), p->cfg->risk_threshold) < 0 ||
        ch_producer_send(e->prod, p->cfg->eval_metrics_topic, -1, e->instance, strlen(e->instance),
                         e->out.data, e->out.len, NULL, 0, NULL, -1, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "evaluation: a record to %s was not sent",
               p->cfg->eval_metrics_topic);
        return;
    }
    e->records++;
}

bool ch_evaluate_work(ch_pipeline_t *p) {
    ch_evaluate_t *e = p->eval;
    if (!e) {
        return false;
    }
    ch_producer_poll(e->prod);
    ch_msg_t msgs[READ_BUDGET];
    int n = ch_reader_drain(e->reader, msgs, READ_BUDGET);
    for (int i = 0; i < n; i++) {
        if (msgs[i].err) {
            uint64_t quiet = 0;
            if (ch_ratelimit_allow(&e->rl, &quiet)) {
                ch_log(CH_LOG_WARNING, "evaluation: reading %s: %s", p->cfg->eval_labels_topic,
                       msgs[i].errstr ? msgs[i].errstr : "error");
            }
        } else if (msgs[i].eof) {
            e->parts_ready += e->parts_ready < e->parts;
        } else {
            on_label(e, &msgs[i]);
        }
    }
    settle_pending(e);
    if (p->cfg->eval_metrics_topic[0] && ch_now_s() >= e->next_record_s) {
        e->next_record_s = ch_now_s() + p->cfg->eval_interval_ms / 1000.0;
        send_record(p, e);
    }
    return n == READ_BUDGET;
}
