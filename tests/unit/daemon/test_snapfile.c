/*
 * test_snapfile.c - the local snapshot file: exact round trip, atomic replacement, and
 * every kind of damage or mismatch refused with the reason.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "snapfile.h"
#include "staterec.h"

#define SL 3 /* doubles of state per user */
#define REC (CH_STATEREC_HEADER + 8 * SL)

static char dir[64];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/ch-snapfile-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const ch_snaphdr_t hdr = {.partition = 2,
                                 .partitions = 8,
                                 .state_len = SL,
                                 .layout = 0x0123456789abcdefULL,
                                 .changelog_from = 4242,
                                 .identity = {0xc0, 0x40, 0x27, 1, 2, 3},
                                 .cluster = "cluster-A"};

/* A distinct record per user index. */
static void rec_of(int i, unsigned char *rec) {
    for (int k = 0; k < REC; k++) {
        rec[k] = (unsigned char)(i * 31 + k);
    }
}

static void write_users(const char *name, int n, int64_t first_offset) {
    ch_snapw_t *w = NULL;
    char err[256] = "";
    assert_int_equal(ch_snapw_open(dir, name, &hdr, &w, err, sizeof(err)), 0);
    unsigned char rec[REC];
    for (int i = 0; i < n; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "user-%d", i);
        rec_of(i, rec);
        assert_int_equal(ch_snapw_add(w, key, (size_t)kl, rec, first_offset + i), 0);
    }
    assert_int_equal(ch_snapw_users(w), (uint64_t)n);
    assert_int_equal(ch_snapw_max_offset(w), n ? first_offset + n - 1 : -1);
    assert_int_equal(ch_snapw_commit(w, err, sizeof(err)), 0);
}

static char path_buf[256];
static const char *path(const char *name) {
    snprintf(path_buf, sizeof(path_buf), "%s/%s", dir, name);
    return path_buf;
}

/* Read a whole snapshot. @returns ch_snapr_next()'s last result; *n users seen. */
static int read_all(const char *name, int *n) {
    ch_snapr_t *r = NULL;
    ch_snaphdr_t got;
    uint64_t users = 0;
    int64_t max_off = 0;
    char why[256] = "";
    int rc = ch_snapr_open(dir, name, &hdr, &r, &got, &users, &max_off, why, sizeof(why));
    if (rc < 0) {
        return rc;
    }
    *n = 0;
    const char *key;
    const unsigned char *rec;
    size_t kl, rl;
    while ((rc = ch_snapr_next(r, &key, &kl, &rec, &rl)) == 1) {
        (*n)++;
    }
    ch_snapr_close(r);
    return rc;
}

static void test_round_trip(void **state) {
    (void)state;
    write_users("a.snap", 1000, 100);
    ch_snapr_t *r = NULL;
    ch_snaphdr_t got;
    uint64_t users = 0;
    int64_t max_off = 0;
    char why[256] = "";
    assert_int_equal(
        ch_snapr_open(dir, "a.snap", &hdr, &r, &got, &users, &max_off, why, sizeof(why)), 0);
    assert_int_equal(got.changelog_from, 4242);
    assert_int_equal(got.partition, 2);
    assert_int_equal(users, 1000);
    assert_int_equal(max_off, 100 + 999);
    unsigned char want[REC];
    for (int i = 0; i < 1000; i++) {
        const char *key;
        const unsigned char *rec;
        size_t kl, rl;
        assert_int_equal(ch_snapr_next(r, &key, &kl, &rec, &rl), 1);
        char k[32];
        int n = snprintf(k, sizeof(k), "user-%d", i);
        assert_int_equal(kl, (size_t)n);
        assert_memory_equal(key, k, kl);
        assert_int_equal(rl, REC);
        rec_of(i, want);
        assert_memory_equal(rec, want, REC);
    }
    const char *key;
    const unsigned char *rec;
    size_t kl, rl;
    assert_int_equal(ch_snapr_next(r, &key, &kl, &rec, &rl), 0);
    ch_snapr_close(r);
    assert_int_equal(access(path("a.snap.tmp"), F_OK), -1); /* no temporary left */
}

static void test_empty_snapshot(void **state) {
    (void)state;
    write_users("e.snap", 0, 0);
    int n = -1;
    assert_int_equal(read_all("e.snap", &n), 0);
    assert_int_equal(n, 0);
}

static void test_missing(void **state) {
    (void)state;
    int n = 0;
    assert_int_equal(read_all("none.snap", &n), -ENOENT);
}

static void flip_byte(const char *name, long at) {
    FILE *f = fopen(path(name), "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, at, at < 0 ? SEEK_END : SEEK_SET), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, -1, SEEK_CUR), 0);
    fputc(c ^ 0x40, f);
    fclose(f);
}

static void test_damaged_entry_fails_checksum(void **state) {
    (void)state;
    write_users("d.snap", 50, 0);
    flip_byte("d.snap", 64 + 500); /* inside an entry's record */
    int n = 0;
    assert_int_equal(read_all("d.snap", &n), -EINVAL);
    write_users("d2.snap", 50, 0);
    flip_byte("d2.snap", -40); /* the trailer's offset field, before the digest */
    assert_int_equal(read_all("d2.snap", &n), -EINVAL);
}

static void test_truncated_refused_at_open(void **state) {
    (void)state;
    write_users("t.snap", 50, 0);
    struct stat st;
    assert_int_equal(stat(path("t.snap"), &st), 0);
    assert_int_equal(truncate(path("t.snap"), st.st_size - 10), 0);
    int n = 0;
    assert_int_equal(read_all("t.snap", &n), -EINVAL);
    assert_int_equal(truncate(path("t.snap"), 20), 0);
    assert_int_equal(read_all("t.snap", &n), -EINVAL);
}

static void test_other_layout_or_partition_count(void **state) {
    (void)state;
    write_users("o.snap", 5, 0);
    ch_snaphdr_t want = hdr;
    ch_snapr_t *r = NULL;
    ch_snaphdr_t got;
    uint64_t users;
    int64_t max_off;
    char why[256] = "";
    want.partitions = 4;
    assert_int_equal(
        ch_snapr_open(dir, "o.snap", &want, &r, &got, &users, &max_off, why, sizeof(why)), -ESTALE);
    assert_non_null(strstr(why, "8 partitions"));
    want = hdr;
    want.layout ^= 1;
    assert_int_equal(
        ch_snapr_open(dir, "o.snap", &want, &r, &got, &users, &max_off, why, sizeof(why)), -ESTALE);
    assert_non_null(strstr(why, "feature layout"));
    want = hdr;
    want.partition = 3;
    assert_int_equal(
        ch_snapr_open(dir, "o.snap", &want, &r, &got, &users, &max_off, why, sizeof(why)), -EINVAL);
}

/* A snapshot of another cluster or other topics (another identity), or of version 1
 * (which named neither), is refused as stale, naming the cluster it was written for. */
static void test_other_cluster_or_version(void **state) {
    (void)state;
    write_users("c.snap", 5, 0);
    ch_snaphdr_t want = hdr;
    ch_snapr_t *r = NULL;
    ch_snaphdr_t got;
    uint64_t users;
    int64_t max_off;
    char why[256] = "";
    want.identity[31] ^= 1;
    snprintf(want.cluster, sizeof(want.cluster), "cluster-B");
    assert_int_equal(
        ch_snapr_open(dir, "c.snap", &want, &r, &got, &users, &max_off, why, sizeof(why)), -ESTALE);
    assert_non_null(strstr(why, "another cluster"));
    assert_non_null(strstr(why, "cluster-A"));
    assert_non_null(strstr(why, "cluster-B"));
    assert_int_equal(
        ch_snapr_open(dir, "c.snap", &hdr, &r, &got, &users, &max_off, why, sizeof(why)), 0);
    assert_string_equal(got.cluster, "cluster-A");
    ch_snapr_close(r);
    FILE *f = fopen(path("c.snap"), "r+b"); /* the version field, as version 1 wrote it */
    assert_non_null(f);
    assert_int_equal(fseek(f, 8, SEEK_SET), 0);
    fputc(1, f);
    fclose(f);
    assert_int_equal(
        ch_snapr_open(dir, "c.snap", &hdr, &r, &got, &users, &max_off, why, sizeof(why)), -ESTALE);
    assert_non_null(strstr(why, "version 1"));
}

static void test_abort_keeps_previous(void **state) {
    (void)state;
    write_users("p.snap", 7, 0);
    ch_snapw_t *w = NULL;
    char err[256] = "";
    assert_int_equal(ch_snapw_open(dir, "p.snap", &hdr, &w, err, sizeof(err)), 0);
    unsigned char rec[REC];
    rec_of(1, rec);
    assert_int_equal(ch_snapw_add(w, "x", 1, rec, 0), 0);
    assert_int_equal(access(path("p.snap.tmp"), F_OK), 0);
    ch_snapw_abort(w);
    assert_int_equal(access(path("p.snap.tmp"), F_OK), -1);
    int n = 0;
    assert_int_equal(read_all("p.snap", &n), 0);
    assert_int_equal(n, 7);
}

static void test_unwritable_dir_reported(void **state) {
    (void)state;
    ch_snapw_t *w = NULL;
    char err[256] = "";
    assert_int_equal(ch_snapw_open("/nonexistent-dir", "x.snap", &hdr, &w, err, sizeof(err)), -EIO);
    assert_non_null(strstr(err, "/nonexistent-dir/x.snap.tmp"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_empty_snapshot),
        cmocka_unit_test(test_missing),
        cmocka_unit_test(test_damaged_entry_fails_checksum),
        cmocka_unit_test(test_truncated_refused_at_open),
        cmocka_unit_test(test_other_layout_or_partition_count),
        cmocka_unit_test(test_other_cluster_or_version),
        cmocka_unit_test(test_abort_keeps_previous),
        cmocka_unit_test(test_unwritable_dir_reported),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
