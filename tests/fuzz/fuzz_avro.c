/*
 * fuzz_avro - the input decoder (stream/src/codec.c): Confluent framing against the
 * test registry (later writer schemas resolved against the reader, an incompatible
 * one refused) and plain framing. A decoded event's views must lie inside the input.
 * A third decoder follows a mapping (ch/mapping.h) through a foreign schema
 * (tests/data/foreign/order.avsc: a nullable nested record, a long user id, a union
 * time of micros or ISO-8601 text, an enum type, numeric fields by path); its views may
 * also point at enum symbols and integer ids' text, so they are read, not located.
 */
#include "fuzz_common.h"

#include "ch/codec.h"

static ch_schemas_t *schemas;
static ch_decoder_t *confluent, *plain, *mapped;

static int new_mapped(char *err, size_t len) {
    ch_mapping_t m;
    ch_mapping_default(&m);
    static const struct {
        ch_role_t role;
        const char *path;
    } roles[] = {{CH_ROLE_USER_ID, "customer.id"}, {CH_ROLE_TS, "at"},
                 {CH_ROLE_EVENT_ID, "no"},         {CH_ROLE_TYPE, "kind"},
                 {CH_ROLE_ITEM, "line.sku"},       {CH_ROLE_CATEGORY, "customer.country"},
                 {CH_ROLE_AMOUNT, "line.price"},   {CH_ROLE_ATTRS, ""}};
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
        snprintf(m.path[roles[i].role], sizeof(m.path[0]), "%s", roles[i].path);
        m.is_default[roles[i].role] = false;
    }
    ch_mapping_add_field(&m, "line.qty");
    return ch_decoder_new(NULL, CH_FUZZ_SOURCE_DIR "/tests/data/foreign/order.avsc",
                          CH_FRAMING_PLAIN, NULL, &m, &mapped, err, len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char err[512];
    const char *dir = CH_FUZZ_SOURCE_DIR "/tests/data/schemas";
    const char *reader = CH_FUZZ_SOURCE_DIR "/tests/data/schemas/user_event.avsc";
    if (ch_schemas_load(dir, &schemas, err, sizeof(err)) < 0 ||
        ch_decoder_new(schemas, reader, CH_FRAMING_CONFLUENT, NULL, NULL, &confluent, err,
                       sizeof(err)) < 0 ||
        ch_decoder_new(schemas, reader, CH_FRAMING_PLAIN, NULL, NULL, &plain, err, sizeof(err)) <
            0 ||
        new_mapped(err, sizeof(err)) < 0) {
        fprintf(stderr, "fuzz_avro: %s\n", err);
        exit(1);
    }
    return 0;
}

static int inside(const uint8_t *data, size_t size, const void *p, size_t n) {
    const uint8_t *b = p;
    return !p || (b >= data && n <= size && b - data <= (ptrdiff_t)(size - n));
}

static void check(const uint8_t *data, size_t size, const ch_event_view_t *ev) {
    FUZZ_CHECK(inside(data, size, ev->event_id, ev->event_id_len));
    FUZZ_CHECK(inside(data, size, ev->user_id, ev->user_id_len));
    FUZZ_CHECK(inside(data, size, ev->type, ev->type_len));
    FUZZ_CHECK(inside(data, size, ev->item, ev->item_len));
    FUZZ_CHECK(inside(data, size, ev->category, ev->category_len));
    FUZZ_CHECK(ev->n_attrs <= CH_CODEC_MAX_ATTRS);
    unsigned s = touch(ev->event_id, ev->event_id_len) + touch(ev->user_id, ev->user_id_len) +
                 touch(ev->type, ev->type_len) + touch(ev->item, ev->item_len) +
                 touch(ev->category, ev->category_len);
    for (size_t i = 0; i < ev->n_attrs; i++) {
        FUZZ_CHECK(inside(data, size, ev->attrs[i].key, ev->attrs[i].key_len));
        s += touch(ev->attrs[i].key, ev->attrs[i].key_len);
    }
    (void)s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ch_event_view_t ev;
    char why[512];
    if (ch_decoder_decode(confluent, data, size, &ev, why, sizeof(why)) == 0) {
        check(data, size, &ev);
    }
    if (ch_decoder_decode(plain, data, size, &ev, why, sizeof(why)) == 0) {
        check(data, size, &ev);
    }
    if (ch_decoder_decode(mapped, data, size, &ev, why, sizeof(why)) == 0) {
        unsigned s = touch(ev.event_id, ev.event_id_len) + touch(ev.user_id, ev.user_id_len) +
                     touch(ev.type, ev.type_len) + touch(ev.item, ev.item_len) +
                     touch(ev.category, ev.category_len);
        FUZZ_CHECK(ev.user_id && (ev.fields_present & ~UINT64_C(1)) == 0);
        (void)s;
    }
    ch_decoder_release(mapped);
    return 0;
}
