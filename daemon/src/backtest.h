/*
 * backtest.h - cohortd featurize's backtest: the scored rows' alert volume and, on the
 * labelled ones, the live evaluation's figures (ch_eval_figures, as sklearn computes
 * them), for the champion and the challenger.
 */
#ifndef CH_BACKTEST_H
#define CH_BACKTEST_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ch_backtest ch_backtest_t;

/** @brief For risk.threshold; challenger: a second model is scored. @returns 0, -ENOMEM. */
int ch_backtest_new(double threshold, bool challenger, ch_backtest_t **ret);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_backtest_t *ch_backtest_free(ch_backtest_t *b);

/**
 * @brief One scored row at event time ts_ms: its scores and alerts (the challenger's
 *        ignored without one), and its label when it has one (not 0: positive).
 * @returns 0, -ENOMEM.
 */
int ch_backtest_add(ch_backtest_t *b, int64_t ts_ms, float score, bool alert, float score2,
                    bool alert2, bool has_label, double label);

/**
 * @brief The report: printed to stderr (print), and written as JSON to json_path (NULL:
 *        none). version, version2 name the models.
 * @returns 0, -EIO (json_path cannot be written), -ENOMEM.
 */
int ch_backtest_report(ch_backtest_t *b, const char *version, const char *version2, bool print,
                       const char *json_path);

#endif
