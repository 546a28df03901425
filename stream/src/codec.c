/*
 * codec.c - schema-resolving Avro decoder for user events, encoders for outputs.
 *
 * Design notes
 * - Avro-C parses the .avsc files; the binary is read here, by a small
 *   bounds-checked cursor, never by Avro-C's value readers. Every length is
 *   checked against the bytes left before it is used, containers are capped,
 *   and nothing is allocated while decoding, so garbage input costs O(len).
 * - Resolution is compiled once per writer schema into a program: one step
 *   per writer field, each either a target slot of the event view (with the
 *   writer's type, promoted at decode time) or a skip. Reader fields the writer
 *   lacks take the reader's defaults (null / empty map); the four required
 *   fields (event_id, user_id, ts, type) must be present in every writer.
 * - Invariant: a decoded view points only into the message buffer or into
 *   the decoder's attrs array.
 */
#include "ch/codec.h"
#include "errbuf.h"

#include <avro.h>
#include <ctype.h>
#include <errno.h>
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

static int parse_schema_file(const char *path, avro_schema_t *ret, char *errbuf,
                             size_t errlen) {
    char *text = NULL;
    size_t len = 0;
    int r = read_file(path, &text, &len);
    if (r < 0) {
        return fail(errbuf, errlen, r == -ENOENT ? -ENOENT : -EINVAL, "%s: %s", path,
                    strerror(-r));
    }
    avro_schema_t schema = NULL;
    if (avro_schema_from_json_length(text, len, &schema) != 0) {
        r = fail(errbuf, errlen, -EINVAL, "%s: invalid Avro schema: %s", path, avro_strerror());
    }
    free(text);
    if (r == 0) {
        *ret = schema;
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
        r = parse_schema_file(spath, &e->schema, why, sizeof(why));
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

/* ---------------------------------------------------------------- resolution */

typedef enum target {
    T_EVENT_ID,
    T_USER_ID,
    T_TS,
    T_TYPE,
    T_AMOUNT,
    T_ITEM,
    T_CATEGORY,
    T_ATTRS,
    T_SKIP,
} target_t;

static const char *const target_names[] = {"event_id", "user_id", "ts",    "type",
                                           "amount",   "item",    "category", "attrs"};
#define N_TARGETS 8
#define N_REQUIRED 4 /* event_id, user_id, ts, type */

typedef struct step {
    target_t target;
    avro_schema_t wtype; /* borrowed from the writer schema */
} step_t;

typedef struct program {
    int32_t id;
    avro_schema_t writer; /* a reference is held */
    step_t *steps;
    size_t n_steps;
    bool ok;
    char err[256];
} program_t;

struct ch_decoder {
    ch_framing_t framing;
    program_t *programs; /* one per registered id */
    size_t n_programs;
    program_t plain;
    avro_schema_t reader;
    ch_attr_t attrs[CH_CODEC_MAX_ATTRS];
};

static avro_schema_t deref(avro_schema_t s) {
    while (s && avro_typeof(s) == AVRO_LINK) {
        s = avro_schema_link_target(s);
    }
    return s;
}

static bool is_type(avro_schema_t s, avro_type_t t) {
    return avro_typeof(s) == t;
}

/* Can a value of writer type w (not a union) be read into target t? */
static bool branch_ok(target_t t, avro_schema_t w) {
    w = deref(w);
    switch (t) {
    case T_EVENT_ID:
    case T_USER_ID:
    case T_TYPE:
        return is_type(w, AVRO_STRING) || is_type(w, AVRO_BYTES);
    case T_TS:
        return is_type(w, AVRO_INT64) || is_type(w, AVRO_INT32);
    case T_AMOUNT:
        return is_type(w, AVRO_NULL) || is_type(w, AVRO_DOUBLE) || is_type(w, AVRO_FLOAT) ||
               is_type(w, AVRO_INT64) || is_type(w, AVRO_INT32);
    case T_ITEM:
    case T_CATEGORY:
        return is_type(w, AVRO_NULL) || is_type(w, AVRO_STRING) || is_type(w, AVRO_BYTES);
    case T_ATTRS: {
        if (is_type(w, AVRO_NULL)) {
            return true;
        }
        if (!is_type(w, AVRO_MAP)) {
            return false;
        }
        avro_schema_t v = deref(avro_schema_map_values(w));
        return is_type(v, AVRO_DOUBLE) || is_type(v, AVRO_FLOAT) || is_type(v, AVRO_INT64) ||
               is_type(v, AVRO_INT32);
    }
    case T_SKIP:
        return true;
    }
    return false;
}

static bool type_ok(target_t t, avro_schema_t w) {
    w = deref(w);
    if (is_type(w, AVRO_UNION)) {
        for (size_t i = 0; i < avro_schema_union_size(w); i++) {
            if (branch_ok(t, avro_schema_union_branch(w, (int)i))) {
                return true;
            }
        }
        return false;
    }
    return branch_ok(t, w);
}

static void program_done(program_t *p) {
    free(p->steps);
    p->steps = NULL;
    if (p->writer) {
        avro_schema_decref(p->writer);
        p->writer = NULL;
    }
}

/* Compiles the resolution of writer against the user_event reader. */
static void program_compile(program_t *p, avro_schema_t writer, const char *what) {
    p->writer = avro_schema_incref(writer);
    avro_schema_t w = deref(writer);
    if (!is_type(w, AVRO_RECORD)) {
        snprintf(p->err, sizeof(p->err), "%s is not a record schema", what);
        return;
    }
    size_t n = avro_schema_record_size(w);
    p->steps = calloc(n ? n : 1, sizeof(step_t));
    if (!p->steps) {
        snprintf(p->err, sizeof(p->err), "out of memory");
        return;
    }
    bool seen[N_TARGETS] = {false};
    for (size_t i = 0; i < n; i++) {
        const char *name = avro_schema_record_field_name(w, (int)i);
        avro_schema_t ft = avro_schema_record_field_get_by_index(w, (int)i);
        target_t t = T_SKIP;
        for (int k = 0; k < N_TARGETS; k++) {
            if (strcmp(name, target_names[k]) == 0) {
                t = (target_t)k;
            }
        }
        if (t != T_SKIP && !type_ok(t, ft)) {
            snprintf(p->err, sizeof(p->err), "%s: field '%s' has type %s, which cannot be read as %s",
                     what, name, avro_schema_type_name(deref(ft)),
                     t == T_TS ? "long" : t == T_AMOUNT ? "double" : t == T_ATTRS ? "map<double>"
                                                                                  : "string");
            return;
        }
        if (t != T_SKIP) {
            seen[t] = true;
        }
        p->steps[p->n_steps++] = (step_t){.target = t, .wtype = ft};
    }
    for (int k = 0; k < N_REQUIRED; k++) {
        if (!seen[k]) {
            snprintf(p->err, sizeof(p->err), "%s: required field '%s' is missing", what,
                     target_names[k]);
            return;
        }
    }
    p->ok = true;
}

/* ---------------------------------------------------------------- binary cursor */

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

static int decode_step(ch_decoder_t *d, cursor_t *c, const step_t *st, ch_event_view_t *ev) {
    if (st->target == T_SKIP) {
        return skip_value(c, st->wtype, 0);
    }
    avro_schema_t w = deref(st->wtype);
    int r;
    if (is_type(w, AVRO_UNION)) {
        int64_t b;
        if ((r = rd_long(c, &b)) < 0) {
            return r;
        }
        if (b < 0 || (size_t)b >= avro_schema_union_size(w)) {
            return bad(c, "union branch %lld out of range for %s", (long long)b,
                       target_names[st->target]);
        }
        w = deref(avro_schema_union_branch(w, (int)b));
        if (!branch_ok(st->target, w)) {
            return bad(c, "field %s: %s value where the reader needs %s",
                       target_names[st->target], avro_schema_type_name(w),
                       st->target < N_REQUIRED ? "a non-null value" : "a compatible value");
        }
    }
    const char *s = NULL;
    size_t sl = 0;
    int64_t l;
    switch (st->target) {
    case T_EVENT_ID:
        return rd_bytes(c, &ev->event_id, &ev->event_id_len);
    case T_USER_ID:
        return rd_bytes(c, &ev->user_id, &ev->user_id_len);
    case T_TYPE:
        return rd_bytes(c, &ev->type, &ev->type_len);
    case T_TS:
        r = is_type(w, AVRO_INT32) ? rd_int(c, &l) : rd_long(c, &l);
        ev->ts_ms = l;
        return r;
    case T_AMOUNT:
        if (is_type(w, AVRO_NULL)) {
            ev->has_amount = false;
            return 0;
        }
        ev->has_amount = true;
        return rd_number(c, w, &ev->amount);
    case T_ITEM:
    case T_CATEGORY:
        if (!is_type(w, AVRO_NULL) && (r = rd_bytes(c, &s, &sl)) < 0) {
            return r;
        }
        if (st->target == T_ITEM) {
            ev->item = s;
            ev->item_len = sl;
        } else {
            ev->category = s;
            ev->category_len = sl;
        }
        return 0;
    case T_ATTRS: {
        ev->n_attrs = 0;
        if (is_type(w, AVRO_NULL)) {
            return 0;
        }
        attrs_ctx_t ctx = {d, ev, deref(avro_schema_map_values(w)), false};
        r = rd_blocks(c, attr_item, &ctx);
        if (r == 0 && ctx.overflow) {
            r = fail(c->errbuf, c->errlen, -E2BIG, "more than %d attrs", CH_CODEC_MAX_ATTRS);
        }
        return r;
    }
    case T_SKIP:
        break;
    }
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
        prog = NULL;
        for (size_t i = 0; i < d->n_programs; i++) {
            if (d->programs[i].id == id) {
                prog = &d->programs[i];
            }
        }
        if (!prog) {
            return fail(errbuf, errlen, -EPROTO, "unknown schema id %d", id);
        }
    }
    if (!prog->ok) {
        return fail(errbuf, errlen, -EPROTO, "schema id %d: %s", id, prog->err);
    }
    ch_event_view_t ev = {.attrs = d->attrs, .schema_id = id};
    for (size_t i = 0; i < prog->n_steps; i++) {
        int r = decode_step(d, &c, &prog->steps[i], &ev);
        if (r < 0) {
            return r;
        }
    }
    if (c.p != c.end) {
        return bad(&c, "%lld trailing bytes after the record", (long long)(c.end - c.p));
    }
    *ret_ev = ev;
    return 0;
}

static bool reader_is_user_event(avro_schema_t reader, char *errbuf, size_t errlen,
                                 const char *path) {
    avro_schema_t r = deref(reader);
    if (!is_type(r, AVRO_RECORD)) {
        fail(errbuf, errlen, 0, "%s: reader schema is not a record", path);
        return false;
    }
    for (int k = 0; k < N_TARGETS; k++) {
        avro_schema_t ft = avro_schema_record_field_get(r, target_names[k]);
        if (!ft || !type_ok((target_t)k, ft)) {
            fail(errbuf, errlen, 0, "%s: reader schema lacks field '%s' of a user_event type",
                 path, target_names[k]);
            return false;
        }
    }
    return true;
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
    free(d);
    return NULL;
}

int ch_decoder_new(ch_schemas_t *schemas, const char *reader_path, ch_framing_t framing,
                   const char *plain_writer_path, ch_decoder_t **ret_decoder, char *errbuf,
                   size_t errlen) {
    ch_decoder_t *d = calloc(1, sizeof(*d));
    if (!d) {
        return -ENOMEM;
    }
    d->framing = framing;
    int r = parse_schema_file(reader_path, &d->reader, errbuf, errlen);
    if (r < 0) {
        ch_decoder_free(d);
        return r;
    }
    if (!reader_is_user_event(d->reader, errbuf, errlen, reader_path)) {
        ch_decoder_free(d);
        return -EPROTO;
    }
    if (framing == CH_FRAMING_PLAIN) {
        avro_schema_t writer = NULL;
        if (plain_writer_path) {
            r = parse_schema_file(plain_writer_path, &writer, errbuf, errlen);
            if (r < 0) {
                ch_decoder_free(d);
                return r;
            }
        } else {
            writer = avro_schema_incref(d->reader);
        }
        program_compile(&d->plain, writer, plain_writer_path ? plain_writer_path : reader_path);
        avro_schema_decref(writer);
        if (!d->plain.ok) {
            r = fail(errbuf, errlen, -EPROTO, "%s", d->plain.err);
            ch_decoder_free(d);
            return r;
        }
    } else if (schemas) {
        d->programs = calloc(schemas->n ? schemas->n : 1, sizeof(program_t));
        if (!d->programs) {
            ch_decoder_free(d);
            return -ENOMEM;
        }
        for (size_t i = 0; i < schemas->n; i++) {
            program_t *p = &d->programs[d->n_programs++];
            p->id = schemas->entries[i].id;
            program_compile(p, schemas->entries[i].schema, schemas->entries[i].file);
        }
    }
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
