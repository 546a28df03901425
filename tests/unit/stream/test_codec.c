/*
 * Codec tests. The independent reference is Avro-C's own generic writer and
 * reader: messages in a later writer schema are produced by Avro-C, and our
 * profile encoding is read back by Avro-C against the shipped .avsc.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <avro.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../ch_test.h"
#include "ch/codec.h"

static char schema_dir[1024];
static char conf_dir[1024];

static void paths(void) {
    const char *src = getenv("CH_SOURCE_DIR");
    if (!src) {
        src = ".";
    }
    snprintf(schema_dir, sizeof(schema_dir), "%s/tests/data/schemas", src);
    snprintf(conf_dir, sizeof(conf_dir), "%s/conf/schemas", src);
}

typedef struct fx {
    ch_schemas_t *schemas;
    ch_decoder_t *dec;
} fx_t;

static int setup(void **st) {
    fx_t *fx = calloc(1, sizeof(*fx));
    char err[512] = "";
    char reader[1100];
    snprintf(reader, sizeof(reader), "%s/user_event.avsc", conf_dir);
    if (ch_schemas_load(schema_dir, &fx->schemas, err, sizeof(err)) < 0 ||
        ch_decoder_new(fx->schemas, reader, CH_FRAMING_CONFLUENT, NULL, NULL, &fx->dec, err,
                       sizeof(err)) < 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    *st = fx;
    return 0;
}

static int teardown(void **st) {
    fx_t *fx = *st;
    ch_decoder_free(fx->dec);
    ch_schemas_free(fx->schemas);
    free(fx);
    return 0;
}

static const ch_attr_t sample_attrs[] = {{"lat", 3, 40.5}, {"long", 4, -73.25}};

static ch_event_view_t sample_event(void) {
    return (ch_event_view_t){.event_id = "e-1",
                             .event_id_len = 3,
                             .user_id = "u-42",
                             .user_id_len = 4,
                             .ts_ms = 1700000000123LL,
                             .type = "payment",
                             .type_len = 7,
                             .has_amount = true,
                             .amount = 12.5,
                             .item = "shop",
                             .item_len = 4,
                             .category = NULL,
                             .attrs = sample_attrs,
                             .n_attrs = 2};
}

static void test_round_trip_confluent(void **st) {
    fx_t *fx = *st;
    ch_buf_t b;
    ch_buf_init(&b);
    ch_event_view_t in = sample_event();
    assert_int_equal(ch_encode_event(&b, CH_FRAMING_CONFLUENT, 1, &in), 0);
    assert_int_equal(b.data[0], 0);
    assert_int_equal(b.data[4], 1);
    ch_event_view_t out;
    char err[256] = "";
    assert_int_equal(ch_decoder_decode(fx->dec, b.data, b.len, &out, err, sizeof(err)), 0);
    assert_int_equal(out.schema_id, 1);
    assert_int_equal(out.user_id_len, 4);
    assert_memory_equal(out.user_id, "u-42", 4);
    assert_memory_equal(out.event_id, "e-1", 3);
    assert_memory_equal(out.type, "payment", 7);
    assert_int_equal(out.ts_ms, 1700000000123LL);
    assert_true(out.has_amount);
    assert_double_equal(out.amount, 12.5, 0);
    assert_memory_equal(out.item, "shop", 4);
    assert_null(out.category);
    assert_int_equal(out.n_attrs, 2);
    assert_memory_equal(out.attrs[1].key, "long", 4);
    assert_double_equal(out.attrs[1].value, -73.25, 0);
    ch_buf_done(&b);
}

static void test_round_trip_plain(void **st) {
    (void)st;
    char reader[1100], err[256] = "";
    snprintf(reader, sizeof(reader), "%s/user_event.avsc", conf_dir);
    ch_decoder_t *dec = NULL;
    assert_int_equal(
        ch_decoder_new(NULL, reader, CH_FRAMING_PLAIN, NULL, NULL, &dec, err, sizeof(err)), 0);
    ch_buf_t b;
    ch_buf_init(&b);
    ch_event_view_t in = sample_event();
    in.has_amount = false;
    in.n_attrs = 0;
    assert_int_equal(ch_encode_event(&b, CH_FRAMING_PLAIN, 0, &in), 0);
    ch_event_view_t out;
    assert_int_equal(ch_decoder_decode(dec, b.data, b.len, &out, err, sizeof(err)), 0);
    assert_int_equal(out.schema_id, -1);
    assert_false(out.has_amount);
    assert_int_equal(out.n_attrs, 0);
    assert_memory_equal(out.user_id, "u-42", 4);
    ch_buf_done(&b);
    ch_decoder_free(dec);
}

/* Parses a schema file with Avro-C (the independent reference codec). */
static avro_schema_t load_schema(const char *dir, const char *file) {
    char path[1100];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char json[4096];
    size_t n = fread(json, 1, sizeof(json), f);
    fclose(f);
    avro_schema_t schema;
    assert_int_equal(avro_schema_from_json_length(json, n, &schema), 0);
    return schema;
}

/* Writes a v2 record (extra fields, reordered, float amount, int attrs) with Avro-C. */
static size_t write_v2(char *buf, size_t cap, int amount_branch) {
    avro_schema_t schema = load_schema(schema_dir, "user_event_v2.avsc");
    avro_value_iface_t *iface = avro_generic_class_from_schema(schema);
    avro_value_t rec, field, branch, sub, elem;
    assert_int_equal(avro_generic_value_new(iface, &rec), 0);
    avro_value_get_by_name(&rec, "user_id", &field, NULL);
    avro_value_set_string(&field, "card-7");
    avro_value_get_by_name(&rec, "event_id", &field, NULL);
    avro_value_set_string(&field, "t-99");
    avro_value_get_by_name(&rec, "channel", &field, NULL);
    avro_value_set_branch(&field, 1, &branch);
    avro_value_set_string(&branch, "mobile");
    avro_value_get_by_name(&rec, "ts", &field, NULL);
    avro_value_set_long(&field, 1600000000000LL);
    avro_value_get_by_name(&rec, "type", &field, NULL);
    avro_value_set_string(&field, "login");
    avro_value_get_by_name(&rec, "amount", &field, NULL);
    avro_value_set_branch(&field, amount_branch, &branch);
    if (amount_branch == 1) {
        avro_value_set_float(&branch, 2.5f);
    } else if (amount_branch == 2) {
        avro_value_set_double(&branch, 1e300);
    }
    avro_value_get_by_name(&rec, "device", &field, NULL);
    avro_value_get_by_name(&field, "os", &sub, NULL);
    avro_value_set_enum(&sub, 2);
    avro_value_get_by_name(&field, "tags", &sub, NULL);
    avro_value_append(&sub, &elem, NULL);
    avro_value_set_string(&elem, "a");
    avro_value_append(&sub, &elem, NULL);
    avro_value_set_string(&elem, "bcd");
    avro_value_get_by_name(&field, "fp", &sub, NULL);
    avro_value_set_fixed(&sub, "\x01\x02\x03\x04", 4);
    avro_value_get_by_name(&rec, "item", &field, NULL);
    avro_value_set_branch(&field, 0, &branch);
    avro_value_set_null(&branch);
    avro_value_get_by_name(&rec, "category", &field, NULL);
    avro_value_set_branch(&field, 1, &branch);
    avro_value_set_string(&branch, "travel");
    avro_value_get_by_name(&rec, "attrs", &field, NULL);
    avro_value_add(&field, "tries", &elem, NULL, NULL);
    avro_value_set_int(&elem, 3);

    buf[0] = 0;
    buf[1] = buf[2] = buf[3] = 0;
    buf[4] = 7; /* schema id 7 = user_event_v2.avsc in the test registry */
    avro_writer_t w = avro_writer_memory(buf + 5, (int64_t)(cap - 5));
    assert_int_equal(avro_value_write(w, &rec), 0);
    size_t len = 5 + (size_t)avro_writer_tell(w);
    avro_writer_free(w);
    avro_value_decref(&rec);
    avro_value_iface_decref(iface);
    avro_schema_decref(schema);
    return len;
}

static void test_schema_evolution(void **st) {
    fx_t *fx = *st;
    char buf[512];
    size_t len = write_v2(buf, sizeof(buf), 1);
    ch_event_view_t ev;
    char err[256] = "";
    int r = ch_decoder_decode(fx->dec, buf, len, &ev, err, sizeof(err));
    if (r < 0) {
        fail_msg("decode v2: %s", err);
    }
    assert_int_equal(ev.schema_id, 7);
    assert_memory_equal(ev.user_id, "card-7", 6);
    assert_memory_equal(ev.event_id, "t-99", 4);
    assert_int_equal(ev.ts_ms, 1600000000000LL);
    assert_memory_equal(ev.type, "login", 5);
    assert_true(ev.has_amount);
    assert_double_equal(ev.amount, 2.5, 0); /* float promoted to double */
    assert_null(ev.item);
    assert_int_equal(ev.category_len, 6);
    assert_memory_equal(ev.category, "travel", 6);
    assert_int_equal(ev.n_attrs, 1);
    assert_memory_equal(ev.attrs[0].key, "tries", 5);
    assert_double_equal(ev.attrs[0].value, 3.0, 0); /* int promoted */

    len = write_v2(buf, sizeof(buf), 0); /* null amount */
    assert_int_equal(ch_decoder_decode(fx->dec, buf, len, &ev, err, sizeof(err)), 0);
    assert_false(ev.has_amount);
}

static void test_unresolvable_ids(void **st) {
    fx_t *fx = *st;
    ch_buf_t b;
    ch_buf_init(&b);
    ch_event_view_t in = sample_event();
    ch_event_view_t out;
    char err[256] = "";
    assert_int_equal(ch_encode_event(&b, CH_FRAMING_CONFLUENT, 9, &in), 0);
    assert_int_equal(ch_decoder_decode(fx->dec, b.data, b.len, &out, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "user_id"));
    assert_int_equal(ch_encode_event(&b, CH_FRAMING_CONFLUENT, 2, &in), 0);
    assert_int_equal(ch_decoder_decode(fx->dec, b.data, b.len, &out, err, sizeof(err)), -EPROTO);
    assert_int_equal(ch_encode_event(&b, CH_FRAMING_CONFLUENT, 12345, &in), 0);
    assert_int_equal(ch_decoder_decode(fx->dec, b.data, b.len, &out, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "unknown schema id 12345"));
    assert_string_equal(ch_decoder_reason(-EPROTO), "schema_error");
    ch_buf_done(&b);
}

/* Text of a schema file (for ch_decoder_add_schema, as a registry would answer). */
static size_t read_text(const char *dir, const char *file, char *out, size_t cap) {
    char path[1100];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap, f);
    fclose(f);
    return n;
}

/* Writer schemas learned at run time (a schema registry): none known at first, each
 * learned id decodes as the directory's would, failures keep their reason. */
static void test_learned_schemas(void **st) {
    (void)st;
    char reader[1100], err[256] = "", text[4096], buf[512];
    snprintf(reader, sizeof(reader), "%s/user_event.avsc", conf_dir);
    ch_decoder_t *d = NULL;
    assert_int_equal(
        ch_decoder_new(NULL, reader, CH_FRAMING_CONFLUENT, NULL, NULL, &d, err, sizeof(err)), 0);
    size_t len = write_v2(buf, sizeof(buf), 1);
    int32_t id = -1;
    assert_true(ch_decoder_unknown_id(d, buf, len, &id));
    assert_int_equal(id, 7);
    ch_event_view_t ev;
    assert_int_equal(ch_decoder_decode(d, buf, len, &ev, err, sizeof(err)), -EPROTO);

    size_t n = read_text(schema_dir, "user_event_v2.avsc", text, sizeof(text));
    assert_int_equal(ch_decoder_add_schema(d, 7, text, n, NULL, err, sizeof(err)), 0);
    assert_false(ch_decoder_unknown_id(d, buf, len, &id));
    assert_int_equal(ch_decoder_decode(d, buf, len, &ev, err, sizeof(err)), 0);
    assert_memory_equal(ev.user_id, "card-7", 6);
    assert_double_equal(ev.amount, 2.5, 0);
    assert_memory_equal(ev.category, "travel", 6);
    assert_int_equal(ch_decoder_add_schema(d, 7, text, n, NULL, err, sizeof(err)), -EEXIST);

    /* an id the registry said does not exist: its records fail with that reason */
    buf[4] = 8;
    assert_int_equal(ch_decoder_add_schema(d, 8, NULL, 0, "HTTP 404: Schema not found", NULL, 0),
                     0);
    assert_false(ch_decoder_unknown_id(d, buf, len, &id));
    assert_int_equal(ch_decoder_decode(d, buf, len, &ev, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "HTTP 404: Schema not found"));
    /* not an Avro schema: refused, and remembered as failing */
    buf[4] = 10;
    assert_int_equal(
        ch_decoder_add_schema(d, 10, "{\"type\": \"nope\"}", 16, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "schema id 10"));
    assert_int_equal(ch_decoder_decode(d, buf, len, &ev, err, sizeof(err)), -EPROTO);
    /* a valid schema without the user id: kept, its records fail naming the field */
    n = read_text(schema_dir, "no_user.avsc", text, sizeof(text));
    assert_int_equal(ch_decoder_add_schema(d, 9, text, n, NULL, err, sizeof(err)), 0);
    buf[4] = 9;
    assert_int_equal(ch_decoder_decode(d, buf, len, &ev, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "user_id"));
    /* framing that names no id: never unknown */
    assert_false(ch_decoder_unknown_id(d, "\x01\0\0\0\x07", 5, &id));
    assert_false(ch_decoder_unknown_id(d, "\0\0", 2, &id));
    ch_decoder_free(d);

    assert_int_equal(
        ch_decoder_new(NULL, reader, CH_FRAMING_PLAIN, NULL, NULL, &d, err, sizeof(err)), 0);
    assert_false(ch_decoder_unknown_id(d, buf, len, &id));
    ch_decoder_free(d);
}

static void test_truncation_and_trailing_bytes(void **st) {
    fx_t *fx = *st;
    ch_buf_t b;
    ch_buf_init(&b);
    ch_event_view_t in = sample_event();
    assert_int_equal(ch_encode_event(&b, CH_FRAMING_CONFLUENT, 1, &in), 0);
    ch_event_view_t out;
    char err[256];
    for (size_t cut = 0; cut < b.len; cut++) {
        int r = ch_decoder_decode(fx->dec, b.data, cut, &out, err, sizeof(err));
        if (r != -EBADMSG) {
            fail_msg("a message cut at %zu of %zu bytes decoded with %d", cut, b.len, r);
        }
    }
    unsigned char longer[512];
    memcpy(longer, b.data, b.len);
    longer[b.len] = 0;
    assert_int_equal(ch_decoder_decode(fx->dec, longer, b.len + 1, &out, err, sizeof(err)),
                     -EBADMSG);
    assert_non_null(strstr(err, "trailing"));
    ch_buf_done(&b);
}

static void test_hostile_lengths(void **st) {
    fx_t *fx = *st;
    ch_event_view_t out;
    char err[256];
    /* event_id length = 2^62 (zigzag varint), far beyond the buffer */
    const unsigned char huge[] = {0, 0, 0, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x80,
                                  0x80, 0x80, 0x80, 0x80, 0x01};
    assert_int_equal(ch_decoder_decode(fx->dec, huge, sizeof(huge), &out, err, sizeof(err)),
                     -EBADMSG);
    /* negative length */
    const unsigned char neg[] = {0, 0, 0, 0, 1, 0x01, 'a'};
    assert_int_equal(ch_decoder_decode(fx->dec, neg, sizeof(neg), &out, err, sizeof(err)),
                     -EBADMSG);
    /* eleven-byte varint */
    const unsigned char longvar[] = {0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(
        ch_decoder_decode(fx->dec, longvar, sizeof(longvar), &out, err, sizeof(err)), -EBADMSG);
    /* wrong magic byte, and a message shorter than the header */
    const unsigned char magic[] = {1, 0, 0, 0, 1, 0};
    assert_int_equal(ch_decoder_decode(fx->dec, magic, sizeof(magic), &out, err, sizeof(err)),
                     -EBADMSG);
    assert_int_equal(ch_decoder_decode(fx->dec, magic, 3, &out, err, sizeof(err)), -EBADMSG);
    assert_int_equal(ch_decoder_decode(fx->dec, NULL, 0, &out, err, sizeof(err)), -EBADMSG);
}

static void test_garbage_never_crashes(void **st) {
    fx_t *fx = *st;
    unsigned char buf[256];
    ch_event_view_t out;
    char err[256];
    unsigned int seed = 12345;
    int decoded = 0;
    for (int i = 0; i < 200000; i++) {
        size_t len = (size_t)(rand_r(&seed) % (int)sizeof(buf));
        for (size_t k = 0; k < len; k++) {
            buf[k] = (unsigned char)rand_r(&seed);
        }
        if (len >= 5 && i % 2) {
            buf[0] = 0; /* valid-looking header, garbage body */
            buf[1] = buf[2] = buf[3] = 0;
            buf[4] = (unsigned char)(1 + (i % 3) * 3); /* ids 1, 4 (unknown), 7 */
        }
        int r = ch_decoder_decode(fx->dec, buf, len, &out, err, sizeof(err));
        assert_true(r == 0 || r == -EBADMSG || r == -EPROTO || r == -E2BIG);
        decoded += r == 0;
    }
    /* random bytes essentially never form a complete record with no trailing bytes */
    assert_true(decoded < 100);
}

static void test_profile_read_back_by_avro_c(void **st) {
    (void)st;
    const float feats[3] = {1.5f, -2.0f, 1e-7f};
    ch_profile_t p = {.user_id = "u-1",
                      .user_id_len = 3,
                      .event_id = "ev-9",
                      .event_id_len = 4,
                      .ts_ms = 1234567890123LL,
                      .features = feats,
                      .n_features = 3};
    ch_buf_t b;
    ch_buf_init(&b);
    assert_int_equal(ch_encode_profile(&b, CH_FRAMING_CONFLUENT, 2, &p), 0);
    assert_int_equal(b.data[4], 2);

    avro_schema_t schema = load_schema(conf_dir, "profile_update.avsc");
    avro_value_iface_t *iface = avro_generic_class_from_schema(schema);
    avro_value_t rec, field, branch, elem;
    assert_int_equal(avro_generic_value_new(iface, &rec), 0);
    avro_reader_t rd = avro_reader_memory((const char *)b.data + 5, (int64_t)b.len - 5);
    assert_int_equal(avro_value_read(rd, &rec), 0);

    const char *s;
    size_t sl;
    int64_t l;
    int disc;
    avro_value_get_by_name(&rec, "user_id", &field, NULL);
    avro_value_get_string(&field, &s, &sl);
    assert_string_equal(s, "u-1");
    avro_value_get_by_name(&rec, "event_id", &field, NULL);
    avro_value_get_discriminant(&field, &disc);
    assert_int_equal(disc, 1);
    avro_value_get_current_branch(&field, &branch);
    avro_value_get_string(&branch, &s, &sl);
    assert_string_equal(s, "ev-9");
    avro_value_get_by_name(&rec, "ts", &field, NULL);
    avro_value_get_long(&field, &l);
    assert_int_equal(l, 1234567890123LL);
    avro_value_get_by_name(&rec, "segment", &field, NULL);
    avro_value_get_discriminant(&field, &disc);
    assert_int_equal(disc, 0); /* null until segmentation exists */
    avro_value_get_by_name(&rec, "features", &field, NULL);
    size_t count;
    avro_value_get_size(&field, &count);
    assert_int_equal(count, 3);
    float fv;
    avro_value_get_by_index(&field, 2, &elem, NULL);
    avro_value_get_float(&elem, &fv);
    assert_true(fv == 1e-7f);
    avro_value_get_by_name(&rec, "model_version", &field, NULL);
    avro_value_get_discriminant(&field, &disc);
    assert_int_equal(disc, 0);

    avro_reader_free(rd);
    avro_value_decref(&rec);
    avro_value_iface_decref(iface);
    avro_schema_decref(schema);
    ch_buf_done(&b);
}

static void test_bad_ids_file(void **st) {
    (void)st;
    char dir[] = "/tmp/ch-codec-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/ids", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\n\n1 missing.avsc\n");
    fclose(f);
    ch_schemas_t *s = NULL;
    char err[512] = "";
    assert_int_equal(ch_schemas_load(dir, &s, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ids:3:"));
    f = fopen(path, "w");
    fprintf(f, "one two\n");
    fclose(f);
    assert_int_equal(ch_schemas_load(dir, &s, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ids:1:"));
    remove(path);
    assert_int_equal(ch_schemas_load(dir, &s, err, sizeof(err)), -ENOENT);
    rmdir(dir);
}

int main(void) {
    paths();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_confluent),
        cmocka_unit_test(test_round_trip_plain),
        cmocka_unit_test(test_schema_evolution),
        cmocka_unit_test(test_unresolvable_ids),
        cmocka_unit_test(test_learned_schemas),
        cmocka_unit_test(test_truncation_and_trailing_bytes),
        cmocka_unit_test(test_hostile_lengths),
        cmocka_unit_test(test_garbage_never_crashes),
        cmocka_unit_test(test_profile_read_back_by_avro_c),
        cmocka_unit_test(test_bad_ids_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
