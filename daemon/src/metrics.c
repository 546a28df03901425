/*
 * metrics.c - Prometheus text exposition (format 0.0.4).
 *
 * Design notes
 * - Rendered on demand from one stats snapshot, so the numbers of one scrape
 *   are consistent with each other. Counters end in _total; rates (events/s,
 *   alert rate) are for PromQL's rate(), not computed here.
 * - Every label value passes through escape_label(); model versions and topic
 *   names come from files and configuration.
 * - Nothing here allocates per metric beyond the output buffer.
 */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "ch/kafka.h"

#include "evaluate.h"

#define MAX_LAG_PARTITIONS 4096

typedef struct out {
    ch_buf_t *b;
    int err;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out_t *o, const char *fmt, ...) {
    if (o->err) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    o->err = ch_buf_vprintf(o->b, fmt, ap);
    va_end(ap);
}

/* Label values: backslash, double quote and newline escaped; at most len-1 bytes. */
static const char *escape_label(const char *s, char *buf, size_t len) {
    size_t o = 0;
    for (; *s && o + 3 < len; s++) {
        if (*s == '\\' || *s == '"') {
            buf[o++] = '\\';
            buf[o++] = *s;
        } else if (*s == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else {
            buf[o++] = *s;
        }
    }
    buf[o] = '\0';
    return buf;
}

static void family(out_t *o, const char *name, const char *type, const char *help) {
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(out_t *o, const char *name, const char *help, uint64_t v) {
    family(o, name, "counter", help);
    put(o, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(out_t *o, const char *name, const char *help, double v) {
    family(o, name, "gauge", help);
    put(o, "%s %.17g\n", name, v);
}

/* One histogram series; labels is "" or 'name="value",'. */
static void histogram(out_t *o, const char *name, const char *labels, const ch_histogram_t *h) {
    for (size_t i = 0; i < h->n_bounds; i++) {
        put(o, "%s_bucket{%sle=\"%.10g\"} %llu\n", name, labels, h->bounds[i],
            (unsigned long long)ch_histogram_cumulative(h, i));
    }
    put(o, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)h->count);
    size_t ll = strlen(labels);
    if (ll) {
        put(o, "%s_sum{%.*s} %.17g\n%s_count{%.*s} %llu\n", name, (int)ll - 1, labels, h->sum,
            name, (int)ll - 1, labels, (unsigned long long)h->count);
    } else {
        put(o, "%s_sum %.17g\n%s_count %llu\n", name, h->sum, name,
            (unsigned long long)h->count);
    }
}

/* Feature drift (a model exported with training bins). */
static void drift_metrics(out_t *o, ch_pipeline_t *p) {
    const char *name = NULL;
    double psi = 0;
    size_t vectors = 0;
    uint64_t warnings = 0;
    size_t d = ch_pipeline_drift(p, SIZE_MAX, &name, &psi, &vectors, &warnings);
    if (d == 0) {
        return;
    }
    gauge(o, "cohortd_drift_vectors", "Scored vectors in the drift window (drift.window).",
          (double)vectors);
    counter(o, "cohortd_drift_warnings_total",
            "Times a feature's PSI rose above drift.warn (each logged as a warning).", warnings);
    family(o, "cohortd_drift_psi", "gauge",
           "Each feature's population stability index over the drift window against the "
           "model's training distribution (0.1: a small shift; 0.25: a major one).");
    char e1[256];
    for (size_t j = 0; j < d; j++) {
        ch_pipeline_drift(p, j, &name, &psi, &vectors, &warnings);
        put(o, "cohortd_drift_psi{feature=\"%s\"} %.17g\n", escape_label(name, e1, sizeof(e1)),
            psi);
    }
}

/* Live evaluation (evaluation.labels_topic): counters, and the window's figures. */
static void eval_metrics(out_t *o, ch_pipeline_t *p) {
    ch_evaluate_status_t es;
    if (ch_pipeline_evaluation(p, &es) < 0) {
        return; /* off, or no memory for the figures this time */
    }
    family(o, "cohortd_eval_labels_total", "counter",
           "Labels read from evaluation.labels_topic, by result: matched to a held score; "
           "unknown (no score held: scored by another instance, before a restart, or expired); "
           "bad (sent to the dead-letter topic); pending_dropped (too many waiting).");
    const struct {
        const char *r;
        uint64_t v;
    } lr[] = {{"matched", es.labels_matched},
              {"unknown", es.labels_unknown},
              {"bad", es.labels_bad},
              {"pending_dropped", es.labels_pending_dropped}};
    for (size_t i = 0; i < sizeof(lr) / sizeof(lr[0]); i++) {
        put(o, "cohortd_eval_labels_total{result=\"%s\"} %llu\n", lr[i].r,
            (unsigned long long)lr[i].v);
    }
    gauge(o, "cohortd_eval_labels_pending",
          "Labels waiting for the stream time to reach their time (their event may come).",
          (double)es.labels_pending);
    gauge(o, "cohortd_eval_label_partitions_ready",
          "Partitions of evaluation.labels_topic read to their end at least once.",
          (double)es.label_partitions_ready);
    gauge(o, "cohortd_eval_scores_held", "Scores held waiting for their label.",
          (double)es.store.held);
    family(o, "cohortd_eval_scores_dropped_total", "counter",
           "Scores that left the store without a label: expired (evaluation.score_ttl) or "
           "evicted (evaluation.max_scores).");
    put(o, "cohortd_eval_scores_dropped_total{reason=\"expired\"} %llu\n",
        (unsigned long long)es.store.expired);
    put(o, "cohortd_eval_scores_dropped_total{reason=\"evicted\"} %llu\n",
        (unsigned long long)es.store.evicted);
    counter(o, "cohortd_eval_records_total", "Records sent to evaluation.metrics_topic.",
            es.records_sent);
    /* the champion's figures, and the challenger's next to them */
    const ch_eval_figures_t *figs[2] = {&es.fig, es.challenger ? &es.fig2 : NULL};
    const char *const model[2] = {"champion", "challenger"};
    const struct {
        const char *name, *help;
        size_t off;
        bool count;
    } g[] = {
#define F(field) offsetof(ch_eval_figures_t, field)
        {"cohortd_eval_pairs", "Labelled scores in the window (evaluation.window).", F(n), true},
        {"cohortd_eval_positives", "Positive labels in the window.", F(positives), true},
        {"cohortd_eval_roc_auc", "ROC AUC over the window (NaN with one class only).", F(roc_auc),
         false},
        {"cohortd_eval_average_precision", "Average precision over the window.",
         F(average_precision), false},
        {"cohortd_eval_precision", "Precision at risk.threshold over the window.", F(precision),
         false},
        {"cohortd_eval_recall", "Recall at risk.threshold over the window.", F(recall), false},
        {"cohortd_eval_log_loss", "Log loss over the window (scores clipped to [1e-15, 1-1e-15]).",
         F(log_loss), false},
#undef F
    };
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        family(o, g[i].name, "gauge", g[i].help);
        for (int k = 0; k < 2 && figs[k]; k++) {
            const char *at = (const char *)figs[k] + g[i].off;
            double v = g[i].count ? (double)*(const size_t *)at : *(const double *)at;
            put(o, "%s{model=\"%s\"} %.17g\n", g[i].name, model[k], v);
        }
    }
    family(o, "cohortd_eval_calibration_pairs", "gauge",
           "Pairs in each score decile of the window (calibration_curve, quantile bins).");
    for (int k = 0; k < 2 && figs[k]; k++) {
        for (int d = 0; d < CH_EVAL_BINS; d++) {
            put(o, "cohortd_eval_calibration_pairs{model=\"%s\",decile=\"%d\"} %zu\n", model[k],
                d + 1, figs[k]->bin_n[d]);
        }
    }
    family(o, "cohortd_eval_calibration_score", "gauge", "Mean score in each decile.");
    for (int k = 0; k < 2 && figs[k]; k++) {
        for (int d = 0; d < CH_EVAL_BINS; d++) {
            put(o, "cohortd_eval_calibration_score{model=\"%s\",decile=\"%d\"} %.17g\n", model[k],
                d + 1, figs[k]->bin_score[d]);
        }
    }
    family(o, "cohortd_eval_calibration_positive_rate", "gauge",
           "Fraction of positive labels in each decile (against the mean score: calibration).");
    for (int k = 0; k < 2 && figs[k]; k++) {
        for (int d = 0; d < CH_EVAL_BINS; d++) {
            put(o, "cohortd_eval_calibration_positive_rate{model=\"%s\",decile=\"%d\"} %.17g\n",
                model[k], d + 1, figs[k]->bin_positive[d]);
        }
    }
}

int ch_metrics_render(ch_pipeline_t *p, const ch_config_t *cfg, const ch_metrics_ctx_t *ctx,
                      ch_buf_t *buf) {
    ch_pipeline_stats_t s;
    ch_pipeline_stats(p, &s);
    buf->len = 0;
    out_t o = {buf, 0};
    char e1[CH_CONF_STR * 2], e2[CH_CONF_STR * 2];

    family(&o, "cohortd_build_info", "gauge", "Version of cohortd and librdkafka.");
    put(&o, "cohortd_build_info{version=\"%s\",librdkafka=\"%s\"} 1\n", CH_VERSION,
        escape_label(ch_kafka_version(), e1, sizeof(e1)));
    gauge(&o, "cohortd_start_time_seconds", "Unix time the process started.", ctx->start_time_s);
    char why[256];
    gauge(&o, "cohortd_ready", "1 when /readyz answers 200.",
          ch_pipeline_ready(p, why, sizeof(why)) ? 1 : 0);

    /* ---- input */
    counter(&o, "cohortd_events_consumed_total", "Messages taken from the input topic.",
            s.consumed);
    counter(&o, "cohortd_events_processed_total", "Events folded into user state.", s.events_ok);
    family(&o, "cohortd_events_bad_total", "counter",
           "Bad input by reason; each one is forwarded to the dead-letter topic.");
    for (int r = 0; r < CH_BAD_N; r++) {
        put(&o, "cohortd_events_bad_total{reason=\"%s\"} %llu\n",
            ch_pipeline_bad_reason_name((ch_bad_reason_t)r), (unsigned long long)s.bad[r]);
    }
    counter(&o, "cohortd_kafka_errors_total",
            "Kafka client errors (consumer errors and client-level errors).", s.kafka_errors);
    counter(&o, "cohortd_input_offset_jumps_total",
            "Times consumption went on past records the broker had deleted before they were "
            "consumed (retention or a size limit moved the log start past them); each is "
            "logged as an error naming the offsets.",
            s.input_jumps);
    counter(&o, "cohortd_input_skipped_total",
            "Input records deleted by the broker before they were consumed (see "
            "cohortd_input_offset_jumps_total).",
            s.input_skipped);
    counter(&o, "cohortd_input_before_start_total",
            "Input records skipped because they are stamped before input.start_at, on "
            "partitions that began without a committed offset on a broker that could not say "
            "where the first record at or after it is.",
            s.input_before_start);

    /* ---- outputs */
    static const char *const kinds[] = {"profile", "risk", "dead_letter", "changelog", "segment"};
    const uint64_t sent[] = {s.profiles_sent, s.risk_sent, s.dlq_sent, s.changelog_sent,
                             s.segment_updates_sent};
    const uint64_t acked[] = {s.profiles_acked, s.risk_acked, s.dlq_acked, s.changelog_acked,
                              s.segment_updates_acked};
    bool shown[] = {true, true, true, cfg->state_changelog[0] != '\0',
                    cfg->segments.k > 0 && cfg->segments_topic[0]};
    int n_kinds = 5;
    family(&o, "cohortd_outputs_sent_total", "counter", "Messages handed to the producer.");
    for (int i = 0; i < n_kinds; i++) {
        if (!shown[i]) {
            continue;
        }
        put(&o, "cohortd_outputs_sent_total{output=\"%s\"} %llu\n", kinds[i],
            (unsigned long long)sent[i]);
    }
    family(&o, "cohortd_outputs_acked_total", "counter",
           "Messages acknowledged by the brokers (durable).");
    for (int i = 0; i < n_kinds; i++) {
        if (!shown[i]) {
            continue;
        }
        put(&o, "cohortd_outputs_acked_total{output=\"%s\"} %llu\n", kinds[i],
            (unsigned long long)acked[i]);
    }
    if (cfg->state_changelog[0]) {
        counter(&o, "cohortd_changelog_flushes_total",
                "Changelog flushes (each writes every user changed since the last once).",
                s.changelog_flushes);
        counter(&o, "cohortd_changelog_bytes_total", "Bytes of state records handed to the "
                "producer (values only).", s.changelog_bytes);
        counter(&o, "cohortd_changelog_tombstones_total",
                "Tombstones of evicted users handed to the producer (idle or over the cap).",
                s.changelog_tombstones);
        gauge(&o, "cohortd_restoring_partitions",
              "Partitions whose users are being restored from the changelog (held meanwhile).",
              (double)s.restoring);
        counter(&o, "cohortd_restored_partitions_total", "Partitions restored.",
                s.restored_partitions);
        counter(&o, "cohortd_restore_records_total", "Changelog records read by restores.",
                s.restore_records);
        counter(&o, "cohortd_restore_bytes_total", "Bytes (keys and values) read by restores.",
                s.restore_bytes);
        family(&o, "cohortd_restore_skipped_total", "counter",
               "Records not applied: uncommitted (they reflect input past the committed offset, "
               "which is reprocessed instead), refused (damaged, or another feature layout).");
        put(&o, "cohortd_restore_skipped_total{reason=\"uncommitted\"} %llu\n",
            (unsigned long long)s.restore_uncommitted);
        put(&o, "cohortd_restore_skipped_total{reason=\"refused\"} %llu\n",
            (unsigned long long)s.restore_refused);
        counter(&o, "cohortd_restore_applied_total", "Records applied by restores.",
                s.restore_applied);
        gauge(&o, "cohortd_restore_seconds", "Seconds spent in finished restores (sum).",
              s.restore_seconds);
        family(&o, "cohortd_restore_snapshots_total", "counter",
               "Local snapshots (state.dir) a restore started from: used, or ignored (missing "
               "ones are not counted; the log says why each was ignored).");
        put(&o, "cohortd_restore_snapshots_total{result=\"used\"} %llu\n",
            (unsigned long long)s.restore_snapshots);
        put(&o, "cohortd_restore_snapshots_total{result=\"ignored\"} %llu\n",
            (unsigned long long)s.restore_snapshots_ignored);
        counter(&o, "cohortd_restore_snapshot_users_total", "Users loaded from snapshots.",
                s.restore_snapshot_users);
        family(&o, "cohortd_restore_seeds_total", "counter",
               "Seeds (state.dir, written by cohortd featurize --state-out) loaded for a "
               "partition the group had no committed offset for: used, or refused (the log "
               "says why).");
        put(&o, "cohortd_restore_seeds_total{result=\"used\"} %llu\n",
            (unsigned long long)s.restore_seeds);
        put(&o, "cohortd_restore_seeds_total{result=\"refused\"} %llu\n",
            (unsigned long long)s.restore_seeds_refused);
        counter(&o, "cohortd_restore_seed_users_total", "Users loaded from seeds.",
                s.restore_seed_users);
        family(&o, "cohortd_changelog_stale_total", "counter",
               "Changelog records reflecting older input than a record of the same user read "
               "before them (restore) or than this instance's state (watch): late writes of "
               "an instance that had lost the partition. Never applied.");
        put(&o, "cohortd_changelog_stale_total{found=\"restore\"} %llu\n",
            (unsigned long long)s.changelog_stale_restore);
        put(&o, "cohortd_changelog_stale_total{found=\"watch\"} %llu\n",
            (unsigned long long)s.changelog_stale_watch);
        gauge(&o, "cohortd_offset_lookups_held",
              "Partitions held (not restored, not processed) because where they resume is not "
              "known yet: the committed-offset lookup failed and is retried with backoff.",
              (double)s.offset_lookups_held);
        counter(&o, "cohortd_offset_lookup_failures_total",
                "Committed-offset lookups of restored partitions that failed (at assignment "
                "and retries).",
                s.offset_lookup_failures);
        counter(&o, "cohortd_changelog_repaired_total",
                "Users written again after a stale record of theirs, so their newest state is "
                "their last record (what compaction keeps).",
                s.changelog_repaired);
    }
    if (cfg->processing_guarantee == CH_EXACTLY_ONCE) {
        family(&o, "cohortd_transactions_total", "counter",
               "Kafka transactions (outputs, changelog and input offsets of one commit "
               "interval) committed or aborted.");
        put(&o, "cohortd_transactions_total{result=\"committed\"} %llu\n",
            (unsigned long long)s.txn_commits);
        put(&o, "cohortd_transactions_total{result=\"aborted\"} %llu\n",
            (unsigned long long)s.txn_aborts);
        family(&o, "cohortd_transaction_commit_seconds_total", "counter",
               "Seconds spent in transaction commits (they block the loop).");
        put(&o, "cohortd_transaction_commit_seconds_total %.6f\n", s.txn_seconds);
    }
    if (cfg->state_dir[0]) {
        counter(&o, "cohortd_snapshot_files_total",
                "Partition snapshots written (each atomically: write, fsync, rename).",
                s.snapshot_files);
        counter(&o, "cohortd_snapshot_users_total", "Users written to snapshots.",
                s.snapshot_users);
        counter(&o, "cohortd_snapshot_failures_total",
                "Partition snapshots not written (the log says why; the previous one stays).",
                s.snapshot_failures);
        gauge(&o, "cohortd_snapshot_last_seconds",
              "Seconds the last snapshot took, from its start to its last file's rename.",
              s.snapshot_last_seconds);
    }
    counter(&o, "cohortd_dead_letters_truncated_total",
            "Dead letters cut to fit the producer's message.max.bytes (headers give the "
            "original size and SHA-256).",
            s.dlq_truncated);
    counter(&o, "cohortd_outputs_refused_total",
            "Records refused by the broker for themselves (too large, invalid), replaced by a "
            "reduced dead letter so their partition moves on.",
            s.outputs_refused);
    counter(&o, "cohortd_delivery_failures_total",
            "Outputs that could not be delivered (the daemon stops; nothing is committed past "
            "them).",
            s.delivery_failures);

    /* ---- batches and latency */
    family(&o, "cohortd_batch_events", "histogram", "Messages per batch.");
    histogram(&o, "cohortd_batch_events", "", &s.batch_events);
    family(&o, "cohortd_batch_duration_seconds", "histogram",
           "Time to decode, featurize, score and enqueue the outputs of one batch.");
    histogram(&o, "cohortd_batch_duration_seconds", "", &s.batch_seconds);
    family(&o, "cohortd_e2e_latency_seconds", "histogram",
           "From an event's time (from=event_time: its ts field; from=kafka_timestamp: the "
           "Kafka message timestamp) to the acknowledgement of its batch's outputs.");
    histogram(&o, "cohortd_e2e_latency_seconds", "from=\"event_time\",", &s.latency_event);
    histogram(&o, "cohortd_e2e_latency_seconds", "from=\"kafka_timestamp\",", &s.latency_kafka);
    gauge(&o, "cohortd_inflight_batches",
          "Batches whose outputs await acknowledgement (at most batch.max_inflight).",
          (double)s.inflight_batches);

    /* ---- consumer */
    gauge(&o, "cohortd_assigned_partitions", "Input partitions assigned to this instance.",
          (double)s.assigned_partitions);
    static ch_partition_lag_t lag[MAX_LAG_PARTITIONS];
    int n = ch_pipeline_lag(p, lag, MAX_LAG_PARTITIONS);
    family(&o, "cohortd_consumer_lag", "gauge",
           "Messages in an assigned partition not yet processed (high watermark minus next "
           "offset); absent while unknown.");
    escape_label(cfg->input_topic, e1, sizeof(e1));
    for (int i = 0; i < n && i < MAX_LAG_PARTITIONS; i++) {
        if (lag[i].lag >= 0) {
            put(&o, "cohortd_consumer_lag{topic=\"%s\",partition=\"%d\"} %lld\n", e1,
                lag[i].partition, (long long)lag[i].lag);
        }
    }
    gauge(&o, "cohortd_stream_time_seconds", "Latest event time seen (Unix seconds).",
          (double)s.stream_time_ms / 1000.0);
    if (cfg->input_max_skew_ms > 0 && isfinite(cfg->input_max_skew_ms)) {
        gauge(&o, "cohortd_input_held_records",
              "Records consumed and waiting for slower partitions (input.max_skew).",
              (double)s.align.held);
        gauge(&o, "cohortd_input_paused_partitions",
              "Partitions paused because they ran ahead of the others (input.max_skew).",
              (double)s.align.paused);
        counter(&o, "cohortd_input_pauses_total",
                "Times a partition was paused for running ahead (input.max_skew).",
                s.align.pauses);
        counter(&o, "cohortd_input_forced_releases_total",
                "Records handed over past input.max_skew because the alignment buffer was full.",
                s.align.forced);
    }

    if (s.registry_on) {
        gauge(&o, "cohortd_schema_registry_up",
              "0 from a failed registry request until the registry answers again, else 1.",
              s.registry_up ? 1.0 : 0.0);
        gauge(&o, "cohortd_schema_registry_waiting_partitions",
              "Input partitions held until the writer schema their next record names is "
              "fetched.",
              (double)s.registry_waiting);
        counter(&o, "cohortd_schema_registry_holds_total",
                "Times an input partition was held for an unknown writer schema id.",
                s.registry_holds);
        family(&o, "cohortd_schema_registry_requests_total", "counter",
               "Schema fetches by outcome: ok (learned and cached), not_found (404 or not Avro: "
               "its records are dead letters), error (no answer, HTTP error, credentials "
               "refused: retried with backoff).");
        put(&o, "cohortd_schema_registry_requests_total{result=\"ok\"} %llu\n",
            (unsigned long long)s.registry_fetched);
        put(&o, "cohortd_schema_registry_requests_total{result=\"not_found\"} %llu\n",
            (unsigned long long)s.registry_not_found);
        put(&o, "cohortd_schema_registry_requests_total{result=\"error\"} %llu\n",
            (unsigned long long)s.registry_failures);
    }

    /* ---- users */
    gauge(&o, "cohortd_users", "Users held in memory.", (double)s.users);
    gauge(&o, "cohortd_user_table_bytes", "Memory of the user table (records touched + index).",
          (double)s.users_bytes);
    family(&o, "cohortd_users_evicted_total", "counter",
           "Users dropped: idle (state.idle_evict), cap (state.max_users), revoke (partition "
           "moved to another instance).");
    put(&o, "cohortd_users_evicted_total{reason=\"idle\"} %llu\n",
        (unsigned long long)s.users_evicted_idle);
    put(&o, "cohortd_users_evicted_total{reason=\"cap\"} %llu\n",
        (unsigned long long)s.users_evicted_cap);
    put(&o, "cohortd_users_evicted_total{reason=\"revoke\"} %llu\n",
        (unsigned long long)s.users_evicted_revoke);

    /* ---- segments */
    if (cfg->segments.k > 0) {
        gauge(&o, "cohortd_segments_ready", "1 once k-means++ seeding has run.",
              s.segments_ready ? 1 : 0);
        counter(&o, "cohortd_segment_reseeds_total",
                "Dead segments re-seeded (their generation increases).", s.segment_reseeds);
        gauge(&o, "cohortd_segment_exports",
              "GET /segments/export answers being streamed (at most 4; a client that hangs up "
              "ends its own).",
              (double)s.segment_exports);
        counter(&o, "cohortd_segment_vectors_refused_total",
                "Vectors kept out of the segments because a value (or its transform) is not "
                "finite: they reach no statistic or centroid and get no segment.",
                s.segment_refused);
        counter(&o, "cohortd_segment_refreshes_total",
                "Refreshes of the centroids on the population (segments.refresh).",
                s.segment_refreshes);
        counter(&o, "cohortd_segment_restarts_total",
                "Refreshes whose k-means++ candidate replaced the centroids.",
                s.segment_restarts);
        counter(&o, "cohortd_segment_passes_total",
                "Passes over the population (the seeding, then refreshes) whose reassignment "
                "of every user is done.",
                s.segment_passes);
        counter(&o, "cohortd_segment_pass_moves_total",
                "Users whose segment those reassignments changed (each got a profile update).",
                s.segment_moves);
        gauge(&o, "cohortd_segment_pass_running",
              "1 while a pass is requested, gathering, fitting or reassigning.",
              s.segment_pass_running ? 1 : 0);
        gauge(&o, "cohortd_segment_last_pass_users", "Users the last pass fitted.",
              (double)s.segment_pass_users);
        gauge(&o, "cohortd_segment_last_pass_seconds",
              "Wall time of the last pass, from its start to the end of its reassignment.",
              s.segment_pass_seconds);
        gauge(&o, "cohortd_segment_last_pass_inertia",
              "Inertia of the last pass's centroids on its users (transformed space).",
              s.segment_pass_inertia);
        if (s.segments_shared) {
            gauge(&o, "cohortd_segments_version",
                  "segments.sync_topic: the shared version of the centroids applied (0: none).",
                  (double)s.segments_version);
            gauge(&o, "cohortd_segments_coordinator",
                  "segments.sync_topic: 1 while this instance coordinates (owns input "
                  "partition 0).",
                  s.segments_coordinator ? 1 : 0);
            family(&o, "cohortd_segment_rounds_total", "counter",
                   "segments.sync_topic: shared rounds this instance coordinated, by result.");
            put(&o, "cohortd_segment_rounds_total{result=\"published\"} %llu\n",
                (unsigned long long)s.segment_rounds_done);
            put(&o, "cohortd_segment_rounds_total{result=\"dropped\"} %llu\n",
                (unsigned long long)s.segment_rounds_dropped);
            counter(&o, "cohortd_segment_round_stats_total",
                    "segments.sync_topic: Lloyd steps this instance sent its users' statistics "
                    "to.",
                    s.segment_stats_sent);
        }
        family(&o, "cohortd_segment_users", "gauge", "Users currently in each segment.");
        for (size_t j = 0; j < cfg->segments.k; j++) {
            uint64_t users = 0;
            double w = 0;
            uint32_t gen = 0;
            if (ch_pipeline_segment(p, j, &users, &w, &gen) == 0) {
                put(&o, "cohortd_segment_users{segment=\"%ld\"} %llu\n", j,
                    (unsigned long long)users);
            }
        }
        family(&o, "cohortd_segment_weight", "gauge",
               "Decayed count of recent points assigned to each segment's centroid.");
        for (size_t j = 0; j < cfg->segments.k; j++) {
            uint64_t users = 0;
            double w = 0;
            uint32_t gen = 0;
            if (ch_pipeline_segment(p, j, &users, &w, &gen) == 0) {
                put(&o, "cohortd_segment_weight{segment=\"%ld\"} %.17g\n", j, w);
            }
        }
    }

    /* ---- risk model */
    const char *version = ch_pipeline_model_version(p);
    if (cfg->model_path[0]) {
        counter(&o, "cohortd_risk_scored_total", "Feature vectors scored by the risk model.",
                s.scored);
        counter(&o, "cohortd_risk_alerts_total",
                "Scores at or above risk.threshold (alert rate: rate(alerts) / rate(scored)).",
                s.alerts);
        family(&o, "cohortd_model_info", "gauge", "The loaded risk model.");
        put(&o, "cohortd_model_info{path=\"%s\",version=\"%s\"} 1\n",
            escape_label(cfg->model_path, e1, sizeof(e1)),
            escape_label(version ? version : "", e2, sizeof(e2)));
        const char *v2 = ch_pipeline_challenger_version(p);
        if (cfg->model_challenger_path[0]) {
            family(&o, "cohortd_challenger_info", "gauge",
                   "The challenger model (model.challenger_path), scored next to the champion; "
                   "version empty while none is loaded.");
            put(&o, "cohortd_challenger_info{path=\"%s\",version=\"%s\"} %d\n",
                escape_label(cfg->model_challenger_path, e1, sizeof(e1)),
                escape_label(v2 ? v2 : "", e2, sizeof(e2)), v2 ? 1 : 0);
        }
        counter(&o, "cohortd_model_reloads_total", "Successful model reloads.", s.model_reloads);
        counter(&o, "cohortd_model_reload_failures_total",
                "Reloads that failed (the previous model stays in service).",
                s.model_reload_failures);
    }
    drift_metrics(&o, p);
    eval_metrics(&o, p);
    counter(&o, "cohortd_http_requests_total", "HTTP requests answered.", ctx->http_requests);
    counter(&o, "cohortd_http_connections_evicted_total",
            "HTTP connections closed before their request arrived, to serve a newer one "
            "(http.max_connections reached).",
            ctx->http_evicted);
    return o.err;
}
