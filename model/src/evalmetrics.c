/*
 * evalmetrics.c - ROC AUC, average precision, precision and recall at a threshold,
 * log loss and calibration by score decile, each as scikit-learn 1.2 computes it.
 *
 * Design notes
 * - One sort of the pairs by score serves every figure. Equal scores form one group:
 *   they share one rank (AUC: ties count half, the trapezoid of roc_curve) and one
 *   threshold (average precision steps once per distinct score).
 * - Decile edges are numpy.percentile's linear interpolation at 10%, ..., 90% of the
 *   sorted scores; a score equal to an edge falls in the lower decile
 *   (numpy.searchsorted side="left"), as calibration_curve bins them.
 * - Sums run in double; the window holds at most millions of pairs.
 */
#include "ch/evalmetrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct pair {
    float s;
    uint8_t y;
} pair_t;

static int cmp_pair(const void *a, const void *b) {
    float x = ((const pair_t *)a)->s, y = ((const pair_t *)b)->s;
    return x < y ? -1 : x > y;
}

/* numpy.percentile(s, q), linear: s sorted ascending, n > 0 */
static double percentile(const pair_t *s, size_t n, double q) {
    double pos = q / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo + 1 >= n) {
        return s[n - 1].s;
    }
    double t = pos - (double)lo, a = s[lo].s, b = s[lo + 1].s;
    /* numpy's _lerp: a + t (b - a), or b - (1 - t)(b - a) for t >= 0.5 */
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

int ch_eval_figures(const float *score, const uint8_t *label, size_t n, double threshold,
                    ch_eval_figures_t *ret) {
    memset(ret, 0, sizeof(*ret));
    ret->n = n;
    ret->roc_auc = ret->average_precision = ret->log_loss = NAN;
    for (int b = 0; b < CH_EVAL_BINS; b++) {
        ret->bin_score[b] = ret->bin_positive[b] = NAN;
    }
    if (n == 0) {
        return 0;
    }
    pair_t *s = malloc(n * sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    double ll = 0;
    for (size_t i = 0; i < n; i++) {
        s[i] = (pair_t){.s = score[i], .y = label[i] ? 1 : 0};
        ret->positives += s[i].y;
        double p = score[i];
        p = p < CH_EVAL_LOG_LOSS_EPS       ? CH_EVAL_LOG_LOSS_EPS
            : p > 1 - CH_EVAL_LOG_LOSS_EPS ? 1 - CH_EVAL_LOG_LOSS_EPS
                                           : p;
        ll -= s[i].y ? log(p) : log(1 - p);
        if (score[i] >= threshold) {
            ret->alerts++;
            ret->true_alerts += s[i].y;
        }
    }
    ret->log_loss = ll / (double)n;
    ret->precision = ret->alerts ? (double)ret->true_alerts / (double)ret->alerts : 0;
    ret->recall = ret->positives ? (double)ret->true_alerts / (double)ret->positives : 0;
    qsort(s, n, sizeof(*s), cmp_pair);

    size_t P = ret->positives, N = n - P;
    /* AUC: Mann-Whitney with mid-ranks of tied groups */
    if (P && N) {
        double rank_sum = 0;
        for (size_t i = 0; i < n;) {
            size_t j = i, pos = 0;
            while (j < n && s[j].s == s[i].s) {
                pos += s[j].y;
                j++;
            }
            double mid = ((double)(i + 1) + (double)j) / 2.0; /* ranks i+1 .. j */
            rank_sum += mid * (double)pos;
            i = j;
        }
        ret->roc_auc = (rank_sum - (double)P * ((double)P + 1) / 2.0) / ((double)P * (double)N);
    }
    /* AP: thresholds at each distinct score, highest first */
    if (P) {
        double ap = 0, prev_recall = 0;
        size_t tp = 0, seen = 0;
        for (size_t i = n; i > 0;) {
            size_t j = i;
            while (j > 0 && s[j - 1].s == s[i - 1].s) {
                j--;
                tp += s[j].y;
                seen++;
            }
            double recall = (double)tp / (double)P, precision = (double)tp / (double)seen;
            ap += (recall - prev_recall) * precision;
            prev_recall = recall;
            i = j;
        }
        ret->average_precision = ap;
    }
    /* calibration by decile */
    double edge[CH_EVAL_BINS - 1];
    for (int b = 1; b < CH_EVAL_BINS; b++) {
        edge[b - 1] = percentile(s, n, 100.0 * b / CH_EVAL_BINS);
    }
    double sum[CH_EVAL_BINS] = {0}, pos[CH_EVAL_BINS] = {0};
    int b = 0;
    for (size_t i = 0; i < n; i++) { /* ascending: the bin only moves up */
        while (b < CH_EVAL_BINS - 1 && edge[b] < (double)s[i].s) {
            b++;
        }
        ret->bin_n[b]++;
        sum[b] += s[i].s;
        pos[b] += s[i].y;
    }
    for (b = 0; b < CH_EVAL_BINS; b++) {
        if (ret->bin_n[b]) {
            ret->bin_score[b] = sum[b] / (double)ret->bin_n[b];
            ret->bin_positive[b] = pos[b] / (double)ret->bin_n[b];
        }
    }
    free(s);
    return 0;
}
