/*
 * kmeans_int.h - the segmenter's state and the helpers kmeans.c (online steps) and
 * kmeans_fit.c (fits on a population) share. Nothing outside model/src includes it.
 */
#ifndef CH_KMEANS_INT_H
#define CH_KMEANS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/kmeans.h"

#define BLOCK 1024 /* rows per distance block */

struct ch_kmeans {
    ch_kmeans_opts_t o;
    /* transform statistics */
    double *mean, *m2, sw;
    float *inv_std;
    int64_t stats_ms;
    /* warm-up buffer of l-values (W + max_batch rows) */
    float *wbuf;
    size_t n_w;
    bool ready;
    bool follow; /* ch_kmeans_follow(): updates only assign */
    /* centroids */
    float *c, *cnorm;
    double *w;
    uint32_t *gen;
    int64_t t_ms;
    int64_t refreshed_ms; /* stream time of seeding or the last refresh */
    /* scratch */
    float *z, *znorm, *dist, *sum;
    size_t *cnt;
    int32_t *nearest;
    double *d2;
    uint32_t *rowmap; /* ch_kmeans_update: batch row of each finite row kept */
    uint64_t rng, points, reseeds, refreshes, restarts;
    uint64_t refused; /* rows with a non-finite value (or l-value), never folded in */
};

/* l = sign(x) log1p(|x|) (or x), n rows; then z = (l - mean) / std, in place allowed. */
void ch_km_log_rows(const ch_kmeans_t *km, const float *x, size_t n, float *ret_l);
void ch_km_zscore(const ch_kmeans_t *km, const float *l, size_t n, float *z);
/* Recompute the cached squared norms of the live centroids. */
void ch_km_refresh_cnorm(ch_kmeans_t *km);
/* Squared Euclidean distance of two d-vectors, in double. */
double ch_km_sqdist(const float *a, const float *b, size_t d);

#endif
