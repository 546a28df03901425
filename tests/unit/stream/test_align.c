/*
 * test_align.c - timestamp alignment: records leave in partition order, never more than
 * the skew ahead of a partition that still has records, and the aligner never stalls.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ch/align.h"

#define H 3600000LL /* one hour in ms */

typedef struct rec {
    int32_t part;
    int64_t off, ts;
} rec_t;

static rec_t recs[1024];
static size_t n_recs;
static int dropped;

static rec_t *mk(int32_t part, int64_t off, int64_t ts) {
    assert_true(n_recs < 1024);
    recs[n_recs] = (rec_t){part, off, ts};
    return &recs[n_recs++];
}

static void drop(void *item) {
    (void)item;
    dropped++;
}

/* High watermarks the tests set: -1 unknown. */
static int64_t hw[8];
static int64_t high_watermark(void *opaque, int32_t partition) {
    (void)opaque;
    return hw[partition];
}

static ch_align_t *make(int64_t skew, double idle_s, size_t max_held, size_t pause_len) {
    n_recs = 0;
    dropped = 0;
    for (int i = 0; i < 8; i++) {
        hw[i] = -1;
    }
    ch_align_opts_t o = {
        .max_skew_ms = skew, .idle_s = idle_s, .max_held = max_held, .pause_len = pause_len};
    ch_align_t *a = NULL;
    assert_int_equal(ch_align_new(&o, &a), 0);
    return a;
}

static void push(ch_align_t *a, int32_t part, int64_t off, int64_t ts, double now) {
    assert_int_equal(ch_align_push(a, part, off, ts, mk(part, off, ts), now), 0);
}

static size_t pop(ch_align_t *a, rec_t **out, size_t max, double now) {
    ch_align_refresh(a, high_watermark, NULL);
    return ch_align_pop(a, (void **)out, max, now);
}

static void test_options_checked(void **state) {
    (void)state;
    ch_align_t *a = NULL;
    ch_align_opts_t o = {.max_skew_ms = -1, .idle_s = 1, .max_held = 10, .pause_len = 4};
    assert_int_equal(ch_align_new(&o, &a), -EINVAL);
    o.max_skew_ms = H;
    o.idle_s = 0;
    assert_int_equal(ch_align_new(&o, &a), -EINVAL);
    o.idle_s = 1;
    o.pause_len = 1;
    assert_int_equal(ch_align_new(&o, &a), -EINVAL);
    o.pause_len = 4;
    assert_int_equal(ch_align_new(&o, &a), 0);
    assert_int_equal(ch_align_push(a, -1, 0, 0, &o, 0), -EINVAL);
    ch_align_free(a, drop);
}

/* Two partitions whose records (hourly, 0..19 h) were fetched in whole chunks: they
 * leave interleaved, none more than the skew behind one handed over before it, each
 * partition's in offset order. */
static void test_chunks_leave_interleaved_within_skew(void **state) {
    (void)state;
    ch_align_t *a = make(H, 60, 1000, 1000);
    assert_int_equal(ch_align_assign(a, 0, 0, 0), 0);
    assert_int_equal(ch_align_assign(a, 1, 0, 0), 0);
    for (int64_t i = 0; i < 20; i++) {
        push(a, 0, i, i * H, 0);
    }
    for (int64_t i = 0; i < 20; i++) {
        push(a, 1, i, i * H + H / 2, 0);
    }
    hw[0] = hw[1] = 20; /* both fully buffered */
    rec_t *out[64];
    size_t n = 0, got;
    while ((got = pop(a, out + n, 3, 1)) > 0) { /* small budgets: rounds resume */
        n += got;
    }
    assert_int_equal(n, 40);
    int64_t max_ts = INT64_MIN, next_off[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        assert_true(max_ts == INT64_MIN || max_ts - out[i]->ts <= H);
        max_ts = out[i]->ts > max_ts ? out[i]->ts : max_ts;
        assert_int_equal(out[i]->off, next_off[out[i]->part]++);
    }
    ch_align_stats_t st;
    ch_align_stats(a, &st);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.forced, 0);
    ch_align_free(a, drop);
}

/* A partition that has records on the broker but delivered none yet holds everyone
 * (its clock is unknown) until it delivers, or until it is idle for idle_s. */
static void test_partition_with_records_on_broker_holds_the_others(void **state) {
    (void)state;
    ch_align_t *a = make(H, 5, 1000, 1000);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 0, 0);
    for (int64_t i = 0; i < 10; i++) {
        push(a, 0, i, 100 * H + i * H, 0);
    }
    hw[0] = 10;
    hw[1] = 50; /* partition 1: 50 records to fetch, none here yet */
    rec_t *out[16];
    assert_int_equal(pop(a, out, 16, 1), 0);
    /* partition 1 delivers its first record, 1 h 30 before partition 0's first */
    push(a, 1, 0, 100 * H - H - H / 2, 2);
    size_t n = pop(a, out, 16, 2);
    assert_int_equal(n, 1); /* only its own record: partition 0 is 1.5 h ahead */
    assert_int_equal(out[0]->part, 1);
    /* partition 1 is now empty and still has records: the floor is its last timestamp */
    assert_int_equal(pop(a, out, 16, 3), 0);
    push(a, 1, 1, 100 * H - H / 2, 3);
    n = pop(a, out, 16, 3); /* floor 99.5 h: partition 0 may go to 100.5 h */
    assert_int_equal(n, 2);
    assert_int_equal(out[0]->part + out[1]->part, 1);
    /* partition 1 goes silent: after idle_s it stops holding */
    assert_int_equal(pop(a, out, 16, 7.9), 0);
    n = pop(a, out, 16, 8.1);
    assert_int_equal(n, 9);
    ch_align_free(a, drop);
    assert_int_equal(dropped, 0);
}

/* A partition at its high watermark (caught up, as live partitions are between
 * fetches) does not hold anyone; records without a timestamp never wait. */
static void test_caught_up_partition_and_untimed_records_do_not_wait(void **state) {
    (void)state;
    ch_align_t *a = make(H, 60, 1000, 1000);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 7, 0); /* starts at 7 */
    push(a, 0, 0, -1, 0);
    push(a, 0, 1, 50 * H, 0);
    hw[0] = 2;
    hw[1] = -1; /* unknown: counts as having records */
    rec_t *out[4];
    assert_int_equal(pop(a, out, 4, 0), 1); /* the untimed one */
    assert_int_equal(out[0]->ts, -1);
    hw[1] = 7; /* known now: nothing to fetch */
    assert_int_equal(pop(a, out, 4, 0), 1);
    assert_int_equal(out[0]->ts, 50 * H);
    ch_align_free(a, drop);
}

/* A partition far ahead with pause_len records is paused, keeps handing over what it
 * buffered when its time comes, and is resumed before it runs dry. */
static void test_pause_ahead_and_resume(void **state) {
    (void)state;
    ch_align_t *a = make(H, 60, 1000, 4);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 0, 0);
    for (int64_t i = 0; i < 8; i++) {
        push(a, 0, i, 10 * H + i * H, 0);
    }
    push(a, 1, 0, 0, 0);
    hw[0] = 8;
    hw[1] = 100;
    rec_t *out[16];
    assert_int_equal(pop(a, out, 16, 0), 1); /* partition 1's record at 0 h */
    ch_align_change_t ch[4];
    assert_int_equal(ch_align_changes(a, ch, 4), 1);
    assert_int_equal(ch[0].partition, 0);
    assert_true(ch[0].pause);
    assert_int_equal(ch_align_changes(a, ch, 4), 0); /* applied */
    ch_align_stats_t st;
    ch_align_stats(a, &st);
    assert_int_equal(st.paused, 1);
    assert_int_equal(st.pauses, 1);
    /* partition 1 moves to 12 h: partition 0 hands over 10..13 h while paused */
    push(a, 1, 1, 12 * H, 1);
    size_t n = pop(a, out, 16, 1);
    assert_int_equal(n, 5);
    assert_int_equal(ch_align_changes(a, ch, 4), 0); /* 4 left, reaching 17 h: stays paused */
    /* partition 1 at 15 h: 14..16 h go, one record (17 h) is left: resume */
    push(a, 1, 2, 15 * H, 1);
    n = pop(a, out, 16, 1);
    assert_int_equal(n, 4);
    assert_int_equal(ch_align_changes(a, ch, 4), 1);
    assert_int_equal(ch[0].partition, 0);
    assert_false(ch[0].pause);
    ch_align_stats(a, &st);
    assert_int_equal(st.paused, 0);
    assert_int_equal(st.held, 1);
    ch_align_free(a, drop);
    assert_int_equal(dropped, 1);
}

/* With max_held buffered and nothing releasable, the oldest partition goes anyway. */
static void test_full_buffer_releases_oldest(void **state) {
    (void)state;
    ch_align_t *a = make(H, 60, 4, 100);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 0, 0);
    for (int64_t i = 0; i < 4; i++) {
        push(a, 0, i, 10 * H + i * H / 4, 0);
    }
    hw[0] = 4;
    hw[1] = 100; /* partition 1 holds with nothing delivered */
    rec_t *out[8];
    size_t n = pop(a, out, 8, 0);
    assert_int_equal(n, 4); /* all within 1 h of the oldest */
    ch_align_stats_t st;
    ch_align_stats(a, &st);
    assert_int_equal(st.forced, 4);
    assert_int_equal(st.held, 0);
    ch_align_free(a, drop);
}

/* Revoke drops the partition's records through drop and says it was paused. */
static void test_revoke_drops_and_reports_pause(void **state) {
    (void)state;
    ch_align_t *a = make(H, 60, 1000, 2);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 0, 0);
    for (int64_t i = 0; i < 3; i++) {
        push(a, 0, i, 10 * H + i, 0);
    }
    hw[0] = 3;
    hw[1] = 100;
    push(a, 1, 0, 0, 0);
    rec_t *out[8];
    assert_int_equal(pop(a, out, 8, 0), 1);
    ch_align_change_t ch[4];
    assert_int_equal(ch_align_changes(a, ch, 4), 1);
    assert_int_equal(ch_align_next(a, 0), 0);
    assert_true(ch_align_revoke(a, 0, drop));
    assert_int_equal(dropped, 3);
    assert_int_equal(ch_align_next(a, 0), -1);
    assert_false(ch_align_revoke(a, 0, drop));
    ch_align_stats_t st;
    ch_align_stats(a, &st);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.paused, 0);
    ch_align_free(a, drop);
}

/* A held partition (restoring) releases nothing and holds nobody back; with pause_len
 * buffered it is paused and stays paused until released; then its records go first. */
static void test_hold_buffers_and_holds_nobody_back(void **state) {
    (void)state;
    ch_align_t *a = make(H, 60, 1000, 4);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 0, 0);
    ch_align_hold(a, 0, true, 0);
    for (int64_t i = 0; i < 6; i++) {
        push(a, 0, i, i * H, 0);
    }
    push(a, 1, 0, 50 * H, 0);
    hw[0] = 100; /* more to fetch for both */
    hw[1] = 100;
    rec_t *out[16];
    size_t n = pop(a, out, 16, 1);
    assert_int_equal(n, 1); /* partition 1 is not held back by the held partition 0 */
    assert_int_equal(out[0]->part, 1);
    ch_align_change_t ch[4];
    assert_int_equal(ch_align_changes(a, ch, 4), 1);
    assert_int_equal(ch[0].partition, 0);
    assert_true(ch[0].pause);
    assert_int_equal(ch_align_changes(a, ch, 4), 0); /* stays paused while held */
    ch_align_stats_t st;
    ch_align_stats(a, &st);
    assert_int_equal(st.held, 6);
    /* released: its six records go (they are behind), and it is resumed */
    ch_align_hold(a, 0, false, 2);
    n = pop(a, out, 16, 2);
    assert_int_equal(n, 6);
    assert_int_equal(out[0]->part, 0);
    assert_int_equal(ch_align_changes(a, ch, 4), 1);
    assert_false(ch[0].pause);
    ch_align_free(a, drop);
}

/* Even a full buffer does not release a held partition. */
static void test_full_buffer_never_releases_held(void **state) {
    (void)state;
    ch_align_t *b = make(H, 60, 2, 100);
    ch_align_assign(b, 0, 0, 0);
    ch_align_hold(b, 0, true, 0);
    push(b, 0, 0, 0, 0);
    push(b, 0, 1, 1, 0);
    hw[0] = 2;
    rec_t *out[4];
    assert_int_equal(pop(b, out, 4, 0), 0);
    ch_align_stats_t st;
    ch_align_stats(b, &st);
    assert_int_equal(st.forced, 0);
    ch_align_free(b, drop);
    assert_int_equal(dropped, 2);
}

/* max_skew 0: no alignment (everything released at once), holds still work. */
static void test_no_skew_only_holds(void **state) {
    (void)state;
    ch_align_t *a = make(0, 60, 1000, 1000);
    ch_align_assign(a, 0, 0, 0);
    ch_align_assign(a, 1, 0, 0);
    push(a, 0, 0, 0, 0);
    push(a, 1, 0, 1000 * H, 0);
    hw[0] = hw[1] = 100;
    rec_t *out[4];
    assert_int_equal(pop(a, out, 4, 0), 2);
    ch_align_hold(a, 1, true, 0);
    push(a, 1, 1, 1001 * H, 0);
    assert_int_equal(pop(a, out, 4, 0), 0);
    ch_align_hold(a, 1, false, 0);
    assert_int_equal(pop(a, out, 4, 0), 1);
    ch_align_free(a, drop);
}

/* Records handed out and given back (a partition waiting for a writer schema) leave
 * again first, in offset order, once the hold ends; a ring that wrapped keeps order. */
static void test_unpop_gives_back_in_order(void **state) {
    (void)state;
    ch_align_t *a = make(0, 60, 1000, 1000);
    ch_align_assign(a, 0, 0, 0);
    hw[0] = 1000;
    for (int64_t off = 0; off < 70; off++) { /* past the first ring's 64 slots */
        push(a, 0, off, off, 0);
    }
    rec_t *out[80];
    assert_int_equal(pop(a, out, 60, 0), 60);
    void *back[20];
    int64_t offs[20], ts[20];
    for (int i = 0; i < 20; i++) { /* offsets 40..59 */
        back[i] = out[40 + i];
        offs[i] = out[40 + i]->off;
        ts[i] = out[40 + i]->ts;
    }
    push(a, 0, 70, 70, 0);
    assert_int_equal(ch_align_unpop(a, 0, back, offs, ts, 20), 0);
    ch_align_hold(a, 0, true, 0);
    assert_int_equal(pop(a, out, 80, 0), 0);
    ch_align_stats_t stt;
    ch_align_stats(a, &stt);
    assert_int_equal(stt.held, 31);
    ch_align_hold(a, 0, false, 0);
    assert_int_equal(pop(a, out, 80, 0), 31);
    for (int i = 0; i < 31; i++) {
        assert_int_equal(out[i]->off, 40 + i);
    }
    assert_int_equal(ch_align_unpop(a, -1, back, offs, ts, 1), -EINVAL);
    ch_align_free(a, drop);

    /* given back in front of a ring whose head is at 0: they wrap to its end */
    a = make(0, 60, 1000, 1000);
    ch_align_assign(a, 0, 0, 0);
    hw[0] = 1000;
    push(a, 0, 5, 5, 0);
    push(a, 0, 6, 6, 0);
    for (int i = 0; i < 5; i++) {
        back[i] = mk(0, i, i);
        offs[i] = i;
        ts[i] = i;
    }
    assert_int_equal(ch_align_unpop(a, 0, back, offs, ts, 5), 0);
    assert_int_equal(pop(a, out, 80, 0), 7);
    for (int i = 0; i < 7; i++) {
        assert_int_equal(out[i]->off, i);
    }
    ch_align_free(a, drop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_checked),
        cmocka_unit_test(test_chunks_leave_interleaved_within_skew),
        cmocka_unit_test(test_partition_with_records_on_broker_holds_the_others),
        cmocka_unit_test(test_caught_up_partition_and_untimed_records_do_not_wait),
        cmocka_unit_test(test_pause_ahead_and_resume),
        cmocka_unit_test(test_full_buffer_releases_oldest),
        cmocka_unit_test(test_revoke_drops_and_reports_pause),
        cmocka_unit_test(test_hold_buffers_and_holds_nobody_back),
        cmocka_unit_test(test_full_buffer_never_releases_held),
        cmocka_unit_test(test_no_skew_only_holds),
        cmocka_unit_test(test_unpop_gives_back_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
