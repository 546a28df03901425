/* Histogram tests: "le" buckets are upper-inclusive and cumulative, +Inf holds the rest,
 * sum and count are exact; expected values worked out by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>

#include "histogram.h"

static const double bounds[] = {0.1, 1, 10};

static void test_buckets_inclusive_and_cumulative(void **st) {
    (void)st;
    ch_histogram_t h;
    ch_histogram_init(&h, bounds, 3);
    const double obs[] = {0.05, 0.1, 0.2, 1, 1.0000001, 10, 11, 1e9, -3, NAN};
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++) {
        ch_histogram_observe(&h, obs[i]);
    }
    /* <= 0.1: 0.05, 0.1, -3 | <= 1: + 0.2, 1 | <= 10: + 1.0000001, 10 | +Inf: + 11, 1e9 */
    assert_int_equal(ch_histogram_cumulative(&h, 0), 3);
    assert_int_equal(ch_histogram_cumulative(&h, 1), 5);
    assert_int_equal(ch_histogram_cumulative(&h, 2), 7);
    assert_int_equal(ch_histogram_cumulative(&h, 3), 9); /* +Inf = count; NaN ignored */
    assert_int_equal(h.count, 9);
    double sum = 0.05 + 0.1 + 0.2 + 1 + 1.0000001 + 10 + 11 + 1e9 - 3;
    assert_true(fabs(h.sum - sum) < 1e-6);
}

static void test_empty(void **st) {
    (void)st;
    ch_histogram_t h;
    ch_histogram_init(&h, bounds, 3);
    for (size_t i = 0; i <= 3; i++) {
        assert_int_equal(ch_histogram_cumulative(&h, i), 0);
    }
    assert_int_equal(h.count, 0);
    assert_true(h.sum == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_inclusive_and_cumulative),
        cmocka_unit_test(test_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
