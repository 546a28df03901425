/*
 * scorer.h - the risk model: loaded from model.path, reloaded aside and swapped in,
 * evaluated per batch, with reason codes.
 */
#ifndef CH_SCORER_H
#define CH_SCORER_H

#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
#include "ch/onnx.h"
#include "config.h"
#include "drift.h"

typedef struct ch_scorer {
    const ch_config_t *cfg;
    const char *path;         /* model.path or model.challenger_path ("" none), borrowed */
    const char *role;         /* "champion" or "challenger", for logs */
    const char *const *names; /* the d feature names, borrowed */
    size_t d, max_rows;
    ch_onnx_t *model; /* NULL: no model configured */
    float *contrib;   /* d: scratch for reasons */
    uint64_t reloads, reload_failures;
    ch_drift_t *drift;  /* the model's training bins and the live window; NULL: none */
    bool *drift_above;  /* d: the feature's PSI was above drift.warn at the last check */
    size_t drift_since; /* vectors since the last check */
    uint64_t drift_warnings;
} ch_scorer_t;

/**
 * @brief Load path (if not empty) for d features and batches of max_rows.
 * @param role "champion" (model.path: drift is watched on it) or "challenger".
 * @returns 0, the load error (errbuf names the problem), -ENOMEM.
 */
int ch_scorer_init(ch_scorer_t *s, const ch_config_t *cfg, const char *path, const char *role,
                   const char *const *names, size_t d, size_t max_rows, char *errbuf,
                   size_t errlen);

/** @brief Free the model and scratch. */
void ch_scorer_done(ch_scorer_t *s);

/**
 * @brief Load model.path aside and swap it in; a file that does not load keeps the
 *        current model (logged). Call between batches.
 * @returns 0, the load error.
 */
int ch_scorer_reload(ch_scorer_t *s);

/**
 * @brief Count n scored vectors (rows of d) in the drift window, and log a warning
 *        when a feature's PSI crosses drift.warn (checked every tenth of the window
 *        once it is full).
 */
void ch_scorer_observe(ch_scorer_t *s, const float *x, size_t n);

/** @brief 0 if the model is of model.kind, else -EINVAL (errbuf says so). */
int ch_scorer_check_kind(const ch_config_t *cfg, const ch_onnx_t *m, char *errbuf, size_t errlen);

/** @brief The loaded model's version, NULL without one. */
const char *ch_scorer_version(const ch_scorer_t *s);

/**
 * @brief The risk.reasons features of largest contribution to row i of the last
 *        evaluation, largest first, into ret (room for d).
 * @returns the number of reasons.
 */
size_t ch_scorer_reasons(ch_scorer_t *s, size_t i, ch_reason_t *ret);

#endif
