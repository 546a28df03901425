/*
 * histogram.h - fixed-bucket histograms for the Prometheus exposition.
 */
#ifndef CH_HISTOGRAM_H
#define CH_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#define CH_HISTOGRAM_MAX_BOUNDS 24

/* Embedded, no allocation: copying one copies a consistent snapshot. */
typedef struct ch_histogram {
    const double *bounds; /* upper bounds, ascending, static storage */
    size_t n_bounds;
    uint64_t counts[CH_HISTOGRAM_MAX_BOUNDS + 1]; /* per bucket; the last is +Inf */
    uint64_t count;
    double sum;
} ch_histogram_t;

/** @brief Empty histogram over n ascending upper bounds (n <= CH_HISTOGRAM_MAX_BOUNDS). */
void ch_histogram_init(ch_histogram_t *h, const double *bounds, size_t n);

/** @brief Count one observation (NaN is ignored). */
void ch_histogram_observe(ch_histogram_t *h, double v);

/** @brief Observations <= bounds[i] (cumulative, as Prometheus "le" buckets). */
uint64_t ch_histogram_cumulative(const ch_histogram_t *h, size_t i);

#endif
