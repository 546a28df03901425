/*
 * backtest.c - featurize's backtest report (backtest.h).
 *
 * Design notes
 * - The figures are the live evaluation's own (model/'s ch_eval_figures, the JSON of
 *   evaluate.c), so a backtest and the live evaluation of the same pairs agree.
 * - Alerts per day count every scored row, labelled or not, over their event-time span.
 */
#include "backtest.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ch/evalmetrics.h"
#include "ch/json.h"
#include "evaluate.h"

struct ch_backtest {
    double threshold;
    bool challenger;
    float *s, *s2; /* the labelled rows' scores */
    uint8_t *y;    /* and labels */
    size_t n, cap;
    uint64_t scored, alerts, alerts2;
    int64_t first_ts, last_ts;
};

int ch_backtest_new(double threshold, bool challenger, ch_backtest_t **ret) {
    ch_backtest_t *b = calloc(1, sizeof(*b));
    if (!b) {
        return -ENOMEM;
    }
    b->threshold = threshold;
    b->challenger = challenger;
    b->first_ts = INT64_MAX;
    b->last_ts = INT64_MIN;
    *ret = b;
    return 0;
}

ch_backtest_t *ch_backtest_free(ch_backtest_t *b) {
    if (b) {
        free(b->s);
        free(b->s2);
        free(b->y);
        free(b);
    }
    return NULL;
}

int ch_backtest_add(ch_backtest_t *b, int64_t ts_ms, float score, bool alert, float score2,
                    bool alert2, bool has_label, double label) {
    b->scored++;
    b->alerts += alert;
    b->alerts2 += b->challenger && alert2;
    b->first_ts = ts_ms < b->first_ts ? ts_ms : b->first_ts;
    b->last_ts = ts_ms > b->last_ts ? ts_ms : b->last_ts;
    if (!has_label) {
        return 0;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 4096;
        float *s = realloc(b->s, cap * sizeof(*s));
        b->s = s ? s : b->s;
        float *s2 = s ? realloc(b->s2, cap * sizeof(*s2)) : NULL;
        b->s2 = s2 ? s2 : b->s2;
        uint8_t *y = s2 ? realloc(b->y, cap) : NULL;
        if (!y) {
            return -ENOMEM;
        }
        b->y = y;
        b->cap = cap;
    }
    b->s[b->n] = score;
    b->s2[b->n] = score2;
    b->y[b->n++] = label != 0;
    return 0;
}

/* One model's figures as text. */
static void print_figures(const char *role, const char *version, const ch_eval_figures_t *f,
                          uint64_t alerts, double days, double thr) {
    fprintf(stderr,
            "backtest: %s %s: %zu labelled rows (%zu positive): ROC AUC %.4f, average precision "
            "%.4f, log loss %.4f\n",
            role, version, f->n, f->positives, f->roc_auc, f->average_precision, f->log_loss);
    fprintf(stderr,
            "  at risk.threshold %g: %llu alerts in %.2f days (%.1f per day); on labelled rows "
            "%zu alerts, %zu true: precision %.4f, recall %.4f\n",
            thr, (unsigned long long)alerts, days, days > 0 ? (double)alerts / days : NAN,
            f->alerts, f->true_alerts, f->precision, f->recall);
    fprintf(stderr, "  calibration by score decile (rows, mean score, positive rate):");
    for (int d = 0; d < CH_EVAL_BINS; d++) {
        fprintf(stderr, "%s %d: %zu %.4f %.4f", d ? ";" : "", d + 1, f->bin_n[d], f->bin_score[d],
                f->bin_positive[d]);
    }
    fprintf(stderr, "\n");
}

static int json_model(ch_buf_t *b, const char *version, const ch_eval_figures_t *f,
                      uint64_t alerts, double days) {
    int r = ch_buf_append(b, "{\"model_version\":", 17);
    r = r ? r : ch_json_string(b, version, strlen(version));
    r = r ? r : ch_buf_printf(b, ",\"alerts_all\":%llu,\"alerts_per_day\":",
                              (unsigned long long)alerts);
    r = r ? r : ch_json_double(b, days > 0 ? (double)alerts / days : NAN);
    r = r ? r : ch_buf_append(b, ",", 1);
    r = r ? r : ch_evaluate_encode_figures(b, f);
    return r ? r : ch_buf_append(b, "}", 1);
}

int ch_backtest_report(ch_backtest_t *b, const char *version, const char *version2, bool print,
                       const char *json_path) {
    double thr = b->threshold;
    double days = b->scored ? (double)(b->last_ts - b->first_ts) / 86400000.0 : 0;
    ch_eval_figures_t f, f2;
    if (ch_eval_figures(b->s, b->y, b->n, thr, &f) < 0 ||
        (b->challenger && ch_eval_figures(b->s2, b->y, b->n, thr, &f2) < 0)) {
        return -ENOMEM;
    }
    if (print) {
        print_figures("model", version, &f, b->alerts, days, thr);
        if (b->challenger) {
            print_figures("challenger", version2, &f2, b->alerts2, days, thr);
        }
    }
    if (!json_path) {
        return 0;
    }
    ch_buf_t o;
    ch_buf_init(&o);
    int r = ch_buf_printf(&o, "{\"threshold\":");
    r = r ? r : ch_json_double(&o, thr);
    r = r ? r
          : ch_buf_printf(&o, ",\"rows_scored\":%llu,\"days\":", (unsigned long long)b->scored);
    r = r ? r : ch_json_double(&o, days);
    r = r ? r : ch_buf_printf(&o, ",\"champion\":");
    r = r ? r : json_model(&o, version, &f, b->alerts, days);
    r = r ? r : ch_buf_printf(&o, ",\"challenger\":");
    r = r ? r
          : b->challenger ? json_model(&o, version2, &f2, b->alerts2, days)
                          : ch_buf_append(&o, "null", 4);
    r = r ? r : ch_buf_append(&o, "}\n", 2);
    FILE *out = r ? NULL : fopen(json_path, "w");
    bool ok = out && fwrite(o.data, 1, o.len, out) == o.len;
    ok = out && fclose(out) == 0 && ok;
    ch_buf_done(&o);
    return r ? r : ok ? 0 : -EIO;
}
