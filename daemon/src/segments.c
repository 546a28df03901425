/*
 * segments.c - online segments in the daemon (DESIGN.md section 7).
 *
 * Design notes
 * - The segmenter runs with seed_by_caller: during warm-up it only learns the
 *   transform statistics, and when segments.warmup events have been seen it is
 *   seeded from the population, i.e. the current vectors of the users in the
 *   table (every step-th user, at most segments.warmup of them), read at each
 *   user's stream time like the outputs. Seeding on users' first events instead
 *   (immature vectors) left the centroids in poor optima.
 * - With segments.refresh set, every that much stream time the same population
 *   refreshes the centroids (ch_kmeans_refresh: Lloyd passes, and a k-means++
 *   candidate kept only when clearly better). Stream time, not wall clock: a replay
 *   or a catch-up after downtime drifts by stream time, and a run is reproducible.
 *   The pass runs between batches on the loop, at ~2/11 of the seeding's cost. Off
 *   by default: it follows the k-means optimum of the moment, and in the middle of
 *   a drift that optimum can split a group that is still moving (segments test:
 *   one run had ARI ~0.8 for 50,000 events where online steps alone kept >= 0.95).
 * - Invariant: users[j] == the number of records in the table whose segment is j;
 *   the batch path reports moves, the table's eviction hook reports departures.
 */
#include "segments.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct ch_segments {
    const ch_config_t *cfg;
    ch_kmeans_t *km;
    size_t k, dim;
    uint64_t *users; /* users currently in each segment */
};

int ch_segments_new(const ch_config_t *cfg, size_t dim, size_t max_batch,
                    ch_segments_t **ret_segments, char *errbuf, size_t errlen) {
    ch_segments_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    s->cfg = cfg;
    s->k = cfg->segments.k;
    s->dim = dim;
    s->users = calloc(s->k ? s->k : 1, sizeof(*s->users));
    if (!s->users) {
        ch_segments_free(s);
        return -ENOMEM;
    }
    ch_kmeans_opts_t o = cfg->segments;
    o.dim = dim;
    o.max_batch = max_batch;
    o.seed_by_caller = true;
    char why[256];
    int r = ch_kmeans_new(&o, &s->km, why, sizeof(why));
    if (r < 0) {
        snprintf(errbuf, errlen, "segments: %s", why);
        ch_segments_free(s);
        return r;
    }
    if (cfg->segments_state_file[0]) {
        r = ch_kmeans_load(s->km, cfg->segments_state_file, why, sizeof(why));
        if (r == 0) {
            ch_log(CH_LOG_INFO, "segments restored from %s (%s)", cfg->segments_state_file,
                   ch_kmeans_ready(s->km) ? "centroids ready" : "still warming up");
        } else if (r != -ENOENT) {
            ch_log(CH_LOG_WARNING, "segments: not restoring: %s; starting fresh", why);
        }
    }
    *ret_segments = s;
    return 0;
}

ch_segments_t *ch_segments_free(ch_segments_t *s) {
    if (!s) {
        return NULL;
    }
    ch_kmeans_free(s->km);
    free(s->users);
    free(s);
    return NULL;
}

/* The population: the current vectors of up to segments.warmup users of the table
 * (every step-th), read at each user's stream time like the outputs. Returns the rows
 * (malloc'd, *ret_n of them) or NULL (out of memory). */
static float *population(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs,
                         size_t *ret_n) {
    size_t count = ch_users_count(users), cap = s->cfg->segments.warmup;
    /* step = floor(count / take) >= 1 reaches take users (a rounded-up step could
     * stop short of k) */
    size_t take = count < cap ? count : cap, step = count / take;
    float *x = malloc(take * s->dim * sizeof(float));
    double *row = malloc(s->dim * sizeof(double));
    size_t n = 0, seen = 0, cursor = 0;
    for (ch_user_t *u; x && row && n < take && (u = ch_users_next(users, &cursor)); seen++) {
        if (seen % step) {
            continue;
        }
        ch_features_read(fs, u->state, u->t_ref_ms, row);
        for (size_t t = 0; t < s->dim; t++) {
            x[n * s->dim + t] = (float)row[t];
        }
        n++;
    }
    if (!row) { /* no room to read a vector: no population */
        free(x);
        x = NULL;
    }
    free(row);
    *ret_n = n;
    return x;
}

static void seed(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs, int64_t stream_ms) {
    size_t n = 0;
    float *x = population(s, users, fs, &n);
    int r = x ? ch_kmeans_seed(s->km, x, n, stream_ms) : -ENOMEM;
    if (r == 0) {
        ch_log(CH_LOG_INFO,
               "segments seeded: k-means++ on the current features of %zu of %zu users", n,
               ch_users_count(users));
    } else {
        ch_log(CH_LOG_WARNING, "segments: seeding on %zu users failed (%s); will retry", n,
               strerror(-r));
    }
    free(x);
}

static void refresh(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs,
                    int64_t stream_ms) {
    size_t n = 0;
    float *x = population(s, users, fs, &n);
    ch_kmeans_refresh_t info;
    int r = x ? ch_kmeans_refresh(s->km, x, n, stream_ms, &info) : -ENOMEM;
    free(x);
    if (r < 0) {
        /* retried at the next batch: a refresh is due until one succeeds */
        ch_log(CH_LOG_WARNING, "segments: refresh on %zu users failed (%s)", n, strerror(-r));
        return;
    }
    double before = info.inertia_before / (double)n;
    double lloyd = info.inertia_lloyd / (double)n;
    double cand = info.inertia_restart / (double)n;
    if (info.restarted) {
        ch_log(CH_LOG_INFO,
               "segments refreshed on %zu users: restarted from k-means++ (inertia per user "
               "%.4g -> %.4g, Lloyd from the live centroids %.4g); %zu segments get a new "
               "generation",
               n, before, cand, lloyd, info.renewed);
    } else {
        ch_log(CH_LOG_DEBUG,
               "segments refreshed on %zu users: inertia per user %.4g -> %.4g (a k-means++ "
               "candidate had %.4g)",
               n, before, lloyd, cand);
    }
}

void ch_segments_update(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs,
                        const float *x, size_t n, int64_t stream_ms, const int32_t *prev,
                        const uint32_t *prev_gen, ch_kmeans_assign_t *ret) {
    if (ch_kmeans_wants_seed(s->km, n) && ch_users_count(users) >= s->k) {
        seed(s, users, fs, stream_ms);
    } else if (ch_kmeans_wants_refresh(s->km, stream_ms) && ch_users_count(users) >= s->k) {
        refresh(s, users, fs, stream_ms);
    }
    ch_kmeans_update(s->km, x, n, stream_ms, prev, prev_gen, ret);
}

void ch_segments_moved(ch_segments_t *s, int32_t from, int32_t to) {
    if (from == to) {
        return;
    }
    if (from >= 0 && (size_t)from < s->k) {
        s->users[from]--;
    }
    if (to >= 0 && (size_t)to < s->k) {
        s->users[to]++;
    }
}

int ch_segments_info(const ch_segments_t *s, size_t j, uint64_t *ret_users, double *ret_weight,
                     uint32_t *ret_generation) {
    if (j >= s->k) {
        return -ENOENT;
    }
    double w = 0;
    uint32_t gen = 0;
    ch_kmeans_centroid(s->km, j, &w, &gen);
    *ret_users = s->users[j];
    *ret_weight = w;
    *ret_generation = gen;
    return 0;
}

bool ch_segments_ready(const ch_segments_t *s) { return ch_kmeans_ready(s->km); }

uint64_t ch_segments_reseeds(const ch_segments_t *s) { return ch_kmeans_reseeds(s->km); }

uint64_t ch_segments_refreshes(const ch_segments_t *s, uint64_t *ret_restarts) {
    return ch_kmeans_refreshes(s->km, ret_restarts);
}

int ch_segments_save(const ch_segments_t *s) {
    if (!s->cfg->segments_state_file[0]) {
        return 0;
    }
    char err[512];
    int r = ch_kmeans_save(s->km, s->cfg->segments_state_file, err, sizeof(err));
    if (r < 0) {
        ch_log(CH_LOG_WARNING, "segments: cannot save: %s", err);
    }
    return r;
}

bool ch_segments_check(const ch_segments_t *s, const ch_users_t *users, char *why, size_t len) {
    if (!ch_kmeans_check(s->km, why, len)) {
        return false;
    }
    uint64_t *count = calloc(s->k, sizeof(*count));
    if (!count) {
        snprintf(why, len, "out of memory");
        return false;
    }
    size_t cursor = 0;
    bool ok = true;
    for (ch_user_t *u; ok && (u = ch_users_next(users, &cursor));) {
        if (u->segment >= 0 && (size_t)u->segment >= s->k) {
            snprintf(why, len, "a user is in segment %d of %zu", (int)u->segment, s->k);
            ok = false;
        } else if (u->segment >= 0) {
            count[u->segment]++;
        }
    }
    for (size_t j = 0; ok && j < s->k; j++) {
        if (count[j] != s->users[j]) {
            snprintf(why, len, "segment %zu counts %llu users, the table has %llu", j,
                     (unsigned long long)s->users[j], (unsigned long long)count[j]);
            ok = false;
        }
    }
    free(count);
    return ok;
}
