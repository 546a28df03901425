/*
 * evaluate.h - live evaluation of the risk model (README "Risk scoring"; README "Live
 * evaluation"): labels that arrive later, joined to the scores cohortd gave the same
 * events, make ROC AUC, average precision, precision and recall at the threshold,
 * log loss and calibration by decile over a sliding window, in /metrics and as
 * periodic records on a metrics topic.
 *
 * @locality The loop's thread only.
 */
#ifndef CH_EVALUATE_H
#define CH_EVALUATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
#include "ch/evalmetrics.h"
#include "ch/scorestore.h"

struct ch_pipeline;
typedef struct ch_evaluate ch_evaluate_t;

typedef struct ch_evaluate_status {
    uint64_t labels_matched, labels_unknown, labels_bad, labels_pending_dropped;
    size_t labels_pending;
    uint64_t records_sent;
    int label_partitions, label_partitions_ready; /* ready: read to the end once */
    ch_scorestore_stats_t store;
    ch_eval_figures_t fig;                /* over the window */
    ch_eval_figures_t fig2;               /* the challenger's, over its pairs in the window */
    bool challenger;                      /* fig2 is set: a challenger score is in the window */
    int64_t window_from_ms, window_to_ms; /* label times covered (0 without pairs) */
} ch_evaluate_status_t;

/**
 * @brief Start evaluating: a reader of every partition of evaluation.labels_topic from
 *        its end, and (with evaluation.metrics_topic) a producer for the records.
 * @returns 0, -ENOENT (a topic does not exist: errbuf says how to create it), -EIO,
 *          -ENOMEM.
 */
int ch_evaluate_new(struct ch_pipeline *p, ch_evaluate_t **ret, char *errbuf, size_t errlen);

ch_evaluate_t *ch_evaluate_free(ch_evaluate_t *e);

/** @brief The reader's fd (readable when labels are there). */
int ch_evaluate_fd(const ch_evaluate_t *e);

/** @brief Keep the scores cohortd gave an event (called for every scored event with an
 *  id; challenger_score NaN without a challenger). */
void ch_evaluate_scored(ch_evaluate_t *e, const char *event_id, size_t len, int64_t ts_ms,
                        float score, float challenger_score);

/**
 * @brief The loop's share: read labels, join those whose event is scored (a label whose
 *        event is not yet scored waits until the stream time passes the label's time),
 *        send a record when evaluation.interval has passed.
 * @returns true if there is more to do now.
 */
bool ch_evaluate_work(struct ch_pipeline *p);

/** @brief Counters and the figures of the window now (computed on the call). */
int ch_evaluate_status(ch_evaluate_t *e, ch_evaluate_status_t *ret);

/** @brief Append "pairs":..,"positives":..,"roc_auc":.., ... "calibration":[...] (the
 *  members of one model's figures, as the evaluation records hold them).
 *  @returns 0, -ENOMEM. */
int ch_evaluate_encode_figures(ch_buf_t *b, const ch_eval_figures_t *f);

#endif
