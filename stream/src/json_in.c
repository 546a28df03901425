/*
 * json_in.c - JSON user events (format in ch/json_in.h), parsed by jansson.
 *
 * Design notes
 * - jansson (Debian's libjansson) parses; this file only follows the mapping's paths,
 *   checks types and fills the view. The parsed trees are kept until
 *   ch_json_decoder_release(): a view's strings point into its tree (jansson keeps each
 *   string NUL-terminated with its length), and a batch's outputs are written after all
 *   its events are decoded. An integer in a text role (user_id, item, ...) is replaced
 *   in its tree by its text, so it lives as long.
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
    ch_mapping_t map;
    json_t **roots; /* the trees of the messages since the last release */
    size_t n_roots, cap_roots;
    ch_attr_t attrs[CH_CODEC_MAX_ATTRS];
    double fields[CH_MAPPING_MAX_FIELDS];
};

int ch_json_decoder_new(const ch_mapping_t *map, ch_json_decoder_t **ret) {
    *ret = calloc(1, sizeof(**ret));
    if (!*ret) {
        return -ENOMEM;
    }
    if (map) {
        (*ret)->map = *map;
    } else {
        ch_mapping_default(&(*ret)->map);
    }
    return 0;
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

/* The value at a dotted path, NULL if absent (or null on the way). *ret_parent and
 * *ret_key say where it sits. @returns 0, -EBADMSG (a non-object on the way). */
static int lookup(json_t *o, const char *path, json_t **ret, json_t **ret_parent,
                  const char **ret_key, size_t *ret_key_len, char *errbuf, size_t errlen) {
    const char *p = path;
    *ret = NULL;
    for (;;) {
        size_t n = strcspn(p, ".");
        json_t *v = json_object_getn(o, p, n);
        if (!p[n] || !v || json_is_null(v)) {
            *ret = v;
            *ret_parent = o;
            *ret_key = p;
            *ret_key_len = n;
            return 0;
        }
        if (!json_is_object(v)) {
            return fail(errbuf, errlen, -EBADMSG, "JSON field %.*s is not an object",
                        (int)(p + n - path), path);
        }
        o = v;
        p += n + 1;
    }
}

/* A text role: a string, or an integer (written in its place as its text). */
static int text(json_t *v, json_t *parent, const char *key, size_t key_len, const char *path,
                const char **ret, size_t *ret_len, char *errbuf, size_t errlen) {
    if (json_is_integer(v)) {
        char t[32];
        snprintf(t, sizeof(t), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        v = json_string(t);
        if (!v || json_object_setn_new(parent, key, key_len, v) < 0) {
            return fail(errbuf, errlen, -EBADMSG, "out of memory holding a JSON event");
        }
    }
    if (!json_is_string(v)) {
        return fail(errbuf, errlen, -EBADMSG, "JSON field %s is not a string", path);
    }
    *ret = json_string_value(v);
    *ret_len = json_string_length(v);
    return 0;
}

static int event_time(const ch_mapping_t *m, json_t *v, int64_t *ret, char *errbuf, size_t errlen) {
    const char *path = m->path[CH_ROLE_TS];
    ch_ts_unit_t u = m->ts_unit;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        int r = ch_ts_from_text(s, n, u, ret);
        if (r < 0) {
            return fail(errbuf, errlen, -EBADMSG, "JSON field %s: '%.*s' is %s", path,
                        (int)(n > 40 ? 40 : n), s,
                        r == -ERANGE         ? "out of range"
                        : u == CH_TS_ISO8601 ? "not an ISO-8601 date-time"
                                             : "not a number or an ISO-8601 date-time");
        }
        return 0;
    }
    if (!json_is_number(v) || u == CH_TS_ISO8601) {
        return fail(errbuf, errlen, -EBADMSG, "JSON field %s is %s", path,
                    u == CH_TS_ISO8601 ? "not an ISO-8601 string"
                    : u == CH_TS_S     ? "not a number (seconds since 1970) or a string"
                    : u == CH_TS_US    ? "not a number (microseconds since 1970) or a string"
                                       : "not a number (milliseconds since 1970) or a string");
    }
    int r = json_is_integer(v) ? ch_ts_from_int(json_integer_value(v), u, ret)
                               : ch_ts_from_double(json_real_value(v), u, ret);
    return r < 0 ? fail(errbuf, errlen, -EBADMSG, "JSON field %s is out of range", path) : 0;
}

static int attrs(ch_json_decoder_t *d, json_t *a, ch_event_view_t *ev, char *errbuf,
                 size_t errlen) {
    if (!json_is_object(a)) {
        return fail(errbuf, errlen, -EBADMSG, "JSON field %s is not an object",
                    d->map.path[CH_ROLE_ATTRS]);
    }
    if (json_object_size(a) > CH_CODEC_MAX_ATTRS) {
        return fail(errbuf, errlen, -E2BIG, "%zu attrs (at most %d)", json_object_size(a),
                    CH_CODEC_MAX_ATTRS);
    }
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach(a, key, key_len, v) {
        if (!json_is_number(v)) {
            return fail(errbuf, errlen, -EBADMSG, "attrs[%.*s] is not a number",
                        (int)(key_len > 64 ? 64 : key_len), key);
        }
        d->attrs[ev->n_attrs++] = (ch_attr_t){key, key_len, json_number_value(v)};
    }
    return 0;
}

int ch_json_decoder_decode(ch_json_decoder_t *d, const void *buf, size_t len, ch_event_view_t *ev,
                           char *errbuf, size_t errlen) {
    json_error_t je;
    memset(ev, 0, sizeof(*ev));
    ev->schema_id = -1;
    ev->attrs = d->attrs;
    ev->fields = d->fields;
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
    const ch_mapping_t *m = &d->map;
    for (int k = 0; k < CH_ROLE_N; k++) {
        json_t *v, *parent;
        const char *key;
        size_t key_len;
        int r;
        if (!m->path[k][0]) {
            continue;
        }
        if ((r = lookup(o, m->path[k], &v, &parent, &key, &key_len, errbuf, errlen)) < 0) {
            return r;
        }
        if (!v || json_is_null(v)) {
            if (ch_role_required((ch_role_t)k)) {
                bool own = strcmp(m->path[k], ch_role_name((ch_role_t)k)) == 0;
                return fail(errbuf, errlen, -EBADMSG, "JSON field %s is missing%s%s%s", m->path[k],
                            own ? "" : " (input.map.", own ? "" : ch_role_name(k), own ? "" : ")");
            }
            continue;
        }
        switch (k) {
        case CH_ROLE_TS:
            r = event_time(m, v, &ev->ts_ms, errbuf, errlen);
            break;
        case CH_ROLE_AMOUNT:
            if (!json_is_number(v)) {
                return fail(errbuf, errlen, -EBADMSG, "JSON field %s is not a number", m->path[k]);
            }
            ev->has_amount = true;
            ev->amount = json_number_value(v);
            break;
        case CH_ROLE_ATTRS:
            r = attrs(d, v, ev, errbuf, errlen);
            break;
        default: {
            const char *t = NULL;
            size_t tl = 0;
            r = text(v, parent, key, key_len, m->path[k], &t, &tl, errbuf, errlen);
            ch_event_set_text(ev, (ch_role_t)k, t, tl);
        }
        }
        if (r < 0) {
            return r;
        }
    }
    for (size_t j = 0; j < m->n_fields; j++) {
        json_t *v, *parent;
        const char *key;
        size_t key_len;
        int r = lookup(o, m->fields[j], &v, &parent, &key, &key_len, errbuf, errlen);
        if (r < 0) {
            return r;
        }
        if (!v || json_is_null(v)) {
            continue;
        }
        if (!json_is_number(v)) {
            return fail(errbuf, errlen, -EBADMSG, "JSON field %s is not a number", m->fields[j]);
        }
        d->fields[j] = json_number_value(v);
        ev->fields_present |= UINT64_C(1) << j;
    }
    for (size_t j = 0; j < m->n_texts; j++) {
        json_t *v, *parent;
        const char *key;
        size_t key_len;
        int r = lookup(o, m->texts[j], &v, &parent, &key, &key_len, errbuf, errlen);
        if (r == 0 && v && !json_is_null(v)) {
            r = text(v, parent, key, key_len, m->texts[j], &ev->texts[j], &ev->text_lens[j], errbuf,
                     errlen);
        }
        if (r < 0) {
            return r;
        }
    }
    return 0;
}
