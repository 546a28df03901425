/*
 * histogram.c - fixed-bucket histograms.
 *
 * Design notes
 * - Buckets are stored per bucket and summed on export, so observe() is one
 *   binary search and two additions: cheap enough to call per event.
 * - Bounds are upper-inclusive, as Prometheus "le" buckets.
 */
#include "histogram.h"

#include <assert.h>
#include <math.h>
#include <string.h>

void ch_histogram_init(ch_histogram_t *h, const double *bounds, size_t n) {
    assert(n <= CH_HISTOGRAM_MAX_BOUNDS);
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n_bounds = n;
}

void ch_histogram_observe(ch_histogram_t *h, double v) {
    if (isnan(v)) {
        return;
    }
    size_t lo = 0, hi = h->n_bounds; /* first bound >= v, n_bounds for +Inf */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (h->bounds[mid] < v) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    h->counts[lo]++;
    h->count++;
    h->sum += v;
}

uint64_t ch_histogram_cumulative(const ch_histogram_t *h, size_t i) {
    uint64_t c = 0;
    for (size_t j = 0; j <= i && j <= h->n_bounds; j++) {
        c += h->counts[j];
    }
    return c;
}
