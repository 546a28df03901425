/*
 * fuzz_avro - the input decoder (stream/src/codec.c): Confluent framing against the
 * test registry (later writer schemas resolved against the reader, an incompatible
 * one refused) and plain framing. A decoded event's views must lie inside the input.
 */
#include "fuzz_common.h"

#include "ch/codec.h"

static ch_schemas_t *schemas;
static ch_decoder_t *confluent, *plain;

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
            0) {
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
    return 0;
}
