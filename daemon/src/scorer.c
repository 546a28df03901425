/*
 * scorer.c - loading, hot reload and reason codes of the risk model (DESIGN.md 6).
 *
 * Design notes
 * - A reload loads the new file completely aside; only a model that loaded and
 *   fits the declared features replaces the old one, between two batches (the
 *   loop calls it), so no batch ever sees two models.
 */
#include "scorer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "emit.h"
#include "log.h"

static int load(const ch_scorer_t *s, ch_onnx_t **ret_model, char *errbuf, size_t errlen) {
    return ch_onnx_load(s->cfg->model_path, s->d, s->names, s->max_rows, ret_model, errbuf, errlen);
}

int ch_scorer_init(ch_scorer_t *s, const ch_config_t *cfg, const char *const *names, size_t d,
                   size_t max_rows, char *errbuf, size_t errlen) {
    *s = (ch_scorer_t){.cfg = cfg, .names = names, .d = d, .max_rows = max_rows};
    s->contrib = calloc(d ? d : 1, sizeof(float));
    if (!s->contrib) {
        return -ENOMEM;
    }
    if (!cfg->model_path[0]) {
        return 0;
    }
    int r = load(s, &s->model, errbuf, errlen);
    if (r == 0) {
        ch_log(CH_LOG_INFO, "model %s loaded: version %s, %zu nodes, reasons: %s", cfg->model_path,
               ch_onnx_version(s->model), ch_onnx_nodes(s->model), ch_onnx_reasons(s->model));
    }
    return r;
}

void ch_scorer_done(ch_scorer_t *s) {
    s->model = ch_onnx_free(s->model);
    free(s->contrib);
    s->contrib = NULL;
}

int ch_scorer_reload(ch_scorer_t *s) {
    if (!s->cfg->model_path[0]) {
        ch_log(CH_LOG_NOTICE, "reload: no model configured (model.path is empty)");
        return 0;
    }
    char err[512];
    ch_onnx_t *m = NULL;
    int r = load(s, &m, err, sizeof(err));
    if (r < 0) {
        s->reload_failures++;
        ch_log(CH_LOG_ERR, "model reload failed, keeping version %s: %s",
               s->model ? ch_onnx_version(s->model) : "(none)", err);
        return r;
    }
    if (s->model && strcmp(ch_onnx_version(s->model), ch_onnx_version(m)) == 0) {
        ch_log(CH_LOG_INFO, "model reload: %s unchanged (version %s)", s->cfg->model_path,
               ch_onnx_version(m));
    } else {
        ch_log(CH_LOG_NOTICE, "model reloaded: version %s -> %s (reasons: %s)",
               s->model ? ch_onnx_version(s->model) : "(none)", ch_onnx_version(m),
               ch_onnx_reasons(m));
    }
    ch_onnx_free(s->model);
    s->model = m;
    s->reloads++;
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
