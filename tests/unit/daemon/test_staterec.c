/*
 * test_staterec.c - the changelog record of a user's state: exact round trip, fixed
 * little-endian layout, damaged and foreign records refused.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "staterec.h"

static ch_features_t *features(const char *count_spec, double half_life_ms) {
    ch_features_t *fs = NULL;
    assert_int_equal(ch_features_new(half_life_ms, &fs), 0);
    assert_int_equal(ch_features_add(fs, "n", count_spec, NULL, 0), 0);
    assert_int_equal(ch_features_add(fs, "amt", "sum(amount) half_life=7d", NULL, 0), 0);
    assert_int_equal(ch_features_seal(fs), 0);
    return fs;
}

static void test_round_trip_is_exact(void **state) {
    (void)state;
    ch_features_t *fs = features("count", 3600e3);
    size_t sl = ch_features_state_len(fs);
    ch_users_t *users = NULL;
    assert_int_equal(ch_users_new(16, 64, sl, sizeof(ch_userrec_t), &users), 0);
    ch_user_t *u = NULL, *v = NULL;
    assert_int_equal(ch_users_upsert(users, "alice", 5, &u), 1);
    assert_int_equal(ch_users_upsert(users, "bob", 3, &v), 1);
    for (size_t i = 0; i < sl; i++) {
        u->state[i] = (i % 2 ? -1.0 : 1.0) / 3.0 * (double)(i + 1);
    }
    u->state[0] = 0x1.fffffffffffffp+1023; /* largest double: every bit must survive */
    u->t_ref_ms = 1767225600123;
    u->segment = -1;
    u->seg_gen = 0xdeadbeef;
    ch_userrec_t *r = ch_userrec(users, u);
    *r = (ch_userrec_t){INT64_MIN, 42, 99, 7, NAN};
    uint64_t layout = 0;
    assert_int_equal(ch_staterec_layout(fs, 3600e3, &layout), 0);
    unsigned char buf[1024];
    assert_true(ch_staterec_size(sl) <= sizeof(buf));
    ch_staterec_encode(layout, 123456789012LL, u, sl, r, buf);
    /* the fixed layout: version first, the offset at 16, little-endian */
    assert_int_equal(buf[0], CH_STATEREC_VERSION);
    assert_int_equal(buf[2] | buf[3] << 8, (int)sl);
    int64_t off = 0;
    for (int i = 7; i >= 0; i--) {
        off = off << 8 | buf[16 + i];
    }
    assert_int_equal(off, 123456789012LL);

    ch_staterec_t s;
    assert_int_equal(ch_staterec_decode(buf, ch_staterec_size(sl), layout, sl, &s), 0);
    assert_int_equal(s.input_offset, 123456789012LL);
    ch_staterec_apply(&s, v, ch_userrec(users, v), 3);
    assert_memory_equal(v->state, u->state, sl * sizeof(double));
    assert_int_equal(v->t_ref_ms, u->t_ref_ms);
    assert_int_equal(v->segment, -1);
    assert_int_equal(v->seg_gen, 0xdeadbeef);
    ch_userrec_t *rv = ch_userrec(users, v);
    assert_true(rv->last_emit_ms == INT64_MIN);
    assert_int_equal(rv->last_risk_ms, 42);
    assert_true(isnan(rv->last_score));
    assert_int_equal(rv->partition, 3);
    assert_int_equal(rv->offset, 123456789012LL); /* what the record reflects */
    ch_users_free(users);
    ch_features_free(fs);
}

static void test_damaged_and_foreign_records_refused(void **state) {
    (void)state;
    ch_features_t *fs = features("count", 3600e3);
    size_t sl = ch_features_state_len(fs);
    ch_users_t *users = NULL;
    assert_int_equal(ch_users_new(4, 64, sl, sizeof(ch_userrec_t), &users), 0);
    ch_user_t *u = NULL;
    assert_int_equal(ch_users_upsert(users, "u", 1, &u), 1);
    ch_userrec_init(ch_userrec(users, u));
    uint64_t layout = 0;
    assert_int_equal(ch_staterec_layout(fs, 3600e3, &layout), 0);
    unsigned char buf[1024];
    size_t n = ch_staterec_size(sl);
    ch_staterec_encode(layout, 5, u, sl, ch_userrec(users, u), buf);
    ch_staterec_t s;
    assert_int_equal(ch_staterec_decode(buf, n - 1, layout, sl, &s), -EINVAL); /* truncated */
    assert_int_equal(ch_staterec_decode(buf, 10, layout, sl, &s), -EINVAL);
    assert_int_equal(ch_staterec_decode(NULL, 0, layout, sl, &s), -EINVAL);
    buf[0] = 2; /* a version this build does not know */
    assert_int_equal(ch_staterec_decode(buf, n, layout, sl, &s), -EINVAL);
    buf[0] = CH_STATEREC_VERSION;
    assert_int_equal(ch_staterec_decode(buf, n, layout ^ 1, sl, &s), -ESTALE);
    assert_int_equal(ch_staterec_decode(buf, n, layout, sl + 1, &s), -ESTALE);
    assert_int_equal(ch_staterec_decode(buf, n, layout, sl, &s), 0);
    ch_users_free(users);
    ch_features_free(fs);
}

static void test_layout_fingerprint_follows_declarations(void **state) {
    (void)state;
    ch_features_t *a = features("count", 3600e3), *b = features("count", 3600e3);
    ch_features_t *c = features("count type=view", 3600e3);
    uint64_t la, lb, lc, ld;
    assert_int_equal(ch_staterec_layout(a, 3600e3, &la), 0);
    assert_int_equal(ch_staterec_layout(b, 3600e3, &lb), 0);
    assert_int_equal(ch_staterec_layout(c, 3600e3, &lc), 0);
    assert_int_equal(ch_staterec_layout(a, 7200e3, &ld), 0);
    assert_true(la == lb);
    assert_true(la != lc);
    assert_true(la != ld);
    ch_features_free(a);
    ch_features_free(b);
    ch_features_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_is_exact),
        cmocka_unit_test(test_damaged_and_foreign_records_refused),
        cmocka_unit_test(test_layout_fingerprint_follows_declarations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
