/*
 * tool_jsonl.c - JSON Lines, flattened (see tool_jsonl.h); jansson parses.
 */
#include "tool_jsonl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int column(tool_jsonl_t *t, const char *name) {
    for (int i = 0; i < t->n_names; i++) {
        if (strcmp(t->names[i], name) == 0) {
            return i;
        }
    }
    if (t->n_names == t->max_names) {
        return -2;
    }
    char **n = realloc(t->names, (size_t)(t->n_names + 1) * sizeof(*n));
    if (!n) {
        return -1;
    }
    t->names = n;
    if (!(t->names[t->n_names] = strdup(name))) {
        return -1;
    }
    return t->n_names++;
}

/* Adds the scalars of v under prefix to row r. @returns 0, -1 (no memory), -2 (too many
 * columns). */
static int flatten(tool_jsonl_t *t, tool_jsonl_row_t *r, const char *prefix, json_t *v) {
    if (json_is_object(v)) {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            size_t n = strlen(prefix) + strlen(key) + 2;
            char *p = malloc(n);
            if (!p) {
                return -1;
            }
            snprintf(p, n, "%s%s%s", prefix, *prefix ? "." : "", key);
            int rc = flatten(t, r, p, x);
            free(p);
            if (rc < 0) {
                return rc;
            }
        }
        return 0;
    }
    if (json_is_array(v) || json_is_null(v)) {
        return 0;
    }
    char num[64];
    const char *s = num;
    if (json_is_string(v)) {
        s = json_string_value(v);
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
    } else {
        s = json_is_true(v) ? "true" : "false";
    }
    int c = column(t, prefix);
    if (c < 0) {
        return c;
    }
    int *idx = realloc(r->idx, (size_t)(r->n + 1) * sizeof(*idx));
    if (idx) {
        r->idx = idx;
    }
    char **val = idx ? realloc(r->val, (size_t)(r->n + 1) * sizeof(*val)) : NULL;
    if (!val) {
        return -1;
    }
    r->val = val;
    if (!(r->val[r->n] = strdup(s))) {
        return -1;
    }
    r->idx[r->n++] = c;
    return 0;
}

int tool_jsonl_read(FILE *f, const char *path, int max_cols, tool_jsonl_t *t) {
    memset(t, 0, sizeof(*t));
    t->max_names = max_cols;
    char *buf = NULL;
    size_t cap = 0;
    long line = 0, rows_cap = 0;
    int rc = 0;
    while (rc == 0 && getline(&buf, &cap, f) >= 0) {
        line++;
        const char *p = buf;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            p++;
        }
        if (!*p) {
            continue;
        }
        json_error_t je;
        json_t *o = json_loads(buf, JSON_REJECT_DUPLICATES, &je);
        if (!o || !json_is_object(o)) {
            fprintf(stderr, "%s:%ld:%d: %s\n", path, line, o ? 1 : je.column,
                    o ? "not a JSON object" : je.text);
            json_decref(o);
            rc = -1;
            break;
        }
        if (t->n_rows == rows_cap) {
            rows_cap = rows_cap ? 2 * rows_cap : 1024;
            tool_jsonl_row_t *r = realloc(t->rows, (size_t)rows_cap * sizeof(*r));
            if (!r) {
                json_decref(o);
                fprintf(stderr, "%s:%ld: out of memory\n", path, line);
                rc = -1;
                break;
            }
            t->rows = r;
        }
        tool_jsonl_row_t *r = &t->rows[t->n_rows++];
        *r = (tool_jsonl_row_t){.line = line};
        int fr = flatten(t, r, "", o);
        json_decref(o);
        if (fr < 0) {
            fprintf(stderr, "%s:%ld: %s\n", path, line,
                    fr == -2 ? "more fields than the tool takes" : "out of memory");
            rc = -1;
        }
    }
    free(buf);
    return rc;
}

void tool_jsonl_row(const tool_jsonl_t *t, long i, char **cols, long *ret_line) {
    static char empty[] = "";
    const tool_jsonl_row_t *r = &t->rows[i];
    for (int c = 0; c < t->n_names; c++) {
        cols[c] = empty;
    }
    for (int k = 0; k < r->n; k++) {
        cols[r->idx[k]] = r->val[k];
    }
    *ret_line = r->line;
}

void tool_jsonl_free(tool_jsonl_t *t) {
    for (long i = 0; i < t->n_rows; i++) {
        for (int k = 0; k < t->rows[i].n; k++) {
            free(t->rows[i].val[k]);
        }
        free(t->rows[i].idx);
        free(t->rows[i].val);
    }
    free(t->rows);
    for (int i = 0; i < t->n_names; i++) {
        free(t->names[i]);
    }
    free(t->names);
    memset(t, 0, sizeof(*t));
}
