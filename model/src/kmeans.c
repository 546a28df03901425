/*
 * kmeans.c - incremental mini-batch K-Means with time decay and stable segment ids.
 *
 * Design notes
 * - Space: l = sign(x) log1p(|x|) (log1p for the non-negative features cohortd
 *   produces; the sign keeps negative inputs ordered), then z = (l - mean) / std with
 *   mean and variance accumulated per point and decayed by 2^(-dt/h_stats) per batch,
 *   dt in stream time. A feature with (near) zero spread keeps std 1, so it maps
 *   to ~0 and never divides by zero.
 * - Warm-up: the first W transformed-space inputs are buffered as l; when W are
 *   there they are z-scored with the statistics of that moment, and `inits` runs
 *   of k-means++ seeding plus Lloyd passes are tried; the lowest inertia wins.
 *   With seed_by_caller nothing is buffered: once W points have been seen the
 *   caller hands over a population (every user's current vector) to
 *   ch_kmeans_seed(), so seeding sees mature vectors, not users' first events,
 *   whose immature vectors let the seeding settle in a poor optimum.
 * - Online: per batch, centroid weights decay by 2^(-dt/h); points go to their nearest
 *   centroid; for each centroid with m new points w += m, eta = m / w,
 *   c = (1 - eta) c + eta mean(points) (Sculley 2010, with Spark's decay).
 *   A centroid whose weight falls under dead_ratio * max weight is re-seeded at a
 *   batch point drawn by D^2 sampling, with weight 2 * dead_ratio * max weight (so it
 *   is not re-seeded again at once) and its generation bumped.
 * - Refresh: an online step moves a centroid m / w of the way to its batch mean, so
 *   it is one damped Lloyd pass per ~half-life; after a drift the centroids need many
 *   half-lives to settle, and online steps cannot leave a local optimum where one
 *   centroid holds two groups while two others share one. So every refresh_ms of
 *   stream time the caller hands over the population (the users' current vectors):
 *   Lloyd passes run over it from the live centroids, and one fresh k-means++
 *   candidate (with its own Lloyd passes) replaces them only if its inertia is lower
 *   by more than RESTART_GAIN. The candidate's centroids take the ids of the old ones
 *   they are optimally matched to (Hungarian method, least total squared distance);
 *   an id whose new centroid is not the one nearest its old one bumps its generation.
 *   A candidate per refresh, not ten: over refreshes the tries add up, and a refresh
 *   stays ~2 / 11 of the seeding's cost. Weights keep their total (decayed event
 *   mass) and are shared out by the population's counts. The daemon leaves it off by
 *   default (daemon/src/segments.c says why).
 * - Invariants: a centroid's index is its segment id for life; generations only grow;
 *   distances come from one sgemm per pass as |z|^2 - 2 Z C^T + |c|^2, clamped at 0.
 * - Reported assignment uses hysteresis: a point keeps its previous segment (of the
 *   same generation) unless the nearest centroid is closer by the hysteresis margin.
 */
#include "ch/kmeans.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "kmeans_int.h"

#define MIN_STD 1e-6    /* below this a feature is treated as constant */
#define WARMUP_INITS 4  /* k-means++ restarts at warm-up (buffered points) */

void ch_kmeans_opts_default(ch_kmeans_opts_t *o, size_t k, size_t dim) {
    *o = (ch_kmeans_opts_t){.k = k,
                            .dim = dim,
                            .warmup = 10000,
                            .lloyd_iters = 10,
                            .max_batch = 4096,
                            .half_life_ms = 86400e3,
                            .stats_half_life_ms = 86400e3,
                            .dead_ratio = 0.01,
                            .hysteresis = 0.05,
                            .log1p = true,
                            .seed = 1,
                            .seed_by_caller = false,
                            .refresh_ms = 0};
}

ch_kmeans_t *ch_kmeans_free(ch_kmeans_t *km) {
    if (!km) {
        return NULL;
    }
    free(km->mean);
    free(km->m2);
    free(km->inv_std);
    free(km->wbuf);
    free(km->c);
    free(km->cnorm);
    free(km->w);
    free(km->gen);
    free(km->z);
    free(km->znorm);
    free(km->dist);
    free(km->rowmap);
    free(km->sum);
    free(km->cnt);
    free(km->nearest);
    free(km->d2);
    free(km);
    return NULL;
}

int ch_kmeans_new(const ch_kmeans_opts_t *o, ch_kmeans_t **ret_km, char *errbuf, size_t errlen) {
    if (o->k < 1 || o->k > CH_KMEANS_MAX_K) {
        return fail(errbuf, errlen, -EINVAL, "k = %zu is outside 1..%d", o->k, CH_KMEANS_MAX_K);
    }
    if (o->dim < 1 || o->dim > CH_KMEANS_MAX_DIM) {
        return fail(errbuf, errlen, -EINVAL, "dimension %zu is outside 1..%d", o->dim,
                    CH_KMEANS_MAX_DIM);
    }
    if (o->warmup < o->k || o->warmup > 10000000) {
        return fail(errbuf, errlen, -EINVAL, "warm-up of %zu points must be in k..10000000",
                    o->warmup);
    }
    if (o->max_batch < 1 || o->max_batch > 1000000) {
        return fail(errbuf, errlen, -EINVAL, "batch size %zu is outside 1..1000000",
                    o->max_batch);
    }
    if (!(o->half_life_ms > 0) || !(o->stats_half_life_ms > 0)) {
        return fail(errbuf, errlen, -EINVAL, "half-lives must be > 0");
    }
    if (!(o->dead_ratio >= 0 && o->dead_ratio < 0.5) ||
        !(o->hysteresis >= 0 && o->hysteresis < 1)) {
        return fail(errbuf, errlen, -EINVAL,
                    "dead ratio must be in [0, 0.5) and hysteresis in [0, 1)");
    }
    if (!(o->refresh_ms >= 0)) {
        return fail(errbuf, errlen, -EINVAL, "refresh period must be >= 0 (0: never)");
    }
    ch_kmeans_t *km = calloc(1, sizeof(*km));
    if (!km) {
        return -ENOMEM;
    }
    km->o = *o;
    size_t k = o->k, d = o->dim, rows = o->max_batch > BLOCK ? o->max_batch : BLOCK;
    km->mean = calloc(d, sizeof(double));
    km->m2 = calloc(d, sizeof(double));
    km->inv_std = malloc(d * sizeof(float));
    km->wbuf = o->seed_by_caller ? NULL : malloc((o->warmup + o->max_batch) * d * sizeof(float));
    km->c = calloc(k * d, sizeof(float));
    km->cnorm = calloc(k, sizeof(float));
    km->w = calloc(k, sizeof(double));
    km->gen = calloc(k, sizeof(uint32_t));
    km->z = malloc(rows * d * sizeof(float));
    km->znorm = malloc(rows * sizeof(float));
    km->dist = malloc(rows * k * sizeof(float));
    km->rowmap = malloc(rows * sizeof(uint32_t));
    km->sum = malloc(k * d * sizeof(float));
    km->cnt = malloc(k * sizeof(size_t));
    size_t held = o->seed_by_caller ? rows : o->warmup + rows;
    km->nearest = malloc(held * sizeof(int32_t));
    km->d2 = malloc(held * sizeof(double));
    if (!km->mean || !km->m2 || !km->inv_std || (!o->seed_by_caller && !km->wbuf) || !km->c ||
        !km->cnorm || !km->w || !km->gen || !km->z || !km->znorm || !km->dist || !km->sum ||
        !km->cnt || !km->nearest || !km->d2 || !km->rowmap) {
        ch_kmeans_free(km);
        return -ENOMEM;
    }
    for (size_t j = 0; j < d; j++) {
        km->inv_std[j] = 1;
    }
    km->stats_ms = INT64_MIN;
    km->t_ms = INT64_MIN;
    km->refreshed_ms = INT64_MIN;
    km->rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    *ret_km = km;
    return 0;
}

bool ch_kmeans_ready(const ch_kmeans_t *km) {
    return km->ready;
}

uint64_t ch_kmeans_points(const ch_kmeans_t *km) {
    return km->points;
}

uint64_t ch_kmeans_refused(const ch_kmeans_t *km) { return km->refused; }

static bool row_finite(const float *v, size_t d) {
    for (size_t t = 0; t < d; t++) {
        if (!isfinite(v[t])) {
            return false;
        }
    }
    return true;
}

uint64_t ch_kmeans_reseeds(const ch_kmeans_t *km) {
    return km->reseeds;
}

uint64_t ch_kmeans_refreshes(const ch_kmeans_t *km, uint64_t *ret_restarts) {
    if (ret_restarts) {
        *ret_restarts = km->restarts;
    }
    return km->refreshes;
}

bool ch_kmeans_wants_seed(const ch_kmeans_t *km, size_t n) {
    return km->o.seed_by_caller && !km->ready && km->points + n >= km->o.warmup;
}

bool ch_kmeans_wants_refresh(const ch_kmeans_t *km, int64_t stream_ms) {
    return km->ready && km->o.refresh_ms > 0 && km->refreshed_ms != INT64_MIN &&
           (double)stream_ms - (double)km->refreshed_ms >= km->o.refresh_ms;
}

const float *ch_kmeans_centroid(const ch_kmeans_t *km, size_t j, double *ret_weight,
                                uint32_t *ret_generation) {
    if (ret_weight) {
        *ret_weight = km->w[j];
    }
    if (ret_generation) {
        *ret_generation = km->gen[j];
    }
    return km->c + j * km->o.dim;
}

static double unif(ch_kmeans_t *km) {
    km->rng ^= km->rng >> 12;
    km->rng ^= km->rng << 25;
    km->rng ^= km->rng >> 27;
    return (double)((km->rng * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

static double decay(int64_t *last_ms, int64_t now_ms, double half_life_ms) {
    if (*last_ms == INT64_MIN) {
        *last_ms = now_ms;
        return 1;
    }
    if (now_ms <= *last_ms) {
        return 1;
    }
    double f = exp2(-(double)(now_ms - *last_ms) / half_life_ms);
    *last_ms = now_ms;
    return f;
}

static inline float slog(float x, bool on) {
    return on ? copysignf(log1pf(fabsf(x)), x) : x;
}

static void refresh_std(ch_kmeans_t *km) {
    for (size_t j = 0; j < km->o.dim; j++) {
        double var = km->sw > 0 ? km->m2[j] / km->sw : 0;
        double sd = var > 0 ? sqrt(var) : 0;
        km->inv_std[j] = sd > MIN_STD ? (float)(1.0 / sd) : 1.0f;
    }
}

/* Fold l-values into the decayed mean/variance (weighted West update). */
static void stats_update(ch_kmeans_t *km, const float *l, size_t n, int64_t now_ms) {
    size_t d = km->o.dim;
    double f = decay(&km->stats_ms, now_ms, km->o.stats_half_life_ms);
    km->sw *= f;
    for (size_t j = 0; j < d; j++) {
        km->m2[j] *= f;
    }
    for (size_t i = 0; i < n; i++) {
        km->sw += 1;
        for (size_t j = 0; j < d; j++) {
            double v = l[i * d + j], delta = v - km->mean[j];
            km->mean[j] += delta / km->sw;
            km->m2[j] += delta * (v - km->mean[j]);
        }
    }
    refresh_std(km);
}

void ch_km_zscore(const ch_kmeans_t *km, const float *l, size_t n, float *z) {
    size_t d = km->o.dim;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++) {
            z[i * d + j] = (float)(l[i * d + j] - km->mean[j]) * km->inv_std[j];
        }
    }
}

/* The first step of the transform: l = sign(x) log1p(|x|) (or x), n rows. */
void ch_km_log_rows(const ch_kmeans_t *km, const float *x, size_t n, float *ret_l) {
    for (size_t i = 0; i < n * km->o.dim; i++) {
        ret_l[i] = slog(x[i], km->o.log1p);
    }
}

void ch_kmeans_untransform(const ch_kmeans_t *km, const float *z, float *ret_x) {
    for (size_t j = 0; j < km->o.dim; j++) {
        double l = (double)z[j] / km->inv_std[j] + km->mean[j];
        ret_x[j] = (float)(km->o.log1p ? copysign(expm1(fabs(l)), l) : l);
    }
}

void ch_kmeans_transform(const ch_kmeans_t *km, const float *x, size_t n, float *ret_z) {
    ch_km_log_rows(km, x, n, ret_z);
    ch_km_zscore(km, ret_z, n, ret_z);
}

void ch_km_refresh_cnorm(ch_kmeans_t *km) {
    size_t d = km->o.dim;
    for (size_t j = 0; j < km->o.k; j++) {
        float s = 0;
        for (size_t t = 0; t < d; t++) {
            s += km->c[j * d + t] * km->c[j * d + t];
        }
        km->cnorm[j] = s;
    }
}

/* Squared distances of n <= BLOCK (or max_batch) rows of z to all centroids into km->dist. */
static void distances(ch_kmeans_t *km, const float *z, size_t n) {
    size_t d = km->o.dim, k = km->o.k;
    for (size_t i = 0; i < n; i++) {
        float s = 0;
        for (size_t t = 0; t < d; t++) {
            s += z[i * d + t] * z[i * d + t];
        }
        km->znorm[i] = s;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)k, (int)d, -2.0f, z, (int)d,
                km->c, (int)d, 0.0f, km->dist, (int)k);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < k; j++) {
            float v = km->dist[i * k + j] + km->znorm[i] + km->cnorm[j];
            km->dist[i * k + j] = v > 0 ? v : 0;
        }
    }
}

static size_t argmin_row(const ch_kmeans_t *km, size_t i) {
    const float *r = km->dist + i * km->o.k;
    size_t best = 0;
    for (size_t j = 1; j < km->o.k; j++) {
        if (r[j] < r[best]) {
            best = j;
        }
    }
    return best;
}

/* Nearest centroid and squared distance of every row of z (n rows, blocked). */
static double assign_all(ch_kmeans_t *km, const float *z, size_t n, int32_t *near, double *d2) {
    size_t d = km->o.dim;
    double inertia = 0;
    for (size_t b = 0; b < n; b += BLOCK) {
        size_t m = n - b < BLOCK ? n - b : BLOCK;
        distances(km, z + b * d, m);
        for (size_t i = 0; i < m; i++) {
            size_t j = argmin_row(km, i);
            near[b + i] = (int32_t)j;
            d2[b + i] = km->dist[i * km->o.k + j];
            inertia += d2[b + i];
        }
    }
    return inertia;
}

/* Index drawn with probability proportional to d2 (uniform if all are 0). */
static size_t d2_sample(ch_kmeans_t *km, const double *d2, size_t n) {
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        total += d2[i];
    }
    if (!(total > 0)) {
        return (size_t)(unif(km) * (double)n) % n;
    }
    double x = unif(km) * total, acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += d2[i];
        if (x < acc) {
            return i;
        }
    }
    return n - 1;
}

static void set_centroid(ch_kmeans_t *km, size_t j, const float *src) {
    memcpy(km->c + j * km->o.dim, src, km->o.dim * sizeof(float));
    float s = 0;
    for (size_t t = 0; t < km->o.dim; t++) {
        s += src[t] * src[t];
    }
    km->cnorm[j] = s;
}

/* Lower d2 with centroid j, row by row (after seeding j). */
/* Squared Euclidean distance of two d-vectors, in double. */
double ch_km_sqdist(const float *a, const float *b, size_t d) {
    double s = 0;
    for (size_t t = 0; t < d; t++) {
        double diff = (double)a[t] - b[t];
        s += diff * diff;
    }
    return s;
}

static void lower_d2(const ch_kmeans_t *km, size_t j, const float *z, size_t n, double *d2) {
    size_t d = km->o.dim;
    const float *c = km->c + j * d;
    for (size_t i = 0; i < n; i++) {
        double s = ch_km_sqdist(z + i * d, c, d);
        d2[i] = s < d2[i] ? s : d2[i];
    }
}

/* Per-centroid count and sum of the rows of z assigned in near. */
static void cluster_sums(ch_kmeans_t *km, const float *z, size_t n, const int32_t *near) {
    size_t k = km->o.k, d = km->o.dim;
    memset(km->sum, 0, k * d * sizeof(float));
    memset(km->cnt, 0, k * sizeof(size_t));
    for (size_t i = 0; i < n; i++) {
        size_t j = (size_t)near[i];
        km->cnt[j]++;
        for (size_t t = 0; t < d; t++) {
            km->sum[j * d + t] += z[i * d + t];
        }
    }
}

/* Lloyd passes over z (n rows) from the current centroids (one with no points stays
 * where it is); near and d2 end with the final assignment. Returns its inertia. */
static double lloyd(ch_kmeans_t *km, const float *z, size_t n, int32_t *near, double *d2) {
    size_t k = km->o.k, d = km->o.dim;
    double inertia = INFINITY;
    for (size_t it = 0; it <= km->o.lloyd_iters; it++) {
        inertia = assign_all(km, z, n, near, d2);
        if (it == km->o.lloyd_iters) {
            break;
        }
        cluster_sums(km, z, n, near);
        for (size_t j = 0; j < k; j++) {
            if (km->cnt[j]) {
                for (size_t t = 0; t < d; t++) {
                    km->c[j * d + t] = km->sum[j * d + t] / (float)km->cnt[j];
                }
            }
        }
        ch_km_refresh_cnorm(km);
    }
    return inertia;
}

/* One k-means++ seeding and Lloyd passes over z (n rows), with n entries of scratch in
 * near and d2; returns the inertia, and the points per centroid in w. */
static double warm_fit(ch_kmeans_t *km, const float *z, size_t n, int32_t *near, double *d2) {
    size_t k = km->o.k, d = km->o.dim;
    size_t first = (size_t)(unif(km) * (double)n) % n;
    set_centroid(km, 0, z + first * d);
    for (size_t i = 0; i < n; i++) {
        d2[i] = INFINITY;
    }
    lower_d2(km, 0, z, n, d2);
    for (size_t j = 1; j < k; j++) {
        size_t p = d2_sample(km, d2, n);
        set_centroid(km, j, z + p * d);
        lower_d2(km, j, z, n, d2);
    }
    double inertia = lloyd(km, z, n, near, d2);
    for (size_t j = 0; j < k; j++) {
        km->w[j] = 0;
    }
    for (size_t i = 0; i < n; i++) {
        km->w[near[i]] += 1;
    }
    return inertia;
}

/* The best of `inits` fits over z (n rows): the centroids go live. */
static void fit_best(ch_kmeans_t *km, const float *z, size_t n, int inits, int32_t *near,
                     double *d2, int64_t stream_ms) {
    size_t k = km->o.k, d = km->o.dim;
    float *best_c = malloc(k * d * sizeof(float));
    double *best_w = malloc(k * sizeof(double));
    double best = INFINITY;
    for (int r = 0; r < inits; r++) {
        double inertia = warm_fit(km, z, n, near, d2);
        if (!best_c || !best_w) {
            best = inertia; /* no room to compare: keep the first */
            break;
        }
        if (inertia < best) {
            best = inertia;
            memcpy(best_c, km->c, k * d * sizeof(float));
            memcpy(best_w, km->w, k * sizeof(double));
        }
    }
    if (best_c && best_w) {
        memcpy(km->c, best_c, k * d * sizeof(float));
        memcpy(km->w, best_w, k * sizeof(double));
    }
    free(best_c);
    free(best_w);
    ch_km_refresh_cnorm(km);
    km->t_ms = stream_ms;
    km->refreshed_ms = stream_ms;
    km->ready = true;
    km->n_w = 0;
}

static void finish_warmup(ch_kmeans_t *km, int64_t stream_ms) {
    float *z = km->wbuf;
    ch_km_zscore(km, z, km->n_w, z); /* in place: the buffer holds l-values until now */
    fit_best(km, z, km->n_w, WARMUP_INITS, km->nearest, km->d2, stream_ms);
}

static void online_update(ch_kmeans_t *km, const float *z, size_t n, int64_t stream_ms) {
    size_t k = km->o.k, d = km->o.dim;
    double f = decay(&km->t_ms, stream_ms, km->o.half_life_ms);
    for (size_t j = 0; j < k; j++) {
        km->w[j] *= f;
    }
    assign_all(km, z, n, km->nearest, km->d2);
    cluster_sums(km, z, n, km->nearest);
    double wmax = 0;
    for (size_t j = 0; j < k; j++) {
        if (km->cnt[j]) {
            double m = (double)km->cnt[j];
            km->w[j] += m;
            float eta = (float)(m / km->w[j]);
            for (size_t t = 0; t < d; t++) {
                float mean = km->sum[j * d + t] / (float)m;
                km->c[j * d + t] = (1 - eta) * km->c[j * d + t] + eta * mean;
            }
        }
        wmax = km->w[j] > wmax ? km->w[j] : wmax;
    }
    ch_km_refresh_cnorm(km);
    for (size_t j = 0; j < k; j++) {
        if (km->w[j] < km->o.dead_ratio * wmax && n > 0) {
            size_t p = d2_sample(km, km->d2, n);
            set_centroid(km, j, z + p * d);
            km->w[j] = 2 * km->o.dead_ratio * wmax;
            km->gen[j]++;
            km->reseeds++;
            lower_d2(km, j, z, n, km->d2);
        }
    }
}

int ch_kmeans_update(ch_kmeans_t *km, const float *x, size_t n_in, int64_t stream_ms,
                     const int32_t *prev, const uint32_t *prev_gen, ch_kmeans_assign_t *ret) {
    size_t d = km->o.dim, k = km->o.k;
    if (n_in == 0 || n_in > km->o.max_batch) {
        return -EINVAL;
    }
    float *l = km->z;
    ch_km_log_rows(km, x, n_in, l);
    /* a row with a value (or l-value) that is not finite would make every statistic and
     * centroid it touches NaN: it is refused, and only the others go on, packed */
    size_t n = 0;
    for (size_t i = 0; i < n_in; i++) {
        ret[i] = (ch_kmeans_assign_t){.segment = -1, .previous = -1};
        if (!row_finite(l + i * d, d)) {
            km->refused++;
            continue;
        }
        if (n != i) {
            memmove(l + n * d, l + i * d, d * sizeof(float));
        }
        km->rowmap[n++] = (uint32_t)i;
    }
    if (n == 0) {
        return 0;
    }
    bool follow = km->follow && km->ready;
    if (!follow) {
        stats_update(km, l, n, stream_ms);
    }
    km->points += n;
    if (!km->ready && km->o.seed_by_caller) {
        return 0;
    }
    if (!km->ready) {
        memcpy(km->wbuf + km->n_w * d, l, n * d * sizeof(float));
        km->n_w += n;
        if (km->n_w < km->o.warmup) {
            return 0;
        }
        finish_warmup(km, stream_ms);
        ch_km_zscore(km, l, n, km->z);
    } else {
        if (km->refreshed_ms == INT64_MIN) {
            km->refreshed_ms = stream_ms; /* restored: the refresh clock starts now */
        }
        ch_km_zscore(km, l, n, km->z);
        if (!follow) { /* following, the centroids change only by ch_kmeans_read() */
            online_update(km, km->z, n, stream_ms);
        }
    }
    /* report: nearest after the update, with hysteresis against the previous segment */
    distances(km, km->z, n);
    for (size_t i = 0; i < n; i++) {
        size_t row = km->rowmap[i];
        const float *r = km->dist + i * k;
        size_t best = argmin_row(km, i);
        int32_t seg = (int32_t)best;
        float dist2 = r[best];
        int32_t p = prev ? prev[row] : -1;
        bool same_gen = p >= 0 && (size_t)p < k && prev_gen && prev_gen[row] == km->gen[p];
        if (same_gen && (size_t)p != best) {
            float dp = sqrtf(r[p]), db = sqrtf(r[best]);
            if (!(db < (float)(1 - km->o.hysteresis) * dp)) {
                seg = p;
                dist2 = r[p];
            }
        }
        ret[row].segment = seg;
        ret[row].generation = km->gen[seg];
        ret[row].distance = sqrtf(dist2);
        ret[row].previous = p >= 0 && (p != seg || !same_gen) ? p : -1;
    }
    return 0;
}

void ch_kmeans_assign(ch_kmeans_t *km, const float *x, size_t n, ch_kmeans_assign_t *ret) {
    size_t k = km->o.k;
    if (!km->ready) {
        for (size_t i = 0; i < n; i++) {
            ret[i] = (ch_kmeans_assign_t){.segment = -1, .previous = -1};
        }
        return;
    }
    ch_kmeans_transform(km, x, n, km->z);
    distances(km, km->z, n);
    for (size_t i = 0; i < n; i++) {
        if (!row_finite(km->z + i * km->o.dim, km->o.dim)) {
            ret[i] = (ch_kmeans_assign_t){.segment = -1, .previous = -1};
            continue;
        }
        size_t best = argmin_row(km, i);
        ret[i] = (ch_kmeans_assign_t){.segment = (int32_t)best,
                                      .generation = km->gen[best],
                                      .distance = sqrtf(km->dist[i * k + best]),
                                      .previous = -1};
    }
}

void ch_kmeans_follow(ch_kmeans_t *km, bool on) { km->follow = on; }

int ch_kmeans_restat(ch_kmeans_t *km, const float *x, size_t n) {
    size_t k = km->o.k, d = km->o.dim;
    if (n == 0) {
        return -EINVAL;
    }
    /* mean, m2, the old mean; then the old 1 / std and one row of l-values */
    double *acc = calloc(3 * d, sizeof(double));
    float *f = malloc(2 * d * sizeof(float));
    if (!acc || !f) {
        free(acc);
        free(f);
        return -ENOMEM;
    }
    double *mean = acc, *m2 = acc + d, *old_mean = acc + 2 * d;
    float *old_inv = f, *l = f + d;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) { /* Welford, every finite row of weight 1 */
        ch_km_log_rows(km, x + i * d, 1, l);
        if (!row_finite(l, d)) {
            km->refused++;
            continue;
        }
        used++;
        for (size_t t = 0; t < d; t++) {
            double delta = l[t] - mean[t];
            mean[t] += delta / (double)used;
            m2[t] += delta * (l[t] - mean[t]);
        }
    }
    if (used == 0) {
        free(acc);
        free(f);
        return -EINVAL;
    }
    memcpy(old_inv, km->inv_std, d * sizeof(float));
    memcpy(old_mean, km->mean, d * sizeof(double));
    memcpy(km->mean, mean, d * sizeof(double));
    memcpy(km->m2, m2, d * sizeof(double));
    km->sw = (double)used;
    refresh_std(km);
    /* each centroid stays the same point of the l-space: l = z std + mean */
    for (size_t j = 0; km->ready && j < k; j++) {
        for (size_t t = 0; t < d; t++) {
            double lv = (double)km->c[j * d + t] / old_inv[t] + old_mean[t];
            km->c[j * d + t] = (float)((lv - km->mean[t]) * km->inv_std[t]);
        }
    }
    ch_km_refresh_cnorm(km);
    free(acc);
    free(f);
    return 0;
}

int ch_kmeans_set_centroids(ch_kmeans_t *km, const float *c, const double *w) {
    size_t k = km->o.k, d = km->o.dim;
    if (!km->ready) {
        return -EINVAL;
    }
    for (size_t i = 0; i < k * d; i++) {
        if (!isfinite(c[i])) {
            return -EINVAL;
        }
    }
    for (size_t j = 0; j < k; j++) {
        if (!isfinite(w[j]) || w[j] < 0) {
            return -EINVAL;
        }
    }
    memcpy(km->c, c, k * d * sizeof(float));
    memcpy(km->w, w, k * sizeof(double));
    ch_km_refresh_cnorm(km);
    return 0;
}

int ch_kmeans_accumulate(ch_kmeans_t *km, const float *x, size_t n, int32_t *near,
                         ch_kmeans_sums_t *acc) {
    size_t k = km->o.k, d = km->o.dim;
    if (!km->ready) {
        return -EINVAL;
    }
    for (size_t b = 0; b < n; b += BLOCK) {
        size_t m = n - b < BLOCK ? n - b : BLOCK;
        const float *xb = x + b * d;
        size_t m_used = m;
        ch_kmeans_transform(km, xb, m, km->z);
        distances(km, km->z, m);
        for (size_t i = 0; i < m; i++) {
            if (!row_finite(km->z + i * d, d)) {
                near[b + i] = -1; /* in no segment's sums */
                km->refused++;
                m_used--;
                continue;
            }
            size_t j = argmin_row(km, i);
            if (near[b + i] != (int32_t)j) {
                acc->changed++;
                near[b + i] = (int32_t)j;
            }
            acc->inertia += km->dist[i * k + j];
            acc->counts[j]++;
            for (size_t t = 0; t < d; t++) {
                acc->sums[j * d + t] += km->z[i * d + t];
            }
        }
        acc->rows += m_used;
    }
    return 0;
}

bool ch_kmeans_check(const ch_kmeans_t *km, char *why, size_t len) {
    size_t k = km->o.k, d = km->o.dim;
    if (!(km->sw >= 0) || !isfinite(km->sw)) {
        fail(why, len, 0, "transform weight %g is not finite and >= 0", km->sw);
        return false;
    }
    for (size_t t = 0; t < d; t++) {
        if (!isfinite(km->mean[t]) || !(km->m2[t] >= 0) || !isfinite(km->m2[t]) ||
            !(km->inv_std[t] > 0) || !isfinite(km->inv_std[t])) {
            fail(why, len, 0, "transform statistics of feature %zu are broken", t);
            return false;
        }
    }
    for (size_t j = 0; km->ready && j < k; j++) {
        if (!isfinite(km->w[j]) || km->w[j] < 0) {
            fail(why, len, 0, "segment %zu has weight %g", j, km->w[j]);
            return false;
        }
        float s = 0;
        for (size_t t = 0; t < d; t++) {
            float v = km->c[j * d + t];
            if (!isfinite(v)) {
                fail(why, len, 0, "segment %zu has a non-finite centroid", j);
                return false;
            }
            s += v * v;
        }
        /* the cached |c|^2 that distances use is the centroid's */
        if (fabsf(s - km->cnorm[j]) > 1e-3f * (1 + s)) {
            fail(why, len, 0, "segment %zu: cached norm %g, centroid's %g", j, km->cnorm[j], s);
            return false;
        }
    }
    if (km->restarts > km->refreshes) {
        fail(why, len, 0, "%llu restarts but %llu refreshes", (unsigned long long)km->restarts,
             (unsigned long long)km->refreshes);
        return false;
    }
    return true;
}

/* ---- persistence --------------------------------------------------------- */

/* The model as text (the format of a segments.state_file) into f. */
static void write_model(const ch_kmeans_t *km, FILE *f) {
    size_t k = km->o.k, d = km->o.dim;
    fprintf(f, "cohortd-kmeans 1\nk %zu\ndim %zu\nlog1p %d\nready %d\n", k, d, km->o.log1p ? 1 : 0,
            km->ready ? 1 : 0);
    fprintf(f, "points %llu\nreseeds %llu\nstream_ms %lld\nstats_ms %lld\nsw %.17g\n",
            (unsigned long long)km->points, (unsigned long long)km->reseeds, (long long)km->t_ms,
            (long long)km->stats_ms, km->sw);
    const char *names[3] = {"mean", "m2", "std"};
    for (int r = 0; r < 3; r++) {
        fputs(names[r], f);
        for (size_t j = 0; j < d; j++) {
            double v = r == 0 ? km->mean[j] : r == 1 ? km->m2[j] : 1.0 / km->inv_std[j];
            fprintf(f, " %.17g", v);
        }
        fputc('\n', f);
    }
    for (size_t j = 0; km->ready && j < k; j++) {
        fprintf(f, "centroid %zu %u %.17g", j, km->gen[j], km->w[j]);
        for (size_t t = 0; t < d; t++) {
            fprintf(f, " %.9g", km->c[j * d + t]);
        }
        fputc('\n', f);
    }
}

int ch_kmeans_save(const ch_kmeans_t *km, const char *path, char *errbuf, size_t errlen) {
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        return fail(errbuf, errlen, -EINVAL, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "we");
    if (!f) {
        return fail(errbuf, errlen, -EIO, "%s: %s", tmp, strerror(errno));
    }
    write_model(km, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, path) < 0) {
        int e = errno;
        remove(tmp);
        return fail(errbuf, errlen, -EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

int ch_kmeans_write(const ch_kmeans_t *km, char **ret_buf, size_t *ret_len) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        return -ENOMEM;
    }
    write_model(km, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(buf);
        return -ENOMEM;
    }
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

/* Skip whitespace and match a word; fscanf() alone cannot tell a mismatch. */
static bool literal(FILE *f, const char *word) {
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\n') {
    }
    for (const char *p = word; *p; p++, c = fgetc(f)) {
        if (c != *p) {
            return false;
        }
    }
    return c == ' ' && ungetc(c, f) != EOF;
}

/* Read a model written by write_model() from f (closed here) into km; name is for
 * messages. shared: a model from another instance, whose counters are not ours. */
static int read_model(ch_kmeans_t *km, FILE *f, const char *name, bool shared, char *errbuf,
                      size_t errlen) {
    size_t k = km->o.k, d = km->o.dim, fk, fd;
    int log1p_on, ready, r = -EINVAL;
    unsigned long long points, reseeds;
    long long t_ms, stats_ms;
    double sw;
    double *mean = calloc(d, sizeof(double)), *m2 = calloc(d, sizeof(double));
    double *w = calloc(k, sizeof(double));
    float *c = calloc(k * d, sizeof(float));
    uint32_t *gen = calloc(k, sizeof(uint32_t));
    if (!mean || !m2 || !w || !c || !gen) {
        r = -ENOMEM;
        goto out;
    }
    if (fscanf(f, "cohortd-kmeans 1 k %zu dim %zu log1p %d ready %d", &fk, &fd, &log1p_on,
               &ready) != 4 ||
        fscanf(f, " points %llu reseeds %llu stream_ms %lld stats_ms %lld sw %lg", &points,
               &reseeds, &t_ms, &stats_ms, &sw) != 5) {
        fail(errbuf, errlen, r, "%s: not a cohortd segment model", name);
        goto out;
    }
    if (fk != k || fd != d || log1p_on != (km->o.log1p ? 1 : 0)) {
        fail(errbuf, errlen, r,
             "%s: saved with k=%zu, %zu features, log1p=%d; configured k=%zu, "
             "%zu features, log1p=%d",
             name, fk, fd, log1p_on, k, d, km->o.log1p ? 1 : 0);
        goto out;
    }
    double dummy;
    bool ok = literal(f, "mean");
    for (size_t j = 0; ok && j < d; j++) {
        ok = fscanf(f, "%lg", &mean[j]) == 1;
    }
    ok = ok && literal(f, "m2");
    for (size_t j = 0; ok && j < d; j++) {
        ok = fscanf(f, "%lg", &m2[j]) == 1;
    }
    ok = ok && literal(f, "std");
    for (size_t j = 0; ok && j < d; j++) {
        ok = fscanf(f, "%lg", &dummy) == 1;
    }
    for (size_t j = 0; ok && ready && j < k; j++) {
        size_t idx;
        ok = fscanf(f, " centroid %zu %u %lg", &idx, &gen[j], &w[j]) == 3 && idx == j &&
             isfinite(w[j]) && w[j] >= 0;
        for (size_t t = 0; ok && t < d; t++) {
            ok = fscanf(f, "%g", &c[j * d + t]) == 1 && isfinite(c[j * d + t]);
        }
    }
    if (!ok || !isfinite(sw) || sw < 0) {
        fail(errbuf, errlen, r, "%s: damaged segment model", name);
        goto out;
    }
    memcpy(km->mean, mean, d * sizeof(double));
    memcpy(km->m2, m2, d * sizeof(double));
    km->sw = sw;
    km->stats_ms = stats_ms;
    if (!shared) {
        km->points = points;
        km->reseeds = reseeds;
    }
    refresh_std(km);
    if (ready) {
        memcpy(km->c, c, k * d * sizeof(float));
        memcpy(km->w, w, k * sizeof(double));
        memcpy(km->gen, gen, k * sizeof(uint32_t));
        km->t_ms = t_ms;
        km->ready = true;
        km->n_w = 0;
        ch_km_refresh_cnorm(km);
        km->refreshed_ms = INT64_MIN; /* the refresh clock starts at the next batch */
    }
    r = 0;
out:
    free(mean);
    free(m2);
    free(w);
    free(c);
    free(gen);
    fclose(f);
    return r;
}

int ch_kmeans_load(ch_kmeans_t *km, const char *path, char *errbuf, size_t errlen) {
    FILE *f = fopen(path, "re");
    if (!f) {
        return fail(errbuf, errlen, errno == ENOENT ? -ENOENT : -EIO, "%s: %s", path,
                    strerror(errno));
    }
    return read_model(km, f, path, false, errbuf, errlen);
}

int ch_kmeans_read(ch_kmeans_t *km, const char *buf, size_t len, char *errbuf, size_t errlen) {
    FILE *f = len ? fmemopen((void *)buf, len, "r") : NULL;
    if (!f) {
        return fail(errbuf, errlen, -EINVAL, "shared segment model: empty or unreadable");
    }
    return read_model(km, f, "shared segment model", true, errbuf, errlen);
}
