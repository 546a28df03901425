/*
 * drift.c - PSI of live feature vectors against the training bins.
 *
 * Design notes
 * - A feature's bins are its training quantile edges (ties merged); a value equal to
 *   an edge belongs to the lower bin, as numpy.searchsorted(side="left") puts it when
 *   the exporter counts the training shares. Each scored vector is binned once (a
 *   binary search per feature) and its bin numbers kept in a ring, so the counts of
 *   the window move by one vector in and one out: O(d log bins) a vector, d bytes a
 *   vector of memory.
 * - PSI = sum over bins of (a - e) ln(a / e), a the window's share and e the
 *   training share, both floored at CH_DRIFT_FLOOR so an empty bin stays finite.
 */
#include "drift.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BINS 255

typedef struct feat {
    float *edges;
    double *expected;
    uint32_t *counts;
    size_t bins; /* edges + 1 */
} feat_t;

struct ch_drift {
    size_t d, window, head, n;
    feat_t *f;
    uint8_t *ring; /* window x d bin numbers */
};

ch_drift_t *ch_drift_free(ch_drift_t *dr) {
    if (!dr) {
        return NULL;
    }
    for (size_t j = 0; dr->f && j < dr->d; j++) {
        free(dr->f[j].edges);
        free(dr->f[j].expected);
        free(dr->f[j].counts);
    }
    free(dr->f);
    free(dr->ring);
    free(dr);
    return NULL;
}

static int bad(char *errbuf, size_t errlen, const char *what, size_t j) {
    snprintf(errbuf, errlen, "metadata cohortd.drift: feature %zu: %s", j, what);
    return -EINVAL;
}

static int parse_feature(json_t *o, feat_t *f, size_t j, char *errbuf, size_t errlen) {
    json_t *edges = json_object_get(o, "edges"), *exp = json_object_get(o, "expected");
    if (!json_is_array(edges) || !json_is_array(exp)) {
        return bad(errbuf, errlen, "no edges or expected array", j);
    }
    size_t ne = json_array_size(edges);
    if (ne + 1 > MAX_BINS || json_array_size(exp) != ne + 1) {
        return bad(errbuf, errlen,
                   "expected must have one share more than there are edges (at "
                   "most 254 edges)",
                   j);
    }
    f->bins = ne + 1;
    f->edges = malloc((ne ? ne : 1) * sizeof(float));
    f->expected = malloc(f->bins * sizeof(double));
    f->counts = calloc(f->bins, sizeof(uint32_t));
    if (!f->edges || !f->expected || !f->counts) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < ne; i++) {
        json_t *v = json_array_get(edges, i);
        double e = json_number_value(v);
        if (!json_is_number(v) || !isfinite(e) || (i && (float)e <= f->edges[i - 1])) {
            return bad(errbuf, errlen, "edges must be finite and increasing", j);
        }
        f->edges[i] = (float)e;
    }
    double sum = 0;
    for (size_t i = 0; i < f->bins; i++) {
        json_t *v = json_array_get(exp, i);
        double e = json_number_value(v);
        if (!json_is_number(v) || !(e >= 0 && e <= 1)) {
            return bad(errbuf, errlen, "expected shares must be in [0, 1]", j);
        }
        f->expected[i] = e;
        sum += e;
    }
    if (fabs(sum - 1) > 1e-3) {
        return bad(errbuf, errlen, "expected shares do not add up to 1", j);
    }
    return 0;
}

int ch_drift_new(const char *meta, size_t d, size_t window, ch_drift_t **ret, char *errbuf,
                 size_t errlen) {
    json_error_t jerr;
    json_t *root = json_loads(meta, 0, &jerr);
    json_t *feats = root ? json_object_get(root, "features") : NULL;
    if (!json_is_array(feats)) {
        snprintf(errbuf, errlen, "metadata cohortd.drift: not the exporter's JSON (%s)",
                 root ? "no features array" : jerr.text);
        json_decref(root);
        return -EINVAL;
    }
    if (json_array_size(feats) != d) {
        snprintf(errbuf, errlen, "metadata cohortd.drift: %zu features for a model of %zu",
                 json_array_size(feats), d);
        json_decref(root);
        return -EINVAL;
    }
    ch_drift_t *dr = calloc(1, sizeof(*dr));
    int r = -ENOMEM;
    if (dr) {
        dr->d = d;
        dr->window = window;
        dr->f = calloc(d, sizeof(feat_t));
        dr->ring = malloc(window * d);
        r = dr->f && dr->ring ? 0 : -ENOMEM;
    }
    for (size_t j = 0; r == 0 && j < d; j++) {
        r = parse_feature(json_array_get(feats, j), &dr->f[j], j, errbuf, errlen);
    }
    json_decref(root);
    if (r < 0) {
        ch_drift_free(dr);
        return r;
    }
    *ret = dr;
    return 0;
}

/* The number of edges below x: its bin. */
static uint8_t bin_of(const feat_t *f, float x) {
    size_t lo = 0, hi = f->bins - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->edges[mid] < x) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return (uint8_t)lo;
}

void ch_drift_add(ch_drift_t *dr, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * dr->d;
        uint8_t *slot;
        if (dr->n == dr->window) { /* the oldest leaves */
            slot = dr->ring + dr->head * dr->d;
            for (size_t j = 0; j < dr->d; j++) {
                dr->f[j].counts[slot[j]]--;
            }
            dr->head = (dr->head + 1) % dr->window;
            dr->n--;
        }
        slot = dr->ring + ((dr->head + dr->n) % dr->window) * dr->d;
        for (size_t j = 0; j < dr->d; j++) {
            slot[j] = bin_of(&dr->f[j], row[j]);
            dr->f[j].counts[slot[j]]++;
        }
        dr->n++;
    }
}

size_t ch_drift_vectors(const ch_drift_t *dr) { return dr->n; }

double ch_drift_psi(const ch_drift_t *dr, size_t j) {
    if (dr->n == 0) {
        return NAN;
    }
    const feat_t *f = &dr->f[j];
    double psi = 0;
    for (size_t b = 0; b < f->bins; b++) {
        double a = (double)f->counts[b] / (double)dr->n, e = f->expected[b];
        a = a < CH_DRIFT_FLOOR ? CH_DRIFT_FLOOR : a;
        e = e < CH_DRIFT_FLOOR ? CH_DRIFT_FLOOR : e;
        psi += (a - e) * log(a / e);
    }
    return psi;
}
