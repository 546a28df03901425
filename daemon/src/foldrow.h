/*
 * foldrow.h - one event folded into its user's state, and the row read after it: the
 * step the daemon (pipeline.c) and cohortd featurize share, so that featurize's rows
 * equal the profile updates' vectors bit for bit by construction.
 */
#ifndef CH_FOLDROW_H
#define CH_FOLDROW_H

#include <stddef.h>

#include "ch/features.h"
#include "ch/users.h"

/**
 * @brief Fold obs into u's state, then read every feature at the user's stream time
 *        into feats (d doubles) and, as published, into x (d floats).
 */
static inline void ch_fold_row(const ch_features_t *fs, ch_user_t *u, const ch_obs_t *obs,
                               double *feats, float *x, size_t d) {
    ch_features_update(fs, u->state, &u->t_ref_ms, obs);
    ch_features_read(fs, u->state, u->t_ref_ms, feats);
    for (size_t f = 0; f < d; f++) {
        x[f] = (float)feats[f];
    }
}

/**
 * @brief Read u's features at at_ms (or at its own stream time, if later: a vector is
 *        never read before the user's latest event) into feats (d doubles) and x (d
 *        floats). @returns the time read at.
 */
static inline int64_t ch_read_row_at(const ch_features_t *fs, const ch_user_t *u, int64_t at_ms,
                                     double *feats, float *x, size_t d) {
    int64_t t = at_ms > u->t_ref_ms ? at_ms : u->t_ref_ms;
    ch_features_read_at(fs, u->state, u->t_ref_ms, t, feats);
    for (size_t f = 0; f < d; f++) {
        x[f] = (float)feats[f];
    }
    return t;
}

#endif
