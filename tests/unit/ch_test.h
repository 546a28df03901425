/* Shared helpers for cmocka unit tests (cmocka 1.1 compares floats only). */
#ifndef CH_TEST_H
#define CH_TEST_H

#include <math.h>

#define assert_double_equal(a, b, tol)                                                     \
    do {                                                                                   \
        double ch_a_ = (a), ch_b_ = (b);                                                   \
        if (!(fabs(ch_a_ - ch_b_) <= (tol))) {                                             \
            fail_msg("%s = %.17g, expected %.17g (tolerance %g)", #a, ch_a_, ch_b_,        \
                     (double)(tol));                                                       \
        }                                                                                  \
    } while (0)

#endif
