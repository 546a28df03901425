/*
 * codec.c - schema-resolving Avro decoder for user events, encoders for outputs.
 *
 * Design notes
 * - Avro-C parses the .avsc files; the binary is read here, by a small
 *   bounds-checked cursor, never by Avro-C's value readers. Every length is
 *   checked against the bytes left before it is used, containers are capped,
 *   and nothing is allocated while decoding, so garbage input costs O(len).
 * - Resolution is compiled once per writer schema into a program, following the
 *   mapping (ch/mapping.h): one step per writer field, each a role or numeric field of
 *   the event view (with the writer's type, converted at decode time), a nested record
 *   on the way to a mapped path (one sub-program per union branch), or a skip. Roles
 *   the writer lacks are absent (null); user_id and ts must be in every writer and
 *   non-null in every record. The reader schema is checked at start: every mapped path
 *   exists with a type its role can be read from.
 * - Event time: the unit comes from input.map.ts_unit, else from the field's Avro
 *   logical type (read from the schema's JSON with jansson: Avro-C drops logical
 *   types), else milliseconds; strings are ISO-8601.
 * - Invariant: a decoded view points only into the message buffer, the schemas (enum
 *   symbols) or the decoder (attrs, numeric fields, the text of integer ids, kept
 *   until ch_decoder_release()).
 */
#include "ch/codec.h"
#include "errbuf.h"

#include <avro.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "codec.c assumes a little-endian host (Avro floats are little-endian)"
#endif

#define MAX_SCHEMAS 1024
#define MAX_SCHEMA_BYTES (1 << 20)
#define MAX_CONTAINER_ITEMS (1 << 20)
#define MAX_DEPTH 32
#define MAX_PROGRAMS 65536 /* writer schemas a decoder learns (directory and registry) */

/* ---------------------------------------------------------------- errors */


const char *ch_decoder_reason(int err) {
    switch (err) {
    case -EBADMSG:
        return "decode_error";
    case -EPROTO:
        return "schema_error";
    case -E2BIG:
        return "too_many_attrs";
    default:
        return "decode_error";
    }
}

/* ---------------------------------------------------------------- schemas */

typedef struct schema_entry {
    int32_t id;
    char file[256];
    avro_schema_t schema;
    json_t *json; /* the same schema as JSON: Avro-C drops logical types */
} schema_entry_t;

struct ch_schemas {
    char dir[1024];
    schema_entry_t *entries;
    size_t n;
};

static int read_file(const char *path, char **ret_text, size_t *ret_len) {
    FILE *f = fopen(path, "re");
    if (!f) {
        return -errno;
    }
    char *text = malloc(MAX_SCHEMA_BYTES + 1);
    if (!text) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(text, 1, MAX_SCHEMA_BYTES + 1, f);
    int err = ferror(f) ? -EIO : 0;
    fclose(f);
    if (!err && n > MAX_SCHEMA_BYTES) {
        err = -EFBIG;
    }
    if (err) {
        free(text);
        return err;
    }
    text[n] = '\0';
    *ret_text = text;
    *ret_len = n;
    return 0;
}

static int parse_schema_file(const char *path, avro_schema_t *ret, json_t **ret_json, char *errbuf,
                             size_t errlen) {
    char *text = NULL;
    size_t len = 0;
    int r = read_file(path, &text, &len);
    if (r < 0) {
        return fail(errbuf, errlen, r == -ENOENT ? -ENOENT : -EINVAL, "%s: %s", path,
                    strerror(-r));
    }
    avro_schema_t schema = NULL;
    json_t *json = NULL;
    if (avro_schema_from_json_length(text, len, &schema) != 0) {
        r = fail(errbuf, errlen, -EINVAL, "%s: invalid Avro schema: %s", path, avro_strerror());
    } else if (!(json = json_loadb(text, len, 0, NULL))) {
        avro_schema_decref(schema);
        r = fail(errbuf, errlen, -EINVAL, "%s: not JSON", path);
    }
    free(text);
    if (r == 0) {
        *ret = schema;
        *ret_json = json;
    }
    return r;
}

ch_schemas_t *ch_schemas_free(ch_schemas_t *s) {
    if (!s) {
        return NULL;
    }
    for (size_t i = 0; i < s->n; i++) {
        if (s->entries[i].schema) {
            avro_schema_decref(s->entries[i].schema);
        }
        json_decref(s->entries[i].json);
    }
    free(s->entries);
    free(s);
    return NULL;
}

int ch_schemas_load(const char *dir, ch_schemas_t **ret_schemas, char *errbuf, size_t errlen) {
    ch_schemas_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    s->entries = calloc(MAX_SCHEMAS, sizeof(*s->entries));
    if (!s->entries) {
        free(s);
        return -ENOMEM;
    }
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    char path[1400];
    snprintf(path, sizeof(path), "%s/ids", dir);
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        ch_schemas_free(s);
        return fail(errbuf, errlen, e == ENOENT ? -ENOENT : -EIO,
                    "%s: %s (the schema directory needs an 'ids' file: \"<id> <file.avsc>\" "
                    "per line)",
                    path, strerror(e));
    }
    char line[512];
    int lineno = 0, r = 0;
    while (r == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) {
            *hash = '\0';
        }
        long id;
        char file[256];
        char extra[2];
        const char *first = line;
        while (isspace((unsigned char)*first)) {
            first++;
        }
        if (!*first) {
            continue; /* blank or comment */
        }
        int n = sscanf(line, "%ld %255s %1s", &id, file, extra);
        if (n != 2 || id < 0 || id > INT32_MAX || strchr(file, '/')) {
            r = fail(errbuf, errlen, -EINVAL, "%s:%d: expected \"<id> <file.avsc>\"", path,
                     lineno);
            break;
        }
        for (size_t i = 0; i < s->n; i++) {
            if (s->entries[i].id == id) {
                r = fail(errbuf, errlen, -EINVAL, "%s:%d: schema id %ld listed twice", path,
                         lineno, id);
            }
        }
        if (r == 0 && s->n == MAX_SCHEMAS) {
            r = fail(errbuf, errlen, -EINVAL, "%s:%d: more than %d schemas", path, lineno,
                     MAX_SCHEMAS);
        }
        if (r < 0) {
            break;
        }
        schema_entry_t *e = &s->entries[s->n];
        e->id = (int32_t)id;
        snprintf(e->file, sizeof(e->file), "%s", file);
        char spath[1400];
        snprintf(spath, sizeof(spath), "%s/%s", dir, file);
        char why[512];
        r = parse_schema_file(spath, &e->schema, &e->json, why, sizeof(why));
        if (r < 0) {
            r = fail(errbuf, errlen, -EINVAL, "%s:%d: %s", path, lineno, why);
            break;
        }
        s->n++;
    }
    fclose(f);
    if (r < 0) {
        ch_schemas_free(s);
        return r;
    }
    *ret_schemas = s;
    return 0;
}

int ch_schemas_id_of(const ch_schemas_t *s, const char *file_name, int32_t *ret_id) {
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->entries[i].file, file_name) == 0) {
            *ret_id = s->entries[i].id;
            return 0;
        }
    }
    return -ENOENT;
}

/* ---------------------------------------------------------------- binary cursor */

static avro_schema_t deref(avro_schema_t s) {
    while (s && avro_typeof(s) == AVRO_LINK) {
        s = avro_schema_link_target(s);
    }
    return s;
}

static bool is_type(avro_schema_t s, avro_type_t t) {
    return avro_typeof(s) == t;
}

typedef struct cursor {
    const unsigned char *p, *end;
    char *errbuf;
    size_t errlen;
} cursor_t;

static int bad(cursor_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(cursor_t *c, const char *fmt, ...) {
    if (c->errbuf && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->errbuf, c->errlen, fmt, ap);
        va_end(ap);
    }
    return -EBADMSG;
}

static int rd_long(cursor_t *c, int64_t *ret) {
    uint64_t v = 0;
    *ret = 0; /* defined on every path (GCC -O3 cannot see that bad() returns < 0) */
    for (int shift = 0; shift < 70; shift += 7) {
        if (c->p == c->end) {
            return bad(c, "truncated varint");
        }
        unsigned char b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *ret = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return bad(c, "varint longer than 10 bytes");
}

static int rd_int(cursor_t *c, int64_t *ret) {
    int r = rd_long(c, ret);
    if (r == 0 && (*ret < INT32_MIN || *ret > INT32_MAX)) {
        return bad(c, "int out of range");
    }
    return r;
}

static int rd_bytes(cursor_t *c, const char **ret, size_t *ret_len) {
    int64_t n;
    *ret = NULL;
    *ret_len = 0;
    int r = rd_long(c, &n);
    if (r < 0) {
        return r;
    }
    if (n < 0 || n > c->end - c->p) {
        return bad(c, "string length %lld exceeds the %lld bytes left", (long long)n,
                   (long long)(c->end - c->p));
    }
    *ret = (const char *)c->p;
    *ret_len = (size_t)n;
    c->p += n;
    return 0;
}

static int rd_fixed(cursor_t *c, void *out, size_t n) {
    if ((size_t)(c->end - c->p) < n) {
        return bad(c, "truncated value");
    }
    memcpy(out, c->p, n);
    c->p += n;
    return 0;
}

/* Reads a number of writer type w (int, long, float, double) as a double. */
static int rd_number(cursor_t *c, avro_schema_t w, double *ret) {
    int64_t l;
    float f;
    int r;
    switch (avro_typeof(w)) {
    case AVRO_INT32:
        r = rd_int(c, &l);
        *ret = (double)l;
        return r;
    case AVRO_INT64:
        r = rd_long(c, &l);
        *ret = (double)l;
        return r;
    case AVRO_FLOAT:
        r = rd_fixed(c, &f, 4);
        *ret = f;
        return r;
    case AVRO_DOUBLE:
        return rd_fixed(c, ret, 8);
    default:
        return bad(c, "not a number");
    }
}

static int skip_value(cursor_t *c, avro_schema_t w, int depth);

/* Reads Avro block-encoded container items, calling item() for each. */
static int rd_blocks(cursor_t *c, int (*item)(cursor_t *, void *), void *ctx) {
    int64_t total = 0;
    for (;;) {
        int64_t count;
        int r = rd_long(c, &count);
        if (r < 0) {
            return r;
        }
        if (count == 0) {
            return 0;
        }
        if (count < 0) {
            int64_t block_bytes;
            if (count == INT64_MIN) {
                return bad(c, "bad block count");
            }
            count = -count;
            if ((r = rd_long(c, &block_bytes)) < 0) {
                return r;
            }
        }
        if (count > MAX_CONTAINER_ITEMS - total) {
            return bad(c, "container with more than %d items", MAX_CONTAINER_ITEMS);
        }
        total += count;
        for (int64_t i = 0; i < count; i++) {
            if ((r = item(c, ctx)) < 0) {
                return r;
            }
        }
    }
}

typedef struct skip_ctx {
    avro_schema_t type;
    int depth;
    bool is_map;
} skip_ctx_t;

static int skip_item(cursor_t *c, void *vctx) {
    skip_ctx_t *ctx = vctx;
    if (ctx->is_map) {
        const char *k;
        size_t kl;
        int r = rd_bytes(c, &k, &kl);
        if (r < 0) {
            return r;
        }
    }
    return skip_value(c, ctx->type, ctx->depth);
}

static int skip_value(cursor_t *c, avro_schema_t w, int depth) {
    if (depth > MAX_DEPTH) {
        return bad(c, "schema nested deeper than %d", MAX_DEPTH);
    }
    w = deref(w);
    int64_t l;
    const char *s;
    size_t sl;
    int r;
    switch (avro_typeof(w)) {
    case AVRO_NULL:
        return 0;
    case AVRO_BOOLEAN:
        return rd_fixed(c, &l, 1);
    case AVRO_INT32:
    case AVRO_ENUM:
        return rd_int(c, &l);
    case AVRO_INT64:
        return rd_long(c, &l);
    case AVRO_FLOAT:
        return rd_fixed(c, &l, 4);
    case AVRO_DOUBLE:
        return rd_fixed(c, &l, 8);
    case AVRO_STRING:
    case AVRO_BYTES:
        return rd_bytes(c, &s, &sl);
    case AVRO_FIXED: {
        int64_t n = avro_schema_fixed_size(w);
        if (n < 0 || n > c->end - c->p) {
            return bad(c, "truncated fixed");
        }
        c->p += n;
        return 0;
    }
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(w); i++) {
            r = skip_value(c, avro_schema_record_field_get_by_index(w, (int)i), depth + 1);
            if (r < 0) {
                return r;
            }
        }
        return 0;
    case AVRO_ARRAY: {
        skip_ctx_t ctx = {avro_schema_array_items(w), depth + 1, false};
        return rd_blocks(c, skip_item, &ctx);
    }
    case AVRO_MAP: {
        skip_ctx_t ctx = {avro_schema_map_values(w), depth + 1, true};
        return rd_blocks(c, skip_item, &ctx);
    }
    case AVRO_UNION:
        if ((r = rd_long(c, &l)) < 0) {
            return r;
        }
        if (l < 0 || (size_t)l >= avro_schema_union_size(w)) {
            return bad(c, "union branch %lld out of range", (long long)l);
        }
        return skip_value(c, avro_schema_union_branch(w, (int)l), depth + 1);
    default:
        return bad(c, "unsupported writer type");
    }
}

/* ---------------------------------------------------------------- resolution */

/* A step's target: a role (ch_role_t), numeric field j (T_FIELD0 + j), text field j
 * (T_TEXT0 + j), a skip, or a nested record on the way to mapped paths. */
#define T_FIELD0 CH_ROLE_N
#define T_TEXT0 (T_FIELD0 + CH_MAPPING_MAX_FIELDS)
#define T_SKIP (T_TEXT0 + CH_MAPPING_MAX_TEXTS)
#define T_NEST (T_SKIP + 1)

typedef struct rec rec_t;

typedef struct step {
    int target;
    avro_schema_t wtype; /* borrowed from the writer schema */
    char *path;          /* the field's dotted path, for messages */
    ch_ts_unit_t unit;   /* role ts: the unit of a numeric value */
    rec_t **nested;      /* T_NEST: per union branch (one for a record); NULL: not a record */
    size_t n_nested;
} step_t;

struct rec {
    step_t *steps;
    size_t n_steps;
};

typedef struct program {
    int32_t id;
    avro_schema_t writer; /* a reference is held */
    rec_t *root;
    bool ok;
    char err[256];
} program_t;

typedef struct text_block {
    struct text_block *next;
    size_t used;
    char text[16384];
} text_block_t;

struct ch_decoder {
    ch_framing_t framing;
    ch_mapping_t map;
    uint32_t required;   /* roles every record must have: user_id, ts, and those the reader
                            schema has without null (Avro: a reader field without default) */
    program_t *programs; /* one per known id: the schema directory's, then those added */
    size_t n_programs, cap_programs;
    program_t plain;
    avro_schema_t reader;
    ch_attr_t attrs[CH_CODEC_MAX_ATTRS];
    double fields[CH_MAPPING_MAX_FIELDS];
    text_block_t *texts; /* decimal text of integer ids, until ch_decoder_release() */
};

static bool is_number(avro_schema_t w) {
    return is_type(w, AVRO_DOUBLE) || is_type(w, AVRO_FLOAT) || is_type(w, AVRO_INT64) ||
           is_type(w, AVRO_INT32);
}

static bool is_text_role(int t) {
    return t == CH_ROLE_EVENT_ID || t == CH_ROLE_USER_ID || t == CH_ROLE_TYPE ||
           t == CH_ROLE_ITEM || t == CH_ROLE_CATEGORY || (t >= T_TEXT0 && t < T_SKIP);
}

/* Can a value of writer type w (not a union) be read into target t? Null always can
 * (the role is then absent; a required one makes that record bad). */
static bool branch_ok(int t, avro_schema_t w) {
    w = deref(w);
    if (is_type(w, AVRO_NULL) || t == T_SKIP) {
        return true;
    }
    if (is_text_role(t)) {
        return is_type(w, AVRO_STRING) || is_type(w, AVRO_BYTES) || is_type(w, AVRO_INT64) ||
               is_type(w, AVRO_INT32) || is_type(w, AVRO_ENUM);
    }
    if (t == CH_ROLE_TS) {
        return is_number(w) || is_type(w, AVRO_STRING);
    }
    if (t == CH_ROLE_ATTRS) {
        return is_type(w, AVRO_MAP) && is_number(deref(avro_schema_map_values(w)));
    }
    if (t == T_NEST) {
        return is_type(w, AVRO_RECORD);
    }
    return is_number(w); /* amount, numeric fields */
}

/* Some non-null branch of w can be read into t. */
static bool type_ok(int t, avro_schema_t w) {
    w = deref(w);
    if (is_type(w, AVRO_UNION)) {
        for (size_t i = 0; i < avro_schema_union_size(w); i++) {
            avro_schema_t b = deref(avro_schema_union_branch(w, (int)i));
            if (!is_type(b, AVRO_NULL) && branch_ok(t, b)) {
                return true;
            }
        }
        return false;
    }
    return !is_type(w, AVRO_NULL) && branch_ok(t, w);
}

/* Can w be null? */
static bool has_null(avro_schema_t w) {
    w = deref(w);
    if (is_type(w, AVRO_UNION)) {
        for (size_t i = 0; i < avro_schema_union_size(w); i++) {
            if (is_type(deref(avro_schema_union_branch(w, (int)i)), AVRO_NULL)) {
                return true;
            }
        }
        return false;
    }
    return is_type(w, AVRO_NULL);
}

static const char *target_need(int t) {
    return t == CH_ROLE_TS      ? "a number or an ISO-8601 string"
           : t == CH_ROLE_ATTRS ? "a map of numbers"
           : t == T_NEST        ? "a record"
           : is_text_role(t)    ? "a string, an enum or an integer"
                                : "a number";
}

static const char *target_name(const ch_mapping_t *m, int t) {
    return t < CH_ROLE_N ? ch_role_name((ch_role_t)t)
           : t < T_TEXT0 ? m->fields[t - T_FIELD0]
           : t < T_SKIP  ? m->texts[t - T_TEXT0]
                         : "";
}

static rec_t *rec_free(rec_t *r) {
    if (!r) {
        return NULL;
    }
    for (size_t i = 0; i < r->n_steps; i++) {
        for (size_t k = 0; k < r->steps[i].n_nested; k++) {
            rec_free(r->steps[i].nested[k]);
        }
        free(r->steps[i].nested);
        free(r->steps[i].path);
    }
    free(r->steps);
    free(r);
    return NULL;
}

static void program_done(program_t *p) {
    p->root = rec_free(p->root);
    if (p->writer) {
        avro_schema_decref(p->writer);
        p->writer = NULL;
    }
}

/* The target of the field at path, T_NEST if a mapped path runs through it. */
static int target_of(const ch_mapping_t *m, const char *path) {
    size_t n = strlen(path);
    for (int r = 0; r < CH_ROLE_N; r++) {
        if (strcmp(m->path[r], path) == 0) {
            return r;
        }
    }
    for (size_t j = 0; j < m->n_fields; j++) {
        if (strcmp(m->fields[j], path) == 0) {
            return T_FIELD0 + (int)j;
        }
    }
    for (size_t j = 0; j < m->n_texts; j++) {
        if (strcmp(m->texts[j], path) == 0) {
            return T_TEXT0 + (int)j;
        }
    }
    for (int r = 0; r < CH_ROLE_N; r++) {
        if (strncmp(m->path[r], path, n) == 0 && m->path[r][n] == '.') {
            return T_NEST;
        }
    }
    for (size_t j = 0; j < m->n_fields; j++) {
        if (strncmp(m->fields[j], path, n) == 0 && m->fields[j][n] == '.') {
            return T_NEST;
        }
    }
    for (size_t j = 0; j < m->n_texts; j++) {
        if (strncmp(m->texts[j], path, n) == 0 && m->texts[j][n] == '.') {
            return T_NEST;
        }
    }
    return T_SKIP;
}

typedef struct compiler {
    const ch_mapping_t *map;
    json_t *json; /* the schema's JSON (logical types), or NULL */
    const char *what;
    char *err;
    size_t errlen;
    uint32_t required; /* roles every writer must have */
    uint32_t found;    /* roles met */
    uint32_t nonnull;  /* roles met with a type without null */
    uint64_t found_fields;
    uint32_t found_texts;
} compiler_t;

/* The JSON definition of a named type anywhere in t, or NULL. */
static json_t *json_named(json_t *t, const char *name, int depth) {
    if (!t || depth > MAX_DEPTH) {
        return NULL;
    }
    if (json_is_array(t)) {
        for (size_t i = 0; i < json_array_size(t); i++) {
            json_t *f = json_named(json_array_get(t, i), name, depth + 1);
            if (f) {
                return f;
            }
        }
        return NULL;
    }
    if (!json_is_object(t)) {
        return NULL;
    }
    const char *n = json_string_value(json_object_get(t, "name"));
    const char *ty = json_string_value(json_object_get(t, "type"));
    if (n && ty && (!strcmp(ty, "record") || !strcmp(ty, "enum") || !strcmp(ty, "fixed"))) {
        const char *dot = strrchr(name, '.');
        if (!strcmp(n, name) || (dot && !strcmp(n, dot + 1))) {
            return t;
        }
    }
    json_t *f = json_named(json_object_get(t, "fields"), name, depth + 1);
    if (!f) {
        json_t *fields = json_object_get(t, "type");
        f = json_is_string(fields) ? NULL : json_named(fields, name, depth + 1);
    }
    if (!f) {
        f = json_named(json_object_get(t, "items"), name, depth + 1);
    }
    if (!f) {
        f = json_named(json_object_get(t, "values"), name, depth + 1);
    }
    return f;
}

/* The logical type of the long at path in a schema's JSON: the unit it implies (AUTO
 * when none). Follows inline and named records and ["null", ...] unions. */
static ch_ts_unit_t logical_unit(json_t *root, const char *path) {
    json_t *t = root;
    const char *p = path;
    for (int depth = 0; t && depth < MAX_DEPTH; depth++) {
        if (json_is_string(t)) {
            t = json_named(root, json_string_value(t), 0);
            continue;
        }
        if (json_is_array(t)) { /* a union: its first non-null branch */
            json_t *b = NULL;
            for (size_t i = 0; i < json_array_size(t) && !b; i++) {
                json_t *x = json_array_get(t, i);
                if (!(json_is_string(x) && !strcmp(json_string_value(x), "null"))) {
                    b = x;
                }
            }
            t = b;
            continue;
        }
        if (!json_is_object(t)) {
            return CH_TS_AUTO;
        }
        if (!*p) {
            const char *lt = json_string_value(json_object_get(t, "logicalType"));
            json_t *inner = json_object_get(t, "type");
            if (!lt && json_is_object(inner)) {
                t = inner;
                continue;
            }
            return lt && !strcmp(lt, "timestamp-micros")   ? CH_TS_US
                   : lt && !strcmp(lt, "timestamp-millis") ? CH_TS_MS
                                                           : CH_TS_AUTO;
        }
        json_t *fields = json_object_get(t, "fields");
        if (!json_is_array(fields)) {
            t = json_object_get(t, "type");
            continue;
        }
        size_t n = strcspn(p, ".");
        json_t *next = NULL;
        for (size_t i = 0; i < json_array_size(fields) && !next; i++) {
            json_t *f = json_array_get(fields, i);
            const char *name = json_string_value(json_object_get(f, "name"));
            if (name && strlen(name) == n && !memcmp(name, p, n)) {
                next = json_object_get(f, "type");
            }
        }
        p += n + (p[n] == '.');
        t = next;
    }
    return CH_TS_AUTO;
}

static rec_t *compile_rec(compiler_t *cc, avro_schema_t w, const char *prefix, int depth);

/* One writer field at path of type ft into step st. @returns false with cc->err set. */
static bool compile_step(compiler_t *cc, step_t *st, const char *path, avro_schema_t ft,
                         int depth) {
    int t = target_of(cc->map, path);
    st->target = t;
    st->wtype = ft;
    if (t == T_SKIP) {
        return true;
    }
    if (!(st->path = strdup(path))) {
        snprintf(cc->err, cc->errlen, "out of memory");
        return false;
    }
    if (!type_ok(t, ft)) {
        avro_schema_t d = deref(ft);
        snprintf(cc->err, cc->errlen, "%s: field '%s' (%s) has type %s, which is not %s", cc->what,
                 path, t == T_NEST ? "on a mapped path" : target_name(cc->map, t),
                 avro_schema_type_name(d), target_need(t));
        return false;
    }
    if (t < T_SKIP) {
        if (t < T_FIELD0) {
            cc->found |= 1u << t;
            if (!has_null(ft)) {
                cc->nonnull |= 1u << t;
            }
        } else if (t < T_TEXT0) {
            cc->found_fields |= UINT64_C(1) << (t - T_FIELD0);
        } else {
            cc->found_texts |= 1u << (t - T_TEXT0);
        }
    }
    if (t == CH_ROLE_TS) {
        ch_ts_unit_t u = cc->map->ts_unit;
        if (u == CH_TS_AUTO) {
            u = cc->json ? logical_unit(cc->json, path) : CH_TS_AUTO;
        }
        st->unit = u == CH_TS_AUTO ? CH_TS_MS : u;
        avro_schema_t d = deref(ft);
        bool string_only = is_type(d, AVRO_STRING);
        if (st->unit == CH_TS_ISO8601 && !string_only && !is_type(d, AVRO_UNION)) {
            snprintf(cc->err, cc->errlen,
                     "%s: field '%s' (ts) is a %s, not an ISO-8601 string (input.map.ts_unit)",
                     cc->what, path, avro_schema_type_name(d));
            return false;
        }
    }
    if (t != T_NEST) {
        return true;
    }
    avro_schema_t d = deref(ft);
    size_t n = is_type(d, AVRO_UNION) ? avro_schema_union_size(d) : 1;
    if (!(st->nested = calloc(n, sizeof(*st->nested)))) {
        snprintf(cc->err, cc->errlen, "out of memory");
        return false;
    }
    st->n_nested = n;
    for (size_t k = 0; k < n; k++) {
        avro_schema_t b = is_type(d, AVRO_UNION) ? deref(avro_schema_union_branch(d, (int)k)) : d;
        if (is_type(b, AVRO_RECORD) && !(st->nested[k] = compile_rec(cc, b, path, depth + 1))) {
            return false;
        }
    }
    return true;
}

static rec_t *compile_rec(compiler_t *cc, avro_schema_t w, const char *prefix, int depth) {
    if (depth > MAX_DEPTH) {
        snprintf(cc->err, cc->errlen, "%s: mapped path nested deeper than %d", cc->what, MAX_DEPTH);
        return NULL;
    }
    rec_t *rec = calloc(1, sizeof(*rec));
    size_t n = avro_schema_record_size(w);
    if (!rec || !(rec->steps = calloc(n ? n : 1, sizeof(step_t)))) {
        free(rec);
        snprintf(cc->err, cc->errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = avro_schema_record_field_name(w, (int)i);
        char path[CH_MAPPING_PATH_MAX];
        int len = snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", name);
        step_t *st = &rec->steps[rec->n_steps++];
        if (len >= (int)sizeof(path)) {
            st->target = T_SKIP; /* longer than any mapped path */
            st->wtype = avro_schema_record_field_get_by_index(w, (int)i);
            continue;
        }
        if (!compile_step(cc, st, path, avro_schema_record_field_get_by_index(w, (int)i), depth)) {
            return rec_free(rec);
        }
    }
    return rec;
}

/* Compiles the resolution of writer against the mapping; the writer must have the
 * roles of mask required. */
static void program_compile(program_t *p, const ch_mapping_t *map, uint32_t required,
                            avro_schema_t writer, json_t *json, const char *what) {
    p->writer = avro_schema_incref(writer);
    avro_schema_t w = deref(writer);
    if (!is_type(w, AVRO_RECORD)) {
        snprintf(p->err, sizeof(p->err), "%s is not a record schema", what);
        return;
    }
    compiler_t cc = {
        .map = map, .json = json, .what = what, .err = p->err, .errlen = sizeof(p->err)};
    if (!(p->root = compile_rec(&cc, w, "", 0))) {
        return;
    }
    for (int r = 0; r < CH_ROLE_N; r++) {
        if ((required & (1u << r)) && !(cc.found & (1u << r))) {
            snprintf(p->err, sizeof(p->err), "%s: no field '%.128s' (%s)", what, map->path[r],
                     ch_role_name((ch_role_t)r));
            return;
        }
    }
    p->ok = true;
}

typedef struct attrs_ctx {
    ch_decoder_t *d;
    ch_event_view_t *ev;
    avro_schema_t vtype;
    bool overflow;
} attrs_ctx_t;

static int attr_item(cursor_t *c, void *vctx) {
    attrs_ctx_t *ctx = vctx;
    const char *k;
    size_t kl;
    double v;
    int r = rd_bytes(c, &k, &kl);
    if (r == 0) {
        r = rd_number(c, ctx->vtype, &v);
    }
    if (r < 0) {
        return r;
    }
    if (ctx->ev->n_attrs == CH_CODEC_MAX_ATTRS) {
        ctx->overflow = true;
        return 0; /* keep reading so malformed input is still reported as such */
    }
    ctx->d->attrs[ctx->ev->n_attrs++] = (ch_attr_t){.key = k, .key_len = kl, .value = v};
    return 0;
}

/* Decimal text of v, alive until ch_decoder_release(). NULL: out of memory. */
static const char *id_text(ch_decoder_t *d, int64_t v, size_t *ret_len) {
    text_block_t *t = d->texts;
    if (!t || sizeof(t->text) - t->used < 24) {
        text_block_t *n = malloc(sizeof(*n));
        if (!n) {
            return NULL;
        }
        n->next = t;
        n->used = 0;
        d->texts = t = n;
    }
    char *s = t->text + t->used;
    int len = snprintf(s, 24, "%lld", (long long)v);
    t->used += (size_t)len + 1;
    *ret_len = (size_t)len;
    return s;
}

void ch_decoder_release(ch_decoder_t *d) {
    if (!d || !d->texts) {
        return;
    }
    while (d->texts->next) { /* keep one block */
        text_block_t *n = d->texts->next;
        d->texts->next = n->next;
        free(n);
    }
    d->texts->used = 0;
}

void ch_event_set_text(ch_event_view_t *ev, ch_role_t role, const char *s, size_t n) {
    const char **dst[] = {[CH_ROLE_EVENT_ID] = &ev->event_id,
                          [CH_ROLE_USER_ID] = &ev->user_id,
                          [CH_ROLE_TYPE] = &ev->type,
                          [CH_ROLE_ITEM] = &ev->item,
                          [CH_ROLE_CATEGORY] = &ev->category};
    size_t *len[] = {[CH_ROLE_EVENT_ID] = &ev->event_id_len,
                     [CH_ROLE_USER_ID] = &ev->user_id_len,
                     [CH_ROLE_TYPE] = &ev->type_len,
                     [CH_ROLE_ITEM] = &ev->item_len,
                     [CH_ROLE_CATEGORY] = &ev->category_len};
    if (role < CH_ROLE_N && dst[role]) {
        *dst[role] = s;
        *len[role] = n;
    }
}

/* The event time from a string: a number in the stated unit, or ISO-8601. */
static int ts_of_string(cursor_t *c, const step_t *st, const char *s, size_t n, int64_t *ret) {
    int r = ch_ts_from_text(s, n, st->unit, ret);
    if (r == -ERANGE) {
        return bad(c, "field %s (ts): '%.*s' is out of range", st->path, (int)(n > 40 ? 40 : n), s);
    }
    if (r < 0) {
        return bad(c, "field %s (ts): '%.*s' is not %s", st->path, (int)(n > 40 ? 40 : n), s,
                   st->unit == CH_TS_ISO8601 ? "an ISO-8601 date-time"
                                             : "a number or an ISO-8601 date-time");
    }
    return 0;
}

static int decode_rec(ch_decoder_t *d, cursor_t *c, const rec_t *rec, ch_event_view_t *ev,
                      uint32_t *seen);

static int decode_step(ch_decoder_t *d, cursor_t *c, const step_t *st, ch_event_view_t *ev,
                       uint32_t *seen) {
    if (st->target == T_SKIP) {
        return skip_value(c, st->wtype, 0);
    }
    avro_schema_t w = deref(st->wtype);
    int r;
    size_t branch = 0;
    if (is_type(w, AVRO_UNION)) {
        int64_t b;
        if ((r = rd_long(c, &b)) < 0) {
            return r;
        }
        if (b < 0 || (size_t)b >= avro_schema_union_size(w)) {
            return bad(c, "union branch %lld out of range for %s", (long long)b, st->path);
        }
        branch = (size_t)b;
        w = deref(avro_schema_union_branch(w, (int)b));
        if (!branch_ok(st->target, w)) {
            return bad(c, "field %s: %s value where %s is needed", st->path,
                       avro_schema_type_name(w), target_need(st->target));
        }
    }
    if (is_type(w, AVRO_NULL)) {
        return 0; /* absent; required roles are checked after the record */
    }
    int t = st->target;
    const char *s = NULL;
    size_t sl = 0;
    int64_t l;
    double v;
    if (t == T_NEST) {
        return decode_rec(d, c, st->nested[branch], ev, seen);
    }
    if (t < T_FIELD0) {
        *seen |= 1u << t;
    }
    if (is_text_role(t)) {
        if (is_type(w, AVRO_INT32) || is_type(w, AVRO_INT64)) {
            if ((r = is_type(w, AVRO_INT32) ? rd_int(c, &l) : rd_long(c, &l)) < 0) {
                return r;
            }
            if (!(s = id_text(d, l, &sl))) {
                return fail(c->errbuf, c->errlen, -ENOMEM, "out of memory");
            }
        } else if (is_type(w, AVRO_ENUM)) {
            if ((r = rd_int(c, &l)) < 0) {
                return r;
            }
            if (l < 0 || l >= avro_schema_enum_number_of_symbols(w)) {
                return bad(c, "field %s: enum index %lld out of range", st->path, (long long)l);
            }
            s = avro_schema_enum_get(w, (int)l);
            sl = strlen(s);
        } else if ((r = rd_bytes(c, &s, &sl)) < 0) {
            return r;
        }
        if (t >= T_TEXT0) {
            ev->texts[t - T_TEXT0] = s;
            ev->text_lens[t - T_TEXT0] = sl;
        } else {
            ch_event_set_text(ev, (ch_role_t)t, s, sl);
        }
        return 0;
    }
    switch (t) {
    case CH_ROLE_TS:
        if (is_type(w, AVRO_STRING)) {
            return (r = rd_bytes(c, &s, &sl)) < 0 ? r : ts_of_string(c, st, s, sl, &ev->ts_ms);
        }
        if (st->unit == CH_TS_ISO8601) {
            return bad(c, "field %s (ts): a %s, not an ISO-8601 string", st->path,
                       avro_schema_type_name(w));
        }
        if (is_type(w, AVRO_INT32) || is_type(w, AVRO_INT64)) {
            if ((r = is_type(w, AVRO_INT32) ? rd_int(c, &l) : rd_long(c, &l)) < 0) {
                return r;
            }
            r = ch_ts_from_int(l, st->unit, &ev->ts_ms);
        } else {
            if ((r = rd_number(c, w, &v)) < 0) {
                return r;
            }
            r = ch_ts_from_double(v, st->unit, &ev->ts_ms);
        }
        return r < 0 ? bad(c, "field %s (ts) is out of range", st->path) : 0;
    case CH_ROLE_AMOUNT:
        ev->has_amount = true;
        return rd_number(c, w, &ev->amount);
    case CH_ROLE_ATTRS: {
        ev->n_attrs = 0;
        attrs_ctx_t ctx = {d, ev, deref(avro_schema_map_values(w)), false};
        r = rd_blocks(c, attr_item, &ctx);
        if (r == 0 && ctx.overflow) {
            r = fail(c->errbuf, c->errlen, -E2BIG, "more than %d attrs", CH_CODEC_MAX_ATTRS);
        }
        return r;
    }
    default: /* a numeric field read by name */
        if ((r = rd_number(c, w, &v)) < 0) {
            return r;
        }
        d->fields[t - T_FIELD0] = v;
        ev->fields_present |= UINT64_C(1) << (t - T_FIELD0);
        return 0;
    }
}

static int decode_rec(ch_decoder_t *d, cursor_t *c, const rec_t *rec, ch_event_view_t *ev,
                      uint32_t *seen) {
    for (size_t i = 0; i < rec->n_steps; i++) {
        int r = decode_step(d, c, &rec->steps[i], ev, seen);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

static const program_t *find_program(const ch_decoder_t *d, int32_t id) {
    for (size_t i = 0; i < d->n_programs; i++) {
        if (d->programs[i].id == id) {
            return &d->programs[i];
        }
    }
    return NULL;
}

/* The schema id of a Confluent-framed message, or -1. */
static int32_t framed_id(const unsigned char *p, size_t len) {
    if (!p || len < 5 || p[0] != 0) {
        return -1;
    }
    return (int32_t)((uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4]);
}

bool ch_decoder_unknown_id(const ch_decoder_t *d, const void *buf, size_t len, int32_t *ret_id) {
    int32_t id = d->framing == CH_FRAMING_CONFLUENT ? framed_id(buf, len) : -1;
    if (id < 0 || find_program(d, id)) {
        return false;
    }
    *ret_id = id;
    return true;
}

int ch_decoder_add_schema(ch_decoder_t *d, int32_t id, const char *json_text, size_t len,
                          const char *why, char *errbuf, size_t errlen) {
    if (id < 0) {
        return -EINVAL;
    }
    if (find_program(d, id)) {
        return -EEXIST;
    }
    if (d->n_programs == MAX_PROGRAMS) {
        return fail(errbuf, errlen, -E2BIG, "more than %d writer schemas", MAX_PROGRAMS);
    }
    if (d->n_programs == d->cap_programs) {
        size_t cap = d->cap_programs ? 2 * d->cap_programs : 16;
        program_t *np = realloc(d->programs, cap * sizeof(*np));
        if (!np) {
            return -ENOMEM;
        }
        d->programs = np;
        d->cap_programs = cap;
    }
    program_t *p = &d->programs[d->n_programs];
    *p = (program_t){.id = id};
    int r = 0;
    avro_schema_t schema = NULL;
    json_t *json = NULL;
    char what[32];
    snprintf(what, sizeof(what), "schema id %d", id);
    if (!json_text) {
        snprintf(p->err, sizeof(p->err), "%s", why ? why : "unknown");
    } else if (len > MAX_SCHEMA_BYTES ||
               avro_schema_from_json_length(json_text, len, &schema) != 0) {
        r = fail(errbuf, errlen, -EINVAL, "%s: invalid Avro schema: %s", what,
                 len > MAX_SCHEMA_BYTES ? "too large" : avro_strerror());
        snprintf(p->err, sizeof(p->err), "%s", errbuf && errlen ? errbuf : "invalid Avro schema");
    } else if (!(json = json_loadb(json_text, len, 0, NULL))) {
        r = fail(errbuf, errlen, -EINVAL, "%s: not JSON", what);
        snprintf(p->err, sizeof(p->err), "not JSON");
    } else {
        program_compile(p, &d->map, d->required, schema, json, what);
    }
    if (schema) {
        avro_schema_decref(schema);
    }
    json_decref(json);
    d->n_programs++; /* kept even when it fails: its records say why */
    return r;
}

/* One record of program prog from c; *ret_ev on success. */
static int decode_one(ch_decoder_t *d, cursor_t *c, const program_t *prog, int32_t id,
                      ch_event_view_t *ret_ev) {
    if (!prog->ok) {
        return fail(c->errbuf, c->errlen, -EPROTO, "schema id %d: %s", id, prog->err);
    }
    ch_event_view_t ev = {.attrs = d->attrs, .fields = d->fields, .schema_id = id};
    uint32_t seen = 0;
    int r = decode_rec(d, c, prog->root, &ev, &seen);
    if (r < 0) {
        return r;
    }
    for (int k = 0; k < CH_ROLE_N; k++) {
        if ((d->required & (1u << k)) && !(seen & (1u << k))) {
            return bad(c, "field %s (%s) is null or absent", d->map.path[k],
                       ch_role_name((ch_role_t)k));
        }
    }
    *ret_ev = ev;
    return 0;
}

int ch_decoder_decode(ch_decoder_t *d, const void *buf, size_t len, ch_event_view_t *ret_ev,
                      char *errbuf, size_t errlen) {
    cursor_t c = {.p = buf, .end = (const unsigned char *)buf + len, .errbuf = errbuf,
                  .errlen = errlen};
    const program_t *prog = &d->plain;
    int32_t id = -1;
    if (!buf || len == 0) {
        return bad(&c, "empty message");
    }
    if (d->framing == CH_FRAMING_CONFLUENT) {
        if (len < 5 || c.p[0] != 0) {
            return bad(&c, "not Confluent framing (expected magic byte 0 and a 4-byte schema id)");
        }
        id = (int32_t)((uint32_t)c.p[1] << 24 | (uint32_t)c.p[2] << 16 | (uint32_t)c.p[3] << 8 |
                       c.p[4]);
        c.p += 5;
        prog = find_program(d, id);
        if (!prog) {
            return fail(errbuf, errlen, -EPROTO, "unknown schema id %d", id);
        }
    }
    ch_event_view_t ev;
    int r = decode_one(d, &c, prog, id, &ev);
    if (r < 0) {
        return r;
    }
    if (c.p != c.end) {
        return bad(&c, "%lld trailing bytes after the record", (long long)(c.end - c.p));
    }
    *ret_ev = ev;
    return 0;
}

int ch_decoder_decode_next(ch_decoder_t *d, int32_t id, const void *buf, size_t len,
                           size_t *ret_used, ch_event_view_t *ret_ev, char *errbuf,
                           size_t errlen) {
    cursor_t c = {.p = buf, .end = (const unsigned char *)buf + len, .errbuf = errbuf,
                  .errlen = errlen};
    const program_t *prog = find_program(d, id);
    if (!prog) {
        return fail(errbuf, errlen, -EPROTO, "unknown schema id %d", id);
    }
    if (!buf || len == 0) {
        return bad(&c, "no bytes left for a record");
    }
    int r = decode_one(d, &c, prog, id, ret_ev);
    if (r == 0) {
        *ret_used = (size_t)(c.p - (const unsigned char *)buf);
    }
    return r;
}

/* The reader schema holds every mapped path (a role left at its own name may be
 * absent: it is then not in the events) with a type the role can be read from. */
static int reader_check(ch_decoder_t *d, json_t *json, const char *path, char *errbuf,
                        size_t errlen) {
    program_t p = {0};
    uint32_t must = 1u << CH_ROLE_USER_ID | 1u << CH_ROLE_TS;
    program_compile(&p, &d->map, must, d->reader, json, path);
    int r = 0;
    if (!p.ok) {
        r = fail(errbuf, errlen, -EPROTO, "reader schema %s", p.err);
    }
    compiler_t cc = {
        .map = &d->map, .json = json, .what = path, .err = p.err, .errlen = sizeof(p.err)};
    rec_free(compile_rec(&cc, deref(d->reader), "", 0)); /* which paths exist */
    d->required = must | cc.nonnull;
    for (int k = 0; r == 0 && k < CH_ROLE_N; k++) {
        if (d->map.path[k][0] && !d->map.is_default[k] && !(cc.found & (1u << k))) {
            r = fail(errbuf, errlen, -EPROTO, "reader schema %s has no field '%s' (input.map.%s)",
                     path, d->map.path[k], ch_role_name((ch_role_t)k));
        }
    }
    for (size_t j = 0; r == 0 && j < d->map.n_fields; j++) {
        if (!(cc.found_fields & (UINT64_C(1) << j))) {
            r = fail(errbuf, errlen, -EPROTO,
                     "reader schema %s has no numeric field '%s' (read by a feature)", path,
                     d->map.fields[j]);
        }
    }
    for (size_t j = 0; r == 0 && j < d->map.n_texts; j++) {
        if (!(cc.found_texts & (1u << j))) {
            r = fail(errbuf, errlen, -EPROTO,
                     "reader schema %s has no field '%s' (read as text by a feature or tag)", path,
                     d->map.texts[j]);
        }
    }
    program_done(&p);
    return r;
}

ch_decoder_t *ch_decoder_free(ch_decoder_t *d) {
    if (!d) {
        return NULL;
    }
    for (size_t i = 0; i < d->n_programs; i++) {
        program_done(&d->programs[i]);
    }
    free(d->programs);
    program_done(&d->plain);
    if (d->reader) {
        avro_schema_decref(d->reader);
    }
    while (d->texts) {
        text_block_t *n = d->texts->next;
        free(d->texts);
        d->texts = n;
    }
    free(d);
    return NULL;
}

int ch_decoder_new(ch_schemas_t *schemas, const char *reader_path, ch_framing_t framing,
                   const char *plain_writer_path, const ch_mapping_t *map,
                   ch_decoder_t **ret_decoder, char *errbuf, size_t errlen) {
    ch_decoder_t *d = calloc(1, sizeof(*d));
    if (!d) {
        return -ENOMEM;
    }
    d->framing = framing;
    if (map) {
        d->map = *map;
    } else {
        ch_mapping_default(&d->map);
    }
    json_t *reader_json = NULL;
    int r = parse_schema_file(reader_path, &d->reader, &reader_json, errbuf, errlen);
    if (r == 0) {
        r = reader_check(d, reader_json, reader_path, errbuf, errlen);
    }
    if (r < 0) {
        json_decref(reader_json);
        ch_decoder_free(d);
        return r;
    }
    if (framing == CH_FRAMING_PLAIN) {
        avro_schema_t writer = NULL;
        json_t *writer_json = NULL;
        if (plain_writer_path) {
            r = parse_schema_file(plain_writer_path, &writer, &writer_json, errbuf, errlen);
            if (r < 0) {
                json_decref(reader_json);
                ch_decoder_free(d);
                return r;
            }
        } else {
            writer = avro_schema_incref(d->reader);
            writer_json = json_incref(reader_json);
        }
        program_compile(&d->plain, &d->map, d->required, writer, writer_json,
                        plain_writer_path ? plain_writer_path : reader_path);
        avro_schema_decref(writer);
        json_decref(writer_json);
        if (!d->plain.ok) {
            r = fail(errbuf, errlen, -EPROTO, "%s", d->plain.err);
            json_decref(reader_json);
            ch_decoder_free(d);
            return r;
        }
    } else if (schemas) {
        d->cap_programs = schemas->n ? schemas->n : 1;
        d->programs = calloc(d->cap_programs, sizeof(program_t));
        if (!d->programs) {
            json_decref(reader_json);
            ch_decoder_free(d);
            return -ENOMEM;
        }
        for (size_t i = 0; i < schemas->n; i++) {
            program_t *p = &d->programs[d->n_programs++];
            p->id = schemas->entries[i].id;
            program_compile(p, &d->map, d->required, schemas->entries[i].schema,
                            schemas->entries[i].json, schemas->entries[i].file);
        }
    }
    json_decref(reader_json);
    *ret_decoder = d;
    return 0;
}

/* ---------------------------------------------------------------- encoding */

void ch_buf_init(ch_buf_t *b) {
    b->data = NULL;
    b->len = b->cap = 0;
}

void ch_buf_done(ch_buf_t *b) {
    free(b->data);
    ch_buf_init(b);
}

int ch_buf_append(ch_buf_t *b, const void *p, size_t n) {
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n) {
            cap *= 2;
        }
        unsigned char *nd = realloc(b->data, cap);
        if (!nd) {
            return -ENOMEM;
        }
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int ch_buf_vprintf(ch_buf_t *b, const char *fmt, va_list ap) {
    char small[256];
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    if (n < 0 || (size_t)n < sizeof(small)) {
        va_end(again);
        return n < 0 ? -EINVAL : ch_buf_append(b, small, (size_t)n);
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        va_end(again);
        return -ENOMEM;
    }
    vsnprintf(big, (size_t)n + 1, fmt, again);
    va_end(again);
    int r = ch_buf_append(b, big, (size_t)n);
    free(big);
    return r;
}

int ch_buf_printf(ch_buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = ch_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return r;
}

static int put_long(ch_buf_t *b, int64_t v) {
    unsigned char tmp[10];
    size_t n = 0;
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (z & ~(uint64_t)0x7f) {
        tmp[n++] = (unsigned char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    tmp[n++] = (unsigned char)z;
    return ch_buf_append(b, tmp, n);
}

static int put_str(ch_buf_t *b, const char *s, size_t n) {
    int r = put_long(b, (int64_t)n);
    return r < 0 ? r : ch_buf_append(b, s, n);
}

/* Union ["null", T]: branch 0 for null, 1 then the value otherwise. */
static int put_opt_str(ch_buf_t *b, const char *s, size_t n) {
    if (!s) {
        return put_long(b, 0);
    }
    int r = put_long(b, 1);
    return r < 0 ? r : put_str(b, s, n);
}

static int put_opt_int(ch_buf_t *b, bool present, int64_t v) {
    if (!present) {
        return put_long(b, 0);
    }
    int r = put_long(b, 1);
    return r < 0 ? r : put_long(b, v);
}

static int put_header(ch_buf_t *b, ch_framing_t framing, int32_t schema_id) {
    b->len = 0;
    if (framing != CH_FRAMING_CONFLUENT) {
        return 0;
    }
    uint32_t id = (uint32_t)schema_id;
    unsigned char h[5] = {0, (unsigned char)(id >> 24), (unsigned char)(id >> 16),
                          (unsigned char)(id >> 8), (unsigned char)id};
    return ch_buf_append(b, h, 5);
}

int ch_encode_profile(ch_buf_t *b, ch_framing_t framing, int32_t schema_id,
                      const ch_profile_t *p) {
    int r = put_header(b, framing, schema_id);
    r = r ? r : put_str(b, p->user_id, p->user_id_len);
    r = r ? r : put_opt_str(b, p->event_id, p->event_id_len);
    r = r ? r : put_long(b, p->ts_ms);
    r = r ? r : put_opt_int(b, p->has_segment, p->segment);
    r = r ? r : put_opt_int(b, p->has_segment, p->segment_generation);
    if (!r && p->has_segment) {
        r = put_long(b, 1);
        r = r ? r : ch_buf_append(b, &p->segment_distance, 4);
    } else if (!r) {
        r = put_long(b, 0);
    }
    r = r ? r : put_opt_int(b, p->has_segment && p->previous_segment >= 0, p->previous_segment);
    if (!r && p->n_features) {
        r = put_long(b, (int64_t)p->n_features);
        r = r ? r : ch_buf_append(b, p->features, p->n_features * sizeof(float));
    }
    r = r ? r : put_long(b, 0); /* end of the features array */
    r = r ? r : put_opt_str(b, p->model_version, p->model_version ? strlen(p->model_version) : 0);
    if (!r && p->with_tags && p->n_tags) { /* map<array<string>>: one block */
        r = put_long(b, (int64_t)p->n_tags);
        for (size_t i = 0; !r && i < p->n_tags; i++) {
            const ch_tag_values_t *t = &p->tags[i];
            r = put_str(b, t->name, strlen(t->name));
            r = r || !t->n ? r : put_long(b, (int64_t)t->n);
            for (size_t k = 0; !r && k < t->n; k++) {
                r = put_str(b, t->vals[k], t->lens[k]);
            }
            r = r ? r : put_long(b, 0);
        }
    }
    r = r || !p->with_tags ? r : put_long(b, 0); /* end of the map */
    return r;
}

static int put_floats(ch_buf_t *b, const float *v, size_t n) {
    int r = n ? put_long(b, (int64_t)n) : 0;
    r = r || !n ? r : ch_buf_append(b, v, n * sizeof(float));
    return r ? r : put_long(b, 0);
}

static int put_trends(ch_buf_t *b, const ch_trend_t *t, size_t n) {
    int r = n ? put_long(b, (int64_t)n) : 0;
    for (size_t i = 0; !r && i < n; i++) {
        r = put_str(b, t[i].value, t[i].len);
        r = r ? r : ch_buf_append(b, &t[i].weight, sizeof(double));
    }
    return r ? r : put_long(b, 0);
}

int ch_encode_segment(ch_buf_t *b, ch_framing_t framing, int32_t schema_id,
                      const ch_segment_rec_t *s) {
    int r = put_header(b, framing, schema_id);
    r = r ? r : put_long(b, s->segment);
    r = r ? r : put_long(b, s->generation);
    r = r ? r : put_long(b, s->ts_ms);
    r = r ? r : put_long(b, s->users);
    r = r ? r : ch_buf_append(b, &s->weight, sizeof(double));
    r = r || !s->n_features ? r : put_long(b, (int64_t)s->n_features);
    for (size_t i = 0; !r && i < s->n_features; i++) {
        r = put_str(b, s->feature_names[i], strlen(s->feature_names[i]));
    }
    r = r ? r : put_long(b, 0);
    r = r ? r : put_floats(b, s->centroid, s->n_features);
    r = r ? r : put_floats(b, s->feature_means, s->n_features);
    r = r ? r : put_trends(b, s->items, s->n_items);
    r = r ? r : put_trends(b, s->categories, s->n_categories);
    return r;
}

int ch_encode_risk(ch_buf_t *b, ch_framing_t framing, int32_t schema_id, const ch_risk_t *k) {
    int r = put_header(b, framing, schema_id);
    r = r ? r : put_str(b, k->user_id, k->user_id_len);
    r = r ? r : put_opt_str(b, k->event_id, k->event_id_len);
    r = r ? r : put_long(b, k->ts_ms);
    r = r ? r : ch_buf_append(b, &k->score, 4);
    uint8_t alert = k->alert ? 1 : 0;
    r = r ? r : ch_buf_append(b, &alert, 1);
    r = r ? r : ch_buf_append(b, &k->threshold, 4);
    if (!r && k->n_reasons) {
        r = put_long(b, (int64_t)k->n_reasons);
        for (size_t i = 0; !r && i < k->n_reasons; i++) {
            r = put_str(b, k->reasons[i].feature, strlen(k->reasons[i].feature));
            r = r ? r : ch_buf_append(b, &k->reasons[i].contribution, 4);
        }
    }
    r = r ? r : put_long(b, 0); /* end of the reasons array */
    const char *v = k->model_version ? k->model_version : "";
    r = r ? r : put_str(b, v, strlen(v));
    if (!r && k->with_challenger) { /* ["null", Challenger] */
        r = put_long(b, k->has_challenger ? 1 : 0);
        if (!r && k->has_challenger) {
            uint8_t a = k->challenger_alert ? 1 : 0;
            const char *cv = k->challenger_version ? k->challenger_version : "";
            r = ch_buf_append(b, &k->challenger_score, 4);
            r = r ? r : ch_buf_append(b, &a, 1);
            r = r ? r : put_str(b, cv, strlen(cv));
        }
    }
    return r;
}

int ch_encode_event(ch_buf_t *b, ch_framing_t framing, int32_t schema_id,
                    const ch_event_view_t *ev) {
    if (!ev->event_id || !ev->user_id || !ev->type) {
        return -EINVAL;
    }
    int r = put_header(b, framing, schema_id);
    r = r ? r : put_str(b, ev->event_id, ev->event_id_len);
    r = r ? r : put_str(b, ev->user_id, ev->user_id_len);
    r = r ? r : put_long(b, ev->ts_ms);
    r = r ? r : put_str(b, ev->type, ev->type_len);
    if (!r && ev->has_amount) {
        r = put_long(b, 1);
        r = r ? r : ch_buf_append(b, &ev->amount, 8);
    } else if (!r) {
        r = put_long(b, 0);
    }
    r = r ? r : put_opt_str(b, ev->item, ev->item_len);
    r = r ? r : put_opt_str(b, ev->category, ev->category_len);
    if (!r && ev->n_attrs) {
        r = put_long(b, (int64_t)ev->n_attrs);
        for (size_t i = 0; !r && i < ev->n_attrs; i++) {
            r = put_str(b, ev->attrs[i].key, ev->attrs[i].key_len);
            r = r ? r : ch_buf_append(b, &ev->attrs[i].value, 8);
        }
    }
    r = r ? r : put_long(b, 0); /* end of the attrs map */
    return r;
}
