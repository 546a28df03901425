/* JSON writer tests: escaping, UTF-8 repair, exact number round trips, and the
 * profile/risk objects written out by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ch/json.h"

static void assert_buf(const ch_buf_t *b, const char *want) {
    char *got = strndup((const char *)b->data, b->len);
    assert_string_equal(got, want);
    free(got);
}

static void check_string(const char *in, size_t n, const char *want) {
    ch_buf_t b;
    ch_buf_init(&b);
    assert_int_equal(ch_json_string(&b, in, n), 0);
    assert_buf(&b, want);
    ch_buf_done(&b);
}

static void test_string_escapes(void **st) {
    (void)st;
    check_string("plain", 5, "\"plain\"");
    check_string("", 0, "\"\"");
    check_string("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    check_string("tab\tnl\n\x01", 8, "\"tab\\u0009nl\\u000a\\u0001\"");
    check_string("nul\0x", 5, "\"nul\\u0000x\"");
    /* valid UTF-8 (2, 3 and 4 bytes) passes through */
    check_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14,
                 "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    /* invalid: lone continuation, truncated sequence, overlong '/', surrogate, > U+10FFFF */
    check_string("a\x80z", 3, "\"a\xef\xbf\xbdz\"");
    check_string("\xe2\x82", 2, "\"\xef\xbf\xbd\xef\xbf\xbd\"");
    check_string("\xc0\xaf", 2, "\"\xef\xbf\xbd\xef\xbf\xbd\"");
    check_string("\xed\xa0\x80", 3, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    check_string("\xf4\x90\x80\x80", 4,
                 "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
}

static void test_numbers_round_trip(void **st) {
    (void)st;
    ch_buf_t b;
    ch_buf_init(&b);
    srand(7);
    for (int i = 0; i < 100000; i++) {
        uint32_t bits = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
        float f;
        memcpy(&f, &bits, 4);
        b.len = 0;
        assert_int_equal(ch_json_float(&b, f), 0);
        char *txt = strndup((const char *)b.data, b.len);
        if (isfinite(f)) {
            float back = strtof(txt, NULL);
            assert_memory_equal(&back, &f, 4); /* bit-exact, including -0 */
        } else {
            assert_string_equal(txt, "null");
        }
        free(txt);
    }
    double d = 0.1 + 0.2;
    b.len = 0;
    assert_int_equal(ch_json_double(&b, d), 0);
    assert_buf(&b, "0.30000000000000004");
    b.len = 0;
    assert_int_equal(ch_json_double(&b, NAN), 0);
    assert_buf(&b, "null");
    ch_buf_done(&b);
}

/* Floats are written as printf's "%.9g" writes them, byte for byte, whichever path
 * writes them: random bit patterns, then every magnitude of the fast path densely,
 * values next to a rounding half, and powers of ten. */
static void check_as_printf(float f) {
    ch_buf_t b;
    ch_buf_init(&b);
    assert_int_equal(ch_json_float(&b, f), 0);
    char want[64];
    if (isfinite(f)) {
        snprintf(want, sizeof(want), "%.9g", (double)f);
    } else {
        snprintf(want, sizeof(want), "null");
    }
    if (b.len != strlen(want) || memcmp(b.data, want, b.len) != 0) {
        fail_msg("%a: wrote '%.*s', printf writes '%s'", (double)f, (int)b.len,
                 (const char *)b.data, want);
    }
    ch_buf_done(&b);
}

static void test_float_text_as_printf(void **st) {
    (void)st;
    srand(11);
    for (int i = 0; i < 300000; i++) {
        uint32_t bits = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
        float f;
        memcpy(&f, &bits, 4);
        check_as_printf(f);
    }
    for (int i = 0; i < 1000000; i++) { /* exponents of 1e-5 .. 2e9: the fast path */
        uint32_t bits = (uint32_t)(110 + rand() % 45) << 23 | ((uint32_t)rand() & 0x7fffff);
        float f;
        memcpy(&f, &bits, 4);
        check_as_printf(i & 1 ? -f : f);
    }
    for (int e = -6; e <= 10; e++) {
        float p = (float)pow(10, e);
        check_as_printf(p);
        check_as_printf(nextafterf(p, 0));
        check_as_printf(nextafterf(p, INFINITY));
        check_as_printf(p * 0.5f);
        check_as_printf(999999999.0f * (float)pow(10, e - 8));
    }
    check_as_printf(0.0f);
    check_as_printf(-0.0f);
    check_as_printf(0.2f);
    check_as_printf(35.79f);
    check_as_printf(1e7f);
    check_as_printf(123456789.0f);
}

static void test_profile_and_risk_objects(void **st) {
    (void)st;
    ch_buf_t b;
    ch_buf_init(&b);
    const float feats[] = {1.0f, 0.5f, -2.25f};
    ch_profile_t p = {.user_id = "u\"1",
                      .user_id_len = 3,
                      .event_id = "e-9",
                      .event_id_len = 3,
                      .ts_ms = 1700000000123LL,
                      .has_segment = true,
                      .segment = 3,
                      .segment_generation = 2,
                      .segment_distance = 0.125f,
                      .previous_segment = 1,
                      .features = feats,
                      .n_features = 3,
                      .model_version = "abc"};
    assert_int_equal(ch_json_encode_profile(&b, &p), 0);
    assert_buf(&b, "{\"user_id\":\"u\\\"1\",\"event_id\":\"e-9\",\"ts\":1700000000123,"
                   "\"segment\":3,\"segment_generation\":2,\"segment_distance\":0.125,"
                   "\"previous_segment\":1,\"features\":[1,0.5,-2.25],\"model_version\":\"abc\"}");
    /* no segment yet, no triggering event, no model: nulls; the buffer is replaced */
    p.has_segment = false;
    p.event_id = NULL;
    p.model_version = NULL;
    p.n_features = 0;
    assert_int_equal(ch_json_encode_profile(&b, &p), 0);
    assert_buf(&b, "{\"user_id\":\"u\\\"1\",\"event_id\":null,\"ts\":1700000000123,"
                   "\"segment\":null,\"segment_generation\":null,\"segment_distance\":null,"
                   "\"previous_segment\":null,\"features\":[],\"model_version\":null}");
    /* version 2: tags, heaviest first; a tag without values is an empty array */
    const char *const vals[] = {"books", "toy\"s"};
    const size_t lens[] = {5, 5};
    const ch_tag_values_t tags[] = {{"cats", vals, lens, 2}, {"seen", vals, lens, 0}};
    p.with_tags = true;
    p.tags = tags;
    p.n_tags = 2;
    assert_int_equal(ch_json_encode_profile(&b, &p), 0);
    assert_buf(&b, "{\"user_id\":\"u\\\"1\",\"event_id\":null,\"ts\":1700000000123,"
                   "\"segment\":null,\"segment_generation\":null,\"segment_distance\":null,"
                   "\"previous_segment\":null,\"features\":[],\"model_version\":null,"
                   "\"tags\":{\"cats\":[\"books\",\"toy\\\"s\"],\"seen\":[]}}");
    p.with_tags = false;

    const ch_reason_t reasons[] = {{"amt_sum_1d", 2.5f}, {"n_tx_1h", 0.75f}};
    ch_risk_t k = {.user_id = "u2",
                   .user_id_len = 2,
                   .event_id = "e",
                   .event_id_len = 1,
                   .ts_ms = 5,
                   .score = 0.875f,
                   .alert = true,
                   .threshold = 0.5f,
                   .reasons = reasons,
                   .n_reasons = 2,
                   .model_version = "v1"};
    assert_int_equal(ch_json_encode_risk(&b, &k), 0);
    assert_buf(&b, "{\"user_id\":\"u2\",\"event_id\":\"e\",\"ts\":5,\"score\":0.875,"
                   "\"alert\":true,\"threshold\":0.5,\"reasons\":[{\"feature\":\"amt_sum_1d\","
                   "\"contribution\":2.5},{\"feature\":\"n_tx_1h\",\"contribution\":0.75}],"
                   "\"model_version\":\"v1\"}");
    k.alert = false;
    k.n_reasons = 0;
    assert_int_equal(ch_json_encode_risk(&b, &k), 0);
    assert_buf(&b, "{\"user_id\":\"u2\",\"event_id\":\"e\",\"ts\":5,\"score\":0.875,"
                   "\"alert\":false,\"threshold\":0.5,\"reasons\":[],\"model_version\":\"v1\"}");
    /* risk_update_v2: the challenger's score, or null while none is loaded */
    k.with_challenger = true;
    assert_int_equal(ch_json_encode_risk(&b, &k), 0);
    assert_buf(&b, "{\"user_id\":\"u2\",\"event_id\":\"e\",\"ts\":5,\"score\":0.875,"
                   "\"alert\":false,\"threshold\":0.5,\"reasons\":[],\"model_version\":\"v1\","
                   "\"challenger\":null}");
    k.has_challenger = k.challenger_alert = true;
    k.challenger_score = 0.625f;
    k.challenger_version = "lr\"2";
    assert_int_equal(ch_json_encode_risk(&b, &k), 0);
    assert_buf(&b,
               "{\"user_id\":\"u2\",\"event_id\":\"e\",\"ts\":5,\"score\":0.875,"
               "\"alert\":false,\"threshold\":0.5,\"reasons\":[],\"model_version\":\"v1\","
               "\"challenger\":{\"score\":0.625,\"alert\":true,\"model_version\":\"lr\\\"2\"}}");
    ch_buf_done(&b);
}

/* ch_buf_printf has no length limit: the metrics page prints escaped paths with it. */
static void test_segment_object(void **st) {
    (void)st;
    ch_buf_t b;
    ch_buf_init(&b);
    const char *names[] = {"n", "amt"};
    const float c[] = {0.5f, -1.0f}, means[] = {3.0f, 12.25f};
    const ch_trend_t items[] = {{"sku\"1xx", 5, 2.5}, {"b", 1, 0.75}};
    ch_segment_rec_t s = {.segment = 4,
                          .generation = 1,
                          .ts_ms = 1700000000000LL,
                          .users = 42,
                          .weight = 10.5,
                          .feature_names = names,
                          .centroid = c,
                          .feature_means = means,
                          .n_features = 2,
                          .items = items,
                          .n_items = 2};
    assert_int_equal(ch_json_encode_segment(&b, &s), 0);
    assert_buf(&b, "{\"segment\":4,\"generation\":1,\"ts\":1700000000000,\"users\":42,"
                   "\"weight\":10.5,\"feature_names\":[\"n\",\"amt\"],\"centroid\":[0.5,-1],"
                   "\"feature_means\":[3,12.25],\"trending_items\":[{\"value\":\"sku\\\"1\","
                   "\"weight\":2.5},{\"value\":\"b\",\"weight\":0.75}],"
                   "\"trending_categories\":[]}");
    ch_buf_done(&b);
}

static void test_buf_printf_any_length(void **st) {
    (void)st;
    ch_buf_t b;
    ch_buf_init(&b);
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ch_buf_printf(&b, "<%s>", "short"), 0);
    assert_int_equal(ch_buf_printf(&b, "[%s|%d]", big, 42), 0);
    assert_int_equal(b.len, 7 + 1 + 2999 + 4);
    assert_memory_equal(b.data, "<short>[", 8);
    assert_memory_equal(b.data + 8 + 2999, "|42]", 4);
    for (size_t i = 8; i < 8 + 2999; i++) {
        assert_int_equal(b.data[i], 'x');
    }
    ch_buf_done(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_string_escapes),
        cmocka_unit_test(test_numbers_round_trip),
        cmocka_unit_test(test_float_text_as_printf),
        cmocka_unit_test(test_profile_and_risk_objects),
        cmocka_unit_test(test_buf_printf_any_length),
        cmocka_unit_test(test_segment_object),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
