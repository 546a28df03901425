/*
 * fuzz_json - the JSON writers (stream/src/json.c) on arbitrary bytes: ch_json_string
 * must produce one valid JSON string (RFC 8259: quoted, every control character
 * escaped, only valid escapes, valid UTF-8) whatever the input, and
 * ch_json_float/double must read back as the same number (or null for NaN/Inf); and the
 * JSON input decoder (stream/src/json_in.c, input.format = json) on the same bytes: a
 * decoded event's strings end where their lengths say, its attrs are within the cap;
 * again with a mapping through nested objects (a.u, a.b.t, a.q).
 */
#include "fuzz_common.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "ch/json.h"
#include "ch/json_in.h"

static ch_json_decoder_t *decoder, *mapped;

/* A mapping through nested objects, ISO-8601 or numeric times, a numeric field. */
static ch_json_decoder_t *new_mapped(void) {
    ch_mapping_t m;
    ch_mapping_default(&m);
    snprintf(m.path[CH_ROLE_USER_ID], sizeof(m.path[0]), "a.u");
    snprintf(m.path[CH_ROLE_TS], sizeof(m.path[0]), "a.b.t");
    snprintf(m.path[CH_ROLE_ITEM], sizeof(m.path[0]), "i");
    ch_mapping_add_field(&m, "a.q");
    ch_json_decoder_t *d = NULL;
    if (ch_json_decoder_new(&m, &d) < 0) {
        abort();
    }
    return d;
}

static void check_one(ch_json_decoder_t *d, const uint8_t *data, size_t size) {
    ch_event_view_t ev;
    char why[512];
    if (ch_json_decoder_decode(d, data, size, &ev, why, sizeof(why)) == 0) {
        FUZZ_CHECK(!ev.event_id || ev.event_id[ev.event_id_len] == '\0');
        FUZZ_CHECK(ev.user_id && ev.user_id[ev.user_id_len] == '\0');
        FUZZ_CHECK(!ev.type || ev.type[ev.type_len] == '\0');
        FUZZ_CHECK(!ev.item || ev.item[ev.item_len] == '\0');
        FUZZ_CHECK(!ev.category || ev.category[ev.category_len] == '\0');
        FUZZ_CHECK(ev.n_attrs <= CH_CODEC_MAX_ATTRS);
        for (size_t i = 0; i < ev.n_attrs; i++) {
            (void)touch(ev.attrs[i].key, ev.attrs[i].key_len);
        }
    } else {
        FUZZ_CHECK(why[0] != '\0');
    }
    ch_json_decoder_release(d);
}

static void check_event(const uint8_t *data, size_t size) {
    if (!decoder && (ch_json_decoder_new(NULL, &decoder) < 0 || !(mapped = new_mapped()))) {
        abort();
    }
    check_one(decoder, data, size);
    check_one(mapped, data, size);
}

static int hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len = c < 0x80             ? 1
                 : (c & 0xe0) == 0xc0 ? 2
                 : (c & 0xf0) == 0xe0 ? 3
                 : (c & 0xf8) == 0xf0 ? 4
                                      : 0;
    if (len == 0 || len > n) {
        return 0;
    }
    unsigned cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    static const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0; /* overlong, beyond Unicode, or a surrogate */
    }
    return len;
}

static void check_string(const unsigned char *s, size_t n) {
    FUZZ_CHECK(n >= 2 && s[0] == '"' && s[n - 1] == '"');
    for (size_t i = 1; i < n - 1;) {
        FUZZ_CHECK(s[i] >= 0x20 && s[i] != '"');
        if (s[i] == '\\') {
            FUZZ_CHECK(i + 1 < n - 1);
            unsigned char e = s[i + 1];
            if (e == 'u') {
                FUZZ_CHECK(i + 5 < n - 1 && hex(s[i + 2]) && hex(s[i + 3]) && hex(s[i + 4]) &&
                           hex(s[i + 5]));
                i += 6;
            } else {
                FUZZ_CHECK(strchr("\"\\/bfnrt", e) != NULL && e != 0);
                i += 2;
            }
            continue;
        }
        size_t len = utf8_len(s + i, n - 1 - i);
        FUZZ_CHECK(len > 0);
        i += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_event(data, size);
    ch_buf_t b;
    ch_buf_init(&b);
    if (ch_json_string(&b, (const char *)data, size) == 0) {
        check_string((const unsigned char *)b.data, b.len);
    }
    if (size >= sizeof(float)) {
        float f;
        memcpy(&f, data, sizeof(f));
        b.len = 0;
        if (ch_json_float(&b, f) == 0 && ch_buf_append(&b, "", 1) == 0) {
            if (isfinite(f)) {
                FUZZ_CHECK(strtof((const char *)b.data, NULL) == f);
            } else {
                FUZZ_CHECK(strcmp((const char *)b.data, "null") == 0);
            }
        }
    }
    if (size >= sizeof(double)) {
        double d;
        memcpy(&d, data, sizeof(d));
        b.len = 0;
        if (ch_json_double(&b, d) == 0 && ch_buf_append(&b, "", 1) == 0) {
            if (isfinite(d)) {
                FUZZ_CHECK(strtod((const char *)b.data, NULL) == d);
            } else {
                FUZZ_CHECK(strcmp((const char *)b.data, "null") == 0);
            }
        }
    }
    ch_buf_done(&b);
    return 0;
}
