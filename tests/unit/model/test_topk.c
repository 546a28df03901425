/*
 * test_topk.c - decayed Space-Saving against an exact decayed count: exact while the
 * values fit the slots, bounded beyond, late occurrences, rescaling of the landmark.
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
#include "ch/topk.h"

#define H 3600000.0 /* half-life: 1 h */
#define VALUES 300

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static double unif(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-53;
}

/* A Zipf-like draw of value ids 0..n-1 (id 0 the most frequent). */
static int draw(int n) { return (int)((double)n * pow(unif(), 3.0)) % n; }

static void name(int v, char *buf, size_t len) { snprintf(buf, len, "item-%d", v); }

/* Feed `events` draws over `span_ms` (some late by up to 10 min) into t and into the
 * exact count; returns the last time. */
static int64_t stream(ch_topk_t *t, double *exact, int n, int events, int64_t span_ms) {
    int64_t now = 0;
    for (int i = 0; i < events; i++) {
        int64_t ts = (int64_t)((double)span_ms * i / events);
        if (unif() < 0.1) {
            ts -= (int64_t)(unif() * 600000); /* late */
        }
        now = ts > now ? ts : now;
        int v = draw(n);
        char buf[32];
        name(v, buf, sizeof(buf));
        ch_topk_add(t, buf, strlen(buf), ts, 1.0);
        exact[v] += exp2((double)ts / H); /* relative to time 0; scaled when read */
    }
    return now;
}

static double exact_at(const double *exact, int v, int64_t now) {
    return exact[v] * exp2(-(double)now / H);
}

static int id_of(const ch_topk_item_t *it) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%.*s", (int)it->len, it->value);
    return atoi(buf + 5);
}

static void test_exact_while_values_fit(void **st) {
    (void)st;
    ch_topk_t *t = NULL;
    assert_int_equal(ch_topk_new(VALUES, 32, H, &t), 0);
    double exact[VALUES] = {0};
    int64_t now = stream(t, exact, VALUES, 20000, 24 * 3600000LL);
    ch_topk_item_t top[10];
    assert_int_equal(ch_topk_top(t, now, 10, top), 10);
    /* the exact top 10, heaviest first */
    int order[VALUES];
    for (int v = 0; v < VALUES; v++) {
        order[v] = v;
    }
    for (int r = 0; r < 10; r++) {
        for (int q = r + 1; q < VALUES; q++) {
            if (exact[order[q]] > exact[order[r]]) {
                int tmp = order[r];
                order[r] = order[q];
                order[q] = tmp;
            }
        }
    }
    double total = 0;
    for (int v = 0; v < VALUES; v++) {
        total += exact_at(exact, v, now);
    }
    for (int r = 0; r < 10; r++) {
        assert_int_equal(id_of(&top[r]), order[r]);
        double e = exact_at(exact, order[r], now);
        assert_true(fabs(top[r].weight - e) <= 1e-9 * e);
        assert_true(top[r].error == 0);
    }
    assert_true(fabs(ch_topk_total(t, now) - total) <= 1e-9 * total);
    ch_topk_clear(t);
    assert_int_equal(ch_topk_top(t, now, 10, top), 0);
    ch_topk_free(t);
}

static void test_bounded_beyond_the_slots(void **st) {
    (void)st;
    ch_topk_t *t = NULL;
    size_t slots = 40;
    assert_int_equal(ch_topk_new(slots, 32, H, &t), 0);
    double exact[VALUES] = {0};
    int64_t now = stream(t, exact, VALUES, 50000, 48 * 3600000LL);
    double total = ch_topk_total(t, now);
    ch_topk_item_t top[40];
    size_t n = ch_topk_top(t, now, slots, top);
    assert_int_equal(n, slots);
    bool held[VALUES] = {false};
    for (size_t r = 0; r < n; r++) {
        int v = id_of(&top[r]);
        held[v] = true;
        double e = exact_at(exact, v, now);
        /* an overestimate by at most its error, itself at most total / slots */
        assert_true(top[r].weight >= e * (1 - 1e-9));
        assert_true(top[r].weight - top[r].error <= e * (1 + 1e-9) + 1e-12);
        assert_true(top[r].error <= total / (double)slots * (1 + 1e-9));
        if (r) {
            assert_true(top[r].weight <= top[r - 1].weight);
        }
    }
    for (int v = 0; v < VALUES; v++) { /* every value heavier than total / slots is held */
        if (exact_at(exact, v, now) > total / (double)slots) {
            assert_true(held[v]);
        }
    }
    ch_topk_free(t);
}

static void test_rescaling_over_many_half_lives(void **st) {
    (void)st;
    ch_topk_t *t = NULL;
    assert_int_equal(ch_topk_new(4, 8, 1000.0, &t), 0);
    int64_t ts = 0;
    for (int i = 0; i < 2000; i++) { /* 2,000 half-lives: past the landmark many times */
        ts = (int64_t)i * 1000;
        ch_topk_add(t, "a", 1, ts, 1.0);
    }
    ch_topk_add(t, "bb", 2, ts, 1.0);
    ch_topk_item_t top[4];
    assert_int_equal(ch_topk_top(t, ts, 4, top), 2);
    assert_int_equal(top[0].len, 1);
    assert_true(fabs(top[0].weight - 2.0) < 1e-9); /* 1 + 1/2 + 1/4 + ... */
    assert_true(fabs(top[1].weight - 1.0) < 1e-12);
    assert_true(isfinite(ch_topk_total(t, ts)) && fabs(ch_topk_total(t, ts) - 3.0) < 1e-9);
    ch_topk_add(t, "", 0, ts, 1.0);              /* ignored */
    ch_topk_add(t, "toolongvalue", 12, ts, 1.0); /* cut to 8 bytes */
    assert_int_equal(ch_topk_top(t, ts, 4, top), 3);
    assert_int_equal(top[2].len, 8);
    assert_memory_equal(top[2].value, "toolongv", 8);
    ch_topk_free(t);
}

static void test_bad_arguments(void **st) {
    (void)st;
    ch_topk_t *t = NULL;
    assert_int_equal(ch_topk_new(0, 8, H, &t), -EINVAL);
    assert_int_equal(ch_topk_new(4, 0, H, &t), -EINVAL);
    assert_int_equal(ch_topk_new(4, 8, 0, &t), -EINVAL);
    assert_null(ch_topk_free(NULL));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_while_values_fit),
        cmocka_unit_test(test_bounded_beyond_the_slots),
        cmocka_unit_test(test_rescaling_over_many_half_lives),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
