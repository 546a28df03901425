/*
 * csv_in.c - CSV rows to event views, by the mapping's column names (ch/csv_in.h).
 *
 * Design notes
 * - The header is resolved once per file: each role, numeric field, text field and
 *   attrs key becomes a column index, so a row is decoded by index, without lookups.
 * - A mapped column the header lacks is an error at open, naming the column and
 *   listing the header: a typo must not become silently absent values. A role left
 *   at its own name (not set in input.map.*) may be absent, as for Avro and JSON.
 */
#include "ch/csv_in.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"

typedef struct attr_col {
    int col;
    const char *key; /* owned */
    size_t key_len;
} attr_col_t;

struct ch_csv_decoder {
    ch_mapping_t map;
    size_t n_cols;
    int role[CH_ROLE_N]; /* column, or -1: absent */
    int field[CH_MAPPING_MAX_FIELDS];
    int text[CH_MAPPING_MAX_TEXTS];
    attr_col_t *attr_cols;
    size_t n_attr_cols;
    ch_attr_t attrs[CH_CODEC_MAX_ATTRS];
    double fields[CH_MAPPING_MAX_FIELDS];
};

static int find(const char *const *header, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) {
        if (strcmp(header[i], name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static int missing(const char *const *header, size_t n, const char *what, const char *col,
                   const char *why, char *errbuf, size_t errlen) {
    char list[512];
    size_t o = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n && o < sizeof(list); i++) {
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", header[i]);
    }
    return fail(errbuf, errlen, -EPROTO, "%s: no column '%s' (%s); the header has: %s", what, col,
                why, list);
}

int ch_csv_decoder_new(const ch_mapping_t *map, const char *const *header, size_t n,
                       const char *what, ch_csv_decoder_t **ret, char *errbuf, size_t errlen) {
    ch_csv_decoder_t *d = calloc(1, sizeof(*d));
    if (!d) {
        return -ENOMEM;
    }
    d->map = *map;
    d->n_cols = n;
    int r = 0;
    for (int k = 0; k < CH_ROLE_N && r == 0; k++) {
        d->role[k] = -1;
        if (k == CH_ROLE_ATTRS || !map->path[k][0]) {
            continue;
        }
        d->role[k] = find(header, n, map->path[k]);
        if (d->role[k] < 0 && (ch_role_required((ch_role_t)k) || !map->is_default[k])) {
            char why[64];
            snprintf(why, sizeof(why), "input.map.%s", ch_role_name((ch_role_t)k));
            r = missing(header, n, what, map->path[k], why, errbuf, errlen);
        }
    }
    for (size_t j = 0; j < map->n_fields && r == 0; j++) {
        if ((d->field[j] = find(header, n, map->fields[j])) < 0) {
            r = missing(header, n, what, map->fields[j], "a numeric field a feature reads", errbuf,
                        errlen);
        }
    }
    for (size_t j = 0; j < map->n_texts && r == 0; j++) {
        if ((d->text[j] = find(header, n, map->texts[j])) < 0) {
            r = missing(header, n, what, map->texts[j], "read as text by a feature or tag", errbuf,
                        errlen);
        }
    }
    size_t plen = strlen(map->path[CH_ROLE_ATTRS]);
    for (size_t i = 0; i < n && r == 0 && plen; i++) {
        if (strncmp(header[i], map->path[CH_ROLE_ATTRS], plen) != 0 || header[i][plen] != '.' ||
            !header[i][plen + 1]) {
            continue;
        }
        if (d->n_attr_cols == CH_CODEC_MAX_ATTRS) {
            r = fail(errbuf, errlen, -E2BIG, "%s: more than %d %s.* columns", what,
                     CH_CODEC_MAX_ATTRS, map->path[CH_ROLE_ATTRS]);
            break;
        }
        attr_col_t *na = realloc(d->attr_cols, (d->n_attr_cols + 1) * sizeof(*na));
        char *key = na ? strdup(header[i] + plen + 1) : NULL;
        if (!key) {
            if (na) {
                d->attr_cols = na;
            }
            r = -ENOMEM;
            break;
        }
        d->attr_cols = na;
        d->attr_cols[d->n_attr_cols++] = (attr_col_t){(int)i, key, strlen(key)};
    }
    if (r < 0) {
        ch_csv_decoder_free(d);
        return r;
    }
    *ret = d;
    return 0;
}

ch_csv_decoder_t *ch_csv_decoder_free(ch_csv_decoder_t *d) {
    if (!d) {
        return NULL;
    }
    for (size_t i = 0; i < d->n_attr_cols; i++) {
        free((void *)d->attr_cols[i].key);
    }
    free(d->attr_cols);
    free(d);
    return NULL;
}

/* A whole cell as a number. */
static int number(const char *s, double *ret) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end) {
        return -EINVAL;
    }
    *ret = v; /* an overflow is inf: the caller rejects it as not finite */
    return 0;
}

static int bad_number(int col, const char *cell, const char *name, char *errbuf,
                      size_t errlen) {
    return fail(errbuf, errlen, -EBADMSG, "column %d (%s): '%.40s' is not a number", col + 1, name,
                cell);
}

int ch_csv_decoder_decode(ch_csv_decoder_t *d, const char *const *cells, const size_t *lens,
                          size_t n, ch_event_view_t *ret_ev, char *errbuf, size_t errlen) {
    if (n != d->n_cols) {
        return fail(errbuf, errlen, -EBADMSG, "%zu columns where the header has %zu", n,
                    d->n_cols);
    }
    ch_event_view_t ev = {.attrs = d->attrs, .fields = d->fields, .schema_id = -1};
    for (int k = 0; k < CH_ROLE_N; k++) {
        int c = d->role[k];
        if (c < 0) {
            continue;
        }
        const char *s = cells[c];
        size_t sl = lens[c];
        if (k == CH_ROLE_TS) {
            if (!sl) {
                return fail(errbuf, errlen, -EBADMSG, "column %d (%s, ts) is empty", c + 1,
                            d->map.path[k]);
            }
            int r = ch_ts_from_text(s, sl, d->map.ts_unit, &ev.ts_ms);
            if (r < 0) {
                return fail(errbuf, errlen, -EBADMSG, "column %d (%s, ts): '%.40s' is %s", c + 1,
                            d->map.path[k], s, r == -ERANGE ? "out of range" : "not a time");
            }
        } else if (k == CH_ROLE_AMOUNT) {
            if (sl && number(s, &ev.amount) < 0) {
                return bad_number(c, s, d->map.path[k], errbuf, errlen);
            }
            ev.has_amount = sl > 0;
        } else if (sl || k == CH_ROLE_USER_ID) {
            ch_event_set_text(&ev, (ch_role_t)k, s, sl);
        }
    }
    if (!ev.user_id) {
        return fail(errbuf, errlen, -EBADMSG, "no user_id column");
    }
    for (size_t j = 0; j < d->map.n_fields; j++) {
        int c = d->field[j];
        if (lens[c]) {
            if (number(cells[c], &d->fields[j]) < 0) {
                return bad_number(c, cells[c], d->map.fields[j], errbuf, errlen);
            }
            ev.fields_present |= UINT64_C(1) << j;
        }
    }
    for (size_t j = 0; j < d->map.n_texts; j++) {
        int c = d->text[j];
        ev.texts[j] = lens[c] ? cells[c] : NULL;
        ev.text_lens[j] = lens[c];
    }
    for (size_t i = 0; i < d->n_attr_cols; i++) {
        int c = d->attr_cols[i].col;
        if (!lens[c]) {
            continue;
        }
        ch_attr_t *a = &d->attrs[ev.n_attrs];
        if (number(cells[c], &a->value) < 0) {
            return bad_number(c, cells[c], d->attr_cols[i].key, errbuf, errlen);
        }
        a->key = d->attr_cols[i].key;
        a->key_len = d->attr_cols[i].key_len;
        ev.n_attrs++;
    }
    *ret_ev = ev;
    return 0;
}
