/*
 * rowout.c - featurize's rows as CSV, JSON Lines or an Avro container (rowout.h).
 *
 * Design notes
 * - Floats are written with nine significant digits (ch_json_float), which read back
 *   as the same float32; in Avro they are floats, nothing rounded.
 * - The Avro container's sync marker is the schema's SHA-256 (first 16 bytes), so the
 *   same rows make the same file.
 */
#include "rowout.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "ch/avro_out.h"
#include "ch/json.h"

struct ch_rowout {
    ch_rowout_format_t fmt;
    FILE *out;
    ch_rowout_cols_t cols;
    ch_buf_t line;
    ch_buf_t cell; /* a CSV cell being built (a tag's JSON array) */
    ch_avro_out_t *avro;
};

int ch_rowout_csv_cell(ch_buf_t *b, const char *s, size_t n) {
    if (!memchr(s, ',', n) && !memchr(s, '"', n) && !memchr(s, '\n', n) && !memchr(s, '\r', n)) {
        return ch_buf_append(b, s, n);
    }
    int r = ch_buf_append(b, "\"", 1);
    for (size_t i = 0; i < n && r == 0; i++) {
        r = s[i] == '"' ? ch_buf_append(b, "\"\"", 2) : ch_buf_append(b, s + i, 1);
    }
    return r ? r : ch_buf_append(b, "\"", 1);
}

/* The Avro schema of the rows: the CSV columns, typed. */
static int avro_schema(const ch_rowout_cols_t *c, ch_buf_t *b) {
    int r = ch_buf_printf(b, "{\"type\":\"record\",\"name\":\"FeatureRow\",\"namespace\":"
                             "\"cohortd\",\"fields\":[{\"name\":\"user_id\",\"type\":\"string\"},"
                             "{\"name\":\"event_id\",\"type\":[\"null\",\"string\"]},"
                             "{\"name\":\"event_time\",\"type\":{\"type\":\"long\","
                             "\"logicalType\":\"timestamp-millis\"}}");
    for (size_t f = 0; f < c->n_features && !r; f++) {
        r = ch_buf_printf(b, ",{\"name\":\"%s\",\"type\":\"float\"}", c->features[f]);
    }
    if (!r && c->segments) {
        r = ch_buf_printf(b, ",{\"name\":\"segment\",\"type\":[\"null\",\"int\"]}");
    }
    if (!r && c->n_tags) {
        r = ch_buf_printf(b, ",{\"name\":\"tags\",\"type\":{\"type\":\"map\",\"values\":"
                             "{\"type\":\"array\",\"items\":\"string\"}}}");
    }
    if (!r && c->scores) {
        r = ch_buf_printf(b, ",{\"name\":\"score\",\"type\":\"float\"},{\"name\":\"alert\","
                             "\"type\":\"boolean\"},{\"name\":\"reasons\",\"type\":{\"type\":"
                             "\"array\",\"items\":{\"type\":\"record\",\"name\":\"Reason\","
                             "\"fields\":[{\"name\":\"feature\",\"type\":\"string\"},{\"name\":"
                             "\"contribution\",\"type\":\"float\"}]}}}");
        if (!r && c->challenger) {
            r = ch_buf_printf(b, ",{\"name\":\"challenger_score\",\"type\":\"float\"},"
                                 "{\"name\":\"challenger_alert\",\"type\":\"boolean\"}");
        }
    }
    if (!r && c->labels) {
        r = ch_buf_printf(b, ",{\"name\":\"label\",\"type\":[\"null\",\"double\"]}%s",
                          c->label_times
                              ? ",{\"name\":\"label_time\",\"type\":[\"null\",\"long\"]}"
                              : "");
    }
    r = r ? r : ch_buf_append(b, "]}", 3); /* with its NUL */
    return r;
}

int ch_rowout_check(ch_rowout_format_t fmt, const ch_rowout_cols_t *cols, char *errbuf,
                    size_t errlen) {
    static const char *const fixed[] = {"user_id",   "event_id",         "event_time",
                                        "score",     "alert",            "reasons",
                                        "label",     "label_time",       "challenger_score",
                                        "challenger_alert", "segment",  "tags"};
    for (size_t f = 0; f < cols->n_features; f++) {
        const char *n = cols->features[f];
        for (size_t k = 0; k < sizeof(fixed) / sizeof(*fixed); k++) {
            if ((strcmp(fixed[k], "segment") == 0 && !cols->segments) ||
                (strcmp(fixed[k], "tags") == 0 && !cols->n_tags)) {
                continue; /* not a column of this run */
            }
            if (strcmp(n, fixed[k]) == 0) {
                snprintf(errbuf, errlen, "feature.%s: the name of a featurize column; rename it",
                         n);
                return -EINVAL;
            }
        }
        bool ok = fmt != CH_ROWOUT_AVRO ||
                  (*n >= 'A' && *n <= 'Z') || (*n >= 'a' && *n <= 'z') || *n == '_';
        for (const char *c = n + 1; ok && fmt == CH_ROWOUT_AVRO && *c; c++) {
            ok = (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || *c == '_' ||
                 (*c >= '0' && *c <= '9');
        }
        if (!ok) {
            snprintf(errbuf, errlen,
                     "feature.%s: not an Avro field name ([A-Za-z_][A-Za-z0-9_]*): rename it "
                     "for --format avro, or write csv or jsonl",
                     n);
            return -EINVAL;
        }
    }
    return 0;
}

static int write_all(ch_rowout_t *w) {
    return fwrite(w->line.data, 1, w->line.len, w->out) == w->line.len ? 0 : -EIO;
}

int ch_rowout_new(ch_rowout_format_t fmt, FILE *out, const ch_rowout_cols_t *cols,
                  ch_rowout_t **ret) {
    ch_rowout_t *w = calloc(1, sizeof(*w));
    if (!w) {
        return -ENOMEM;
    }
    *w = (ch_rowout_t){.fmt = fmt, .out = out, .cols = *cols};
    ch_buf_init(&w->line);
    ch_buf_init(&w->cell);
    const ch_rowout_cols_t *c = cols;
    ch_buf_t *b = &w->line;
    int r = 0;
    if (fmt == CH_ROWOUT_AVRO) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        r = avro_schema(c, b);
        r = r || EVP_Digest(b->data, b->len, md, &n, EVP_sha256(), NULL) ? r : -ENOMEM;
        r = r ? r : ch_avro_out_new(out, (const char *)b->data, md, &w->avro);
    } else if (fmt == CH_ROWOUT_CSV) {
        r = ch_buf_printf(b, "user_id,event_id,event_time");
        for (size_t f = 0; f < c->n_features && !r; f++) {
            r = ch_buf_printf(b, ",%s", c->features[f]);
        }
        if (!r && c->segments) {
            r = ch_buf_printf(b, ",segment");
        }
        for (size_t t = 0; t < c->n_tags && !r; t++) {
            r = ch_buf_printf(b, ",tags.%s", c->tags[t]);
        }
        if (!r && c->scores) {
            r = ch_buf_printf(b, ",score,alert,reasons%s",
                              c->challenger ? ",challenger_score,challenger_alert" : "");
        }
        if (!r && c->labels) {
            r = ch_buf_printf(b, ",label%s", c->label_times ? ",label_time" : "");
        }
        r = r ? r : ch_buf_append(b, "\n", 1);
        r = r ? r : write_all(w);
    }
    if (r < 0) {
        ch_buf_done(&w->line);
        ch_buf_done(&w->cell);
        free(w);
        return r;
    }
    *ret = w;
    return 0;
}

/* The reasons of a row as one CSV cell: feature=contribution;... */
static int csv_reasons(ch_buf_t *b, const ch_reason_t *rs, size_t n) {
    int r = 0;
    for (size_t i = 0; i < n && !r; i++) {
        r = ch_buf_printf(b, "%s%s=", i ? ";" : "", rs[i].feature);
        r = r ? r : ch_json_float(b, rs[i].contribution);
    }
    return r;
}

static int csv_row(ch_rowout_t *w, const ch_row_t *x) {
    const ch_rowout_cols_t *c = &w->cols;
    ch_buf_t *b = &w->line;
    int r = ch_rowout_csv_cell(b, x->uid, x->uid_len);
    r = r ? r : ch_buf_append(b, ",", 1);
    r = r || !x->eid ? r : ch_rowout_csv_cell(b, x->eid, x->eid_len);
    r = r ? r : ch_buf_printf(b, ",%lld", (long long)x->ts_ms);
    for (size_t f = 0; f < c->n_features && !r; f++) {
        r = ch_buf_append(b, ",", 1);
        r = r || !isfinite(x->x[f]) ? r : ch_json_float(b, x->x[f]);
    }
    if (!r && c->segments) {
        r = x->segment >= 0 ? ch_buf_printf(b, ",%d", (int)x->segment) : ch_buf_append(b, ",", 1);
    }
    for (size_t t = 0; t < c->n_tags && !r; t++) { /* a JSON array of the values, as a cell */
        const ch_tag_values_t *tv = &x->tags[t];
        w->cell.len = 0;
        r = ch_buf_append(&w->cell, "[", 1);
        for (size_t i = 0; i < tv->n && !r; i++) {
            r = i ? ch_buf_append(&w->cell, ",", 1) : 0;
            r = r ? r : ch_json_string(&w->cell, tv->vals[i], tv->lens[i]);
        }
        r = r ? r : ch_buf_append(&w->cell, "]", 1);
        r = r ? r : ch_buf_append(b, ",", 1);
        r = r ? r : ch_rowout_csv_cell(b, (const char *)w->cell.data, w->cell.len);
    }
    if (!r && c->scores) {
        r = ch_buf_append(b, ",", 1);
        r = r ? r : ch_json_float(b, x->score);
        r = r ? r : ch_buf_printf(b, ",%d,", x->alert);
        r = r ? r : csv_reasons(b, x->reasons, x->n_reasons);
        if (!r && c->challenger) {
            r = ch_buf_append(b, ",", 1);
            r = r ? r : ch_json_float(b, x->score2);
            r = r ? r : ch_buf_printf(b, ",%d", x->alert2);
        }
    }
    if (!r && c->labels) {
        r = ch_buf_append(b, ",", 1);
        r = r || !x->has_label ? r : ch_json_double(b, x->label);
        if (!r && c->label_times) {
            r = ch_buf_append(b, ",", 1);
            r = r || !x->has_label || x->label_ts_ms == INT64_MIN
                    ? r
                    : ch_buf_printf(b, "%lld", (long long)x->label_ts_ms);
        }
    }
    return r;
}

static int json_row(ch_rowout_t *w, const ch_row_t *x) {
    const ch_rowout_cols_t *c = &w->cols;
    ch_buf_t *b = &w->line;
    int r = ch_buf_append(b, "{\"user_id\":", 11);
    r = r ? r : ch_json_string(b, x->uid, x->uid_len);
    r = r ? r : ch_buf_append(b, ",\"event_id\":", 12);
    r = r ? r : x->eid ? ch_json_string(b, x->eid, x->eid_len) : ch_buf_append(b, "null", 4);
    r = r ? r : ch_buf_printf(b, ",\"event_time\":%lld", (long long)x->ts_ms);
    for (size_t f = 0; f < c->n_features && !r; f++) {
        r = ch_buf_printf(b, ",\"%s\":", c->features[f]);
        r = r ? r : ch_json_float(b, x->x[f]);
    }
    if (!r && c->segments) {
        r = x->segment >= 0 ? ch_buf_printf(b, ",\"segment\":%d", (int)x->segment)
                            : ch_buf_append(b, ",\"segment\":null", 15);
    }
    if (!r && c->n_tags) {
        r = ch_json_tags(b, x->tags, c->n_tags); /* ,"tags":{...} */
    }
    if (!r && c->scores) {
        r = ch_buf_append(b, ",\"score\":", 9);
        r = r ? r : ch_json_float(b, x->score);
        r = r ? r : ch_buf_printf(b, ",\"alert\":%s,\"reasons\":", x->alert ? "true" : "false");
        r = r ? r : ch_json_reasons(b, x->reasons, x->n_reasons);
        if (!r && c->challenger) {
            r = ch_buf_append(b, ",\"challenger_score\":", 20);
            r = r ? r : ch_json_float(b, x->score2);
            r = r ? r
                  : ch_buf_printf(b, ",\"challenger_alert\":%s", x->alert2 ? "true" : "false");
        }
    }
    if (!r && c->labels) {
        r = ch_buf_append(b, ",\"label\":", 9);
        r = r ? r : x->has_label ? ch_json_double(b, x->label) : ch_buf_append(b, "null", 4);
        if (!r && c->label_times) {
            r = x->has_label && x->label_ts_ms != INT64_MIN
                    ? ch_buf_printf(b, ",\"label_time\":%lld", (long long)x->label_ts_ms)
                    : ch_buf_append(b, ",\"label_time\":null", 18);
        }
    }
    return r ? r : ch_buf_append(b, "}", 1);
}

static int avro_row(ch_rowout_t *w, const ch_row_t *x) {
    const ch_rowout_cols_t *c = &w->cols;
    ch_buf_t *b = ch_avro_out_record(w->avro);
    int r = ch_avro_put_string(b, x->uid, x->uid_len);
    r = r ? r : ch_avro_put_long(b, x->eid ? 1 : 0);
    r = r || !x->eid ? r : ch_avro_put_string(b, x->eid, x->eid_len);
    r = r ? r : ch_avro_put_long(b, x->ts_ms);
    for (size_t f = 0; f < c->n_features && !r; f++) {
        r = ch_avro_put_float(b, x->x[f]);
    }
    if (!r && c->segments) { /* ["null","int"]: the branch, then the int (zigzag, as a long) */
        r = ch_avro_put_long(b, x->segment >= 0 ? 1 : 0);
        r = r || x->segment < 0 ? r : ch_avro_put_long(b, x->segment);
    }
    if (!r && c->n_tags) { /* a map in one block of arrays in one block each */
        r = ch_avro_put_long(b, (int64_t)c->n_tags);
        for (size_t t = 0; t < c->n_tags && !r; t++) {
            const ch_tag_values_t *tv = &x->tags[t];
            r = ch_avro_put_string(b, c->tags[t], strlen(c->tags[t]));
            r = r || !tv->n ? r : ch_avro_put_long(b, (int64_t)tv->n);
            for (size_t i = 0; i < tv->n && !r; i++) {
                r = ch_avro_put_string(b, tv->vals[i], tv->lens[i]);
            }
            r = r ? r : ch_avro_put_long(b, 0);
        }
        r = r ? r : ch_avro_put_long(b, 0);
    }
    if (!r && c->scores) {
        r = ch_avro_put_float(b, x->score);
        r = r ? r : ch_avro_put_bool(b, x->alert);
        if (!r && x->n_reasons) {
            r = ch_avro_put_long(b, (int64_t)x->n_reasons);
            for (size_t i = 0; i < x->n_reasons && !r; i++) {
                const ch_reason_t *rs = &x->reasons[i];
                r = ch_avro_put_string(b, rs->feature, strlen(rs->feature));
                r = r ? r : ch_avro_put_float(b, rs->contribution);
            }
        }
        r = r ? r : ch_avro_put_long(b, 0); /* the array's end */
        if (!r && c->challenger) {
            r = ch_avro_put_float(b, x->score2);
            r = r ? r : ch_avro_put_bool(b, x->alert2);
        }
    }
    if (!r && c->labels) {
        r = ch_avro_put_long(b, x->has_label ? 1 : 0);
        r = r || !x->has_label ? r : ch_avro_put_double(b, x->label);
        if (!r && c->label_times) {
            bool has = x->has_label && x->label_ts_ms != INT64_MIN;
            r = ch_avro_put_long(b, has ? 1 : 0);
            r = r || !has ? r : ch_avro_put_long(b, x->label_ts_ms);
        }
    }
    return r ? r : ch_avro_out_commit(w->avro);
}

int ch_rowout_write(ch_rowout_t *w, const ch_row_t *x) {
    if (w->fmt == CH_ROWOUT_AVRO) {
        return avro_row(w, x);
    }
    w->line.len = 0;
    int r = w->fmt == CH_ROWOUT_CSV ? csv_row(w, x) : json_row(w, x);
    r = r ? r : ch_buf_append(&w->line, "\n", 1);
    return r ? r : write_all(w);
}

int ch_rowout_close(ch_rowout_t *w) {
    if (!w) {
        return 0;
    }
    int r = ch_avro_out_close(w->avro);
    ch_buf_done(&w->line);
    ch_buf_done(&w->cell);
    free(w);
    return r;
}
