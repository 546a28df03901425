/*
 * emit.c - the emit policies (README "Messages") and reason selection.
 *
 * Design notes
 * - Pure predicates over (config, the user's record, the new values): the batch path
 *   asks, then records what it published in the user's record itself, so these
 *   functions can be tested and reasoned about without Kafka.
 * - Times are the user's stream time, so a replay decides exactly as the live run.
 */
#include "emit.h"

#include <math.h>

bool ch_emit_profile_due(const ch_config_t *cfg, const ch_userrec_t *ur, int64_t ts_ms,
                         bool segment_changed) {
    if (cfg->emit_policy == CH_EMIT_EVERY || ur->last_emit_ms == INT64_MIN || segment_changed) {
        return true;
    }
    return (double)(ts_ms - ur->last_emit_ms) >= cfg->emit_heartbeat_ms;
}

bool ch_emit_risk_due(const ch_config_t *cfg, const ch_userrec_t *ur, int64_t ts_ms, float score) {
    if (cfg->risk_emit == CH_EMIT_EVERY || ur->last_risk_ms == INT64_MIN) {
        return true;
    }
    float thr = (float)cfg->risk_threshold;
    bool alert = score >= thr;
    bool was_alert = !isnan(ur->last_score) && ur->last_score >= thr;
    return alert != was_alert || !(fabsf(score - ur->last_score) <= cfg->risk_delta) ||
           (double)(ts_ms - ur->last_risk_ms) >= cfg->emit_heartbeat_ms;
}

size_t ch_emit_top_reasons(float *contrib, size_t d, size_t k, const char *const *names,
                           ch_reason_t *ret_reasons) {
    size_t n = 0;
    for (; n < k && n < d; n++) {
        size_t best = d;
        for (size_t j = 0; j < d; j++) {
            if (!isnan(contrib[j]) && (best == d || contrib[j] > contrib[best])) {
                best = j;
            }
        }
        if (best == d) {
            break;
        }
        ret_reasons[n] = (ch_reason_t){names[best], contrib[best]};
        contrib[best] = NAN;
    }
    return n;
}
