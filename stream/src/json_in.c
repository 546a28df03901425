/*
 * json_in.c - JSON user events (format in ch/json_in.h), parsed by jansson.
 *
 * Design notes
 * - jansson (Debian's libjansson) parses; this file only checks types and fills the
 *   view. The parsed trees are kept until ch_json_decoder_release(): a view's strings
 *   point into its tree (jansson keeps each string NUL-terminated with its length), and
 *   a batch's outputs are written after all its events are decoded. An integer user_id
 *   is replaced in its tree by its text, so it lives as long.
 * - Duplicate keys are refused (JSON_REJECT_DUPLICATES): which one would win is not
 *   something a producer should have to guess. Strings with \u0000 are refused too.
 */
#include "ch/json_in.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ch_json_decoder {
    json_t **roots; /* the trees of the messages since the last release */
    size_t n_roots, cap_roots;
    ch_attr_t attrs[CH_CODEC_MAX_ATTRS];
};

int ch_json_decoder_new(ch_json_decoder_t **ret) {
    *ret = calloc(1, sizeof(**ret));
    return *ret ? 0 : -ENOMEM;
}

void ch_json_decoder_release(ch_json_decoder_t *d) {
    for (size_t i = 0; i < d->n_roots; i++) {
        json_decref(d->roots[i]);
    }
    d->n_roots = 0;
}

ch_json_decoder_t *ch_json_decoder_free(ch_json_decoder_t *d) {
    if (d) {
        ch_json_decoder_release(d);
        free(d->roots);
        free(d);
    }
    return NULL;
}

/* A string field: required, or optional (absent or null: NULL). */
static int str(json_t *o, const char *name, bool required, const char **ret, size_t *ret_len,
               char *errbuf, size_t errlen) {
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) {
        *ret = NULL;
        *ret_len = 0;
        return required ? fail(errbuf, errlen, -EBADMSG, "JSON field %s is missing", name) : 0;
    }
    if (!json_is_string(v)) {
        return fail(errbuf, errlen, -EBADMSG, "JSON field %s is not a string", name);
    }
    *ret = json_string_value(v);
    *ret_len = json_string_length(v);
    return 0;
}

int ch_json_decoder_decode(ch_json_decoder_t *d, const void *buf, size_t len, ch_event_view_t *ev,
                           char *errbuf, size_t errlen) {
    json_error_t je;
    memset(ev, 0, sizeof(*ev));
    ev->schema_id = -1;
    if (d->n_roots == d->cap_roots) {
        size_t cap = d->cap_roots ? 2 * d->cap_roots : 1024;
        json_t **r = realloc(d->roots, cap * sizeof(*r));
        if (!r) {
            return fail(errbuf, errlen, -EBADMSG, "out of memory holding JSON events");
        }
        d->roots = r;
        d->cap_roots = cap;
    }
    json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        return fail(errbuf, errlen, -EBADMSG, "malformed JSON at line %d column %d: %s", je.line,
                    je.column, je.text);
    }
    d->roots[d->n_roots++] = o;
    if (!json_is_object(o)) {
        return fail(errbuf, errlen, -EBADMSG, "the JSON message is not an object");
    }
    int r;
    if ((r = str(o, "event_id", true, &ev->event_id, &ev->event_id_len, errbuf, errlen)) < 0 ||
        (r = str(o, "type", true, &ev->type, &ev->type_len, errbuf, errlen)) < 0 ||
        (r = str(o, "item", false, &ev->item, &ev->item_len, errbuf, errlen)) < 0 ||
        (r = str(o, "category", false, &ev->category, &ev->category_len, errbuf, errlen)) < 0) {
        return r;
    }
    json_t *u = json_object_get(o, "user_id");
    if (json_is_integer(u)) {
        char text[32];
        snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, json_integer_value(u));
        if (json_object_set_new(o, "user_id", json_string(text)) < 0) {
            return fail(errbuf, errlen, -EBADMSG, "out of memory holding a JSON event");
        }
    }
    if ((r = str(o, "user_id", true, &ev->user_id, &ev->user_id_len, errbuf, errlen)) < 0) {
        return r;
    }
    json_t *ts = json_object_get(o, "ts");
    if (!json_is_number(ts)) {
        return fail(errbuf, errlen, -EBADMSG, "JSON field ts is %s (milliseconds since 1970)",
                    ts ? "not a number" : "missing");
    }
    double t = json_number_value(ts);
    if (!(fabs(t) < 9.2e18)) {
        return fail(errbuf, errlen, -EBADMSG, "JSON field ts is out of range");
    }
    ev->ts_ms = (int64_t)llround(t);
    json_t *a = json_object_get(o, "amount");
    if (a && !json_is_null(a)) {
        if (!json_is_number(a)) {
            return fail(errbuf, errlen, -EBADMSG, "JSON field amount is not a number");
        }
        ev->has_amount = true;
        ev->amount = json_number_value(a);
    }
    json_t *attrs = json_object_get(o, "attrs");
    if (attrs && !json_is_null(attrs)) {
        if (!json_is_object(attrs)) {
            return fail(errbuf, errlen, -EBADMSG, "JSON field attrs is not an object");
        }
        if (json_object_size(attrs) > CH_CODEC_MAX_ATTRS) {
            return fail(errbuf, errlen, -E2BIG, "%zu attrs (at most %d)", json_object_size(attrs),
                        CH_CODEC_MAX_ATTRS);
        }
        const char *key;
        size_t key_len;
        json_t *v;
        json_object_keylen_foreach(attrs, key, key_len, v) {
            if (!json_is_number(v)) {
                return fail(errbuf, errlen, -EBADMSG, "attrs[%.*s] is not a number",
                            (int)(key_len > 64 ? 64 : key_len), key);
            }
            d->attrs[ev->n_attrs++] = (ch_attr_t){key, key_len, json_number_value(v)};
        }
        ev->attrs = d->attrs;
    }
    return 0;
}
