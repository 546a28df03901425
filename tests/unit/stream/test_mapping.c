/*
 * Mapping tests: ISO-8601 and unit conversions (expected values from Python's
 * datetime), and the Avro decoder following a mapping through a nullable nested
 * record, an enum type, an integer user id and a timestamp-micros logical type.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../ch_test.h"
#include "ch/codec.h"
#include "ch/json_in.h"
#include "ch/mapping.h"

static void test_iso8601(void **st) {
    (void)st;
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"2019-10-01", 1569888000000},
        {"2019-10-01 00:00:00 UTC", 1569888000000},
        {"2019-10-01T02:00:00.5+02:00", 1569888000500},
        {"2019-10-01T02:00:00.123456+0200", 1569888000123},
        {"2019-10-01T00:00", 1569888000000},
        {"2000-02-29T12:00:00-01:30", 951831000000},
        {"1969-12-31T23:59:59Z", -1000},
        {"2400-12-31T23:59:59z", 13601087999000},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t ms = -7;
        assert_int_equal(ch_iso8601_parse(good[i].s, strlen(good[i].s), &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    static const char *const bad[] = {"",
                                      "2019-02-29",
                                      "2019-13-01",
                                      "2019-10-01T25:00",
                                      "2019-10-01T00:00:00Zjunk",
                                      "20191001",
                                      "2019-10-01T00",
                                      "2019-10-01T00:00:00.",
                                      "2019-10-01T00:00:00+2",
                                      "yesterday"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms;
        assert_int_equal(ch_iso8601_parse(bad[i], strlen(bad[i]), &ms), -EINVAL);
    }
}

static void test_units(void **st) {
    (void)st;
    int64_t ms;
    assert_int_equal(ch_ts_from_int(1569888000, CH_TS_S, &ms), 0);
    assert_int_equal(ms, 1569888000000);
    assert_int_equal(ch_ts_from_int(1999, CH_TS_US, &ms), 0);
    assert_int_equal(ms, 1);
    assert_int_equal(ch_ts_from_int(-1, CH_TS_US, &ms), 0);
    assert_int_equal(ms, -1); /* toward minus infinity */
    assert_int_equal(ch_ts_from_int(INT64_MAX, CH_TS_S, &ms), -ERANGE);
    assert_int_equal(ch_ts_from_double(1.5, CH_TS_S, &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(ch_ts_from_double(1e300, CH_TS_MS, &ms), -ERANGE);
    assert_int_equal(ch_ts_from_double(NAN, CH_TS_MS, &ms), -ERANGE);
    assert_int_equal(ch_ts_from_text("1569888000", 10, CH_TS_S, &ms), 0);
    assert_int_equal(ms, 1569888000000);
    assert_int_equal(ch_ts_from_text("1569888000.5", 12, CH_TS_S, &ms), 0);
    assert_int_equal(ms, 1569888000500);
    assert_int_equal(ch_ts_from_text("2019-10-01", 10, CH_TS_US, &ms), 0); /* ISO */
    assert_int_equal(ms, 1569888000000);
    assert_int_equal(ch_ts_from_text("1569888000000", 13, CH_TS_AUTO, &ms), 0);
    assert_int_equal(ms, 1569888000000);
    assert_int_equal(ch_ts_from_text("123", 3, CH_TS_ISO8601, &ms), -EINVAL);
    assert_int_equal(ch_ts_from_text("soon", 4, CH_TS_MS, &ms), -EINVAL);
    assert_int_equal(ch_ts_from_text(" 12", 3, CH_TS_MS, &ms), -EINVAL);
}

static void test_paths(void **st) {
    (void)st;
    assert_true(ch_mapping_path_valid("customer.id", 11));
    assert_true(ch_mapping_path_valid("_a.b2", 5));
    assert_false(ch_mapping_path_valid("a..b", 4));
    assert_false(ch_mapping_path_valid(".a", 2));
    assert_false(ch_mapping_path_valid("a.", 2));
    assert_false(ch_mapping_path_valid("2a", 2));
    assert_false(ch_mapping_path_valid("a-b", 3));
    ch_mapping_t m;
    ch_mapping_default(&m);
    assert_int_equal(ch_mapping_add_field(&m, "qty"), 0);
    assert_int_equal(ch_mapping_add_field(&m, "price.unit"), 1);
    assert_int_equal(ch_mapping_add_field(&m, "qty"), 0);
    assert_int_equal(ch_mapping_add_field(&m, "user_id"), -EINVAL);
    /* text fields: their own indexes, never a role's or a numeric field's path */
    assert_int_equal(ch_mapping_add_text(&m, "channel"), 0);
    assert_int_equal(ch_mapping_add_text(&m, "shop.region"), 1);
    assert_int_equal(ch_mapping_add_text(&m, "channel"), 0);
    assert_int_equal(ch_mapping_add_text(&m, "qty"), -EINVAL);
    assert_int_equal(ch_mapping_add_text(&m, "type"), -EINVAL);
    assert_int_equal(ch_mapping_add_text(&m, "9x"), -EINVAL);
    assert_int_equal(ch_mapping_add_field(&m, "channel"), -EINVAL);
}

/* ---------------------------------------------------------------- Avro */

static const char *const SCHEMA =
    "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
    "{\"name\":\"uid\",\"type\":\"long\"},"
    "{\"name\":\"meta\",\"type\":[\"null\",{\"type\":\"record\",\"name\":\"M\",\"fields\":["
    "{\"name\":\"at\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-micros\"}},"
    "{\"name\":\"kind\",\"type\":{\"type\":\"enum\",\"name\":\"K\",\"symbols\":[\"A\",\"B\"]}}"
    "]}]},"
    "{\"name\":\"qty\",\"type\":[\"null\",\"int\"]},"
    "{\"name\":\"note\",\"type\":\"string\"}]}";

static size_t put_long(unsigned char *b, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (z >= 0x80) {
        b[n++] = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    b[n++] = (unsigned char)z;
    return n;
}

static ch_decoder_t *decoder(const char *path, ch_mapping_t *m, char *err, size_t errlen) {
    ch_decoder_t *d = NULL;
    int r = ch_decoder_new(NULL, path, CH_FRAMING_PLAIN, NULL, m, &d, err, errlen);
    return r == 0 ? d : NULL;
}

static void test_avro_mapping(void **st) {
    (void)st;
    char path[] = "/tmp/ch-test-mapping-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, SCHEMA, strlen(SCHEMA)), (ssize_t)strlen(SCHEMA));
    close(fd);
    ch_mapping_t m;
    ch_mapping_default(&m);
    strcpy(m.path[CH_ROLE_USER_ID], "uid");
    m.is_default[CH_ROLE_USER_ID] = false;
    strcpy(m.path[CH_ROLE_TS], "meta.at");
    m.is_default[CH_ROLE_TS] = false;
    strcpy(m.path[CH_ROLE_TYPE], "meta.kind");
    m.is_default[CH_ROLE_TYPE] = false;
    assert_int_equal(ch_mapping_add_field(&m, "qty"), 0);
    assert_int_equal(ch_mapping_add_text(&m, "note"), 0); /* a text field by name */
    char err[512] = "";
    ch_decoder_t *d = decoder(path, &m, err, sizeof(err));
    assert_non_null(d);

    unsigned char b[64];
    size_t n = 0;
    n += put_long(b + n, -42);              /* uid */
    n += put_long(b + n, 1);                /* meta: the record */
    n += put_long(b + n, 1569888000123456); /* at (micros) */
    n += put_long(b + n, 1);                /* kind B */
    n += put_long(b + n, 1);                /* qty: int */
    n += put_long(b + n, 5);
    n += put_long(b + n, 2); /* note */
    b[n++] = 'h';
    b[n++] = 'i';
    ch_event_view_t ev;
    assert_int_equal(ch_decoder_decode(d, b, n, &ev, err, sizeof(err)), 0);
    assert_int_equal(ev.user_id_len, 3);
    assert_memory_equal(ev.user_id, "-42", 3);
    assert_int_equal(ev.ts_ms, 1569888000123);
    assert_int_equal(ev.type_len, 1);
    assert_memory_equal(ev.type, "B", 1);
    assert_null(ev.event_id);
    assert_false(ev.has_amount);
    assert_int_equal(ev.fields_present, 1);
    assert_true(ev.fields[0] == 5.0);
    assert_int_equal(ev.text_lens[0], 2);
    assert_memory_equal(ev.texts[0], "hi", 2);

    n = 0; /* meta null: no event time */
    n += put_long(b + n, 7);
    n += put_long(b + n, 0);
    n += put_long(b + n, 0);
    n += put_long(b + n, 0);
    assert_int_equal(ch_decoder_decode(d, b, n, &ev, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "meta.at (ts) is null or absent"));
    ch_decoder_release(d);
    ch_decoder_free(d);

    /* the same text field from JSON, by path too */
    ch_json_decoder_t *jd = NULL;
    assert_int_equal(ch_json_decoder_new(&m, &jd), 0);
    const char *js = "{\"uid\": 5, \"meta\": {\"at\": 1000, \"kind\": \"A\"}, \"note\": \"yo\"}";
    assert_int_equal(ch_json_decoder_decode(jd, js, strlen(js), &ev, err, sizeof(err)), 0);
    assert_int_equal(ev.text_lens[0], 2);
    assert_memory_equal(ev.texts[0], "yo", 2);
    js = "{\"uid\": 5, \"meta\": {\"at\": 1000}}";
    assert_int_equal(ch_json_decoder_decode(jd, js, strlen(js), &ev, err, sizeof(err)), 0);
    assert_null(ev.texts[0]);
    js = "{\"uid\": 5, \"meta\": {\"at\": 1000}, \"note\": [1]}";
    assert_int_equal(ch_json_decoder_decode(jd, js, strlen(js), &ev, err, sizeof(err)), -EBADMSG);
    ch_json_decoder_free(jd);
    m.n_texts = 0;
    assert_int_equal(ch_mapping_add_text(&m, "meta.colour"), 0);
    assert_null(decoder(path, &m, err, sizeof(err)));
    assert_non_null(strstr(err, "no field 'meta.colour' (read as text"));
    m.n_texts = 0;

    /* a mapped path the schema lacks, or of the wrong type: refused at creation */
    strcpy(m.path[CH_ROLE_ITEM], "meta.sku");
    m.is_default[CH_ROLE_ITEM] = false;
    assert_null(decoder(path, &m, err, sizeof(err)));
    assert_non_null(strstr(err, "no field 'meta.sku' (input.map.item)"));
    strcpy(m.path[CH_ROLE_ITEM], "item");
    m.is_default[CH_ROLE_ITEM] = true;
    assert_int_equal(ch_mapping_add_field(&m, "note"), 1);
    assert_null(decoder(path, &m, err, sizeof(err)));
    assert_non_null(strstr(err, "'note'"));
    m.n_fields = 1;
    m.ts_unit = CH_TS_ISO8601;
    assert_null(decoder(path, &m, err, sizeof(err)));
    assert_non_null(strstr(err, "not an ISO-8601 string"));
    unlink(path);
}

/* The fuzz seeds of fuzz_avro's mapped decoder decode (so the fuzzer starts deep):
 * a union time in micros and as ISO-8601 text, an integer and a string sku. */
static void test_foreign_seeds(void **st) {
    (void)st;
    const char *src = getenv("CH_SOURCE_DIR") ? getenv("CH_SOURCE_DIR") : ".";
    char schema[1024], seed[1024];
    snprintf(schema, sizeof(schema), "%s/tests/data/foreign/order.avsc", src);
    ch_mapping_t m;
    ch_mapping_default(&m);
    strcpy(m.path[CH_ROLE_USER_ID], "customer.id");
    strcpy(m.path[CH_ROLE_TS], "at");
    strcpy(m.path[CH_ROLE_EVENT_ID], "no");
    strcpy(m.path[CH_ROLE_TYPE], "kind");
    strcpy(m.path[CH_ROLE_ITEM], "line.sku");
    strcpy(m.path[CH_ROLE_CATEGORY], "customer.country");
    strcpy(m.path[CH_ROLE_AMOUNT], "line.price");
    m.path[CH_ROLE_ATTRS][0] = '\0';
    for (int k = 0; k < CH_ROLE_N; k++) {
        m.is_default[k] = false;
    }
    assert_int_equal(ch_mapping_add_field(&m, "line.qty"), 0);
    char err[512] = "";
    ch_decoder_t *d = decoder(schema, &m, err, sizeof(err));
    if (!d) {
        fail_msg("%s", err);
    }
    static const struct {
        const char *name;
        int rc;
        int64_t ts;
        const char *uid, *item;
    } seeds[] = {{"foreign", 0, 1767225600000, "4242", "77"},
                 {"foreign_iso", -EBADMSG, 0, NULL, NULL}}; /* customer null: no user id */
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        snprintf(seed, sizeof(seed), "%s/tests/fuzz/corpus/avro/%s", src, seeds[i].name);
        FILE *f = fopen(seed, "rb");
        assert_non_null(f);
        unsigned char buf[512];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        ch_event_view_t ev;
        assert_int_equal(ch_decoder_decode(d, buf, n, &ev, err, sizeof(err)), seeds[i].rc);
        if (seeds[i].rc == 0) {
            assert_int_equal(ev.ts_ms, seeds[i].ts);
            assert_memory_equal(ev.user_id, seeds[i].uid, ev.user_id_len);
            assert_memory_equal(ev.item, seeds[i].item, ev.item_len);
            assert_memory_equal(ev.type, "REFUND", ev.type_len);
            assert_true(ev.has_amount && ev.amount == 2.5);
            assert_true(ev.fields_present == 1 && ev.fields[0] == 3.0);
        } else {
            if (!strstr(err, "customer.id (user_id) is null or absent")) {
                fail_msg("%s", err);
            }
        }
    }
    ch_decoder_release(d);
    ch_decoder_free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iso8601),       cmocka_unit_test(test_units),
        cmocka_unit_test(test_paths),         cmocka_unit_test(test_avro_mapping),
        cmocka_unit_test(test_foreign_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
