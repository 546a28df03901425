/*
 * ch/kmeans.h - online segments: incremental mini-batch K-Means (README "Segments").
 *
 * Points are raw feature vectors. They are transformed (signed log1p, then z-score
 * with a running mean and variance decayed by stream time) and clustered with
 * Sculley's mini-batch rule plus time decay of the centroid weights, and refreshed on
 * the whole population (Lloyd passes, plus a k-means++ candidate kept when clearly
 * better) every refresh_ms of stream time. Centroids keep their index (the segment id)
 * for life; a re-seeded centroid bumps its generation.
 *
 * @locality Not thread-safe.
 */
#ifndef CH_KMEANS_H
#define CH_KMEANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CH_KMEANS_MAX_K 1024
#define CH_KMEANS_MAX_DIM 1024

typedef struct ch_kmeans_opts {
    size_t k;                /* segments, 1..CH_KMEANS_MAX_K */
    size_t dim;              /* feature count */
    size_t warmup;           /* W: points buffered before k-means++ (>= k) */
    size_t lloyd_iters;      /* Lloyd passes over the warm-up buffer */
    size_t max_batch;        /* largest batch passed to ch_kmeans_update() */
    double half_life_ms;     /* centroid weight decay by stream time (INFINITY: none) */
    double stats_half_life_ms; /* transform mean/variance decay by stream time */
    double dead_ratio;       /* re-seed a centroid whose weight < ratio * max weight */
    double hysteresis;       /* a user moves only if the new centroid is this much closer */
    bool log1p;              /* signed log1p before the z-score */
    uint64_t seed;           /* k-means++ and D^2 sampling */
    bool seed_by_caller;     /* warm-up ends with ch_kmeans_seed(), not a point buffer */
    double refresh_ms;       /* stream time between population refreshes (0: never) */
} ch_kmeans_opts_t;

/* One point's result. segment = -1 while warming up. */
typedef struct ch_kmeans_assign {
    int32_t segment;
    uint32_t generation;    /* of the assigned segment */
    float distance;         /* Euclidean, in the transformed space */
    int32_t previous;       /* the segment given in (prev), -1 if none or unchanged */
} ch_kmeans_assign_t;

typedef struct ch_kmeans ch_kmeans_t;

/** @brief Options with the documented defaults for k segments of dim features. */
void ch_kmeans_opts_default(ch_kmeans_opts_t *o, size_t k, size_t dim);

/**
 * @brief Create a segmenter.
 * @returns 0, -EINVAL (errbuf names the option), -ENOMEM.
 */
int ch_kmeans_new(const ch_kmeans_opts_t *o, ch_kmeans_t **ret_km, char *errbuf, size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_kmeans_t *ch_kmeans_free(ch_kmeans_t *km);

/**
 * @brief Fold one batch into the model and assign its points.
 * @param x n rows of dim raw feature values (finite).
 * @param n 1..max_batch.
 * @param stream_ms the stream time of the batch (largest event time seen); decay uses
 *        its advance since the previous batch (never negative).
 * @param prev n previous segments (-1 none) and prev_gen their generations, for
 *        hysteresis; either may be NULL (no previous assignment).
 * @param ret n results. During warm-up every result has segment -1; the batch that
 *        completes the warm-up is assigned with the fresh centroids.
 * @returns 0, -EINVAL (n out of range).
 */
int ch_kmeans_update(ch_kmeans_t *km, const float *x, size_t n, int64_t stream_ms,
                     const int32_t *prev, const uint32_t *prev_gen, ch_kmeans_assign_t *ret);

/** @brief Whether warm-up is over (centroids exist). */
bool ch_kmeans_ready(const ch_kmeans_t *km);

/**
 * @brief Whether a seed_by_caller segmenter wants ch_kmeans_seed() before it takes
 *        the next n points (not ready, and warm-up points seen once they are added).
 */
bool ch_kmeans_wants_seed(const ch_kmeans_t *km, size_t n);

/**
 * @brief End the warm-up on a population at once: n raw vectors (for example every
 *        user's current features) are fitted as by a ch_kmeans_fit_t (10 k-means++
 *        seedings refined by Lloyd, the least inertia wins); its centroids take ids
 *        0..k-1, generation 0.
 * @param x n rows of dim raw values (finite); n >= k.
 * @param stream_ms the stream time the vectors were read at.
 * @returns 0, -EINVAL (fewer than k rows, or already ready), -ENOMEM.
 * @remark Allocates scratch for n rows for the duration of the call.
 */
int ch_kmeans_seed(ch_kmeans_t *km, const float *x, size_t n, int64_t stream_ms);

/** What one refresh did. Inertias are sums of squared distances over the population,
 *  in the transformed space. */
typedef struct ch_kmeans_refresh {
    size_t points;          /* population rows */
    double inertia_before;  /* of the live centroids */
    double inertia_lloyd;   /* after Lloyd passes from them */
    double inertia_restart; /* of this refresh's k-means++ candidate */
    bool restarted;         /* the candidate won: it took the matched ids */
    size_t renewed;         /* segments whose generation this refresh bumped */
} ch_kmeans_refresh_t;

/** @brief Whether a refresh is due: ready, refresh_ms > 0 and at least refresh_ms of
 *  stream time since seeding or the last refresh (after a restore: since the first
 *  batch). */
bool ch_kmeans_wants_refresh(const ch_kmeans_t *km, int64_t stream_ms);

/**
 * @brief Refresh the centroids on a population at once, as a ch_kmeans_fit_t does.
 * @param x n rows of dim raw values (finite); n >= k.
 * @param ret what was done (may be NULL).
 * @returns 0, -EINVAL (not ready, or fewer than k rows), -ENOMEM (model unchanged).
 */
int ch_kmeans_refresh(ch_kmeans_t *km, const float *x, size_t n, int64_t stream_ms,
                      ch_kmeans_refresh_t *ret);

/*
 * A fit on a population (every user's current vector), done in slices: the caller adds
 * rows, then steps with a budget of rows per call between its other work, then adopts
 * the result. Candidates: Lloyd from the live centroids (when ready), and 10 k-means++
 * seedings refined by Lloyd (on an even sample of at most 65,536 rows; the best of them
 * then refined on every row). Lloyd runs to convergence (no row changes centroid; at
 * most 100 passes);
 * an empty centroid moves to the farthest row. The k-means++ result replaces
 * Lloyd-from-live only if its inertia is lower by more than 0.5%, and then takes the
 * live ids by an optimal matching (least total squared distance). Either way an id
 * whose new centroid is not the one nearest its old one bumps its generation, and the
 * weights keep their total, shared out by the population's counts. When not ready,
 * adoption seeds the segmenter (ids 0..k-1, weights the counts).
 * The live model is read when stepping starts (transform statistics, centroids) and
 * written only by adoption, so online updates may go on between steps.
 */
typedef struct ch_kmeans_fit ch_kmeans_fit_t;

/** @brief A fit of km's segments on up to max_rows rows. @returns 0, -EINVAL (max_rows
 *  < k), -ENOMEM. @remark Holds 4 (dim + 4) bytes per row until freed. */
int ch_kmeans_fit_new(ch_kmeans_t *km, size_t max_rows, ch_kmeans_fit_t **ret_fit);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_kmeans_fit_t *ch_kmeans_fit_free(ch_kmeans_fit_t *f);

/**
 * @brief The k-means++ seedings to try (default 10, sklearn's n_init); call before the
 *        first ch_kmeans_fit_step(). @returns 0, -EINVAL (not in 1..1000).
 */
int ch_kmeans_fit_set_inits(ch_kmeans_fit_t *f, int inits);

/** @brief Add n raw rows (finite). @returns 0, -ENOSPC (beyond max_rows: none added),
 *  -EINVAL (stepping has started). */
int ch_kmeans_fit_add(ch_kmeans_fit_t *f, const float *x, size_t n);

/** @brief Rows added. */
size_t ch_kmeans_fit_rows(const ch_kmeans_fit_t *f);

/**
 * @brief Work on about `rows` rows (whole blocks of 1,024; the first call also
 *        z-scores every row, O(rows added x dim)). The result does not depend on how
 *        the work is cut into steps.
 * @returns 1 more work, 0 done (adopt it), -EINVAL (fewer than k rows), -ENOMEM.
 */
int ch_kmeans_fit_step(ch_kmeans_fit_t *f, size_t rows);

/**
 * @brief Make the finished fit the live model (see above), once.
 * @param ret what was done (may be NULL); at a seeding only points and
 *        inertia_restart (the winner's) are set, the others are NaN.
 * @returns 0, -EINVAL (not done, already adopted, or km was seeded or restored since
 *          the fit started), -ENOMEM (model unchanged).
 */
int ch_kmeans_fit_adopt(ch_kmeans_fit_t *f, int64_t stream_ms, ch_kmeans_refresh_t *ret);

/**
 * @brief Nearest centroid of n raw points (no hysteresis, the model unchanged):
 *        segment -1 while not ready.
 * @param n 1..max(max_batch, 1024).
 */
void ch_kmeans_assign(ch_kmeans_t *km, const float *x, size_t n, ch_kmeans_assign_t *ret);

/*
 * One set of segments across instances (the daemon's segments.sync_topic): one
 * instance fits, every instance applies the same model, written as text and read back
 * bit for bit, and contributes the statistics of its users to the Lloyd steps of the
 * fit on the whole population.
 */

/** @brief The model (options' shape, transform statistics, centroids) as the text of a
 *  segments.state_file, in a malloc'd buffer. @returns 0, -ENOMEM. */
int ch_kmeans_write(const ch_kmeans_t *km, char **ret_buf, size_t *ret_len);

/**
 * @brief Make a model written by ch_kmeans_write() (by any instance) km's: transform
 *        statistics, centroids, weights and generations; km's own counters stay.
 * @returns 0, -EINVAL (another shape or damaged: km unchanged; errbuf says why), -ENOMEM.
 */
int ch_kmeans_read(ch_kmeans_t *km, const char *buf, size_t len, char *errbuf, size_t errlen);

/** @brief Following: once ready, ch_kmeans_update() only assigns (with hysteresis);
 *  the transform statistics and centroids change only through ch_kmeans_read(). */
void ch_kmeans_follow(ch_kmeans_t *km, bool on);

/**
 * @brief Make the transform statistics those of n raw rows (for example an even sample
 *        of the population): mean and variance of their (log1p) values, with weight n.
 *        Each centroid stays where it is in feature units (its transformed coordinates
 *        change with the statistics).
 * @returns 0, -EINVAL (n = 0), -ENOMEM (km unchanged).
 */
int ch_kmeans_restat(ch_kmeans_t *km, const float *x, size_t n);

/** @brief Replace every centroid (k x dim, transformed space) and weight, generations
 *  unchanged. @returns 0, -EINVAL (not ready, or a value not finite or a weight < 0). */
int ch_kmeans_set_centroids(ch_kmeans_t *km, const float *c, const double *w);

/* A Lloyd step's statistics of some rows: per centroid, the sum of the transformed rows
 * nearest it and their count; the rows' inertia; rows whose nearest centroid changed. */
typedef struct ch_kmeans_sums {
    double *sums;     /* k x dim, caller's */
    uint64_t *counts; /* k, caller's */
    double inertia;
    uint64_t rows, changed;
} ch_kmeans_sums_t;

/**
 * @brief Add n raw rows' statistics under the live centroids to acc.
 * @param near n nearest centroids from the previous step (-1: none), updated; a row
 *        whose nearest centroid differs counts as changed.
 * @returns 0, -EINVAL (not ready).
 */
int ch_kmeans_accumulate(ch_kmeans_t *km, const float *x, size_t n, int32_t *near,
                         ch_kmeans_sums_t *acc);

/**
 * @brief Check the invariants: transform statistics finite, weights (of centroids
 *        and their children) finite and >= 0, centroids finite with their cached
 *        norms current, no more restarts than refreshes.
 * @returns true if they hold; otherwise false with the first violation in why.
 */
bool ch_kmeans_check(const ch_kmeans_t *km, char *why, size_t len);

/**
 * @brief Transform raw points into the clustering space with the current statistics.
 * @param x n rows of dim raw values; @param ret_z n rows of dim transformed values.
 */
void ch_kmeans_transform(const ch_kmeans_t *km, const float *x, size_t n, float *ret_z);

/** @brief Map one point of the transformed space back to feature units (the inverse of
 *  ch_kmeans_transform with the current statistics). */
void ch_kmeans_untransform(const ch_kmeans_t *km, const float *z, float *ret_x);

/** @brief Centroid j (dim floats, transformed space), its weight and generation. */
const float *ch_kmeans_centroid(const ch_kmeans_t *km, size_t j, double *ret_weight,
                                uint32_t *ret_generation);

/** @brief Points seen; dead segments re-seeded; refreshes done, and of them the
 *  restarts (a k-means++ candidate won) in ret_restarts (may be NULL). */
uint64_t ch_kmeans_points(const ch_kmeans_t *km);
/** @brief Rows refused since creation: a value (or its transform) not finite. Such a row
 *  never reaches the statistics or a centroid, and is assigned no segment (-1). */
uint64_t ch_kmeans_refused(const ch_kmeans_t *km);
uint64_t ch_kmeans_reseeds(const ch_kmeans_t *km);
uint64_t ch_kmeans_refreshes(const ch_kmeans_t *km, uint64_t *ret_restarts);

/**
 * @brief Write the model (options, transform statistics, centroids) as text.
 * @returns 0, -EIO.
 */
int ch_kmeans_save(const ch_kmeans_t *km, const char *path, char *errbuf, size_t errlen);

/**
 * @brief Restore a model written by ch_kmeans_save() into km (same k and dim).
 * @returns 0, -ENOENT (no file), -EINVAL (another shape or a damaged file: km unchanged).
 */
int ch_kmeans_load(ch_kmeans_t *km, const char *path, char *errbuf, size_t errlen);

#endif
