/*
 * test_onnx.c - the ONNX loader never crashes on damaged files (every truncation and
 * random byte corruption of the shipped example models, under ASan), and reports
 * errors by code and message. Score parity with sklearn is tests/model/.
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

#include <cmocka.h>

#include "ch/onnx.h"

#define D 16

static unsigned char *slurp(const char *name, size_t *ret_len) {
    char path[1024];
    const char *src = getenv("CH_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s/conf/models/%s", src ? src : ".", name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *ret_len = (size_t)n;
    return buf;
}

static void score_ok(ch_onnx_t *m) {
    float x[4 * D], s[4];
    for (size_t i = 0; i < 4 * D; i++) {
        x[i] = (float)(i % 7);
    }
    assert_int_equal(ch_onnx_eval(m, x, 4, s), 0);
    for (int i = 0; i < 4; i++) {
        assert_true(s[i] >= 0 && s[i] <= 1);
    }
}

static void test_example_models_load_and_score(void **st) {
    (void)st;
    const char *names[] = {"risk_lr.onnx", "risk_mlp.onnx"};
    const char *versions[] = {"risk_lr-sparkov-1", "risk_mlp-sparkov-1"};
    for (int k = 0; k < 2; k++) {
        size_t len;
        unsigned char *buf = slurp(names[k], &len);
        ch_onnx_t *m = NULL;
        char err[256];
        assert_int_equal(ch_onnx_load_buffer(buf, len, names[k], D, NULL, 8, &m, err,
                                             sizeof(err)),
                         0);
        assert_string_equal(ch_onnx_version(m), versions[k]);
        assert_int_equal(ch_onnx_inputs(m), D);
        score_ok(m);
        float s[9], c[D];
        float x[9 * D] = {0};
        assert_int_equal(ch_onnx_eval(m, x, 0, s), -EINVAL);
        assert_int_equal(ch_onnx_eval(m, x, 9, s), -EINVAL); /* beyond max_batch */
        assert_int_equal(ch_onnx_contributions(m, 4, c), -EINVAL); /* last batch had 4 */
        assert_int_equal(ch_onnx_contributions(m, 3, c), 0);
        ch_onnx_free(m);
        /* wrong width */
        assert_int_equal(ch_onnx_load_buffer(buf, len, names[k], D + 1, NULL, 8, &m, err,
                                             sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "16 features; the config declares 17"));
        free(buf);
    }
    assert_null(ch_onnx_free(NULL));
}

static void test_truncations_and_corruptions_never_crash(void **st) {
    (void)st;
    size_t len;
    unsigned char *orig = slurp("risk_mlp.onnx", &len);
    unsigned char *buf = malloc(len);
    char err[256];
    size_t loaded = 0, refused = 0;
    for (size_t cut = 0; cut < len; cut++) {
        ch_onnx_t *m = NULL;
        err[0] = '\0';
        int r = ch_onnx_load_buffer(orig, cut, "cut", D, NULL, 4, &m, err, sizeof(err));
        if (r == 0) {
            score_ok(m);
            loaded++;
            ch_onnx_free(m);
        } else {
            assert_true(r == -EBADMSG || r == -EINVAL);
            assert_true(err[0] != '\0');
            refused++;
        }
    }
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(buf, orig, len);
        int flips = 1 + trial % 8;
        for (int f = 0; f < flips; f++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            buf[rng % len] ^= (unsigned char)(1u << (rng >> 40) % 8);
        }
        ch_onnx_t *m = NULL;
        int r = ch_onnx_load_buffer(buf, len, "flip", D, NULL, 4, &m, err, sizeof(err));
        if (r == 0) {
            float x[4 * D] = {0}, s[4], c[D];
            assert_int_equal(ch_onnx_eval(m, x, 4, s), 0); /* any value; no crash */
            assert_int_equal(ch_onnx_contributions(m, 0, c), 0);
            ch_onnx_free(m);
        } else {
            assert_true(r == -EBADMSG || r == -EINVAL);
        }
    }
    print_message("%zu truncations refused, %zu loaded (cut in trailing metadata)\n", refused,
                  loaded);
    assert_true(refused > len - 64);
    free(buf);
    free(orig);
}

static void test_file_errors(void **st) {
    (void)st;
    ch_onnx_t *m = NULL;
    char err[256];
    assert_int_equal(ch_onnx_load("/nonexistent/model.onnx", D, NULL, 4, &m, err, sizeof(err)),
                     -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/model.onnx"));
    assert_int_equal(ch_onnx_load("/tmp", D, NULL, 4, &m, err, sizeof(err)), -EIO);
    assert_null(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_models_load_and_score),
        cmocka_unit_test(test_truncations_and_corruptions_never_crash),
        cmocka_unit_test(test_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
