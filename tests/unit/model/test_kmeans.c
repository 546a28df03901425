/*
 * test_kmeans.c - the mechanics of the online segmenter on hand-built data: warm-up,
 * stable ids, re-seeding with a generation bump, hysteresis, persistence, refresh on a
 * population (Lloyd passes, a k-means++ restart with ids matched).
 * (Quality against sklearn is tests/integration/test_segments.py.)
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../ch_test.h"
#include "ch/kmeans.h"

static uint64_t rng = 88172645463325252ULL;

static double unif(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-53;
}

/* Three blobs in 2-D, far apart, spread 0.1. */
static const float centers[3][2] = {{0, 0}, {10, 0}, {0, 10}};

static void blob_point(int b, float *x) {
    x[0] = centers[b][0] + (float)(0.2 * (unif() - 0.5));
    x[1] = centers[b][1] + (float)(0.2 * (unif() - 0.5));
}

static void assert_sane(const ch_kmeans_t *km) {
    char why[256] = "";
    if (!ch_kmeans_check(km, why, sizeof(why))) {
        fail_msg("invariant: %s", why);
    }
}

static ch_kmeans_t *make(size_t k, size_t warmup, double half_life_ms) {
    ch_kmeans_opts_t o;
    ch_kmeans_opts_default(&o, k, 2);
    o.warmup = warmup;
    o.max_batch = 64;
    o.log1p = false;
    o.half_life_ms = half_life_ms;
    o.stats_half_life_ms = INFINITY;
    o.seed = 5;
    ch_kmeans_t *km = NULL;
    assert_int_equal(ch_kmeans_new(&o, &km, NULL, 0), 0);
    return km;
}

/* Feed n batches of 64 points from the blobs in `which` (bitmask), taken in turn so
 * that the blobs stay balanced (the z-score then treats both axes alike); returns the
 * per-blob segment of the last batch (-1 if none seen). */
static void feed(ch_kmeans_t *km, int batches, unsigned which, int64_t *t_ms, int seg_of[3]) {
    float x[64 * 2];
    int blob[64];
    ch_kmeans_assign_t out[64];
    static int turn;
    for (int b = 0; b < batches; b++) {
        for (int i = 0; i < 64; i++) {
            do {
                blob[i] = turn++ % 3;
            } while (!(which & (1u << blob[i])));
            blob_point(blob[i], x + 2 * i);
        }
        *t_ms += 1000;
        assert_int_equal(ch_kmeans_update(km, x, 64, *t_ms, NULL, NULL, out), 0);
        for (int i = 0; i < 64; i++) {
            seg_of[blob[i]] = out[i].segment;
        }
    }
}

static void test_warmup_then_blobs_get_distinct_stable_ids(void **state) {
    (void)state;
    ch_kmeans_t *km = make(3, 256, INFINITY);
    int64_t t = 0;
    int seg[3] = {-1, -1, -1};
    feed(km, 3, 7, &t, seg); /* 192 < 256 points: still warming up */
    assert_false(ch_kmeans_ready(km));
    assert_int_equal(seg[0], -1);
    feed(km, 1, 7, &t, seg);
    assert_true(ch_kmeans_ready(km));
    assert_true(seg[0] >= 0 && seg[1] >= 0 && seg[2] >= 0);
    assert_true(seg[0] != seg[1] && seg[1] != seg[2] && seg[0] != seg[2]);
    int first[3] = {seg[0], seg[1], seg[2]};
    feed(km, 200, 7, &t, seg);
    assert_memory_equal(first, seg, sizeof(first)); /* ids never permute */
    for (int b = 0; b < 3; b++) {
        uint32_t gen;
        double w;
        ch_kmeans_centroid(km, (size_t)seg[b], &w, &gen);
        assert_int_equal(gen, 0); /* never re-seeded */
        assert_true(w > 1000);    /* no decay: every point of its blob counts */
    }
    assert_int_equal(ch_kmeans_reseeds(km), 0);
    assert_sane(km);
    ch_kmeans_free(km);
}

/* A row holding a value that is not finite (a float32 vector of a 1e39 amount holds
 * inf) is refused: it gets no segment, and neither the statistics nor any centroid
 * become NaN, while warming up or after; the finite rows of its batch are assigned. */
static void test_non_finite_rows_are_refused(void **state) {
    (void)state;
    ch_kmeans_t *km = make(3, 256, INFINITY);
    int64_t t = 0;
    int seg[3] = {-1, -1, -1};
    float x[4 * 2] = {0, 0, INFINITY, 1, 0, 0, 2, NAN};
    ch_kmeans_assign_t out[4];
    for (int i = 0; i < 3; i++) { /* during the warm-up */
        blob_point(i, x);
        blob_point(i, x + 4);
        assert_int_equal(ch_kmeans_update(km, x, 4, ++t, NULL, NULL, out), 0);
        assert_int_equal(out[1].segment, -1);
        assert_int_equal(out[3].segment, -1);
    }
    feed(km, 5, 7, &t, seg);
    assert_true(ch_kmeans_ready(km));
    int32_t prev[4] = {seg[0], 1, seg[1], 2};
    uint32_t gens[4] = {0, 0, 0, 0};
    blob_point(0, x);
    blob_point(1, x + 4);
    assert_int_equal(ch_kmeans_update(km, x, 4, ++t, prev, gens, out), 0);
    assert_int_equal(out[0].segment, seg[0]);
    assert_int_equal(out[2].segment, seg[1]);
    assert_int_equal(out[1].segment, -1);
    assert_int_equal(out[3].segment, -1);
    ch_kmeans_assign(km, x, 4, out);
    assert_int_equal(out[0].segment, seg[0]);
    assert_int_equal(out[1].segment, -1);
    assert_int_equal(out[3].segment, -1);
    assert_int_equal(ch_kmeans_refused(km), 8);
    for (size_t j = 0; j < 3; j++) {
        double w;
        const float *c = ch_kmeans_centroid(km, j, &w, NULL);
        assert_true(isfinite(c[0]) && isfinite(c[1]) && isfinite(w));
    }
    assert_sane(km);
    ch_kmeans_free(km);
}

static void test_starved_centroid_is_reseeded_with_new_generation(void **state) {
    (void)state;
    /* half-life 5 s of stream time, 1 s per batch: a centroid without points loses
     * half its weight every 5 batches and soon falls under 1% of the largest */
    ch_kmeans_t *km = make(3, 256, 5000);
    int64_t t = 0;
    int seg[3] = {-1, -1, -1};
    feed(km, 4, 7, &t, seg);
    int starved = seg[2];
    feed(km, 100, 3, &t, seg); /* blob 2 disappears */
    assert_true(ch_kmeans_reseeds(km) >= 1);
    uint32_t gen;
    double w;
    ch_kmeans_centroid(km, (size_t)starved, &w, &gen);
    assert_true(gen >= 1);
    ch_kmeans_free(km);
}

static void test_hysteresis_keeps_the_previous_segment_unless_clearly_closer(void **state) {
    (void)state;
    ch_kmeans_t *km = make(3, 256, INFINITY);
    int64_t t = 0;
    int seg[3];
    feed(km, 5, 7, &t, seg);
    /* A point on the segment between blob 0 and blob 1 (raw space), slightly nearer 1. */
    float x[2] = {5.05f, 0};
    int32_t prev = seg[0];
    uint32_t gen = 0;
    ch_kmeans_assign_t out;
    t += 1000;
    assert_int_equal(ch_kmeans_update(km, x, 1, t, &prev, &gen, &out), 0);
    assert_int_equal(out.segment, seg[0]); /* ~2% closer to blob 1: stays */
    assert_int_equal(out.previous, -1);
    x[0] = 6.5f; /* clearly closer to blob 1 */
    t += 1000;
    assert_int_equal(ch_kmeans_update(km, x, 1, t, &prev, &gen, &out), 0);
    assert_int_equal(out.segment, seg[1]);
    assert_int_equal(out.previous, seg[0]);
    /* a previous segment of an older generation is not sticky */
    uint32_t old_gen = 7;
    x[0] = 5.05f;
    t += 1000;
    assert_int_equal(ch_kmeans_update(km, x, 1, t, &prev, &old_gen, &out), 0);
    assert_int_equal(out.segment, seg[1]);
    ch_kmeans_free(km);
}

static void test_save_and_load_round_trip(void **state) {
    (void)state;
    char path[] = "/tmp/test_kmeans_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ch_kmeans_t *km = make(3, 256, INFINITY);
    int64_t t = 0;
    int seg[3];
    feed(km, 10, 7, &t, seg);
    assert_int_equal(ch_kmeans_save(km, path, NULL, 0), 0);

    ch_kmeans_t *back = make(3, 256, INFINITY);
    assert_int_equal(ch_kmeans_load(back, path, NULL, 0), 0);
    assert_true(ch_kmeans_ready(back));
    for (size_t j = 0; j < 3; j++) {
        double w1, w2;
        const float *a = ch_kmeans_centroid(km, j, &w1, NULL);
        const float *b = ch_kmeans_centroid(back, j, &w2, NULL);
        assert_double_equal(a[0], b[0], 1e-6);
        assert_double_equal(a[1], b[1], 1e-6);
        assert_double_equal(w1, w2, 1e-9 * w1);
    }
    /* the restored model assigns the blobs to the same ids */
    int seg2[3];
    feed(back, 1, 7, &t, seg2);
    assert_memory_equal(seg, seg2, sizeof(seg));

    char err[256];
    ch_kmeans_t *other = make(4, 256, INFINITY);
    assert_int_equal(ch_kmeans_load(other, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "k=3"));
    assert_false(ch_kmeans_ready(other));
    FILE *f = fopen(path, "w");
    fputs("cohortd-kmeans 1\nk 3\ndim 2\nlog1p 0\nready 1\npoints 5\nreseeds 0\nstream_ms 1\n"
          "stats_ms 1\nsw 1\nmean 0 0\nm2 0 0\nstd 1 1\ncentroid 0 0 1 0\n",
          f);
    fclose(f);
    ch_kmeans_t *fresh = make(3, 256, INFINITY);
    assert_int_equal(ch_kmeans_load(fresh, path, err, sizeof(err)), -EINVAL);
    assert_false(ch_kmeans_ready(fresh)); /* a damaged file changes nothing */
    unlink(path);
    assert_int_equal(ch_kmeans_load(fresh, path, NULL, 0), -ENOENT);
    ch_kmeans_free(km);
    ch_kmeans_free(back);
    ch_kmeans_free(other);
    ch_kmeans_free(fresh);
}

static void test_seed_from_a_population(void **state) {
    (void)state;
    ch_kmeans_opts_t o;
    ch_kmeans_opts_default(&o, 3, 2);
    o.warmup = 256;
    o.max_batch = 64;
    o.log1p = false;
    o.half_life_ms = INFINITY;
    o.stats_half_life_ms = INFINITY;
    o.seed_by_caller = true;
    ch_kmeans_t *km = NULL;
    assert_int_equal(ch_kmeans_new(&o, &km, NULL, 0), 0);
    int64_t t = 0;
    int seg[3] = {-1, -1, -1};
    feed(km, 4, 7, &t, seg); /* 256 points seen; nothing buffered, nothing seeded */
    assert_false(ch_kmeans_ready(km));
    assert_int_equal(seg[0], -1);
    assert_true(ch_kmeans_wants_seed(km, 1));
    /* two points per blob would not do: fewer rows than k are refused */
    float pop[90 * 2];
    assert_int_equal(ch_kmeans_seed(km, pop, 2, t), -EINVAL);
    for (int i = 0; i < 90; i++) {
        blob_point(i % 3, pop + 2 * i);
    }
    assert_int_equal(ch_kmeans_seed(km, pop, 90, t), 0);
    assert_true(ch_kmeans_ready(km));
    assert_false(ch_kmeans_wants_seed(km, 1));
    assert_int_equal(ch_kmeans_seed(km, pop, 90, t), -EINVAL); /* once */
    assert_sane(km);
    /* each blob's centre is one centroid (k-means++ over 3 far blobs, 10 tries) */
    for (int b = 0; b < 3; b++) {
        float z[2];
        ch_kmeans_transform(km, centers[b], 1, z);
        double best = INFINITY;
        for (size_t j = 0; j < 3; j++) {
            const float *c = ch_kmeans_centroid(km, j, NULL, NULL);
            double d2 = (c[0] - z[0]) * (c[0] - z[0]) + (c[1] - z[1]) * (c[1] - z[1]);
            best = d2 < best ? d2 : best;
        }
        assert_true(best < 0.01);
    }
    feed(km, 20, 7, &t, seg);
    assert_true(seg[0] >= 0 && seg[1] >= 0 && seg[2] >= 0);
    assert_true(seg[0] != seg[1] && seg[1] != seg[2] && seg[0] != seg[2]);
    ch_kmeans_free(km);
}

/* A model stuck in the optimum online updates cannot leave: two centroids share blob 0
 * and the third sits between blobs 1 and 2. Transform: identity (mean 0, variance 1,
 * with so much weight that the stream does not move it), so raw = transformed. */
static ch_kmeans_t *stuck_model(double half_life_ms) {
    char path[] = "/tmp/test_kmeans_stuck_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("cohortd-kmeans 1\nk 3\ndim 2\nlog1p 0\nready 1\npoints 5\nreseeds 0\n"
          "stream_ms 0\nstats_ms 0\nsw 1e15\nmean 0 0\nm2 1e15 1e15\nstd 1 1\n"
          "centroid 0 0 100 -0.03 0\ncentroid 1 0 100 0.03 0\ncentroid 2 0 200 5 5\n",
          f);
    fclose(f);
    ch_kmeans_opts_t o;
    ch_kmeans_opts_default(&o, 3, 2);
    o.warmup = 256;
    o.max_batch = 64;
    o.log1p = false;
    o.half_life_ms = half_life_ms;
    o.stats_half_life_ms = INFINITY;
    o.refresh_ms = 60000;
    ch_kmeans_t *km = NULL;
    assert_int_equal(ch_kmeans_new(&o, &km, NULL, 0), 0);
    assert_int_equal(ch_kmeans_load(km, path, NULL, 0), 0);
    unlink(path);
    return km;
}

/* n points, in turn from each blob in `which`, shifted by (dx, dy). */
static void population(float *x, size_t n, unsigned which, float dx, float dy) {
    int b = 0;
    for (size_t i = 0; i < n; i++, b++) {
        while (!(which & (1u << (b % 3)))) {
            b++;
        }
        blob_point(b % 3, x + 2 * i);
        x[2 * i] += dx;
        x[2 * i + 1] += dy;
    }
}

static double total_weight(const ch_kmeans_t *km, size_t k) {
    double sum = 0;
    for (size_t j = 0; j < k; j++) {
        double w;
        ch_kmeans_centroid(km, j, &w, NULL);
        sum += w;
    }
    return sum;
}

static void test_refresh_restarts_a_stuck_model(void **state) {
    (void)state;
    /* online steps alone leave the stuck model stuck: blobs 1 and 2 share a segment
     * however long the stream runs (so the refresh below has something to prove) */
    ch_kmeans_t *km = stuck_model(20000);
    int64_t t = 0;
    int seg[3];
    feed(km, 200, 7, &t, seg);
    assert_int_equal(seg[1], seg[2]);
    assert_int_not_equal(seg[0], seg[1]);
    ch_kmeans_free(km);

    km = stuck_model(20000);
    t = 0;
    feed(km, 1, 7, &t, seg);
    float pop[90 * 2];
    population(pop, 90, 7, 0, 0);
    /* Lloyd passes from the live centroids cannot leave the optimum either; a
     * k-means++ candidate (one per refresh) wins within a few refreshes */
    ch_kmeans_refresh_t info = {0};
    int tries = 0;
    while (!info.restarted && tries < 10) {
        t += 60000;
        assert_true(ch_kmeans_wants_refresh(km, t));
        assert_int_equal(ch_kmeans_refresh(km, pop, 90, t, &info), 0);
        assert_false(ch_kmeans_wants_refresh(km, t + 59999));
        assert_true(info.inertia_lloyd <= info.inertia_before * (1 + 1e-6));
        tries++;
    }
    assert_true(info.restarted);
    assert_int_equal(info.points, 90);
    assert_true(info.inertia_restart < 0.98 * info.inertia_lloyd);
    uint64_t restarts = 0;
    assert_int_equal(ch_kmeans_refreshes(km, &restarts), (uint64_t)tries);
    assert_int_equal(restarts, 1);
    assert_sane(km);
    feed(km, 20, 7, &t, seg);
    assert_true(seg[0] != seg[1] && seg[1] != seg[2] && seg[0] != seg[2]);
    /* ids follow the optimal matching: blob 0 keeps an id it had, with its
     * generation; the ids that took another group's place get a new generation */
    assert_true(seg[0] == 0 || seg[0] == 1);
    uint32_t gens = 0, g0;
    for (size_t j = 0; j < 3; j++) {
        uint32_t g;
        ch_kmeans_centroid(km, j, NULL, &g);
        gens += g;
    }
    ch_kmeans_centroid(km, (size_t)seg[0], NULL, &g0);
    assert_int_equal(g0, 0);
    assert_true(info.renewed >= 1);
    assert_int_equal(gens, info.renewed);
    /* settled: further refreshes keep the ids and generations */
    int first[3] = {seg[0], seg[1], seg[2]};
    for (int r = 0; r < 5; r++) {
        t += 60000;
        assert_int_equal(ch_kmeans_refresh(km, pop, 90, t, &info), 0);
        assert_false(info.restarted);
    }
    feed(km, 5, 7, &t, seg);
    assert_memory_equal(first, seg, sizeof(first));
    ch_kmeans_free(km);
}

static void test_refresh_follows_a_moved_population_at_once(void **state) {
    (void)state;
    /* no decay: the weights grow with every point, so online steps move the centroids
     * less and less (Sculley's rule) */
    ch_kmeans_t *km = make(3, 256, INFINITY);
    int64_t t = 0;
    int seg[3];
    feed(km, 40, 7, &t, seg);
    int before[3] = {seg[0], seg[1], seg[2]};
    double mass = total_weight(km, 3);
    float pop[300 * 2];
    population(pop, 300, 7, 1.0f, 0.5f); /* every blob moved by (1, 0.5) */
    ch_kmeans_refresh_t info;
    assert_int_equal(ch_kmeans_refresh(km, pop, 300, t, &info), 0);
    assert_false(info.restarted);
    assert_int_equal(info.renewed, 0);
    assert_true(info.inertia_lloyd < 0.5 * info.inertia_before);
    assert_sane(km);
    /* each centroid is its moved blob's centre, with the same id and generation */
    for (int b = 0; b < 3; b++) {
        float moved[2] = {centers[b][0] + 1.0f, centers[b][1] + 0.5f}, z[2];
        ch_kmeans_transform(km, moved, 1, z);
        uint32_t gen;
        const float *c = ch_kmeans_centroid(km, (size_t)before[b], NULL, &gen);
        assert_double_equal(c[0], z[0], 0.02);
        assert_double_equal(c[1], z[1], 0.02);
        assert_int_equal(gen, 0);
    }
    /* the decayed event mass is kept, shared by the population's counts */
    assert_double_equal(total_weight(km, 3), mass, 1e-9 * mass);
    for (size_t j = 0; j < 3; j++) {
        double w;
        ch_kmeans_centroid(km, j, &w, NULL);
        assert_double_equal(w, mass / 3, 1e-9 * mass);
    }
    ch_kmeans_free(km);
}

static void test_refresh_timing_and_arguments(void **state) {
    (void)state;
    ch_kmeans_opts_t o;
    ch_kmeans_opts_default(&o, 3, 2);
    o.warmup = 64;
    o.max_batch = 64;
    o.log1p = false;
    o.refresh_ms = 10000;
    ch_kmeans_t *km = NULL;
    assert_int_equal(ch_kmeans_new(&o, &km, NULL, 0), 0);
    float pop[30 * 2];
    population(pop, 30, 7, 0, 0);
    assert_false(ch_kmeans_wants_refresh(km, 1000000)); /* not seeded */
    assert_int_equal(ch_kmeans_refresh(km, pop, 30, 0, NULL), -EINVAL);
    int64_t t = 0;
    int seg[3];
    feed(km, 1, 7, &t, seg); /* warm-up ends at t = 1000 */
    assert_true(ch_kmeans_ready(km));
    assert_false(ch_kmeans_wants_refresh(km, 10999));
    assert_true(ch_kmeans_wants_refresh(km, 11000));
    assert_int_equal(ch_kmeans_refresh(km, pop, 2, 11000, NULL), -EINVAL); /* n < k */
    assert_int_equal(ch_kmeans_refresh(km, pop, 30, 11000, NULL), 0);
    assert_false(ch_kmeans_wants_refresh(km, 20999));
    assert_true(ch_kmeans_wants_refresh(km, 21000));

    /* restored: the refresh clock starts at the first batch */
    char path[] = "/tmp/test_kmeans_refresh_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(ch_kmeans_save(km, path, NULL, 0), 0);
    ch_kmeans_t *back = NULL;
    assert_int_equal(ch_kmeans_new(&o, &back, NULL, 0), 0);
    assert_int_equal(ch_kmeans_load(back, path, NULL, 0), 0);
    unlink(path);
    assert_false(ch_kmeans_wants_refresh(back, 1000000));
    t = 500000;
    feed(back, 1, 7, &t, seg);
    assert_false(ch_kmeans_wants_refresh(back, t + 9999));
    assert_true(ch_kmeans_wants_refresh(back, t + 10000));
    ch_kmeans_free(back);

    o.refresh_ms = 0; /* never */
    ch_kmeans_t *never = NULL;
    assert_int_equal(ch_kmeans_new(&o, &never, NULL, 0), 0);
    t = 0;
    feed(never, 1, 7, &t, seg);
    assert_true(ch_kmeans_ready(never));
    assert_false(ch_kmeans_wants_refresh(never, INT64_MAX / 2));
    ch_kmeans_free(never);
    o.refresh_ms = -1;
    assert_int_equal(ch_kmeans_new(&o, &never, NULL, 0), -EINVAL);
    ch_kmeans_free(km);
}

static void test_bad_arguments(void **state) {
    (void)state;
    ch_kmeans_opts_t o;
    ch_kmeans_t *km = NULL;
    char err[128];
    ch_kmeans_opts_default(&o, 0, 2);
    assert_int_equal(ch_kmeans_new(&o, &km, err, sizeof(err)), -EINVAL);
    ch_kmeans_opts_default(&o, 8, 2);
    o.warmup = 4;
    assert_int_equal(ch_kmeans_new(&o, &km, err, sizeof(err)), -EINVAL);
    assert_null(km);
    km = make(2, 16, INFINITY);
    float x[2] = {0, 0};
    ch_kmeans_assign_t out;
    assert_int_equal(ch_kmeans_update(km, x, 0, 0, NULL, NULL, &out), -EINVAL);
    assert_int_equal(ch_kmeans_update(km, x, 65, 0, NULL, NULL, &out), -EINVAL);
    ch_kmeans_free(km);
    assert_null(ch_kmeans_free(NULL));
}

/* A seed_by_caller segmenter for 2-D points; with `fed`, it has seen 256 points of the
 * 3 blobs (transform statistics learned), else it maps points unchanged. */
static ch_kmeans_t *make_caller_seeded(size_t k, bool fed) {
    ch_kmeans_opts_t o;
    ch_kmeans_opts_default(&o, k, 2);
    o.warmup = 256;
    o.max_batch = 64;
    o.log1p = false;
    o.half_life_ms = INFINITY;
    o.stats_half_life_ms = INFINITY;
    o.seed_by_caller = true;
    ch_kmeans_t *km = NULL;
    assert_int_equal(ch_kmeans_new(&o, &km, NULL, 0), 0);
    int64_t t = 0;
    int seg[3];
    if (fed) {
        feed(km, 4, 7, &t, seg);
    }
    return km;
}

/* n rows: blob i % 3 plus a ring of noise, so Lloyd needs several passes. */
static float *population_rows(size_t n) {
    float *x = malloc(n * 2 * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) {
        blob_point((int)(i % 3), x + 2 * i);
        x[2 * i] += (float)(4 * (unif() - 0.5));
        x[2 * i + 1] += (float)(4 * (unif() - 0.5));
    }
    return x;
}

/* Run a fit in steps of `budget` rows; returns the steps it took. */
static size_t fit_in_steps(ch_kmeans_t *km, const float *x, size_t n, size_t budget,
                           ch_kmeans_refresh_t *info) {
    ch_kmeans_fit_t *f = NULL;
    assert_int_equal(ch_kmeans_fit_new(km, n, &f), 0);
    assert_int_equal(ch_kmeans_fit_add(f, x, n / 2), 0);
    assert_int_equal(ch_kmeans_fit_add(f, x + (n / 2) * 2, n - n / 2), 0);
    assert_int_equal(ch_kmeans_fit_add(f, x, 1), -ENOSPC);
    assert_int_equal(ch_kmeans_fit_rows(f), n);
    size_t steps = 0;
    int r;
    while ((r = ch_kmeans_fit_step(f, budget)) == 1) {
        steps++;
    }
    assert_int_equal(r, 0);
    assert_int_equal(ch_kmeans_fit_add(f, x, 1), -EINVAL); /* stepping has started */
    assert_int_equal(ch_kmeans_fit_adopt(f, 1000, info), 0);
    assert_int_equal(ch_kmeans_fit_adopt(f, 1000, info), -EINVAL); /* once */
    ch_kmeans_fit_free(f);
    return steps + 1;
}

/* A fit cut into one-block slices gives the same centroids, bit for bit, as one done at
 * once; so does a refresh after it. */
static void test_fit_in_slices_equals_fit_at_once(void **state) {
    (void)state;
    size_t n = 5000;
    float *x = population_rows(n);
    ch_kmeans_t *a = make_caller_seeded(4, false), *b = make_caller_seeded(4, false);
    ch_kmeans_refresh_t ia, ib;
    size_t steps_a = fit_in_steps(a, x, n, 1, &ia);
    size_t steps_b = fit_in_steps(b, x, n, SIZE_MAX, &ib);
    assert_true(steps_a > 100); /* many passes of 5 blocks each */
    assert_int_equal(steps_b, 1);
    assert_true(ch_kmeans_ready(a) && ch_kmeans_ready(b));
    assert_true(ia.inertia_restart == ib.inertia_restart);
    for (size_t j = 0; j < 4; j++) {
        assert_memory_equal(ch_kmeans_centroid(a, j, NULL, NULL),
                            ch_kmeans_centroid(b, j, NULL, NULL), 2 * sizeof(float));
    }
    /* every centroid holds rows: none left empty */
    ch_kmeans_assign_t out[64];
    size_t count[4] = {0};
    for (size_t i = 0; i + 64 <= n; i += 64) {
        ch_kmeans_assign(a, x + 2 * i, 64, out);
        for (size_t r = 0; r < 64; r++) {
            assert_true(out[r].segment >= 0 && out[r].segment < 4);
            count[out[r].segment]++;
        }
    }
    for (size_t j = 0; j < 4; j++) {
        assert_true(count[j] > 0);
    }
    /* a refresh (Lloyd from live + k-means++) in slices equals one at once too */
    fit_in_steps(a, x, n, 1024, &ia);
    fit_in_steps(b, x, n, SIZE_MAX, &ib);
    for (size_t j = 0; j < 4; j++) {
        assert_memory_equal(ch_kmeans_centroid(a, j, NULL, NULL),
                            ch_kmeans_centroid(b, j, NULL, NULL), 2 * sizeof(float));
    }
    assert_sane(a);
    ch_kmeans_free(a);
    ch_kmeans_free(b);
    free(x);
}

/* Refreshing an unchanged population changes nothing: no restart, no new generation,
 * the same centroids, and every row keeps its segment. */
static void test_refresh_of_an_unchanged_population_keeps_ids(void **state) {
    (void)state;
    size_t n = 3000;
    float *x = population_rows(n);
    ch_kmeans_t *km = make_caller_seeded(5, true);
    assert_int_equal(ch_kmeans_seed(km, x, n, 1000), 0);
    ch_kmeans_refresh_t info;
    assert_int_equal(ch_kmeans_refresh(km, x, n, 2000, &info), 0); /* to a fixpoint */
    float before[5 * 2];
    uint32_t gen[5];
    for (size_t j = 0; j < 5; j++) {
        memcpy(before + 2 * j, ch_kmeans_centroid(km, j, NULL, &gen[j]), 2 * sizeof(float));
    }
    for (int round = 0; round < 3; round++) {
        assert_int_equal(ch_kmeans_refresh(km, x, n, 3000 + round, &info), 0);
        assert_false(info.restarted);
        assert_int_equal(info.renewed, 0);
        assert_true(info.inertia_lloyd == info.inertia_before); /* not one row moved */
        for (size_t j = 0; j < 5; j++) {
            uint32_t g;
            assert_memory_equal(ch_kmeans_centroid(km, j, NULL, &g), before + 2 * j,
                                2 * sizeof(float));
            assert_int_equal(g, gen[j]);
        }
    }
    uint64_t restarts = 0;
    assert_int_equal(ch_kmeans_refreshes(km, &restarts), 4);
    assert_sane(km);
    ch_kmeans_free(km);
    free(x);
}

/* Shared segments: a model written by one instance and read by another is the same model
 * bit for bit; a following model never moves; statistics of a population cut into parts
 * add up to the whole's; Lloyd steps made of them lower the inertia. */
static void test_shared_model_write_read_follow_and_lloyd_from_parts(void **state) {
    (void)state;
    size_t n = 3000, k = 5, d = 2;
    float *x = population_rows(n);
    ch_kmeans_t *a = make_caller_seeded(k, true), *b = make_caller_seeded(k, false);
    assert_int_equal(ch_kmeans_seed(a, x, n, 1000), 0);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(ch_kmeans_write(a, &buf, &len), 0);
    char why[256];
    assert_int_equal(ch_kmeans_read(b, buf, len, why, sizeof(why)), 0);
    assert_true(ch_kmeans_ready(b));
    for (size_t j = 0; j < k; j++) {
        uint32_t ga, gb;
        double wa, wb;
        assert_memory_equal(ch_kmeans_centroid(a, j, &wa, &ga), ch_kmeans_centroid(b, j, &wb, &gb),
                            d * sizeof(float));
        assert_true(wa == wb && ga == gb);
    }
    ch_kmeans_assign_t ra[64], rb[64];
    for (size_t i = 0; i + 64 <= n; i += 64) {
        ch_kmeans_assign(a, x + d * i, 64, ra);
        ch_kmeans_assign(b, x + d * i, 64, rb);
        for (size_t r = 0; r < 64; r++) {
            assert_int_equal(ra[r].segment, rb[r].segment);
            assert_true(ra[r].distance == rb[r].distance);
        }
    }
    /* another shape, or damaged text: refused, the model unchanged */
    ch_kmeans_t *other = make_caller_seeded(k + 1, false);
    assert_int_equal(ch_kmeans_read(other, buf, len, why, sizeof(why)), -EINVAL);
    assert_false(ch_kmeans_ready(other));
    assert_int_equal(ch_kmeans_read(b, buf, len / 2, why, sizeof(why)), -EINVAL);
    assert_int_equal(ch_kmeans_read(b, "", 0, why, sizeof(why)), -EINVAL);
    free(buf);

    /* following: a batch far from every centroid moves neither centroids nor transform */
    float before[5 * 2], z0[2], z1[2], far[64 * 2];
    for (size_t j = 0; j < k; j++) {
        memcpy(before + d * j, ch_kmeans_centroid(b, j, NULL, NULL), d * sizeof(float));
    }
    ch_kmeans_transform(b, x, 1, z0);
    for (size_t i = 0; i < 64; i++) {
        far[2 * i] = 50 + (float)unif();
        far[2 * i + 1] = -50;
    }
    ch_kmeans_follow(b, true);
    assert_int_equal(ch_kmeans_update(b, far, 64, 5000, NULL, NULL, rb), 0);
    assert_int_equal(ch_kmeans_update(a, far, 64, 5000, NULL, NULL, ra), 0);
    for (size_t j = 0; j < k; j++) {
        assert_memory_equal(ch_kmeans_centroid(b, j, NULL, NULL), before + d * j,
                            d * sizeof(float));
        assert_true(rb[0].segment >= 0 && (size_t)rb[0].segment < k);
    }
    ch_kmeans_transform(b, x, 1, z1);
    assert_memory_equal(z0, z1, sizeof(z0));
    bool moved = false; /* the same batch moves a model that does not follow */
    for (size_t j = 0; j < k; j++) {
        moved = moved || memcmp(ch_kmeans_centroid(a, j, NULL, NULL), before + d * j,
                                d * sizeof(float)) != 0;
    }
    assert_true(moved);

    /* statistics in three parts add up to those of the whole */
    double sums[4][5 * 2];
    uint64_t counts[4][5];
    ch_kmeans_sums_t acc[4];
    int32_t *near = malloc(n * sizeof(int32_t)), *near_all = malloc(n * sizeof(int32_t));
    assert_true(near && near_all);
    for (size_t i = 0; i < n; i++) {
        near[i] = near_all[i] = -1;
    }
    memset(sums, 0, sizeof(sums));
    memset(counts, 0, sizeof(counts));
    for (int q = 0; q < 4; q++) {
        acc[q] = (ch_kmeans_sums_t){sums[q], counts[q], 0, 0, 0};
    }
    size_t cut[4] = {0, 1000, 2100, n};
    for (int q = 0; q < 3; q++) {
        assert_int_equal(
            ch_kmeans_accumulate(b, x + d * cut[q], cut[q + 1] - cut[q], near + cut[q], &acc[q]),
            0);
    }
    assert_int_equal(ch_kmeans_accumulate(b, x, n, near_all, &acc[3]), 0);
    assert_int_equal(acc[3].rows, n);
    assert_int_equal(acc[3].changed, n); /* every row had no centroid before */
    double inertia = acc[0].inertia + acc[1].inertia + acc[2].inertia;
    assert_true(fabs(inertia - acc[3].inertia) <= 1e-9 * acc[3].inertia);
    for (size_t j = 0; j < k; j++) {
        assert_int_equal(counts[0][j] + counts[1][j] + counts[2][j], counts[3][j]);
        for (size_t t = 0; t < d; t++) {
            double part = sums[0][j * d + t] + sums[1][j * d + t] + sums[2][j * d + t];
            assert_true(fabs(part - sums[3][j * d + t]) <= 1e-9 * (1 + fabs(sums[3][j * d + t])));
        }
    }
    assert_memory_equal(near, near_all, n * sizeof(int32_t));

    /* Lloyd steps from the statistics: the inertia never rises; at the fixpoint no row
     * changes centroid */
    double last = acc[3].inertia;
    for (int step = 0; step < 100; step++) {
        float c[5 * 2];
        double w[5];
        for (size_t j = 0; j < k; j++) {
            for (size_t t = 0; t < d; t++) {
                c[j * d + t] = counts[3][j] ? (float)(sums[3][j * d + t] / (double)counts[3][j])
                                            : ch_kmeans_centroid(b, j, NULL, NULL)[t];
            }
            w[j] = (double)counts[3][j];
        }
        assert_int_equal(ch_kmeans_set_centroids(b, c, w), 0);
        memset(sums[3], 0, sizeof(sums[3]));
        memset(counts[3], 0, sizeof(counts[3]));
        acc[3] = (ch_kmeans_sums_t){sums[3], counts[3], 0, 0, 0};
        assert_int_equal(ch_kmeans_accumulate(b, x, n, near_all, &acc[3]), 0);
        assert_true(acc[3].inertia <= last * (1 + 1e-6));
        last = acc[3].inertia;
        if (acc[3].changed == 0) {
            break;
        }
    }
    assert_int_equal(acc[3].changed, 0);
    /* new transform statistics from rows: the centroids stay where they are in
     * feature units; the rows' mean maps to 0 and their spread to 1 */
    float fu[5][2], fu2[2], zm[2], mrow[2] = {0, 0};
    double m[2] = {0, 0}, v[2] = {0, 0};
    for (size_t j = 0; j < k; j++) {
        ch_kmeans_untransform(b, ch_kmeans_centroid(b, j, NULL, NULL), fu[j]);
    }
    size_t half = n / 2;
    for (size_t i = 0; i < half; i++) {
        for (size_t t = 0; t < d; t++) {
            m[t] += x[d * i + t] / (double)half;
        }
    }
    for (size_t i = 0; i < half; i++) {
        for (size_t t = 0; t < d; t++) {
            v[t] += (x[d * i + t] - m[t]) * (x[d * i + t] - m[t]) / (double)half;
        }
    }
    assert_int_equal(ch_kmeans_restat(b, x, half), 0);
    for (size_t j = 0; j < k; j++) {
        ch_kmeans_untransform(b, ch_kmeans_centroid(b, j, NULL, NULL), fu2);
        for (size_t t = 0; t < d; t++) {
            assert_true(fabsf(fu2[t] - fu[j][t]) <= 1e-4f * (1 + fabsf(fu[j][t])));
        }
    }
    for (size_t t = 0; t < d; t++) {
        mrow[t] = (float)m[t];
    }
    ch_kmeans_transform(b, mrow, 1, zm);
    float one[2] = {(float)(m[0] + sqrt(v[0])), (float)(m[1] + sqrt(v[1]))}, z1s[2];
    ch_kmeans_transform(b, one, 1, z1s);
    for (size_t t = 0; t < d; t++) {
        assert_true(fabsf(zm[t]) < 1e-5f);
        assert_true(fabsf(z1s[t] - 1) < 1e-4f);
    }
    assert_int_equal(ch_kmeans_restat(b, x, 0), -EINVAL);
    float bad[5 * 2] = {NAN};
    double w1[5] = {1, 1, 1, 1, 1};
    assert_int_equal(ch_kmeans_set_centroids(b, bad, w1), -EINVAL);
    assert_int_equal(ch_kmeans_set_centroids(other, before, w1), -EINVAL); /* not ready */
    assert_sane(b);
    free(near);
    free(near_all);
    ch_kmeans_free(a);
    ch_kmeans_free(b);
    ch_kmeans_free(other);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_warmup_then_blobs_get_distinct_stable_ids),
        cmocka_unit_test(test_non_finite_rows_are_refused),
        cmocka_unit_test(test_starved_centroid_is_reseeded_with_new_generation),
        cmocka_unit_test(test_hysteresis_keeps_the_previous_segment_unless_clearly_closer),
        cmocka_unit_test(test_save_and_load_round_trip),
        cmocka_unit_test(test_seed_from_a_population),
        cmocka_unit_test(test_refresh_restarts_a_stuck_model),
        cmocka_unit_test(test_refresh_follows_a_moved_population_at_once),
        cmocka_unit_test(test_refresh_timing_and_arguments),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_fit_in_slices_equals_fit_at_once),
        cmocka_unit_test(test_refresh_of_an_unchanged_population_keeps_ids),
        cmocka_unit_test(test_shared_model_write_read_follow_and_lloyd_from_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
