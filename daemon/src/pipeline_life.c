/*
 * pipeline_life.c - building the pipeline from a validated config, its shutdown, and
 * its teardown.
 *
 * Design notes
 * - Construction order follows the data: features, user table (with the daemon's
 *   record in its extra area), schemas and the event reader, scorer, segments,
 *   batch scratch and the delivery tracker, then the producer and last the
 *   consumer, whose subscription starts the flow.
 * - Shutdown stops consuming, waits (shutdown.timeout) for outputs, releases and
 *   commits their offsets and leaves the group. Built with CH_CHECK_INVARIANTS (the
 *   sanitizer build), it then checks the user table's and the segments'
 *   invariants, so every integration run verifies them.
 */
#include "evaluate.h"
#include "pipeline_int.h"
#include "segsync.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Histogram buckets: batch sizes in messages; times in seconds. */
static const double batch_event_bounds[] = {1,   2,    5,    10,   20,    50,    100,  200,
                                            500, 1000, 2000, 5000, 10000, 20000, 65536};
static const double batch_second_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                             0.025,  0.05,    0.1,    0.25,  0.5,    1};
static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                        1,     2.5,    5,     10,   30,    60,   300, 3600};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static void on_user_evicted(void *opaque, const ch_user_t *rec) {
    ch_pipeline_t *p = opaque;
    if (p->segs) {
        ch_segments_moved(p->segs, rec->segment, -1);
    }
    ch_changelog_evicted(p, rec);
}

/* The id under which an output schema is registered, needed to frame outputs the
 * Confluent way. */
static int output_schema_id(const ch_pipeline_t *p, const char *file, const char *when,
                            int32_t *ret_id, char *errbuf, size_t errlen) {
    if (p->cfg->output_framing != CH_FRAMING_CONFLUENT ||
        ch_schemafetch_registers_outputs(p->cfg) ||
        ch_schemas_id_of(p->schemas, file, ret_id) == 0) {
        return 0;
    }
    snprintf(errbuf, errlen,
             "%s/ids registers no id for %s (needed by output.framing = confluent%s)",
             p->cfg->schema_dir, file, when);
    return -EINVAL;
}

/* Scratch for one batch (rows) and per tracker slot (latency). */
static int alloc_scratch(ch_pipeline_t *p) {
    size_t rows = (size_t)p->cfg->batch_max_events, d = p->n_feats;
    size_t slots = (size_t)p->cfg->batch_max_inflight;
    p->feat_names = calloc(d, sizeof(*p->feat_names));
    p->msgs = calloc(rows, sizeof(*p->msgs));
    p->rows = calloc(rows, sizeof(*p->rows));
    p->X = calloc(rows * d, sizeof(float));
    p->scores = calloc(rows, sizeof(float));
    p->scores2 = calloc(rows, sizeof(float));
    p->prev_seg = calloc(rows, sizeof(int32_t));
    p->prev_gen = calloc(rows, sizeof(uint32_t));
    p->assign = calloc(rows, sizeof(*p->assign));
    p->reasons = calloc(d, sizeof(*p->reasons));
    p->feats = calloc(d, sizeof(*p->feats));
    p->ev_ts = calloc(slots * rows, sizeof(int64_t));
    p->kafka_ts = calloc(slots * rows, sizeof(int64_t));
    p->n_ts = calloc(slots, sizeof(size_t));
    p->observed = calloc(slots, sizeof(bool));
    if (!p->feat_names || !p->msgs || !p->rows || !p->X || !p->scores || !p->scores2 ||
        !p->prev_seg || !p->prev_gen || !p->assign || !p->reasons || !p->feats || !p->ev_ts ||
        !p->kafka_ts || !p->n_ts || !p->observed) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < d; i++) {
        p->feat_names[i] = ch_features_name(p->fs, i);
    }
    return 0;
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
    ch_ratelimit_init(&p->out_rl, 10);
    int r = ch_config_features(cfg, &p->fs, errbuf, errlen);
    if (r < 0) {
        goto out_fail;
    }
    p->n_feats = ch_features_count(p->fs);
    if (cfg->privacy_pseudonymize &&
        ((r = ch_pseudonym_new(cfg->privacy_key_file, &p->pseud, errbuf, errlen)) < 0 ||
         !(p->pseud_ids = malloc((size_t)cfg->batch_max_events * CH_PSEUDONYM_LEN)))) {
        r = r < 0 ? r : -ENOMEM;
        goto out_fail;
    }
    int drop = ch_config_drop_mask(cfg, errbuf, errlen);
    if (drop < 0) {
        r = drop;
        goto out_fail;
    }
    p->drop_mask = drop;
    char warning[512];
    p->idle_evict_ms = ch_config_idle_evict_ms(cfg, p->fs, warning, sizeof(warning));
    if (warning[0]) {
        ch_log(CH_LOG_WARNING, "%s", warning);
    }
    if ((r = ch_config_check_state(cfg, p->fs, sizeof(ch_userrec_t), errbuf, errlen)) < 0) {
        goto out_fail;
    }
    r = ch_users_new((size_t)cfg->state_max_users, (size_t)cfg->state_key_max_bytes,
                     ch_features_state_len(p->fs), sizeof(ch_userrec_t), &p->users);
    if (r < 0) {
        snprintf(errbuf, errlen,
                 "cannot reserve the user table for state.max_users = %ld: %s (lower it)",
                 cfg->state_max_users, strerror(-r));
        goto out_fail;
    }
    ch_users_set_evict_hook(p->users, on_user_evicted, p);
    const char *profile_schema =
        ch_features_tag_count(p->fs) ? "profile_update_v2.avsc" : "profile_update.avsc";
    if ((r = ch_schemas_load(cfg->schema_dir, &p->schemas, errbuf, errlen)) < 0 ||
        (r = ch_events_new(cfg, p->schemas, p->fs, &p->events, errbuf, errlen)) < 0 ||
        (r = output_schema_id(p, profile_schema,
                              ch_features_tag_count(p->fs) ? " with tags.* set" : "",
                              &p->profile_schema_id, errbuf, errlen)) < 0 ||
        (r = alloc_scratch(p)) < 0) {
        goto out_fail;
    }
    r = ch_scorer_init(&p->scorer, cfg, cfg->model_path, "champion", p->feat_names, p->n_feats,
                       (size_t)cfg->batch_max_events, errbuf, errlen);
    if (r == 0) {
        r = ch_scorer_init(&p->challenger, cfg, cfg->model_challenger_path, "challenger",
                           p->feat_names, p->n_feats, (size_t)cfg->batch_max_events, errbuf,
                           errlen);
    }
    if (r < 0 ||
        (cfg->model_path[0] &&
         (r = output_schema_id(p, ch_pipeline_risk_schema(cfg),
                               cfg->model_challenger_path[0] ? " with model.challenger_path set"
                                                             : " with model.path set",
                               &p->risk_schema_id, errbuf, errlen)) < 0) ||
        (cfg->segments.k > 0 && cfg->segments_topic[0] &&
         (r = output_schema_id(p, "segment_update.avsc", " with segments.topic set",
                               &p->segment_schema_id, errbuf, errlen)) < 0)) {
        goto out_fail;
    }
    if ((r = ch_schemafetch_init(p, profile_schema, errbuf, errlen)) < 0) {
        goto out_fail;
    }
    if (cfg->segments.k > 0 && (r = ch_segments_new(cfg, p->n_feats, (size_t)cfg->batch_max_events,
                                                    &p->segs, errbuf, errlen)) < 0) {
        goto out_fail;
    }
    if (p->segs && (!(p->ra.sums = calloc(cfg->segments.k * p->n_feats, sizeof(double))) ||
                    !(p->ra.counts = calloc(cfg->segments.k, sizeof(uint64_t))))) {
        r = -ENOMEM;
        goto out_fail;
    }
    if ((r = ch_tracker_new((size_t)cfg->batch_max_inflight, &p->tracker)) < 0) {
        goto out_fail;
    }
    ch_rebalance_hooks_t hooks = {ch_rebalance_assigned, ch_rebalance_revoked, p};
    if ((r = ch_clients_init(&p->clients, cfg, ch_outputs_delivered, p, &hooks, errbuf, errlen)) <
            0 ||
        (r = ch_changelog_init(p, errbuf, errlen)) < 0 ||
        (r = ch_restore_init(p, errbuf, errlen)) < 0 ||
        (r = ch_snapshot_init(p, errbuf, errlen)) < 0 || (r = ch_txn_init(p, errbuf, errlen)) < 0 ||
        (p->segs && cfg->segments_sync_topic[0] &&
         (r = ch_segsync_new(p, &p->sync, errbuf, errlen)) < 0) ||
        (cfg->eval_labels_topic[0] && (r = ch_evaluate_new(p, &p->eval, errbuf, errlen)) < 0)) {
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

/* The invariants of the state, checked when built with CH_CHECK_INVARIANTS. */
static int check_invariants(const ch_pipeline_t *p) {
#ifdef CH_CHECK_INVARIANTS
    char why[256] = "";
    if (!ch_users_check(p->users, why, sizeof(why)) ||
        (p->segs && !ch_segments_check(p->segs, p->users, why, sizeof(why)))) {
        ch_log(CH_LOG_ERR, "invariant broken at shutdown: %s", why);
        return -EIO;
    }
    ch_log(CH_LOG_DEBUG, "invariants hold at shutdown (%zu users)", ch_users_count(p->users));
#else
    (void)p;
#endif
    return 0;
}

int ch_pipeline_shutdown(ch_pipeline_t *p, double deadline_s, ch_pipeline_stop_t *ret) {
    int r = 0;
    char err[256];
    *ret = (ch_pipeline_stop_t){0};
    p->stopping = true; /* from here on every blocking call is bounded by the deadline */
    p->deadline_s = deadline_s;
    if (!ch_pipeline_failed(p)) {
        ch_changelog_flush(p, true); /* the state of everything processed, before the commit */
    }
    if (p->txn.open) { /* failed before its commit: nothing of it may become visible */
        ch_txn_abort(p, "stopping after a failure");
    }
    if (ch_outputs_settle(p, deadline_s) < 0) {
        ret->unacked = ch_producer_outstanding(p->clients.producer);
        ch_log(CH_LOG_ERR,
               "%zu output(s) unacknowledged at the end of shutdown.timeout; their events are "
               "not committed and will be reprocessed on restart",
               ret->unacked);
        r = -ETIMEDOUT;
    }
    if (!p->txn.on &&
        ch_consumer_commit(p->clients.consumer, ch_budget_ms(p, INFINITY), err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "final %s", err);
    }
    if (ch_consumer_close(p->clients.consumer, ch_budget_ms(p, INFINITY), err, sizeof(err)) < 0) {
        ch_log(CH_LOG_ERR, "%s", err);
    }
    ret->uncommitted_parts =
        ch_consumer_uncommitted(p->clients.consumer, &ret->uncommitted_records);
    if (ret->unacked) {
        /* the broker may still deliver them: nothing of theirs is waited for any more */
        ch_producer_purge(p->clients.producer);
    }
    if (ret->uncommitted_parts || (ch_pipeline_failed(p) && r == 0)) {
        r = -EIO;
    }
    int c = check_invariants(p);
    return r ? r : c;
}

ch_pipeline_t *ch_pipeline_free(ch_pipeline_t *p) {
    if (!p) {
        return NULL;
    }
    p->sync = ch_segsync_free(p->sync);
    p->eval = ch_evaluate_free(p->eval);
    ch_clients_done(&p->clients);
    ch_snapshot_done(p);
    ch_txn_done(p);
    ch_schemafetch_done(p);
    ch_changelog_done(p);
    ch_outputs_done(p);
    ch_restore_done(p);
    p->tracker = ch_tracker_free(p->tracker);
    p->events = ch_events_free(p->events);
    ch_schemas_free(p->schemas);
    ch_users_free(p->users);
    p->segs = ch_segments_free(p->segs);
    free(p->ra.sums);
    free(p->ra.counts);
    ch_scorer_done(&p->scorer);
    ch_scorer_done(&p->challenger);
    ch_features_free(p->fs);
    ch_pseudonym_free(p->pseud);
    free(p->pseud_ids);
    free(p->feat_names);
    free(p->msgs);
    free(p->rows);
    free(p->X);
    free(p->scores);
    free(p->scores2);
    free(p->prev_seg);
    free(p->prev_gen);
    free(p->assign);
    free(p->reasons);
    free(p->feats);
    free(p->ev_ts);
    free(p->kafka_ts);
    free(p->n_ts);
    free(p->observed);
    free(p->assigned);
    ch_buf_done(&p->out);
    free(p);
    return NULL;
}

int ch_pipeline_consumer_fd(const ch_pipeline_t *p) { return ch_consumer_fd(p->clients.consumer); }

int ch_pipeline_reader_fd(const ch_pipeline_t *p) {
    return p->clients.reader ? ch_reader_fd(p->clients.reader) : -1;
}

int ch_pipeline_background(ch_pipeline_t *p) {
    bool more = ch_restore_drain(p);
    more = ch_snapshot_step(p) || more;
    more = ch_segsync_work(p) || more;
    more = ch_evaluate_work(p) || more;
    more = ch_reassign_step(p) || more;
    return more ? 1 : 0;
}

int ch_pipeline_sync_fd(const ch_pipeline_t *p) { return p->sync ? ch_segsync_fd(p->sync) : -1; }

int ch_pipeline_eval_fd(const ch_pipeline_t *p) { return p->eval ? ch_evaluate_fd(p->eval) : -1; }

int ch_pipeline_evaluation(ch_pipeline_t *p, ch_evaluate_status_t *ret) {
    return p->eval ? ch_evaluate_status(p->eval, ret) : -ENOENT;
}

int ch_pipeline_producer_fd(const ch_pipeline_t *p) { return ch_producer_fd(p->clients.producer); }
