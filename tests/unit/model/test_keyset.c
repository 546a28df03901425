/*
 * test_keyset.c - the key set against a plain list searched one by one: random puts
 * and lookups of keys of lengths 0 to 46 (many sharing their tails), through
 * several growths and clears; insertion order; keys too long; the empty key.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ch/keyset.h"

#define UNIVERSE 5000

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Key number i: its number, a dash, then i % 41 bytes shared by many keys (0: the
 * empty key, which is a key too). */
static size_t key_of(int i, char *buf) {
    if (i == 0) {
        return 0;
    }
    int n = snprintf(buf, 64, "%d-", i);
    memset(buf + n, 'a' + i % 3, (size_t)(i % 41));
    return (size_t)n + (size_t)(i % 41);
}

typedef struct model {
    char key[UNIVERSE][64];
    size_t len[UNIVERSE];
    int64_t value[UNIVERSE];
    int order[UNIVERSE]; /* key numbers in insertion order */
    bool in[UNIVERSE];
    size_t n;
} model_t;

static model_t M;

static void check_all(const ch_keyset_t *s) {
    assert_int_equal(ch_keyset_count(s), M.n);
    for (int i = 0; i < UNIVERSE; i++) {
        char k[64];
        size_t len = key_of(i, k);
        int64_t v = -1;
        bool got = ch_keyset_get(s, k, len, &v);
        assert_int_equal(got, M.in[i]);
        if (got) {
            assert_int_equal(v, M.value[i]);
        }
    }
    size_t cursor = 0, k = 0;
    const void *key;
    size_t len;
    int64_t v;
    while (ch_keyset_next(s, &cursor, &key, &len, &v)) {
        assert_true(k < M.n);
        int i = M.order[k++];
        char want[64];
        size_t wlen = key_of(i, want);
        assert_int_equal(len, wlen);
        assert_memory_equal(key, want, len);
        assert_int_equal(v, M.value[i]);
    }
    assert_int_equal(k, M.n);
}

static void test_against_list(void **state) {
    (void)state;
    ch_keyset_t *s = NULL;
    assert_int_equal(ch_keyset_new(&s), 0);
    for (int round = 0; round < 4; round++) {
        memset(&M, 0, sizeof(M));
        int puts = round == 3 ? 100 : 20000; /* the last round stays below the reserve */
        for (int t = 0; t < puts; t++) {
            int i = (int)(next() % (round == 0 ? UNIVERSE : UNIVERSE / (round + 1)));
            char k[64];
            size_t len = key_of(i, k);
            int64_t v = (int64_t)(next() >> 1) - (INT64_MAX / 2);
            int r = ch_keyset_put(s, k, len, v);
            assert_int_equal(r, M.in[i] ? 0 : 1);
            if (!M.in[i]) {
                M.in[i] = true;
                M.order[M.n++] = i;
            }
            M.value[i] = v;
            if (t % 4000 == 0) {
                check_all(s);
            }
        }
        check_all(s);
        ch_keyset_clear(s);
        memset(&M, 0, sizeof(M));
        check_all(s);
    }
    ch_keyset_free(s);
}

static void test_limits(void **state) {
    (void)state;
    ch_keyset_t *s = NULL;
    assert_int_equal(ch_keyset_new(&s), 0);
    size_t big = CH_KEYSET_KEY_MAX + 1;
    char *k = calloc(1, big);
    assert_non_null(k);
    assert_int_equal(ch_keyset_put(s, k, big, 1), -EINVAL);
    assert_false(ch_keyset_get(s, k, big, NULL));
    assert_int_equal(ch_keyset_put(s, k, big - 1, 7), 1);
    int64_t v = 0;
    assert_true(ch_keyset_get(s, k, big - 1, &v));
    assert_int_equal(v, 7);
    assert_false(ch_keyset_get(s, k, big - 2, NULL)); /* a prefix is another key */
    free(k);
    assert_null(ch_keyset_free(s));
    assert_null(ch_keyset_free(NULL));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_list),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
