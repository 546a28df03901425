/*
 * scorer.c - loading, hot reload and reason codes of the risk model (README "Risk scoring").
 *
 * Design notes
 * - A reload loads the new file completely aside; only a model that loaded and
 *   fits the declared features replaces the old one, between two batches (the
 *   loop calls it), so no batch ever sees two models.
 */
#include "scorer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emit.h"
#include "log.h"

int ch_scorer_check_kind(const ch_config_t *cfg, const ch_onnx_t *m, char *errbuf, size_t errlen) {
    const char *want = ch_config_model_kinds[cfg->model_kind];
    if (strcmp(ch_onnx_kind(m), want) == 0) {
        return 0;
    }
    snprintf(errbuf, errlen,
             "model.kind is %s but the model (%s) is of kind %s (set model.kind = %s, or "
             "export the other kind)",
             want, ch_onnx_version(m), ch_onnx_kind(m), ch_onnx_kind(m));
    return -EINVAL;
}

static int load(const ch_scorer_t *s, ch_onnx_t **ret_model, char *errbuf, size_t errlen) {
    int r = ch_onnx_load(s->path, s->d, s->names, s->max_rows, ret_model, errbuf, errlen);
    if (r == 0 && (r = ch_scorer_check_kind(s->cfg, *ret_model, errbuf, errlen)) < 0) {
        *ret_model = ch_onnx_free(*ret_model);
    }
    return r;
}

/* The drift window of a newly loaded model: from its training bins, or none. */
static void drift_for(ch_scorer_t *s) {
    s->drift = ch_drift_free(s->drift);
    if (strcmp(s->role, "champion") != 0) {
        return; /* the inputs are the same: the champion's window watches them */
    }
    s->drift_since = 0;
    memset(s->drift_above, 0, s->d * sizeof(bool));
    const char *meta = ch_onnx_drift_meta(s->model);
    if (!meta) {
        ch_log(CH_LOG_INFO,
               "drift: model %s has no training bins (export with drift_data to "
               "check drift)",
               ch_onnx_version(s->model));
        return;
    }
    char err[256];
    if (ch_drift_new(meta, s->d, s->cfg->drift_window, &s->drift, err, sizeof(err)) < 0) {
        ch_log(CH_LOG_WARNING, "drift: not checked for model %s: %s", ch_onnx_version(s->model),
               err);
        return;
    }
    ch_log(CH_LOG_INFO,
           "drift: PSI of every feature over the last %zu vectors against the "
           "training bins of model %s (warning above %g)",
           s->cfg->drift_window, ch_onnx_version(s->model), s->cfg->drift_warn);
}

void ch_scorer_observe(ch_scorer_t *s, const float *x, size_t n) {
    if (!s->drift) {
        return;
    }
    ch_drift_add(s->drift, x, n);
    s->drift_since += n;
    size_t every = s->cfg->drift_window / 10;
    if (ch_drift_vectors(s->drift) < s->cfg->drift_window || s->drift_since < every) {
        return;
    }
    s->drift_since = 0;
    for (size_t j = 0; j < s->d; j++) {
        double psi = ch_drift_psi(s->drift, j);
        bool above = psi > s->cfg->drift_warn;
        if (above && !s->drift_above[j]) {
            s->drift_warnings++;
            ch_log(CH_LOG_WARNING,
                   "drift: feature %s has PSI %.3f over the last %zu vectors, above drift.warn "
                   "%g: its live distribution is not the training one (model %s)",
                   s->names[j], psi, s->cfg->drift_window, s->cfg->drift_warn,
                   ch_onnx_version(s->model));
        } else if (!above && s->drift_above[j]) {
            ch_log(CH_LOG_NOTICE, "drift: feature %s is back to PSI %.3f (drift.warn %g)",
                   s->names[j], psi, s->cfg->drift_warn);
        }
        s->drift_above[j] = above;
    }
}

int ch_scorer_init(ch_scorer_t *s, const ch_config_t *cfg, const char *path, const char *role,
                   const char *const *names, size_t d, size_t max_rows, char *errbuf,
                   size_t errlen) {
    *s = (ch_scorer_t){
        .cfg = cfg, .path = path, .role = role, .names = names, .d = d, .max_rows = max_rows};
    s->contrib = calloc(d ? d : 1, sizeof(float));
    s->drift_above = calloc(d ? d : 1, sizeof(bool));
    if (!s->contrib || !s->drift_above) {
        return -ENOMEM;
    }
    if (!path[0]) {
        return 0;
    }
    int r = load(s, &s->model, errbuf, errlen);
    if (r == 0) {
        ch_log(CH_LOG_INFO, "%s model %s loaded: version %s, %zu nodes, reasons: %s", role, path,
               ch_onnx_version(s->model), ch_onnx_nodes(s->model), ch_onnx_reasons(s->model));
        drift_for(s);
    }
    return r;
}

void ch_scorer_done(ch_scorer_t *s) {
    s->model = ch_onnx_free(s->model);
    s->drift = ch_drift_free(s->drift);
    free(s->contrib);
    free(s->drift_above);
    s->contrib = NULL;
    s->drift_above = NULL;
}

int ch_scorer_reload(ch_scorer_t *s) {
    if (!s->path[0]) {
        ch_log(CH_LOG_NOTICE, "reload: no %s model configured", s->role);
        return 0;
    }
    char err[512];
    ch_onnx_t *m = NULL;
    int r = load(s, &m, err, sizeof(err));
    if (r < 0) {
        s->reload_failures++;
        ch_log(CH_LOG_ERR, "%s model reload failed, keeping version %s: %s", s->role,
               s->model ? ch_onnx_version(s->model) : "(none)", err);
        return r;
    }
    if (s->model && strcmp(ch_onnx_version(s->model), ch_onnx_version(m)) == 0) {
        ch_log(CH_LOG_INFO, "%s model reload: %s unchanged (version %s)", s->role, s->path,
               ch_onnx_version(m));
    } else {
        ch_log(CH_LOG_NOTICE, "%s model reloaded: version %s -> %s (reasons: %s)", s->role,
               s->model ? ch_onnx_version(s->model) : "(none)", ch_onnx_version(m),
               ch_onnx_reasons(m));
    }
    ch_onnx_free(s->model);
    s->model = m;
    s->reloads++;
    drift_for(s);
    return 0;
}

const char *ch_scorer_version(const ch_scorer_t *s) {
    return s->model ? ch_onnx_version(s->model) : NULL;
}

size_t ch_scorer_reasons(ch_scorer_t *s, size_t i, ch_reason_t *ret) {
    size_t k = (size_t)s->cfg->risk_reasons;
    if (!s->model || k == 0 || ch_onnx_contributions(s->model, i, s->contrib) < 0) {
        return 0;
    }
    return ch_emit_top_reasons(s->contrib, s->d, k, s->names, ret);
}
