/*
 * emit.h - when a profile or risk update is published, and which reasons it gives.
 * Pure functions of the configuration and a user's record: no I/O, no state.
 */
#ifndef CH_EMIT_H
#define CH_EMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
#include "config.h"
#include "userrec.h"

/**
 * @brief Whether a profile update is due for a user at stream time ts_ms: always with
 *        emit.policy = every; with change, on the user's first update, when the
 *        segment (or its generation) changed, or once emit.heartbeat has passed.
 */
bool ch_emit_profile_due(const ch_config_t *cfg, const ch_userrec_t *ur, int64_t ts_ms,
                         bool segment_changed);

/**
 * @brief Whether a risk update is due for a user scored `score` at ts_ms: always with
 *        risk.emit = every; with change, on the user's first update, when the alert
 *        flag flips, when the score moves by more than risk.delta since the last
 *        published one, or once emit.heartbeat has passed.
 */
bool ch_emit_risk_due(const ch_config_t *cfg, const ch_userrec_t *ur, int64_t ts_ms, float score);

/**
 * @brief The k features of largest contribution, largest first (NaN contributions
 *        are skipped). contrib (d values) is used as scratch and left undefined.
 * @param names the d feature names (borrowed into ret_reasons).
 * @returns the number of reasons written (<= k, <= d).
 */
size_t ch_emit_top_reasons(float *contrib, size_t d, size_t k, const char *const *names,
                           ch_reason_t *ret_reasons);

#endif
