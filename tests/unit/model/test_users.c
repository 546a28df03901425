/* User table tests: lookup, growth, deletion, caps and eviction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ch/users.h"

/* The caller's per-user fields, kept in the table's extra area. */
typedef struct mine {
    int32_t partition;
    char note[13]; /* an odd size: the table rounds the area up */
} mine_t;

static mine_t *mine(ch_users_t *u, ch_user_t *rec) {
    return ch_users_extra(u, rec);
}

static int key_of(char *buf, size_t len, int i) {
    return snprintf(buf, len, "user-%d", i);
}

static void assert_sane(const ch_users_t *u) {
    char why[256] = "";
    if (!ch_users_check(u, why, sizeof(why))) {
        fail_msg("invariant: %s", why);
    }
}

static bool on_partition(void *opaque, const ch_user_t *rec);
static ch_users_t *g_table;

static void test_insert_find_grow_remove(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(200000, 32, 4, sizeof(mine_t), &u), 0);
    char k[32];
    const int n = 100000; /* forces many index doublings */
    for (int i = 0; i < n; i++) {
        int len = key_of(k, sizeof(k), i);
        ch_user_t *rec = NULL;
        assert_int_equal(ch_users_upsert(u, k, (size_t)len, &rec), 1);
        assert_int_equal(rec->t_ref_ms, INT64_MIN);
        assert_int_equal(rec->segment, -1);
        static const mine_t zero;
        assert_memory_equal(mine(u, rec), &zero, sizeof(zero)); /* zeroed on insert */
        rec->state[0] = i;
        rec->state[3] = -i;
        rec->t_ref_ms = i;
        /* the whole extra area is the caller's: filling it touches neither the state
         * nor the key */
        memset(mine(u, rec), 0xA5, sizeof(mine_t));
        mine(u, rec)->partition = i;
    }
    assert_int_equal(ch_users_count(u), n);
    assert_sane(u);
    /* remove every third user; backward-shift deletion must keep the rest reachable */
    for (int i = 0; i < n; i += 3) {
        int len = key_of(k, sizeof(k), i);
        assert_int_equal(ch_users_remove(u, k, (size_t)len), 0);
    }
    for (int i = 0; i < n; i++) {
        int len = key_of(k, sizeof(k), i);
        ch_user_t *rec = ch_users_find(u, k, (size_t)len);
        if (i % 3 == 0) {
            assert_null(rec);
        } else {
            assert_non_null(rec);
            assert_int_equal((int)rec->state[0], i);
            assert_int_equal((int)rec->state[3], -i);
            assert_int_equal(mine(u, rec)->partition, i);
            assert_memory_equal(ch_users_key(u, rec), k, (size_t)len);
        }
    }
    /* upsert of an existing user returns it, not a new record */
    ch_user_t *rec = NULL;
    assert_int_equal(ch_users_upsert(u, "user-1", 6, &rec), 0);
    assert_int_equal((int)rec->state[0], 1);
    assert_int_equal(ch_users_count(u), n - (n + 2) / 3);
    assert_int_equal(ch_users_remove(u, "nobody", 6), -ENOENT);
    assert_sane(u);
    ch_users_free(u);
}

static void test_iteration_visits_each_live_user_once(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(1000, 16, 1, sizeof(mine_t), &u), 0);
    char k[16];
    for (int i = 0; i < 300; i++) {
        int len = key_of(k, sizeof(k), i);
        ch_user_t *rec = NULL;
        assert_int_equal(ch_users_upsert(u, k, (size_t)len, &rec), 1);
        rec->state[0] = i;
    }
    for (int i = 0; i < 300; i += 2) {
        int len = key_of(k, sizeof(k), i);
        assert_int_equal(ch_users_remove(u, k, (size_t)len), 0);
    }
    /* sum of the odd ids 1..299 = 150^2, each seen once; evicting the record just
     * returned is allowed */
    size_t cursor = 0, seen = 0;
    double sum = 0;
    for (ch_user_t *rec; (rec = ch_users_next(u, &cursor));) {
        seen++;
        sum += rec->state[0];
        if ((int)rec->state[0] % 3 == 0) {
            assert_int_equal(ch_users_remove(u, ch_users_key(u, rec), rec->key_len), 0);
        }
    }
    assert_int_equal(seen, 150);
    assert_true(sum == 150.0 * 150.0);
    assert_int_equal(ch_users_count(u), 100); /* 50 odd multiples of 3 went */
    assert_sane(u);
    ch_users_free(u);
}

static void test_check_finds_a_broken_table(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(100, 16, 1, 0, &u), 0);
    ch_user_t *rec = NULL;
    assert_int_equal(ch_users_upsert(u, "alice", 5, &rec), 1);
    assert_int_equal(ch_users_upsert(u, "bob", 3, &rec), 1);
    assert_sane(u);
    /* a stray write over bob's key: the index no longer leads to his record */
    ((char *)ch_users_key(u, rec))[0] = 'B';
    char why[256] = "";
    assert_false(ch_users_check(u, why, sizeof(why)));
    assert_non_null(strstr(why, "not found by a lookup"));
    ((char *)ch_users_key(u, rec))[0] = 'b';
    assert_sane(u);
    ch_users_free(u);
}

static void test_key_limits(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(10, 8, 1, 0, &u), 0);
    assert_int_equal(ch_users_new(10, 8, 1, 4097, &u), -EINVAL);
    /* state: up to CH_USERS_STATE_MAX doubles (a distinct() at k = 1024 takes 6,146) */
    ch_users_t *big = NULL;
    assert_int_equal(ch_users_new(10, 8, CH_USERS_STATE_MAX + 1, 0, &big), -EINVAL);
    assert_int_equal(ch_users_new(10, 8, CH_USERS_STATE_MAX, 0, &big), 0);
    ch_user_t *b = NULL;
    assert_int_equal(ch_users_upsert(big, "k", 1, &b), 1);
    b->state[CH_USERS_STATE_MAX - 1] = 1.5; /* the whole state is the record's */
    assert_string_equal(ch_users_key(big, b), "k");
    assert_null(ch_users_free(big));
    ch_user_t *rec = NULL;
    assert_int_equal(ch_users_upsert(u, "123456789", 9, &rec), -E2BIG);
    assert_int_equal(ch_users_upsert(u, "", 0, &rec), -EINVAL);
    assert_int_equal(ch_users_upsert(u, "12345678", 8, &rec), 1);
    assert_int_equal(ch_users_count(u), 1);
    assert_null(ch_users_free(u));
    assert_null(ch_users_free(NULL));
}

static void test_cap_evicts(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(100, 16, 1, 0, &u), 0);
    char k[16];
    for (int i = 0; i < 250; i++) {
        int len = key_of(k, sizeof(k), i);
        ch_user_t *rec = NULL;
        assert_int_equal(ch_users_upsert(u, k, (size_t)len, &rec), 1);
        rec->t_ref_ms = i;
    }
    assert_int_equal(ch_users_count(u), 100);
    assert_int_equal(ch_users_cap_evictions(u), 150);
    /* the newest user is always present */
    assert_non_null(ch_users_find(u, "user-249", 8));
    assert_sane(u);
    ch_users_free(u);
}

static void test_idle_and_partition_eviction(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(1000, 16, 1, sizeof(mine_t), &u), 0);
    g_table = u;
    char k[16];
    for (int i = 0; i < 100; i++) {
        int len = key_of(k, sizeof(k), i);
        ch_user_t *rec = NULL;
        assert_int_equal(ch_users_upsert(u, k, (size_t)len, &rec), 1);
        rec->t_ref_ms = i * 1000;
        mine(u, rec)->partition = i % 4;
    }
    /* a budget smaller than the table scans only part of it */
    assert_int_equal(ch_users_evict_idle(u, 50000, 10), 10); /* users 0..9 */
    assert_int_equal(ch_users_evict_idle(u, 50000, 1000), 40);
    assert_int_equal(ch_users_count(u), 50);
    assert_null(ch_users_find(u, "user-49", 7));
    assert_non_null(ch_users_find(u, "user-50", 7));
    /* users 50..99 with i % 4 == 2: 50, 54, ..., 98 = 13 users */
    int32_t two = 2;
    assert_int_equal(ch_users_evict_if(u, on_partition, &two), 13);
    assert_int_equal(ch_users_count(u), 37);
    assert_null(ch_users_find(u, "user-54", 7));
    assert_non_null(ch_users_find(u, "user-55", 7));
    /* freed records are reused */
    ch_user_t *rec = NULL;
    size_t before = ch_users_memory_bytes(u);
    assert_int_equal(ch_users_upsert(u, "fresh", 5, &rec), 1);
    assert_int_equal(ch_users_memory_bytes(u), before);
    assert_sane(u);
    ch_users_free(u);
}

typedef struct seen {
    int n;
    int64_t t_sum; /* sum of the evicted users' t_ref_ms: identifies which ones */
    int key_ok;
} seen_t;

static bool on_partition(void *opaque, const ch_user_t *rec) {
    return mine(g_table, (ch_user_t *)rec)->partition == *(const int32_t *)opaque;
}

static void on_evict(void *opaque, const ch_user_t *rec) {
    seen_t *s = opaque;
    char k[16];
    int len = key_of(k, sizeof(k), (int)rec->t_ref_ms);
    s->n++;
    s->t_sum += rec->t_ref_ms;
    /* the record is still whole when the hook runs */
    s->key_ok += rec->key_len == len && memcmp(ch_users_key(g_table, rec), k, (size_t)len) == 0;
}

static void test_evict_hook_sees_every_eviction(void **st) {
    (void)st;
    ch_users_t *u = NULL;
    assert_int_equal(ch_users_new(50, 16, 1, sizeof(mine_t), &u), 0);
    g_table = u;
    seen_t s = {0};
    ch_users_set_evict_hook(u, on_evict, &s);
    char k[16];
    for (int i = 0; i < 60; i++) { /* 10 cap evictions */
        int len = key_of(k, sizeof(k), i);
        ch_user_t *rec = NULL;
        assert_int_equal(ch_users_upsert(u, k, (size_t)len, &rec), 1);
        rec->t_ref_ms = i;
        mine(u, rec)->partition = i % 2;
    }
    assert_int_equal(s.n, 10);
    int64_t cap_sum = s.t_sum;
    assert_int_equal(ch_users_remove(u, "user-59", 7), 0);
    assert_int_equal(s.n, 11);
    assert_int_equal(s.t_sum, cap_sum + 59);
    size_t idle = ch_users_evict_idle(u, 30, 1000);
    int32_t one = 1, zero = 0;
    size_t part = ch_users_evict_if(u, on_partition, &one);
    assert_int_equal(s.n, 11 + (int)idle + (int)part);
    assert_int_equal(s.key_ok, s.n);
    assert_int_equal(ch_users_count(u), 59 - 10 - (int)idle - (int)part);
    ch_users_set_evict_hook(u, NULL, NULL);
    size_t left = ch_users_count(u); /* all on partition 0 now */
    assert_int_equal(ch_users_evict_if(u, on_partition, &zero), left);
    assert_int_equal(s.n, 11 + (int)idle + (int)part);
    ch_users_free(u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_find_grow_remove),
        cmocka_unit_test(test_key_limits),
        cmocka_unit_test(test_cap_evicts),
        cmocka_unit_test(test_idle_and_partition_eviction),
        cmocka_unit_test(test_evict_hook_sees_every_eviction),
        cmocka_unit_test(test_iteration_visits_each_live_user_once),
        cmocka_unit_test(test_check_finds_a_broken_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
