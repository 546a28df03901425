/*
 * test_evaluation.c - the score store (TTL, capacity, replacement, take, index churn
 * against a plain model of what it must hold) and the evaluation figures on
 * scikit-learn's documented examples and hand-computed cases.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../ch_test.h"
#include "ch/evalmetrics.h"
#include "ch/scorestore.h"

static void id_of(int i, char *buf, size_t len) { snprintf(buf, len, "event-%d", i); }

static void put(ch_scorestore_t *s, int i, int64_t ts, float score) {
    char id[32];
    id_of(i, id, sizeof(id));
    float sc[CH_SCORESTORE_MODELS] = {score, NAN};
    ch_scorestore_put(s, id, strlen(id), ts, sc);
}

static int take(ch_scorestore_t *s, int i, float *score) {
    char id[32];
    id_of(i, id, sizeof(id));
    float sc[CH_SCORESTORE_MODELS];
    int64_t ts;
    int r = ch_scorestore_take(s, id, strlen(id), sc, &ts);
    if (r == 0) {
        *score = sc[0];
        assert_true(isnan(sc[1]));
    }
    return r;
}

static void test_store_ttl_capacity(void **state) {
    (void)state;
    ch_scorestore_t *s = NULL;
    assert_int_equal(ch_scorestore_new(0, 1000, &s), -EINVAL);
    assert_int_equal(ch_scorestore_new(100, 1000, &s), 0);
    for (int i = 0; i < 50; i++) {
        put(s, i, 10 * i, (float)i / 100); /* times 0 .. 490 */
    }
    float sc;
    assert_int_equal(take(s, 7, &sc), 0);
    assert_float_equal(sc, 0.07f, 0);
    assert_int_equal(take(s, 7, &sc), -ENOENT); /* taken once */
    assert_int_equal(take(s, 999, &sc), -ENOENT);
    put(s, 1000, 1200, 0.5f); /* newest 1200: times below 200 expire */
    assert_int_equal(take(s, 19, &sc), -ENOENT);
    assert_int_equal(take(s, 20, &sc), 0);
    ch_scorestore_stats_t st;
    ch_scorestore_stats(s, &st);
    assert_int_equal(st.expired, 19); /* 0..19 without 7 */
    assert_int_equal(st.held, 50 - 1 - 19 - 1 + 1);
    /* a second score of an id replaces the first */
    put(s, 30, 1200, 0.9f);
    assert_int_equal(take(s, 30, &sc), 0);
    assert_float_equal(sc, 0.9f, 0);
    assert_int_equal(take(s, 30, &sc), -ENOENT);
    /* capacity: the oldest goes */
    for (int i = 2000; i < 2200; i++) {
        put(s, i, 1300, 0.1f);
    }
    ch_scorestore_stats(s, &st);
    assert_int_equal(st.held, 100);
    assert_true(st.evicted > 0);
    assert_int_equal(take(s, 2099, &sc), -ENOENT);
    assert_int_equal(take(s, 2100, &sc), 0);
    assert_int_equal(take(s, 2199, &sc), 0);
    ch_scorestore_free(s);
}

/* Heavy churn with random takes against a plain array of what must be held. */
static void test_store_churn(void **state) {
    (void)state;
    enum { CAP = 512, N = 200000 };
    ch_scorestore_t *s = NULL;
    assert_int_equal(ch_scorestore_new(CAP, INT64_MAX / 4, &s), 0);
    static int8_t held[N];
    static int order[N];
    int head = 0, tail = 0; /* order[head..tail): ids put, oldest first */
    uint64_t rng = 12345;
    for (int i = 0; i < N; i++) {
        put(s, i, i, (float)(i % 1000) / 1000);
        held[i] = 1;
        order[tail++] = i;
        while (tail - head > CAP) { /* the ring drops its oldest position */
            held[order[head++]] = 0;
        }
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int j = i - (int)((rng >> 33) % 700);
        if (j >= 0) {
            float sc;
            int r = take(s, j, &sc);
            assert_int_equal(r == 0, held[j] == 1);
            if (r == 0) {
                assert_float_equal(sc, (float)(j % 1000) / 1000, 0);
                held[j] = 0;
            }
        }
    }
    ch_scorestore_free(s);
}

static void figures(const float *s, const uint8_t *y, size_t n, double thr, ch_eval_figures_t *f) {
    assert_int_equal(ch_eval_figures(s, y, n, thr, f), 0);
}

static void test_figures_sklearn_examples(void **state) {
    (void)state;
    ch_eval_figures_t f;
    /* roc_auc_score and average_precision_score docstring examples */
    const float s[] = {0.1f, 0.4f, 0.35f, 0.8f};
    const uint8_t y[] = {0, 0, 1, 1};
    figures(s, y, 4, 0.5, &f);
    assert_float_equal(f.roc_auc, 0.75, 1e-12);
    assert_float_equal(f.average_precision, 0.8333333333333333, 1e-6); /* 0.83... */
    assert_int_equal(f.alerts, 1);
    assert_float_equal(f.precision, 1.0, 0);
    assert_float_equal(f.recall, 0.5, 0);
    double ll = -(log(0.9) + log(0.6) + log(0.35) + log(0.8)) / 4;
    assert_float_equal(f.log_loss, ll, 1e-6);
    /* ties count half; one class only has no AUC */
    const float t[] = {0.5f, 0.5f, 0.5f, 0.5f};
    figures(t, y, 4, 0.5, &f);
    assert_float_equal(f.roc_auc, 0.5, 1e-12);
    assert_float_equal(f.average_precision, 0.5, 1e-12);
    const uint8_t ones[] = {1, 1, 1, 1};
    figures(s, ones, 4, 0.9, &f);
    assert_true(isnan(f.roc_auc));
    assert_int_equal(f.alerts, 0);
    assert_float_equal(f.precision, 0, 0);
    /* no pairs */
    figures(s, y, 0, 0.5, &f);
    assert_true(isnan(f.log_loss) && isnan(f.roc_auc) && f.n == 0);
}

static void test_figures_deciles(void **state) {
    (void)state;
    /* 100 distinct scores 0.00 .. 0.99: ten deciles of ten, edges between them */
    float s[100];
    uint8_t y[100];
    for (int i = 0; i < 100; i++) {
        s[i] = (float)i / 100;
        y[i] = i % 10 < (i / 10); /* decile b holds b positives */
    }
    ch_eval_figures_t f;
    figures(s, y, 100, 0.5, &f);
    for (int b = 0; b < CH_EVAL_BINS; b++) {
        assert_int_equal(f.bin_n[b], 10);
        assert_float_equal(f.bin_positive[b], b / 10.0, 1e-12);
        assert_float_equal(f.bin_score[b], (10 * b + 4.5) / 100, 1e-6);
    }
    /* every score equal: all edges equal the score, so every pair is in decile 1 */
    for (int i = 0; i < 100; i++) {
        s[i] = 0.3f;
    }
    figures(s, y, 100, 0.5, &f);
    assert_int_equal(f.bin_n[0], 100);
    assert_true(isnan(f.bin_score[5]));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_ttl_capacity),
        cmocka_unit_test(test_store_churn),
        cmocka_unit_test(test_figures_sklearn_examples),
        cmocka_unit_test(test_figures_deciles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
