/*
 * segments.c - online segments in the daemon (README "Segments").
 *
 * Design notes
 * - The segmenter runs with seed_by_caller: during warm-up it only learns the
 *   transform statistics. Seeding and refreshes are one kind of pass over the
 *   population, run in slices between batches (ch_segments_step from the loop's
 *   background work): every user's vector is read at the stream time of the pass's
 *   start, so one who stopped shows it (counts decay, since_last grows), then fitted
 *   (ch_kmeans_fit_t: Lloyd from the live centroids and 10 k-means++ seedings, to
 *   convergence), and the result adopted; the caller then reassigns every user to the
 *   nearest centroid and publishes the moves. So after a pass each user's segment is
 *   the nearest centroid of their vector at that time, whatever their last event, and
 *   no user in the table is left without one once seeded.
 * - segments.refresh counts wall time by default (a refresh costs wall time, and
 *   between refreshes the online steps follow drift); segments.refresh_clock = stream
 *   makes a replay refresh as often as the live stream would have.
 * - The seeding of a table of at most INLINE_SEED_USERS runs at once in the batch that
 *   ends the warm-up (ch_segments_seed_inline), so that batch's events already get
 *   segments, as before passes existed; the reassignment of the rest follows in slices.
 * - Online steps keep running between the slices; the fit reads the live model when
 *   its fitting starts and writes it only when adopting.
 * - With segments.sync_topic (segsync.c) the live model only follows shared versions
 *   (ch_segments_apply); this instance's passes run only while it coordinates, on a
 *   copy of the live model, on a sample of every instance's users (ch_segments_fit_rows,
 *   whose transform statistics become the sample's).
 * - Invariant: users[j] == the number of records in the table whose segment is j;
 *   the batch path reports moves, the table's eviction hook reports departures.
 */
#include "segments.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ch/topk.h"
#include "log.h"

#define SHARED_INITS 40 /* k-means++ seedings of a shared round's sample */

#define TREND_MAX_LEN 64 /* bytes of a trending value kept */
/* Up to this many users the seeding runs at once in the batch that ends the warm-up
 * (about 0.1 s at 10,000 users of 16 features), so that batch is already segmented;
 * beyond, in slices between batches. */
#define INLINE_SEED_USERS 100000

struct ch_segments {
    const ch_config_t *cfg;
    ch_kmeans_t *km;
    /* segments.sync_topic: km follows the shared versions; the coordinator fits master */
    bool shared, coordinating;
    ch_kmeans_t *master;
    uint64_t version; /* the shared version applied (0: none) */
    size_t k, dim;
    uint64_t *users; /* users currently in each segment */
    /* the pass over the population */
    int phase;    /* CH_SEG_IDLE, CH_SEG_GATHERING, CH_SEG_FITTING */
    bool seeding; /* the pass seeds (the segmenter was not ready) */
    bool asked;   /* a refresh was requested */
    ch_kmeans_fit_t *fit;
    size_t cursor;     /* gathering: user-table position */
    int64_t pass_ms;   /* the stream time the vectors are read at */
    double t0, last_s; /* the pass's start; the end of the last one (wall clock) */
    uint64_t passes, moved_total;
    ch_segments_status_t last;
    /* per segment: trending values since its generation began, member means */
    ch_topk_t **items, **cats;
    uint32_t *trend_gen;
    float *means;            /* k x dim, feature units */
    uint32_t *means_gen;     /* the generation the means were measured at; UINT32_MAX none */
    uint32_t *published_gen; /* in the last segment update; UINT32_MAX none */
    ch_topk_item_t *top;
    ch_trend_t *trends; /* 2 x segments.trending */
    float *cbuf;        /* dim: a centroid in feature units */
    ch_kmeans_opts_t opts;
};

int ch_segments_new(const ch_config_t *cfg, size_t dim, size_t max_batch,
                    ch_segments_t **ret_segments, char *errbuf, size_t errlen) {
    ch_segments_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    s->cfg = cfg;
    s->last_s = ch_now_s();
    s->k = cfg->segments.k;
    s->dim = dim;
    s->users = calloc(s->k ? s->k : 1, sizeof(*s->users));
    size_t k1 = s->k ? s->k : 1, nt = cfg->segments_trending;
    s->items = calloc(k1, sizeof(*s->items));
    s->cats = calloc(k1, sizeof(*s->cats));
    s->trend_gen = calloc(k1, sizeof(uint32_t));
    s->means = calloc(k1 * dim, sizeof(float));
    s->means_gen = malloc(k1 * sizeof(uint32_t));
    s->published_gen = malloc(k1 * sizeof(uint32_t));
    s->top = calloc(nt ? nt : 1, sizeof(*s->top));
    s->trends = calloc(2 * (nt ? nt : 1), sizeof(*s->trends));
    s->cbuf = calloc(dim, sizeof(float));
    bool ok = s->items && s->cats && s->trend_gen && s->means && s->means_gen && s->published_gen &&
              s->top && s->trends && s->cbuf;
    for (size_t j = 0; ok && j < s->k; j++) {
        s->means_gen[j] = s->published_gen[j] = UINT32_MAX;
        if (nt && cfg->segments_topic[0]) { /* only segment updates show them */
            ok = ch_topk_new(cfg->segments_trending_slots, TREND_MAX_LEN,
                             cfg->segments_trending_hl_ms, &s->items[j]) == 0 &&
                 ch_topk_new(cfg->segments_trending_slots, TREND_MAX_LEN,
                             cfg->segments_trending_hl_ms, &s->cats[j]) == 0;
        }
    }
    if (!s->users || !ok) {
        ch_segments_free(s);
        return -ENOMEM;
    }
    ch_kmeans_opts_t o = cfg->segments;
    o.dim = dim;
    o.max_batch = max_batch;
    o.seed_by_caller = true;
    s->opts = o;
    s->shared = cfg->segments_sync_topic[0] != '\0';
    char why[256];
    int r = ch_kmeans_new(&o, &s->km, why, sizeof(why));
    if (r < 0) {
        snprintf(errbuf, errlen, "segments: %s", why);
        ch_segments_free(s);
        return r;
    }
    ch_kmeans_follow(s->km, s->shared);
    if (cfg->segments_state_file[0] && s->shared) {
        ch_log(CH_LOG_INFO,
               "segments: shared through %s: segments.state_file is not used (the "
               "topic holds the centroids)",
               cfg->segments_sync_topic);
    } else if (cfg->segments_state_file[0]) {
        r = ch_kmeans_load(s->km, cfg->segments_state_file, why, sizeof(why));
        if (r == 0) {
            ch_log(CH_LOG_INFO, "segments restored from %s (%s)", cfg->segments_state_file,
                   ch_kmeans_ready(s->km) ? "centroids ready" : "still warming up");
        } else if (r != -ENOENT) {
            ch_log(CH_LOG_WARNING, "segments: not restoring: %s; starting fresh", why);
        }
    }
    for (size_t j = 0; ch_kmeans_ready(s->km) && j < s->k; j++) {
        /* restored: published before the restart; the next pass publishes them again */
        ch_kmeans_centroid(s->km, j, NULL, &s->published_gen[j]);
    }
    *ret_segments = s;
    return 0;
}

ch_segments_t *ch_segments_free(ch_segments_t *s) {
    if (!s) {
        return NULL;
    }
    ch_kmeans_fit_free(s->fit);
    ch_kmeans_free(s->km);
    ch_kmeans_free(s->master);
    for (size_t j = 0; j < s->k && s->items && s->cats; j++) {
        ch_topk_free(s->items[j]);
        ch_topk_free(s->cats[j]);
    }
    free(s->items);
    free(s->cats);
    free(s->trend_gen);
    free(s->means);
    free(s->means_gen);
    free(s->published_gen);
    free(s->top);
    free(s->trends);
    free(s->cbuf);
    free(s->users);
    free(s);
    return NULL;
}

/* Gathering: the current vectors of the table's users, read at the stream time of the
 * pass's start (so a user who stopped shows it), ROWS at a time. */
#define ROWS 64

static void pass_end(ch_segments_t *s) {
    s->fit = ch_kmeans_fit_free(s->fit);
    s->phase = CH_SEG_IDLE;
}

int ch_segments_copy_model(const ch_segments_t *s, ch_kmeans_t **ret_km) {
    char why[256], *buf = NULL;
    size_t len = 0;
    ch_kmeans_t *km = NULL;
    int r = ch_kmeans_new(&s->opts, &km, why, sizeof(why));
    r = r ? r : ch_kmeans_write(s->km, &buf, &len);
    r = r ? r : ch_kmeans_read(km, buf, len, why, sizeof(why));
    free(buf);
    if (r < 0) {
        ch_kmeans_free(km);
        return r;
    }
    *ret_km = km;
    return 0;
}

/* Shared: the coordinator's fit runs on a copy of the applied model (at the seeding,
 * of the unseeded one), not on the model its events are assigned with. */
static int master_copy(ch_segments_t *s) {
    s->master = ch_kmeans_free(s->master);
    char why[256], *buf = NULL;
    size_t len = 0;
    int r = ch_kmeans_new(&s->opts, &s->master, why, sizeof(why));
    r = r ? r : ch_kmeans_write(s->km, &buf, &len);
    r = r ? r : ch_kmeans_read(s->master, buf, len, why, sizeof(why));
    free(buf);
    return r;
}

/* Start a pass on the table: a seeding (not ready) or a refresh. */
static void pass_begin(ch_segments_t *s, ch_users_t *users, int64_t stream_ms, double now_s) {
    size_t count = ch_users_count(users);
    size_t cap = count + count / 4 + 1024; /* users arriving while it gathers */
    int r = ch_kmeans_fit_new(s->km, cap, &s->fit);
    if (r < 0) {
        ch_log(CH_LOG_WARNING, "segments: no memory for a pass over %zu users (%s); will retry",
               count, strerror(-r));
        s->last_s = now_s;
        return;
    }
    s->phase = CH_SEG_GATHERING;
    s->seeding = !ch_kmeans_ready(s->km);
    s->cursor = 0;
    s->pass_ms = stream_ms;
    s->t0 = now_s;
    s->asked = false;
}

static bool gather(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs) {
    float x[ROWS * CH_FEATURES_MAX];
    double row[CH_FEATURES_MAX];
    size_t n = 0;
    ch_user_t *u = NULL;
    while (n < ROWS && (u = ch_users_next(users, &s->cursor))) {
        ch_features_read_at(fs, u->state, u->t_ref_ms, s->pass_ms, row);
        for (size_t t = 0; t < s->dim; t++) {
            x[n * s->dim + t] = (float)row[t];
        }
        n++;
    }
    if (n && ch_kmeans_fit_add(s->fit, x, n) == -ENOSPC) {
        u = NULL; /* the table grew by a quarter while gathering: the pass takes what it has */
    }
    return u != NULL;
}

static void adopted(ch_segments_t *s, const ch_kmeans_refresh_t *info, double now_s) {
    size_t n = info->points;
    s->last.users = n;
    s->last.fit_seconds = now_s - s->t0;
    s->last.inertia = info->restarted || s->seeding ? info->inertia_restart : info->inertia_lloyd;
    s->last.restarted = info->restarted;
    s->last.renewed = info->renewed;
    if (s->shared) {
        ch_log(CH_LOG_INFO,
               "segments: %s fitted on a sample of %zu users of every instance (inertia per "
               "user %.4g, %.2f s); Lloyd steps on all their users follow",
               s->seeding ? "seeding" : "refresh", n, s->last.inertia / (double)n,
               s->last.fit_seconds);
    } else if (s->seeding) {
        ch_log(CH_LOG_INFO,
               "segments seeded on the current vectors of %zu users: inertia per user %.4g "
               "(%.2f s); assigning every user",
               n, info->inertia_restart / (double)n, s->last.fit_seconds);
    } else {
        ch_log(CH_LOG_INFO,
               "segments refreshed on %zu users: inertia per user %.4g -> %.4g (%s; the best "
               "k-means++ fit had %.4g); %zu segments get a new generation (%.2f s); "
               "reassigning every user",
               n, info->inertia_before / (double)n, s->last.inertia / (double)n,
               info->restarted ? "k-means++ replaced Lloyd from the live centroids"
                               : "Lloyd from the live centroids",
               info->inertia_restart / (double)n, info->renewed, s->last.fit_seconds);
    }
}

void ch_segments_drop(ch_segments_t *s) {
    if (s->phase != CH_SEG_IDLE) {
        pass_end(s);
    }
}

bool ch_segments_due(const ch_segments_t *s, const ch_users_t *users, int64_t stream_ms,
                     double now_s) {
    bool enough = ch_users_count(users) >= s->k;
    bool seed = !ch_kmeans_ready(s->km) && ch_kmeans_wants_seed(s->km, 0);
    double every = s->cfg->segments.refresh_ms;
    bool due = ch_kmeans_ready(s->km) &&
               (s->asked || (every > 0 && (s->cfg->segments_refresh_stream
                                               ? ch_kmeans_wants_refresh(s->km, stream_ms)
                                               : (now_s - s->last_s) * 1000.0 >= every)));
    return s->phase == CH_SEG_IDLE && enough && (seed || due);
}

int ch_segments_fit_rows(ch_segments_t *s, const float *x, size_t n, int64_t stream_ms,
                         double now_s) {
    if (s->phase != CH_SEG_IDLE || n < s->k) {
        return -EINVAL;
    }
    int r = master_copy(s);
    r = r ? r : ch_kmeans_restat(s->master, x, n); /* the transform of the population now */
    r = r ? r : ch_kmeans_fit_new(s->master, n, &s->fit);
    /* A shared round's sample stands for every instance's users: its candidates are
     * judged on the sample, and Lloyd on the population cannot leave the basin the
     * winner picks, so the sample gets more seedings than one instance's fit
     * (SHARED_INITS: a sample of 2,029 of 4,504 users once won with a candidate that
     * ended at 1.29 x sklearn's inertia on the population). */
    r = r ? r : ch_kmeans_fit_set_inits(s->fit, SHARED_INITS);
    r = r ? r : ch_kmeans_fit_add(s->fit, x, n);
    if (r < 0) {
        s->fit = ch_kmeans_fit_free(s->fit);
        return r;
    }
    s->phase = CH_SEG_FITTING;
    s->seeding = !ch_kmeans_ready(s->km);
    s->pass_ms = stream_ms;
    s->t0 = now_s;
    s->asked = false;
    return 0;
}

ch_seg_step_t ch_segments_step(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs,
                               int64_t stream_ms, double now_s, double budget_s) {
    if (s->shared && (!s->coordinating || s->phase == CH_SEG_IDLE)) {
        if (s->phase != CH_SEG_IDLE) {
            pass_end(s); /* no longer the coordinator */
        }
        return CH_SEG_IDLE; /* segsync.c starts the coordinator's fits */
    }
    if (s->phase == CH_SEG_IDLE) {
        if (!ch_segments_due(s, users, stream_ms, now_s)) {
            return CH_SEG_IDLE;
        }
        pass_begin(s, users, stream_ms, now_s);
        if (s->phase == CH_SEG_IDLE) {
            return CH_SEG_IDLE;
        }
    }
    double until = ch_now_s() + budget_s;
    if (s->phase == CH_SEG_GATHERING) {
        bool more = true;
        while (more && ch_now_s() < until) {
            more = gather(s, users, fs);
        }
        if (more) {
            return CH_SEG_BUSY;
        }
        s->phase = CH_SEG_FITTING;
    }
    int r = 1;
    while (r == 1 && ch_now_s() < until) {
        r = ch_kmeans_fit_step(s->fit, 4096);
    }
    if (r == 1) {
        return CH_SEG_BUSY;
    }
    ch_kmeans_refresh_t info;
    size_t n = ch_kmeans_fit_rows(s->fit);
    if (r == 0) {
        r = ch_kmeans_fit_adopt(s->fit, stream_ms, &info);
    }
    pass_end(s);
    s->last_s = now_s;
    if (r < 0) {
        /* fewer than k users, no memory, or restored meanwhile: the next one is due */
        ch_log(CH_LOG_WARNING, "segments: the pass on %zu users failed (%s)", n, strerror(-r));
        return CH_SEG_IDLE;
    }
    adopted(s, &info, now_s);
    return CH_SEG_FITTED;
}

bool ch_segments_seed_inline(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs, size_t n,
                             int64_t stream_ms) {
    size_t count = ch_users_count(users);
    if (s->shared || s->phase != CH_SEG_IDLE || ch_kmeans_ready(s->km) ||
        !ch_kmeans_wants_seed(s->km, n) || count < s->k || count > INLINE_SEED_USERS) {
        return false;
    }
    double now = ch_now_s();
    pass_begin(s, users, stream_ms, now);
    return s->phase != CH_SEG_IDLE &&
           ch_segments_step(s, users, fs, stream_ms, now, INFINITY) == CH_SEG_FITTED;
}

int ch_segments_request_refresh(ch_segments_t *s) {
    if (!ch_kmeans_ready(s->km)) {
        return -EAGAIN;
    }
    if (s->phase == CH_SEG_IDLE) {
        s->asked = true;
    }
    return 0;
}

const ch_kmeans_t *ch_segments_model(const ch_segments_t *s) { return s->km; }

void ch_segments_coordinate(ch_segments_t *s, bool on) { s->coordinating = on; }

ch_kmeans_t *ch_segments_master(ch_segments_t *s) { return s->master; }

int ch_segments_apply(ch_segments_t *s, const char *buf, size_t len, uint64_t version, double now_s,
                      char *errbuf, size_t errlen) {
    int r = ch_kmeans_read(s->km, buf, len, errbuf, errlen);
    if (r < 0) {
        return r;
    }
    s->version = version;
    s->t0 = now_s;     /* the reassignment that follows is timed from here */
    s->last_s = now_s; /* the next refresh is due segments.refresh after this one */
    return 0;
}

uint64_t ch_segments_version(const ch_segments_t *s) { return s->version; }

void ch_segments_shared_fit(ch_segments_t *s, size_t users, double inertia) {
    s->last.users = users;
    s->last.inertia = inertia;
}

void ch_segments_assign(ch_segments_t *s, const float *x, size_t n, ch_kmeans_assign_t *ret) {
    ch_kmeans_assign(s->km, x, n, ret);
}

void ch_segments_reassigned(ch_segments_t *s, uint64_t users, uint64_t moved, double now_s) {
    s->last.moved = moved;
    s->last.seconds = now_s - s->t0;
    s->moved_total += moved;
    s->passes++;
    ch_log(CH_LOG_INFO, "segments: %llu of %llu users changed segment (the pass took %.2f s)",
           (unsigned long long)moved, (unsigned long long)users, s->last.seconds);
}

void ch_segments_status(const ch_segments_t *s, ch_segments_status_t *ret) {
    *ret = s->last;
    ret->phase = s->phase;
    ret->passes = s->passes;
    ret->moved_total = s->moved_total;
    ret->asked = s->asked;
}

void ch_segments_update(ch_segments_t *s, const float *x, size_t n, int64_t stream_ms,
                        const int32_t *prev, const uint32_t *prev_gen, ch_kmeans_assign_t *ret) {
    ch_kmeans_update(s->km, x, n, stream_ms, prev, prev_gen, ret);
}

/* A segment's sketches follow its generation: a new centroid starts them afresh. */
static void trend_sync(ch_segments_t *s, size_t j) {
    uint32_t gen = 0;
    ch_kmeans_centroid(s->km, j, NULL, &gen);
    if (s->items[j] && s->trend_gen[j] != gen) {
        ch_topk_clear(s->items[j]);
        ch_topk_clear(s->cats[j]);
        s->trend_gen[j] = gen;
    }
}

void ch_segments_observe(ch_segments_t *s, int32_t seg, const char *item, size_t item_len,
                         const char *cat, size_t cat_len, int64_t ts_ms) {
    if (seg < 0 || (size_t)seg >= s->k || !s->items[seg]) {
        return;
    }
    trend_sync(s, (size_t)seg);
    if (item) {
        ch_topk_add(s->items[seg], item, item_len, ts_ms, 1.0);
    }
    if (cat) {
        ch_topk_add(s->cats[seg], cat, cat_len, ts_ms, 1.0);
    }
}

void ch_segments_set_means(ch_segments_t *s, const double *sums, const uint64_t *counts) {
    for (size_t j = 0; j < s->k; j++) {
        uint32_t gen = 0;
        ch_kmeans_centroid(s->km, j, NULL, &gen);
        for (size_t t = 0; t < s->dim; t++) {
            s->means[j * s->dim + t] =
                counts[j] ? (float)(sums[j * s->dim + t] / (double)counts[j]) : 0.0f;
        }
        s->means_gen[j] = counts[j] ? gen : UINT32_MAX;
    }
}

bool ch_segments_unpublished(const ch_segments_t *s, size_t j) {
    uint32_t gen = 0;
    ch_kmeans_centroid(s->km, j, NULL, &gen);
    return ch_kmeans_ready(s->km) && s->published_gen[j] != gen;
}

static size_t trends(ch_topk_t *t, size_t n, int64_t now_ms, ch_topk_item_t *top, ch_trend_t *ret) {
    size_t m = t ? ch_topk_top(t, now_ms, n, top) : 0;
    for (size_t i = 0; i < m; i++) {
        ret[i] = (ch_trend_t){top[i].value, top[i].len, top[i].weight};
    }
    return m;
}

void ch_segments_record(ch_segments_t *s, size_t j, int64_t now_ms, const char *const *names,
                        ch_segment_rec_t *ret) {
    uint32_t gen = 0;
    double w = 0;
    const float *c = ch_kmeans_centroid(s->km, j, &w, &gen);
    trend_sync(s, j);
    const float *means = s->means + j * s->dim;
    if (s->means_gen[j] != gen) { /* no member measured since this centroid began */
        ch_kmeans_untransform(s->km, c, s->cbuf);
        means = s->cbuf;
    }
    size_t nt = s->cfg->segments_trending;
    *ret = (ch_segment_rec_t){.segment = (int32_t)j,
                              .generation = (int32_t)gen,
                              .ts_ms = now_ms,
                              /* shared: the users of every instance at the last version */
                              .users = s->shared ? (int64_t)llround(w) : (int64_t)s->users[j],
                              .weight = w,
                              .feature_names = names,
                              .centroid = c,
                              .feature_means = means,
                              .n_features = s->dim,
                              .items = s->trends,
                              .categories = s->trends + nt};
    ret->n_items = trends(s->items[j], nt, now_ms, s->top, s->trends);
    ret->n_categories = trends(s->cats[j], nt, now_ms, s->top, s->trends + nt);
    s->published_gen[j] = gen;
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

uint64_t ch_segments_refused(const ch_segments_t *s) {
    return ch_kmeans_refused(s->km) + (s->master ? ch_kmeans_refused(s->master) : 0);
}

uint64_t ch_segments_refreshes(const ch_segments_t *s, uint64_t *ret_restarts) {
    return ch_kmeans_refreshes(s->km, ret_restarts);
}

int ch_segments_save(const ch_segments_t *s) {
    if (!s->cfg->segments_state_file[0] || s->shared) {
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
