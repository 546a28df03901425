/*
 * test_tracker.c - the delivery tracker: an input offset is released only when every
 * output of its batch and of all older batches is acknowledged.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ch/tracker.h"

/* What store() received, in order. */
typedef struct stored {
    int32_t partition[64];
    int64_t offset[64];
    size_t n;
} stored_t;

static void store(void *opaque, int32_t partition, int64_t next_offset) {
    stored_t *s = opaque;
    assert_true(s->n < 64);
    s->partition[s->n] = partition;
    s->offset[s->n++] = next_offset;
}

/* The offset released for a partition last, -1 if none. */
static int64_t last_for(const stored_t *s, int32_t partition) {
    int64_t v = -1;
    for (size_t i = 0; i < s->n; i++) {
        if (s->partition[i] == partition) {
            v = s->offset[i];
        }
    }
    return v;
}

static void test_out_of_order_acknowledgements_release_in_order(void **state) {
    (void)state;
    ch_tracker_t *t = NULL;
    assert_int_equal(ch_tracker_new(4, &t), 0);
    stored_t s = {0};
    /* batch A: partition 0 offsets 10..12, partition 1 offset 5; two outputs */
    ch_tracked_t *a = ch_tracker_open(t);
    for (int64_t o = 10; o <= 12; o++) {
        assert_int_equal(ch_tracker_consumed(a, 0, o), 0);
    }
    assert_int_equal(ch_tracker_consumed(a, 1, 5), 0);
    ch_tracker_sent(a);
    ch_tracker_sent(a);
    assert_false(ch_tracker_seal(a));
    /* batch B: partition 1 offsets 6, 7 and partition 2 offset 0; one output */
    ch_tracked_t *b = ch_tracker_open(t);
    assert_int_equal(ch_tracker_consumed(b, 1, 7), 0);
    assert_int_equal(ch_tracker_consumed(b, 1, 6), 0); /* out of order within a batch */
    assert_int_equal(ch_tracker_consumed(b, 2, 0), 0);
    ch_tracker_sent(b);
    assert_false(ch_tracker_seal(b));
    assert_int_equal(ch_tracker_inflight(t), 2);

    /* B is acknowledged first: complete, but A is older and is not */
    assert_true(ch_tracker_acked(b, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 0);
    assert_int_equal(s.n, 0);
    assert_false(ch_tracker_acked(a, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 0);
    /* A's last output: both go, A's offsets before B's */
    assert_true(ch_tracker_acked(a, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 2);
    assert_int_equal(s.n, 4);
    assert_int_equal(s.partition[0], 0);
    assert_int_equal(s.offset[0], 13);
    assert_int_equal(s.partition[1], 1);
    assert_int_equal(s.offset[1], 6);
    assert_int_equal(last_for(&s, 1), 8); /* then B's */
    assert_int_equal(last_for(&s, 2), 1);
    assert_int_equal(ch_tracker_inflight(t), 0);
    ch_tracker_free(t);
}

static void test_a_batch_without_outputs_completes_when_sealed(void **state) {
    (void)state;
    ch_tracker_t *t = NULL;
    assert_int_equal(ch_tracker_new(2, &t), 0);
    stored_t s = {0};
    ch_tracked_t *a = ch_tracker_open(t);
    assert_int_equal(ch_tracker_consumed(a, 3, 41), 0);
    assert_int_equal(ch_tracker_advance(t, store, &s), 0); /* open: more may come */
    assert_true(ch_tracker_seal(a));
    assert_int_equal(ch_tracker_advance(t, store, &s), 1);
    assert_int_equal(last_for(&s, 3), 42);
    ch_tracker_free(t);
}

static void test_a_failure_freezes_everything_after_it(void **state) {
    (void)state;
    ch_tracker_t *t = NULL;
    assert_int_equal(ch_tracker_new(8, &t), 0);
    stored_t s = {0};
    ch_tracked_t *b[4];
    for (int i = 0; i < 4; i++) {
        b[i] = ch_tracker_open(t);
        assert_int_equal(ch_tracker_consumed(b[i], 0, 100 + i), 0);
        ch_tracker_sent(b[i]);
        ch_tracker_seal(b[i]);
    }
    assert_true(ch_tracker_acked(b[0], true));
    assert_false(ch_tracker_acked(b[1], false)); /* delivery failed for good */
    assert_true(ch_tracker_frozen(t));
    assert_true(ch_tracker_acked(b[2], true));
    assert_true(ch_tracker_acked(b[3], true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 1); /* only the batch before it */
    assert_int_equal(last_for(&s, 0), 101);
    assert_int_equal(ch_tracker_advance(t, store, &s), 0); /* and never anything more */
    assert_int_equal(s.n, 1);
    assert_int_equal(ch_tracker_inflight(t), 3);
    /* a batch failed without any output freezes the ring the same way */
    ch_tracker_t *u = NULL;
    assert_int_equal(ch_tracker_new(2, &u), 0);
    ch_tracked_t *x = ch_tracker_open(u);
    assert_int_equal(ch_tracker_consumed(x, 0, 1), 0);
    ch_tracker_fail(x);
    assert_false(ch_tracker_seal(x));
    assert_int_equal(ch_tracker_advance(u, store, &s), 0);
    ch_tracker_free(u);
    ch_tracker_free(t);
}

static void test_revoke_mid_flight_forgets_the_partition(void **state) {
    (void)state;
    ch_tracker_t *t = NULL;
    assert_int_equal(ch_tracker_new(4, &t), 0);
    stored_t s = {0};
    ch_tracked_t *a = ch_tracker_open(t), *b = ch_tracker_open(t);
    assert_int_equal(ch_tracker_consumed(a, 0, 7), 0);
    assert_int_equal(ch_tracker_consumed(a, 1, 70), 0);
    assert_int_equal(ch_tracker_consumed(b, 1, 71), 0);
    assert_int_equal(ch_tracker_consumed(b, 2, 700), 0);
    ch_tracker_sent(a);
    ch_tracker_sent(b);
    ch_tracker_seal(a);
    ch_tracker_seal(b);
    /* partition 1 moves to another consumer while both batches are in flight */
    assert_int_equal(ch_tracker_revoke(t, 1), 2);
    assert_int_equal(ch_tracker_revoke(t, 9), 0);
    assert_true(ch_tracker_acked(b, true));
    assert_true(ch_tracker_acked(a, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 2); /* the batches still retire */
    assert_int_equal(s.n, 2);
    assert_int_equal(last_for(&s, 0), 8);
    assert_int_equal(last_for(&s, 1), -1); /* never stored by this consumer */
    assert_int_equal(last_for(&s, 2), 701);
    ch_tracker_free(t);
}

static void test_the_ring_is_bounded_and_slots_reused(void **state) {
    (void)state;
    ch_tracker_t *t = NULL;
    assert_int_equal(ch_tracker_new(0, &t), -EINVAL);
    assert_int_equal(ch_tracker_new(3, &t), 0);
    stored_t s = {0};
    ch_tracked_t *b[3];
    size_t seen = 0;
    for (int i = 0; i < 3; i++) {
        assert_true(ch_tracker_has_room(t));
        b[i] = ch_tracker_open(t);
        assert_non_null(b[i]);
        assert_int_equal((uintptr_t)b[i] & 7, 0); /* room for a 3-bit tag */
        size_t slot = ch_tracker_slot(t, b[i]);
        assert_true(slot < 3);
        seen |= (size_t)1 << slot;
    }
    assert_int_equal(seen, 7); /* three distinct slots */
    assert_false(ch_tracker_has_room(t));
    assert_null(ch_tracker_open(t));
    /* 40 partitions in one batch: its list grows */
    for (int32_t p = 0; p < 40; p++) {
        assert_int_equal(ch_tracker_consumed(b[0], p, p), 0);
    }
    ch_tracker_seal(b[0]);
    assert_int_equal(ch_tracker_advance(t, store, &s), 1);
    assert_int_equal(s.n, 40);
    assert_true(ch_tracker_has_room(t));
    ch_tracked_t *again = ch_tracker_open(t);
    assert_ptr_equal(again, b[0]); /* the released slot comes back, emptied */
    assert_true(ch_tracker_seal(again));
    ch_tracker_seal(b[1]);
    ch_tracker_seal(b[2]);
    s.n = 0;
    assert_int_equal(ch_tracker_advance(t, store, &s), 3);
    assert_int_equal(s.n, 0); /* nothing consumed in them, nothing stored */
    assert_null(ch_tracker_free(t));
    assert_null(ch_tracker_free(NULL));
}

/* A run of batches merged into its newest releases its offsets once, when the whole run
 * is acknowledged: the oldest batch completing first releases nothing. */
static void test_a_merged_run_releases_at_once(void **state) {
    (void)state;
    ch_tracker_t *t = NULL;
    assert_int_equal(ch_tracker_new(4, &t), 0);
    stored_t s = {0};
    ch_tracked_t *a = ch_tracker_open(t), *b = ch_tracker_open(t), *c = ch_tracker_open(t);
    assert_int_equal(ch_tracker_consumed(a, 0, 10), 0);
    assert_int_equal(ch_tracker_consumed(a, 1, 3), 0);
    assert_int_equal(ch_tracker_consumed(b, 0, 20), 0);
    assert_int_equal(ch_tracker_consumed(c, 0, 30), 0);
    assert_int_equal(ch_tracker_consumed(c, 2, 7), 0);
    ch_tracker_sent(a);
    ch_tracker_sent(b);
    ch_tracker_sent(c);
    assert_int_equal(ch_tracker_merge(a, c), 0);
    assert_int_equal(ch_tracker_merge(b, c), 0);
    assert_int_equal(ch_tracker_merge(c, c), 0); /* itself: nothing moves */
    assert_false(ch_tracker_seal(a));
    assert_false(ch_tracker_seal(b));
    assert_false(ch_tracker_seal(c));
    assert_true(ch_tracker_acked(a, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 1); /* a goes, with no offsets */
    assert_true(ch_tracker_acked(b, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 1);
    assert_int_equal(s.n, 0); /* offset 11 or 21 of partition 0 never stored alone */
    assert_true(ch_tracker_acked(c, true));
    assert_int_equal(ch_tracker_advance(t, store, &s), 1);
    assert_int_equal(s.n, 3);
    assert_int_equal(last_for(&s, 0), 31);
    assert_int_equal(last_for(&s, 1), 4);
    assert_int_equal(last_for(&s, 2), 8);
    assert_null(ch_tracker_free(t));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_order_acknowledgements_release_in_order),
        cmocka_unit_test(test_a_batch_without_outputs_completes_when_sealed),
        cmocka_unit_test(test_a_failure_freezes_everything_after_it),
        cmocka_unit_test(test_revoke_mid_flight_forgets_the_partition),
        cmocka_unit_test(test_the_ring_is_bounded_and_slots_reused),
        cmocka_unit_test(test_a_merged_run_releases_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
