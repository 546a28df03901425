/*
 * kmeans_fit.c - fitting the segments on a whole population (every user's current
 * vector), in slices the caller interleaves with its other work.
 *
 * Design notes
 * - A fit is a small state machine over the population matrix: the caller adds raw
 *   rows (log1p applied at once), then calls ch_kmeans_fit_step() with a budget of
 *   rows; the first step z-scores every row with the statistics of that moment. One
 *   pass over the rows (a k-means++ D^2 pass, or a Lloyd assignment) may span many
 *   steps: nothing in a step depends on the step's size, so a fit cut into slices of
 *   one block gives the same centroids, bit for bit, as one cut into a single step.
 * - Candidates, in order: (1) Lloyd from the live centroids (a refresh; absent at the
 *   first seeding); (2) FIT_INITS k-means++ seedings, each refined by Lloyd, on a sample
 *   of at most FIT_SAMPLE rows (every row when the population is smaller); (3) when the
 *   sample is not the whole population, the best of them refined by Lloyd on every row.
 *   Lloyd runs until no row changes centroid (or FIT_MAX_ITERS passes), stricter than
 *   sklearn's tolerance on centroid movement: stopped early, the next refresh of an
 *   unchanged population would go on moving a few users. A centroid left without rows is moved to
 * the row farthest from its own centroid (sklearn does the same).
 * - Adoption: the best candidate replaces Lloyd-from-live only if its inertia is lower
 *   by more than RESTART_GAIN (a small gain is not worth renaming segments). Its
 *   centroids take the ids of the live ones by an optimal assignment (Hungarian method,
 *   least total squared distance). Whichever wins, an id whose new centroid is not
 *   the one nearest its old one gets a new generation: consumers must not read it as
 *   the same segment. Weights keep their total (decayed event mass), shared out by
 *   the population's counts.
 * - Cost: O(n k d) a Lloyd pass (one sgemm per block of rows), O(n d) a seeding pass,
 *   k seeding passes per candidate; memory 4 (d + 4) bytes a row. The candidates'
 *   passes are on the sample, so beyond FIT_SAMPLE rows a refresh costs about two
 *   Lloyd runs over the population plus a constant.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kmeans_int.h"

#define FIT_INITS 10         /* k-means++ seedings tried by default (sklearn's n_init) */
#define FIT_SAMPLE 65536     /* rows they are fitted on, at most */
#define FIT_MAX_ITERS 100    /* Lloyd passes per candidate, at most */
#define RESTART_GAIN 0.005   /* a k-means++ candidate must lower the inertia by 0.5% */
#define MAX_TRIALS 16        /* greedy k-means++ trials per centroid: 2 + ln k */
#define STAGE_LIVE (-1)      /* stage: Lloyd from the live centroids */

typedef enum { PH_GATHER, PH_SEED, PH_LLOYD, PH_DONE, PH_ADOPTED } phase_t;

/* A finished candidate: centroids, rows per centroid and inertia on its rows. */
typedef struct result {
    float *c;
    size_t *cnt;
    double inertia;
} result_t;

struct ch_kmeans_fit {
    ch_kmeans_t *km;
    size_t k, d, n, cap, ns;
    float *z, *zn;   /* cap rows (l-values until the first step), their squared norms */
    float *zs, *zsn; /* the sample: z itself when n <= FIT_SAMPLE */
    int32_t *near;
    double *d2;
    float *dist;   /* BLOCK x k */
    float *c, *cn; /* the centroids being fitted, their squared norms */
    double *sum;   /* k x d: this pass's per-centroid sums */
    size_t *cnt;
    result_t live, best, final;
    bool has_live;
    int stage; /* STAGE_LIVE, a seeding 0 .. inits - 1, or inits: the best refined */
    int inits; /* k-means++ seedings tried */
    phase_t ph;
    size_t j, pos, iter, changed;
    bool final_pass;
    double pass_inertia, d2_total, inertia_before;
    uint64_t rng;    /* k-means++ draws: from segments.seed afresh for every fit */
    bool trial_pass; /* seeding: this pass sums the trials' potentials */
    size_t n_trials, trial[MAX_TRIALS];
    double pot[MAX_TRIALS];
};

static double unif(uint64_t *rng) {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    return (double)((*rng * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

static int result_alloc(result_t *r, size_t k, size_t d) {
    r->c = malloc(k * d * sizeof(float));
    r->cnt = calloc(k, sizeof(size_t));
    r->inertia = INFINITY;
    return r->c && r->cnt ? 0 : -ENOMEM;
}

static void result_free(result_t *r) {
    free(r->c);
    free(r->cnt);
}

int ch_kmeans_fit_set_inits(ch_kmeans_fit_t *f, int inits) {
    if (inits < 1 || inits > 1000) {
        return -EINVAL;
    }
    f->inits = inits;
    return 0;
}

ch_kmeans_fit_t *ch_kmeans_fit_free(ch_kmeans_fit_t *f) {
    if (!f) {
        return NULL;
    }
    if (f->zs != f->z) {
        free(f->zs);
        free(f->zsn);
    }
    free(f->z);
    free(f->zn);
    free(f->near);
    free(f->d2);
    free(f->dist);
    free(f->c);
    free(f->cn);
    free(f->sum);
    free(f->cnt);
    result_free(&f->live);
    result_free(&f->best);
    result_free(&f->final);
    free(f);
    return NULL;
}

int ch_kmeans_fit_new(ch_kmeans_t *km, size_t max_rows, ch_kmeans_fit_t **ret_fit) {
    size_t k = km->o.k, d = km->o.dim;
    if (max_rows < k) {
        return -EINVAL;
    }
    ch_kmeans_fit_t *f = calloc(1, sizeof(*f));
    if (!f) {
        return -ENOMEM;
    }
    f->inits = FIT_INITS;
    f->km = km;
    f->k = k;
    f->d = d;
    f->cap = max_rows;
    f->z = malloc(max_rows * d * sizeof(float));
    f->zn = malloc(max_rows * sizeof(float));
    f->near = malloc(max_rows * sizeof(int32_t));
    f->d2 = malloc(max_rows * sizeof(double));
    f->dist = malloc((size_t)BLOCK * k * sizeof(float));
    f->c = malloc(k * d * sizeof(float));
    f->cn = malloc(k * sizeof(float));
    f->sum = malloc(k * d * sizeof(double));
    f->cnt = malloc(k * sizeof(size_t));
    int r =
        result_alloc(&f->live, k, d) | result_alloc(&f->best, k, d) | result_alloc(&f->final, k, d);
    if (r < 0 || !f->z || !f->zn || !f->near || !f->d2 || !f->dist || !f->c || !f->cn || !f->sum ||
        !f->cnt) {
        ch_kmeans_fit_free(f);
        return -ENOMEM;
    }
    f->zs = f->z;
    f->zsn = f->zn;
    f->ph = PH_GATHER;
    /* the same draws for the same population: refreshing an unchanged one changes nothing */
    f->rng = km->o.seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    f->n_trials = 2 + (size_t)log((double)k);
    f->n_trials = f->n_trials < MAX_TRIALS ? f->n_trials : MAX_TRIALS;
    *ret_fit = f;
    return 0;
}

int ch_kmeans_fit_add(ch_kmeans_fit_t *f, const float *x, size_t n) {
    if (f->ph != PH_GATHER) {
        return -EINVAL;
    }
    if (n > f->cap - f->n) {
        return -ENOSPC;
    }
    ch_km_log_rows(f->km, x, n, f->z + f->n * f->d);
    f->n += n;
    return 0;
}

size_t ch_kmeans_fit_rows(const ch_kmeans_fit_t *f) { return f->n; }

static void norms(const float *z, size_t n, size_t d, float *ret) {
    for (size_t i = 0; i < n; i++) {
        float s = 0;
        for (size_t t = 0; t < d; t++) {
            s += z[i * d + t] * z[i * d + t];
        }
        ret[i] = s;
    }
}

static void set_norms(ch_kmeans_fit_t *f) { norms(f->c, f->k, f->d, f->cn); }

/* Rows of the current stage, and their norms. */
static bool on_sample(const ch_kmeans_fit_t *f) { return f->stage >= 0 && f->stage < f->inits; }

static void begin_stage(ch_kmeans_fit_t *f, int stage) {
    size_t k = f->k, d = f->d;
    f->stage = stage;
    f->pos = 0;
    f->iter = 0;
    f->final_pass = false;
    f->pass_inertia = 0;
    f->changed = 0;
    memset(f->sum, 0, k * d * sizeof(double));
    memset(f->cnt, 0, k * sizeof(size_t));
    if (stage == STAGE_LIVE) {
        memcpy(f->c, f->km->c, k * d * sizeof(float));
        f->ph = PH_LLOYD;
    } else if (stage == f->inits) {
        memcpy(f->c, f->best.c, k * d * sizeof(float));
        f->ph = PH_LLOYD;
    } else {
        size_t first = (size_t)(unif(&f->rng) * (double)f->ns) % f->ns;
        memcpy(f->c, f->zs + first * d, d * sizeof(float));
        f->j = 1;
        f->d2_total = 0;
        f->trial_pass = false;
        f->ph = k > 1 ? PH_SEED : PH_LLOYD;
    }
    set_norms(f);
}

/* Z-score the gathered rows, draw the sample, set the tolerance, and start. */
static int close_gather(ch_kmeans_fit_t *f) {
    size_t n = f->n, d = f->d;
    if (n < f->k) {
        return -EINVAL;
    }
    ch_km_zscore(f->km, f->z, n, f->z);
    norms(f->z, n, d, f->zn);
    if (n > FIT_SAMPLE) {
        f->zs = malloc((size_t)FIT_SAMPLE * d * sizeof(float));
        f->zsn = malloc((size_t)FIT_SAMPLE * sizeof(float));
        if (!f->zs || !f->zsn) {
            free(f->zs);
            free(f->zsn);
            f->zs = f->z;
            f->zsn = f->zn;
            return -ENOMEM;
        }
        for (size_t i = 0; i < FIT_SAMPLE; i++) { /* evenly spaced over the table */
            size_t from = (size_t)((double)i * (double)n / FIT_SAMPLE);
            memcpy(f->zs + i * d, f->z + from * d, d * sizeof(float));
            f->zsn[i] = f->zn[from];
        }
        f->ns = FIT_SAMPLE;
    } else {
        f->ns = n;
    }
    f->has_live = f->km->ready;
    begin_stage(f, f->has_live ? STAGE_LIVE : 0);
    return 0;
}

static void keep(result_t *r, const ch_kmeans_fit_t *f, double inertia) {
    memcpy(r->c, f->c, f->k * f->d * sizeof(float));
    memcpy(r->cnt, f->cnt, f->k * sizeof(size_t));
    r->inertia = inertia;
}

/* The stage's fit is in f->c with f->cnt rows per centroid and that inertia. */
static void end_stage(ch_kmeans_fit_t *f, double inertia) {
    if (f->stage == STAGE_LIVE) {
        keep(&f->live, f, inertia);
        begin_stage(f, 0);
    } else if (f->stage == f->inits) {
        keep(&f->final, f, inertia);
        f->ph = PH_DONE;
    } else {
        if (inertia < f->best.inertia) {
            keep(&f->best, f, inertia);
        }
        if (f->stage + 1 < f->inits) {
            begin_stage(f, f->stage + 1);
        } else if (f->ns < f->n) {
            begin_stage(f, f->inits);
        } else {
            result_t t = f->final; /* the best on the sample is the best on every row */
            f->final = f->best;
            f->best = t;
            f->ph = PH_DONE;
        }
    }
}

/* Greedy k-means++ (sklearn's): each centroid after the first is the best of `trials`
 * rows drawn by D^2 sampling, the one that lowers the potential (sum of D^2) most. Two
 * passes a centroid: one lowers D^2 with the centroid placed last, one sums each
 * trial's potential. */
static void seed_rows(ch_kmeans_fit_t *f, size_t m) {
    size_t d = f->d;
    if (!f->trial_pass) {
        const float *c = f->c + (f->j - 1) * d;
        for (size_t i = f->pos; i < f->pos + m; i++) {
            double s = ch_km_sqdist(f->zs + i * d, c, d);
            f->d2[i] = f->j == 1 || s < f->d2[i] ? s : f->d2[i];
            f->d2_total += f->d2[i];
        }
        return;
    }
    for (size_t i = f->pos; i < f->pos + m; i++) {
        for (size_t l = 0; l < f->n_trials; l++) {
            double s = ch_km_sqdist(f->zs + i * d, f->zs + f->trial[l] * d, d);
            f->pot[l] += s < f->d2[i] ? s : f->d2[i];
        }
    }
}

/* A row drawn with probability proportional to D^2 (uniform if all are 0). */
static size_t d2_draw(ch_kmeans_fit_t *f) {
    if (!(f->d2_total > 0)) {
        return (size_t)(unif(&f->rng) * (double)f->ns) % f->ns;
    }
    double x = unif(&f->rng) * f->d2_total, acc = 0;
    for (size_t i = 0; i < f->ns; i++) {
        acc += f->d2[i];
        if (x < acc) {
            return i;
        }
    }
    return f->ns - 1;
}

/* A seeding pass is over: draw the trials, or place the best of them and go on (or
 * start Lloyd once k are placed). */
static void seed_next(ch_kmeans_fit_t *f) {
    size_t d = f->d;
    f->pos = 0;
    if (!f->trial_pass) {
        for (size_t l = 0; l < f->n_trials; l++) {
            f->trial[l] = d2_draw(f);
            f->pot[l] = 0;
        }
        f->trial_pass = true;
        return;
    }
    size_t best = 0;
    for (size_t l = 1; l < f->n_trials; l++) {
        best = f->pot[l] < f->pot[best] ? l : best;
    }
    memcpy(f->c + f->j * d, f->zs + f->trial[best] * d, d * sizeof(float));
    f->j++;
    f->trial_pass = false;
    f->d2_total = 0;
    if (f->j == f->k) {
        f->ph = PH_LLOYD;
        set_norms(f);
    }
}

/* Lloyd: assign rows [pos, pos+m) (one block) and add them to the sums. */
static void lloyd_rows(ch_kmeans_fit_t *f, size_t m) {
    size_t k = f->k, d = f->d;
    const float *z = (on_sample(f) ? f->zs : f->z) + f->pos * d;
    const float *zn = (on_sample(f) ? f->zsn : f->zn) + f->pos;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)k, (int)d, -2.0f, z, (int)d,
                f->c, (int)d, 0.0f, f->dist, (int)k);
    for (size_t i = 0; i < m; i++) {
        const float *r = f->dist + i * k;
        size_t best = 0;
        float bd = INFINITY;
        for (size_t j = 0; j < k; j++) {
            float v = r[j] + zn[i] + f->cn[j];
            v = v > 0 ? v : 0;
            if (v < bd) {
                bd = v;
                best = j;
            }
        }
        size_t row = f->pos + i;
        if (f->iter == 0 || f->near[row] != (int32_t)best) {
            f->changed++;
        }
        f->near[row] = (int32_t)best;
        f->d2[row] = bd;
        f->pass_inertia += bd;
        f->cnt[best]++;
        for (size_t t = 0; t < d; t++) {
            f->sum[best * d + t] += z[i * d + t];
        }
    }
}

/* A Lloyd pass is over: finish the stage, or move the centroids for the next pass. */
static void lloyd_next(ch_kmeans_fit_t *f) {
    size_t k = f->k, d = f->d, rows = on_sample(f) ? f->ns : f->n;
    const float *z = on_sample(f) ? f->zs : f->z;
    if (f->stage == STAGE_LIVE && f->iter == 0) {
        f->inertia_before = f->pass_inertia;
    }
    if (f->final_pass || (f->iter > 0 && f->changed == 0)) {
        end_stage(f, f->pass_inertia);
        return;
    }
    for (size_t j = 0; j < k; j++) {
        if (!f->cnt[j]) {
            continue;
        }
        for (size_t t = 0; t < d; t++) {
            f->c[j * d + t] = (float)(f->sum[j * d + t] / (double)f->cnt[j]);
        }
    }
    for (size_t j = 0; j < k; j++) { /* an empty centroid goes to the farthest row */
        if (f->cnt[j]) {
            continue;
        }
        size_t far = 0;
        for (size_t i = 1; i < rows; i++) {
            far = f->d2[i] > f->d2[far] ? i : far;
        }
        memcpy(f->c + j * d, z + far * d, d * sizeof(float));
        f->d2[far] = 0;
    }
    set_norms(f);
    f->iter++;
    if (f->iter >= FIT_MAX_ITERS) {
        f->final_pass = true; /* one assignment with the final centroids */
    }
    f->pos = 0;
    f->pass_inertia = 0;
    f->changed = 0;
    memset(f->sum, 0, k * d * sizeof(double));
    memset(f->cnt, 0, k * sizeof(size_t));
}

int ch_kmeans_fit_step(ch_kmeans_fit_t *f, size_t budget) {
    if (f->ph == PH_GATHER) {
        int r = close_gather(f);
        if (r < 0) {
            return r;
        }
    }
    while (f->ph == PH_SEED || f->ph == PH_LLOYD) {
        size_t rows = on_sample(f) ? f->ns : f->n;
        size_t m = rows - f->pos < BLOCK ? rows - f->pos : BLOCK;
        if (f->ph == PH_SEED) {
            seed_rows(f, m);
        } else {
            lloyd_rows(f, m);
        }
        f->pos += m;
        if (f->pos == rows) {
            if (f->ph == PH_SEED) {
                seed_next(f);
            } else {
                lloyd_next(f);
            }
        }
        if (budget <= m) {
            break;
        }
        budget -= m;
    }
    return f->ph >= PH_DONE ? 0 : 1;
}

/* Least-cost perfect matching of the rows of a k x k cost matrix to its columns
 * (Hungarian method with potentials, O(k^3)): ret_col[i] is row i's column. */
static int match(const double *cost, size_t k, size_t *ret_col) {
    double *u = calloc(k + 1, sizeof(double)), *v = calloc(k + 1, sizeof(double));
    double *minv = malloc((k + 1) * sizeof(double));
    size_t *p = calloc(k + 1, sizeof(size_t)), *way = calloc(k + 1, sizeof(size_t));
    bool *used = malloc((k + 1) * sizeof(bool));
    int r = u && v && minv && p && way && used ? 0 : -ENOMEM;
    /* 1-based: column 0 and row 0 are the method's sentinel */
    for (size_t i = 1; r == 0 && i <= k; i++) {
        p[0] = i;
        size_t j0 = 0;
        for (size_t j = 0; j <= k; j++) {
            minv[j] = INFINITY;
            used[j] = false;
        }
        do {
            used[j0] = true;
            size_t i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            for (size_t j = 1; j <= k; j++) {
                if (used[j]) {
                    continue;
                }
                double cur = cost[(i0 - 1) * k + (j - 1)] - u[i0] - v[j];
                if (cur < minv[j]) {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if (minv[j] < delta) {
                    delta = minv[j];
                    j1 = j;
                }
            }
            if (j1 == 0) { /* only with non-finite costs */
                r = -EINVAL;
                break;
            }
            for (size_t j = 0; j <= k; j++) {
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
        } while (p[j0] != 0);
        for (; r == 0 && j0;) {
            size_t j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        }
    }
    for (size_t j = 1; r == 0 && j <= k; j++) {
        ret_col[p[j] - 1] = j - 1;
    }
    free(u);
    free(v);
    free(minv);
    free(p);
    free(way);
    free(used);
    return r;
}

/* New centroids cand (k x d, by id) replace the live ones: an id whose new centroid is
 * not the one nearest its old one gets a new generation. Returns how many did. */
static size_t replace(ch_kmeans_t *km, const float *cand) {
    size_t k = km->o.k, d = km->o.dim, renewed = 0;
    for (size_t i = 0; i < k; i++) {
        const float *old = km->c + i * d;
        double own = ch_km_sqdist(old, cand + i * d, d);
        for (size_t q = 0; q < k; q++) {
            if (q != i && ch_km_sqdist(old, cand + q * d, d) < own) {
                km->gen[i]++;
                renewed++;
                break;
            }
        }
    }
    memcpy(km->c, cand, k * d * sizeof(float));
    return renewed;
}

int ch_kmeans_fit_adopt(ch_kmeans_fit_t *f, int64_t stream_ms, ch_kmeans_refresh_t *ret) {
    ch_kmeans_t *km = f->km;
    size_t k = f->k, d = f->d;
    if (f->ph != PH_DONE || f->has_live != km->ready) {
        return -EINVAL;
    }
    ch_kmeans_refresh_t info = {.points = f->n,
                                .inertia_before = f->has_live ? f->inertia_before : NAN,
                                .inertia_lloyd = f->has_live ? f->live.inertia : NAN,
                                .inertia_restart = f->final.inertia};
    const size_t *cnt = f->final.cnt;
    if (!km->ready) {
        memcpy(km->c, f->final.c, k * d * sizeof(float));
        for (size_t j = 0; j < k; j++) {
            km->w[j] = (double)cnt[j];
        }
        km->t_ms = stream_ms;
        km->ready = true;
        km->n_w = 0;
    } else {
        double mass = 0;
        for (size_t j = 0; j < k; j++) {
            mass += km->w[j];
        }
        info.restarted = f->final.inertia < (1 - RESTART_GAIN) * f->live.inertia;
        float *cand = f->live.c;
        size_t *by_id = f->live.cnt;
        if (info.restarted) { /* ids by an optimal matching; the live result is scratch */
            double *cost = malloc(k * k * sizeof(double));
            size_t *col = malloc(k * sizeof(size_t));
            int r = cost && col ? 0 : -ENOMEM;
            for (size_t i = 0; r == 0 && i < k; i++) {
                for (size_t m = 0; m < k; m++) {
                    cost[i * k + m] = ch_km_sqdist(km->c + i * d, f->final.c + m * d, d);
                }
            }
            r = r == 0 ? match(cost, k, col) : r;
            for (size_t i = 0; r == 0 && i < k; i++) {
                memcpy(cand + i * d, f->final.c + col[i] * d, d * sizeof(float));
                by_id[i] = cnt[col[i]];
            }
            free(cost);
            free(col);
            if (r < 0) {
                return r; /* the model is unchanged */
            }
            km->restarts++;
        }
        info.renewed = replace(km, cand);
        for (size_t j = 0; j < k; j++) {
            km->w[j] = mass > 0 ? mass * (double)by_id[j] / (double)f->n : (double)by_id[j];
        }
        km->refreshes++;
    }
    ch_km_refresh_cnorm(km);
    km->refreshed_ms = stream_ms;
    f->ph = PH_ADOPTED;
    if (ret) {
        *ret = info;
    }
    return 0;
}

/* A whole fit at once on n rows. */
static int fit_now(ch_kmeans_t *km, const float *x, size_t n, int64_t stream_ms,
                   ch_kmeans_refresh_t *ret) {
    ch_kmeans_fit_t *f = NULL;
    int r = ch_kmeans_fit_new(km, n, &f);
    if (r < 0) {
        return r;
    }
    r = ch_kmeans_fit_add(f, x, n);
    while (r == 0 && (r = ch_kmeans_fit_step(f, SIZE_MAX)) == 1) {
        r = 0;
    }
    if (r == 0) {
        r = ch_kmeans_fit_adopt(f, stream_ms, ret);
    }
    ch_kmeans_fit_free(f);
    return r;
}

int ch_kmeans_seed(ch_kmeans_t *km, const float *x, size_t n, int64_t stream_ms) {
    if (km->ready || n < km->o.k) {
        return -EINVAL;
    }
    return fit_now(km, x, n, stream_ms, NULL);
}

int ch_kmeans_refresh(ch_kmeans_t *km, const float *x, size_t n, int64_t stream_ms,
                      ch_kmeans_refresh_t *ret) {
    if (!km->ready || n < km->o.k) {
        return -EINVAL;
    }
    return fit_now(km, x, n, stream_ms, ret);
}
