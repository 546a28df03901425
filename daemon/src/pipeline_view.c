/*
 * pipeline_view.c - what the loop reads and asks between batches: counters, lag,
 * readiness, segments, one user's state as JSON, and the reload and save requests.
 *
 * Design notes
 * - Everything here runs on the loop thread between two batches, so it sees a
 *   consistent state and may use the batch scratch (row 0) freely.
 */
#include "pipeline_int.h"
#include "segsync.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

const char *ch_pipeline_bad_reason_name(ch_bad_reason_t r) { return ch_events_bad_name(r); }

void ch_pipeline_stats(const ch_pipeline_t *p, ch_pipeline_stats_t *ret_stats) {
    *ret_stats = p->st;
    ret_stats->kafka_errors = p->clients.errors;
    ret_stats->model_reloads = p->scorer.reloads;
    ret_stats->model_reload_failures = p->scorer.reload_failures;
    ret_stats->users = ch_users_count(p->users);
    ret_stats->users_bytes = ch_users_memory_bytes(p->users);
    ret_stats->users_evicted_cap = ch_users_cap_evictions(p->users);
    ret_stats->inflight_batches = ch_tracker_inflight(p->tracker);
    ret_stats->assigned_partitions = ch_consumer_assigned(p->clients.consumer);
    ch_consumer_align_stats(p->clients.consumer, &ret_stats->align);
    ret_stats->restoring = p->rs.active;
    ret_stats->restored_partitions = p->rs.partitions;
    ret_stats->restore_records = p->rs.records;
    ret_stats->restore_bytes = p->rs.bytes;
    ret_stats->restore_applied = p->rs.applied;
    ret_stats->restore_uncommitted = p->rs.uncommitted;
    ret_stats->restore_refused = p->rs.refused;
    ret_stats->changelog_stale_restore = p->rs.stale_restore;
    ret_stats->changelog_stale_watch = p->rs.stale_watch;
    ret_stats->changelog_repaired = p->rs.repaired;
    ret_stats->offset_lookups_held = p->rs.lookups;
    ret_stats->offset_lookup_failures = p->rs.lookup_failures;
    ret_stats->restore_seconds = p->rs.seconds;
    ret_stats->txn_commits = p->txn.commits;
    ret_stats->txn_aborts = p->txn.aborts;
    ret_stats->txn_seconds = p->txn.seconds;
    ret_stats->restore_snapshots = p->rs.snap_loaded;
    ret_stats->restore_snapshots_ignored = p->rs.snap_ignored;
    ret_stats->restore_snapshot_users = p->rs.snap_users;
    ret_stats->restore_seeds = p->rs.seed_loaded;
    ret_stats->restore_seeds_refused = p->rs.seed_ignored;
    ret_stats->restore_seed_users = p->rs.seed_users;
    ret_stats->snapshot_files = p->sn.files;
    ret_stats->snapshot_users = p->sn.users;
    ret_stats->snapshot_failures = p->sn.failures;
    ret_stats->snapshot_last_seconds = p->sn.last_seconds;
    ret_stats->registry_on = p->sf.reg != NULL;
    ret_stats->registry_up = p->sf.up;
    ret_stats->registry_requests = p->sf.requests;
    ret_stats->registry_fetched = p->sf.fetched;
    ret_stats->registry_not_found = p->sf.not_found;
    ret_stats->registry_failures = p->sf.failures;
    ret_stats->registry_holds = p->sf.holds;
    ret_stats->registry_waiting = p->sf.partitions_waiting;
    ret_stats->segments_ready = p->segs && ch_segments_ready(p->segs);
    ret_stats->segment_reseeds = p->segs ? ch_segments_reseeds(p->segs) : 0;
    ret_stats->segment_refused = p->segs ? ch_segments_refused(p->segs) : 0;
    ret_stats->segment_exports = p->exports;
    if (p->segs) {
        ch_segments_status_t ss;
        ch_segments_status(p->segs, &ss);
        ret_stats->segment_passes = ss.passes;
        ret_stats->segment_moves = ss.moved_total;
        ret_stats->segment_pass_running =
            p->ra.on || p->ra.publish_all || ss.phase != CH_SEG_IDLE || ss.asked;
        ret_stats->segment_pass_users = ss.users;
        ret_stats->segment_pass_seconds = ss.seconds;
        ret_stats->segment_pass_inertia = ss.inertia;
    }
    ret_stats->segment_refreshes =
        p->segs ? ch_segments_refreshes(p->segs, &ret_stats->segment_restarts) : 0;
    if (p->sync) {
        ch_segsync_status_t ys;
        ch_segsync_status(p->sync, &ys);
        ret_stats->segments_shared = true;
        ret_stats->segments_coordinator = ys.coordinating;
        ret_stats->segments_version = ys.version;
        ret_stats->segment_rounds_done = ys.rounds_done;
        ret_stats->segment_rounds_dropped = ys.rounds_dropped;
        ret_stats->segment_stats_sent = ys.stats_sent;
        ret_stats->segment_pass_running = ret_stats->segment_pass_running || ys.round_open;
    }
}

int ch_pipeline_lag(ch_pipeline_t *p, ch_partition_lag_t *out, size_t cap) {
    return ch_consumer_lag(p->clients.consumer, out, cap);
}

void ch_pipeline_registry_loop(ch_pipeline_t *p, const ch_pipeline_loop_t *loop) {
    ch_schemafetch_hook(p, loop);
}

void ch_pipeline_registry_socket(ch_pipeline_t *p, int fd, bool readable, bool writable) {
    if (p->sf.reg) {
        ch_registry_socket(p->sf.reg, fd, readable, writable);
    }
}

void ch_pipeline_registry_timeout(ch_pipeline_t *p) {
    if (p->sf.reg) {
        ch_registry_timeout(p->sf.reg);
    }
}

bool ch_pipeline_ready(ch_pipeline_t *p, char *why, size_t len) {
    if (ch_pipeline_failed(p) || p->stopping) {
        snprintf(why, len, "%s", ch_pipeline_failed(p) ? "failed: stopping" : "stopping");
        return false;
    }
    if (p->cfg->model_path[0] && !p->scorer.model) {
        snprintf(why, len, "no model loaded");
        return false;
    }
    if (!ch_schemafetch_ready(p, why, len)) {
        return false;
    }
    if (p->rs.lookups > 0) {
        snprintf(why, len,
                 "holding %zu partition(s) of %s until their committed offset is known (%llu "
                 "lookup(s) failed so far; retried with backoff)",
                 p->rs.lookups, p->cfg->input_topic,
                 (unsigned long long)p->rs.lookup_failures);
        return false;
    }
    if (p->rs.active > 0) {
        uint64_t from_snapshots = p->rs.snap_users;
        for (size_t i = 0; i < p->rs.n_parts; i++) {
            from_snapshots += p->rs.parts[i].on ? p->rs.parts[i].from_snapshot : 0;
        }
        snprintf(why, len,
                 "restoring %zu partition(s): %llu user(s) loaded from snapshots and seeds, %llu "
                 "record(s) read from %s so far",
                 p->rs.active, (unsigned long long)from_snapshots,
                 (unsigned long long)p->rs.records, p->cfg->state_changelog);
        return false;
    }
    static ch_partition_lag_t lag[4096]; /* loop thread only */
    int n = ch_consumer_lag(p->clients.consumer, lag, N_OF(lag));
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

int ch_pipeline_segment(const ch_pipeline_t *p, size_t j, uint64_t *ret_users, double *ret_weight,
                        uint32_t *ret_generation) {
    if (!p->segs) {
        return -ENOENT;
    }
    return ch_segments_info(p->segs, j, ret_users, ret_weight, ret_generation);
}

const char *ch_pipeline_model_version(const ch_pipeline_t *p) {
    return ch_scorer_version(&p->scorer);
}

int ch_pipeline_reload_model(ch_pipeline_t *p) {
    int r = ch_scorer_reload(&p->scorer);
    if (p->cfg->model_challenger_path[0]) {
        int r2 = ch_scorer_reload(&p->challenger);
        r = r < 0 ? r : r2;
    }
    return r;
}

const char *ch_pipeline_risk_schema(const ch_config_t *cfg) {
    return cfg->model_challenger_path[0] ? "risk_update_v2.avsc" : "risk_update.avsc";
}

const char *ch_pipeline_challenger_version(const ch_pipeline_t *p) {
    return ch_scorer_version(&p->challenger);
}

size_t ch_pipeline_drift(const ch_pipeline_t *p, size_t j, const char **ret_name, double *ret_psi,
                         size_t *ret_vectors, uint64_t *ret_warnings) {
    const ch_scorer_t *s = &p->scorer;
    if (!s->drift) {
        return 0;
    }
    *ret_vectors = ch_drift_vectors(s->drift);
    *ret_warnings = s->drift_warnings;
    if (j < s->d) {
        *ret_name = s->names[j];
        *ret_psi = ch_drift_psi(s->drift, j);
    }
    return s->d;
}

int ch_pipeline_save_segments(ch_pipeline_t *p) { return p->segs ? ch_segments_save(p->segs) : 0; }

#define LIT(b, s) ch_buf_append((b), (s), sizeof(s) - 1)

size_t ch_pipeline_tags(ch_pipeline_t *p, const ch_user_t *u) {
    size_t n_tags = ch_features_tag_count(p->fs);
    for (size_t t = 0; t < n_tags; t++) {
        p->tagv[t] = (ch_tag_values_t){
            .name = ch_features_tag_name(p->fs, t), .vals = p->tag_vals[t], .lens = p->tag_lens[t]};
        p->tagv[t].n =
            u ? ch_features_tag_read(p->fs, u->state, t, p->tag_vals[t], p->tag_lens[t], NULL) : 0;
    }
    return n_tags;
}

int ch_pipeline_user_json(ch_pipeline_t *p, const char *user_id, size_t len, ch_buf_t *out) {
    /* With pseudonyms on, users are asked for by pseudonym only: answering a raw id
     * would let anyone who reaches the port link outputs back to people. */
    ch_user_t *u = ch_users_find(p->users, user_id, len);
    if (!u) {
        return -ENOENT;
    }
    const ch_userrec_t *ur = ch_userrec(p->users, u);
    /* Between batches the batch scratch is free: row 0 holds this user's vector. */
    ch_features_read(p->fs, u->state, u->t_ref_ms, p->feats);
    for (size_t i = 0; i < p->n_feats; i++) {
        p->X[i] = (float)p->feats[i];
    }
    out->len = 0;
    int r = LIT(out, "{\"user_id\":");
    r = r ? r : ch_json_string(out, user_id, len);
    r = r ? r
          : ch_buf_printf(out, ",\"partition\":%d,\"ts\":%lld,\"features\":{", (int)ur->partition,
                          (long long)u->t_ref_ms);
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
    if (!r && p->scorer.model) {
        ch_onnx_eval(p->scorer.model, p->X, 1, p->scores);
        float score = p->scores[0];
        size_t nr = ch_scorer_reasons(&p->scorer, 0, p->reasons);
        const char *version = ch_scorer_version(&p->scorer);
        r = LIT(out, "{\"score\":");
        r = r ? r : ch_json_float(out, score);
        r = r ? r
              : ch_buf_printf(out, ",\"alert\":%s,\"threshold\":",
                              score >= (float)p->cfg->risk_threshold ? "true" : "false");
        r = r ? r : ch_json_float(out, (float)p->cfg->risk_threshold);
        r = r ? r : LIT(out, ",\"reasons\":");
        r = r ? r : ch_json_reasons(out, p->reasons, nr);
        r = r ? r : LIT(out, ",\"model_version\":");
        r = r ? r : ch_json_string(out, version, strlen(version));
        r = r ? r : LIT(out, "}");
    } else if (!r) {
        r = LIT(out, "null");
    }
    r = r ? r : LIT(out, ",\"last_published_score\":");
    r = r ? r : ch_json_float(out, ur->last_score);
    size_t n_tags = ch_pipeline_tags(p, u);
    r = r || !n_tags ? r : ch_json_tags(out, p->tagv, n_tags);
    r = r ? r : LIT(out, "}");
    return r;
}

int ch_pipeline_segments_refresh(ch_pipeline_t *p) {
    if (!p->segs) {
        return -ENOENT;
    }
    return p->sync ? ch_segsync_ask(p) : ch_segments_request_refresh(p->segs);
}

static const char *phase_name(const ch_pipeline_t *p, const ch_segments_status_t *st) {
    if (p->ra.on) {
        return "reassigning";
    }
    return st->phase == CH_SEG_GATHERING ? "gathering"
           : st->phase == CH_SEG_FITTING ? "fitting"
           : st->asked                   ? "requested"
                                         : "idle";
}

/* The segments' state: the last pass, and per segment its id, generation, users,
 * weight and centroid (transformed space). */
static int segments_head(ch_pipeline_t *p, ch_buf_t *out) {
    ch_segments_status_t st;
    ch_segments_status(p->segs, &st);
    const ch_kmeans_t *km = ch_segments_model(p->segs);
    size_t k = p->cfg->segments.k;
    int r = ch_buf_printf(out,
                          "{\"k\":%zu,\"ready\":%s,\"phase\":\"%s\",\"passes\":%llu,"
                          "\"users_moved_total\":%llu,\"stream_time\":%lld,",
                          k, ch_kmeans_ready(km) ? "true" : "false", phase_name(p, &st),
                          (unsigned long long)st.passes, (unsigned long long)st.moved_total,
                          (long long)p->st.stream_time_ms);
    if (!r && p->sync) {
        ch_segsync_status_t ys;
        ch_segsync_status(p->sync, &ys);
        r = ch_buf_printf(out,
                          "\"shared\":{\"version\":%llu,\"coordinator\":%s,\"round_open\":%s,"
                          "\"step\":%d,\"rounds_done\":%llu,\"rounds_dropped\":%llu,"
                          "\"stats_sent\":%llu},",
                          (unsigned long long)ys.version, ys.coordinating ? "true" : "false",
                          ys.round_open ? "true" : "false", ys.iteration,
                          (unsigned long long)ys.rounds_done, (unsigned long long)ys.rounds_dropped,
                          (unsigned long long)ys.stats_sent);
    }
    r = r ? r : LIT(out, "\"features\":[");
    for (size_t i = 0; !r && i < p->n_feats; i++) {
        r = i ? LIT(out, ",") : 0;
        r = r ? r : ch_json_string(out, p->feat_names[i], strlen(p->feat_names[i]));
    }
    r = r ? r
          : ch_buf_printf(out,
                          "],\"last_pass\":{\"users\":%zu,\"inertia\":%.9g,\"restarted\":%s,"
                          "\"renewed\":%zu,\"fit_seconds\":%.6f,\"seconds\":%.6f,\"moved\":%llu},"
                          "\"segments\":[",
                          st.users, st.inertia, st.restarted ? "true" : "false", st.renewed,
                          st.fit_seconds, st.seconds, (unsigned long long)st.moved);
    for (size_t j = 0; !r && ch_kmeans_ready(km) && j < k; j++) {
        uint64_t users = 0;
        double w = 0;
        uint32_t gen = 0;
        ch_segments_info(p->segs, j, &users, &w, &gen);
        r = j ? LIT(out, ",") : 0;
        r = r ? r
              : ch_buf_printf(out,
                              "{\"id\":%zu,\"generation\":%u,\"users\":%llu,\"weight\":%.9g,"
                              "\"centroid\":",
                              j, (unsigned)gen, (unsigned long long)users, w);
        r = r ? r : ch_json_floats(out, ch_kmeans_centroid(km, j, NULL, NULL), p->n_feats);
        r = r ? r : LIT(out, "}");
    }
    return r ? r : LIT(out, "]}");
}

int ch_pipeline_segments_json(ch_pipeline_t *p, ch_buf_t *out) {
    if (!p->segs) {
        return -ENOENT;
    }
    out->len = 0;
    int r = segments_head(p, out);
    return r ? r : LIT(out, "\n");
}

struct ch_export {
    ch_kmeans_t *km; /* the model as it was at the start: every line's z uses it */
    int64_t at;      /* the stream time every vector is read at */
    size_t cursor;   /* user-table position */
};

int ch_pipeline_export_begin(ch_pipeline_t *p, ch_buf_t *out, ch_export_t **ret) {
    if (!p->segs) {
        return -ENOENT;
    }
    if (p->exports >= CH_EXPORTS_MAX) {
        return -EBUSY;
    }
    ch_export_t *e = calloc(1, sizeof(*e));
    if (!e || ch_segments_copy_model(p->segs, &e->km) < 0) {
        free(e);
        return -ENOMEM;
    }
    e->at = p->st.stream_time_ms;
    out->len = 0;
    int r = segments_head(p, out);
    r = r ? r : LIT(out, "\n");
    if (r < 0) {
        ch_kmeans_free(e->km);
        free(e);
        return r;
    }
    p->exports++;
    *ret = e;
    return 0;
}

int ch_pipeline_export_step(ch_pipeline_t *p, ch_export_t *e, ch_buf_t *out, size_t budget) {
    float x[CH_FEATURES_MAX], z[CH_FEATURES_MAX];
    int r = 0;
    size_t n = 0;
    ch_user_t *u = NULL;
    for (; !r && n < budget && (u = ch_users_next(p->users, &e->cursor)); n++) {
        int64_t t = ch_user_vector(p, u, e->at, x);
        ch_kmeans_transform(e->km, x, 1, z);
        r = LIT(out, "{\"user_id\":");
        r = r ? r : ch_json_string(out, ch_users_key(p->users, u), u->key_len);
        if (!r && u->segment >= 0) {
            r = ch_buf_printf(out, ",\"segment\":%d,\"generation\":%u", (int)u->segment,
                              (unsigned)u->seg_gen);
        } else if (!r) {
            r = LIT(out, ",\"segment\":null,\"generation\":null");
        }
        r = r ? r
              : ch_buf_printf(out,
                              ",\"last_event_ts\":%lld,\"ts\":%lld,\"x\":", (long long)u->t_ref_ms,
                              (long long)t);
        r = r ? r : ch_json_floats(out, x, p->n_feats);
        r = r ? r : LIT(out, ",\"z\":");
        r = r ? r : ch_json_floats(out, z, p->n_feats);
        r = r ? r : LIT(out, "}\n");
    }
    return r < 0 ? r : u ? 1 : 0;
}

ch_export_t *ch_pipeline_export_end(ch_pipeline_t *p, ch_export_t *e) {
    if (e) {
        ch_kmeans_free(e->km);
        free(e);
        p->exports--;
    }
    return NULL;
}
