/*
 * ch/evalmetrics.h - a classifier's quality on (score, label) pairs, computed as
 * scikit-learn defines each figure, for cohortd's live evaluation.
 *
 * @locality Pure functions; thread-safe.
 */
#ifndef CH_EVALMETRICS_H
#define CH_EVALMETRICS_H

#include <stddef.h>
#include <stdint.h>

#define CH_EVAL_BINS 10
#define CH_EVAL_LOG_LOSS_EPS 1e-15 /* scores are clipped to [eps, 1 - eps] */

typedef struct ch_eval_figures {
    size_t n, positives;
    double roc_auc;           /* roc_auc_score (ties count half); NaN with one class only */
    double average_precision; /* average_precision_score; NaN without positives */
    size_t alerts, true_alerts;
    double precision; /* at score >= threshold; 0 without alerts (sklearn's zero_division) */
    double recall;    /* at score >= threshold; 0 without positives */
    double log_loss;  /* log_loss(eps = CH_EVAL_LOG_LOSS_EPS); NaN with no pair */
    /* calibration_curve(n_bins = 10, strategy = "quantile"): per score decile, its
     * pairs, the mean score and the fraction of positives (NaN when empty) */
    size_t bin_n[CH_EVAL_BINS];
    double bin_score[CH_EVAL_BINS], bin_positive[CH_EVAL_BINS];
} ch_eval_figures_t;

/**
 * @brief The figures of n pairs.
 * @param score n scores (probabilities of the positive class).
 * @param label n labels, 0 or 1.
 * @param threshold the alert threshold (risk.threshold).
 * @returns 0, -ENOMEM.
 */
int ch_eval_figures(const float *score, const uint8_t *label, size_t n, double threshold,
                    ch_eval_figures_t *ret);

#endif
