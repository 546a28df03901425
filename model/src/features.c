/*
 * features.c - declared, time-decayed per-user aggregates.
 *
 * Design notes
 * - Every aggregate of a user is kept decayed to one reference time t_ref, the
 *   user's stream time (largest event time seen). An event at t >= t_ref first
 *   decays all state by 2^(-(t - t_ref)/h) and then adds with weight 1; a late
 *   event adds with weight 2^(-(t_ref - t)/h). Reading at q = t_ref needs no
 *   further decay. The value is therefore a pure function of the set of events.
 * - State per kind (doubles): count [C], sum [S], mean [C S], std [C M M2]
 *   (West's weighted incremental mean/variance: stable, and exactly 0 for
 *   constant input), max [M] (-inf = none), since_last [t_last] (-inf = none),
 *   since_prev [t_last t_prev] (the two latest matching times, -inf = none),
 *   ratio [] (computed from two earlier features at read time), share [C_match C_all],
 *   distinct [n, t_lost, then up to 3k (hash, last time) pairs].
 * - Filters: each text field (type, item, category) has its own table of up to 64
 *   values named in filters; an observation carries, per field, the bit mask of the
 *   values it equals, so a filter is one AND (negated: its complement).
 * - distinct(field) window=W k=K: up to 3K (hash, latest time seen) pairs, in hash
 *   order. While the window's values fit, every one is kept and the count is exact.
 *   When 3K pairs are live, the sketch becomes a bottom-k one (KMV, Bar-Yossef et al.
 *   2002) made to slide: a pair goes when K pairs with smaller hashes were seen at
 *   least as late (it can never again be among the K smallest live hashes), and t_lost
 *   records the latest time of a value so dropped. Read: the live pairs, exactly, if
 *   fewer than K or if no dropped value can still be in the window (t_lost older than
 *   W); else (K - 1) / u_K with u_K the K-th smallest live hash in [0, 1) (relative
 *   standard error about 1 / sqrt(K - 2)), never below the live count. The pairs the
 *   sketch needs number about K (ln(n / K) + 0.58) for n values in the window; past
 *   3K (n beyond about 11 K) the largest hash goes too. Exact counts do not depend on
 *   arrival order; an estimate can (whether it was needed depends on when pairs were
 *   dropped). Insert: binary search and a move; prune: one pass with a heap of K
 *   times; read: one pass.
 * - Decay factors are computed once per distinct half-life per update.
 * - Invariant: after seal, the set is immutable; update/read never allocate.
 */
#include "ch/features.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "siphash.h"

#define SPEC_MAX 256
#define HASH_BITS 52 /* hashes kept exactly in a double */

typedef struct feature {
    char name[CH_FEATURE_NAME_MAX];
    char spec[SPEC_MAX];
    ch_feat_kind_t kind;
    int field;                  /* index into fields, -1 = none */
    bool filtered[CH_TEXT_N];   /* a filter on text field k */
    bool negate[CH_TEXT_N];     /* field!=values */
    uint64_t filter[CH_TEXT_N]; /* the values the filter names */
    int text;                   /* distinct(): its text field */
    double window_ms;           /* distinct(): INFINITY = no window */
    int k;                      /* distinct(): sketch size */
    double half_life_ms; /* INFINITY = no decay */
    int hl_index;        /* index into distinct half-lives */
    double dflt;         /* value when undefined */
    int ratio_a, ratio_b;
    size_t off; /* first state double */
} feature_t;

#define SLOT 10 /* doubles per tag slot: weight, length (-1: empty), 64 bytes of value */

typedef struct tag {
    char name[CH_FEATURE_NAME_MAX];
    char spec[SPEC_MAX];
    feature_t f; /* the filters and half-life (kind count) */
    int text, n, slots;
} tag_t;

struct ch_features {
    double default_half_life_ms;
    feature_t feats[CH_FEATURES_MAX];
    size_t n_feats;
    char fields[CH_FEATURES_MAX_FIELDS][CH_FEATURE_NAME_MAX + 8];
    size_t n_fields;
    char values[CH_TEXT_N][CH_FEATURES_MAX_VALUES][CH_FEATURE_NAME_MAX];
    size_t value_lens[CH_TEXT_N][CH_FEATURES_MAX_VALUES];
    size_t n_values[CH_TEXT_N];
    bool hashed[CH_TEXT_N]; /* a distinct() reads the field */
    char text_paths[CH_FEATURES_MAX_TEXTS][CH_FEATURE_NAME_MAX]; /* CH_TEXT_FIELD0 + j */
    size_t n_text_paths;
    double half_lives[CH_FEATURES_MAX + CH_TAGS_MAX];
    tag_t tags[CH_TAGS_MAX];
    size_t n_tags;
    size_t n_half_lives;
    size_t state_len;
    bool sealed;
};

static const char *const kind_names[] = {
    [CH_FEAT_COUNT] = "count", [CH_FEAT_SUM] = "sum",     [CH_FEAT_MEAN] = "mean",
    [CH_FEAT_STD] = "std",     [CH_FEAT_MAX] = "max",     [CH_FEAT_SINCE_LAST] = "since_last",
    [CH_FEAT_RATIO] = "ratio", [CH_FEAT_SHARE] = "share", [CH_FEAT_DISTINCT] = "distinct",
    [CH_FEAT_SINCE_PREV] = "since_prev",
};

static const char *const role_names[CH_TEXT_FIELD0] = {"type", "item", "category"};

static const char *text_name(const ch_features_t *fs, int k) {
    return k < CH_TEXT_FIELD0 ? role_names[k] : fs->text_paths[k - CH_TEXT_FIELD0];
}

static bool valid_path(const char *s, size_t len);

/* The text field named s: a role, or a field by name or path (added when create is set
 * and s is a valid path). @returns its index, -1 (not a text field), -E2BIG. */
static int text_field(ch_features_t *fs, const char *s, size_t len, bool create) {
    for (int k = 0; k < CH_TEXT_FIELD0 + (int)fs->n_text_paths; k++) {
        const char *n = text_name(fs, k);
        if (strlen(n) == len && memcmp(n, s, len) == 0) {
            return k;
        }
    }
    if (!create || !valid_path(s, len)) {
        return -1;
    }
    if (fs->n_text_paths == CH_FEATURES_MAX_TEXTS) {
        return -E2BIG;
    }
    memcpy(fs->text_paths[fs->n_text_paths], s, len);
    fs->text_paths[fs->n_text_paths][len] = '\0';
    return CH_TEXT_FIELD0 + (int)fs->n_text_paths++;
}

size_t ch_features_text_count(const ch_features_t *fs) { return fs->n_text_paths; }

const char *ch_features_text_path(const ch_features_t *fs, size_t j) { return fs->text_paths[j]; }

int ch_duration_parse(const char *s, double *ret_ms) {
    if (!s || !*s) {
        return -EINVAL;
    }
    if (strcmp(s, "inf") == 0 || strcmp(s, "infinite") == 0) {
        *ret_ms = INFINITY;
        return 0;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0) {
        return -EINVAL;
    }
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"", 1},         {"ms", 1},         {"s", 1000},         {"m", 60000},
                 {"h", 3600000.0}, {"d", 86400000.0}, {"w", 604800000.0}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            *ret_ms = v * units[i].ms;
            return 0;
        }
    }
    return -EINVAL;
}

int ch_features_new(double default_half_life_ms, ch_features_t **ret_fs) {
    if (!(default_half_life_ms > 0)) {
        return -EINVAL;
    }
    ch_features_t *fs = calloc(1, sizeof(*fs));
    if (!fs) {
        return -ENOMEM;
    }
    fs->default_half_life_ms = default_half_life_ms;
    *ret_fs = fs;
    return 0;
}

ch_features_t *ch_features_free(ch_features_t *fs) {
    free(fs);
    return NULL;
}

static bool valid_name(const char *s, size_t len) {
    if (len == 0 || len >= CH_FEATURE_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '_' && c != '.' && c != '-') {
            return false;
        }
    }
    return true;
}

/* A dotted path of names: [A-Za-z_][A-Za-z0-9_]* joined by '.' (the rule of stream/'s
 * ch_mapping_path_valid(), which resolves these paths; model/ does not depend on
 * stream/, so it is restated here). */
static bool valid_path(const char *s, size_t len) {
    bool start = true;
    if (len == 0 || len >= CH_FEATURE_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.' && !start) {
            start = true;
        } else if (isalpha(c) || c == '_' || (!start && isdigit(c))) {
            start = false;
        } else {
            return false;
        }
    }
    return !start;
}

static int find_feature(const ch_features_t *fs, const char *name, size_t len) {
    for (size_t i = 0; i < fs->n_feats; i++) {
        if (strlen(fs->feats[i].name) == len && memcmp(fs->feats[i].name, name, len) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static int intern_field(ch_features_t *fs, const char *s, size_t len, char *errbuf,
                        size_t errlen) {
    bool ok = (len > 6 && memcmp(s, "attrs.", 6) == 0 && valid_name(s + 6, len - 6)) ||
              valid_path(s, len);
    if (!ok) {
        return fail(errbuf, errlen, -EINVAL,
                    "bad field '%.*s' (expected amount, attrs.<key>, or the name or dotted "
                    "path of a numeric field of the events, e.g. quantity or price.unit)",
                    (int)len, s);
    }
    for (size_t i = 0; i < fs->n_fields; i++) {
        if (strlen(fs->fields[i]) == len && memcmp(fs->fields[i], s, len) == 0) {
            return (int)i;
        }
    }
    if (fs->n_fields == CH_FEATURES_MAX_FIELDS) {
        return fail(errbuf, errlen, -E2BIG, "more than %d distinct fields",
                    CH_FEATURES_MAX_FIELDS);
    }
    memcpy(fs->fields[fs->n_fields], s, len);
    fs->fields[fs->n_fields][len] = '\0';
    return (int)fs->n_fields++;
}

/* A filter value (unquoted or from quotes): 1 to CH_FEATURE_NAME_MAX - 1 bytes, no
 * control character (any UTF-8 text otherwise). */
static bool valid_value(const char *s, size_t len) {
    if (len == 0 || len >= CH_FEATURE_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            return false;
        }
    }
    return true;
}

static int intern_value(ch_features_t *fs, int k, const char *s, size_t len, char *errbuf,
                        size_t errlen) {
    if (!valid_value(s, len)) {
        return fail(errbuf, errlen, -EINVAL,
                    "bad %s '%.*s' in filter (1 to %d bytes of text; quote one that holds a "
                    "space, | , \" or \\: \"United Kingdom\")",
                    text_name(fs, k), (int)len, s, CH_FEATURE_NAME_MAX - 1);
    }
    for (size_t i = 0; i < fs->n_values[k]; i++) {
        if (fs->value_lens[k][i] == len && memcmp(fs->values[k][i], s, len) == 0) {
            return (int)i;
        }
    }
    if (fs->n_values[k] == CH_FEATURES_MAX_VALUES) {
        return fail(errbuf, errlen, -E2BIG, "more than %d distinct %s values in filters",
                    CH_FEATURES_MAX_VALUES, text_name(fs, k));
    }
    memcpy(fs->values[k][fs->n_values[k]], s, len);
    fs->values[k][fs->n_values[k]][len] = '\0';
    fs->value_lens[k][fs->n_values[k]] = len;
    return (int)fs->n_values[k]++;
}

/* The length of the spec token at p: up to the first whitespace outside double quotes
 * (inside them a backslash escapes the next byte). */
static size_t token_len(const char *p) {
    bool quoted = false;
    size_t i = 0;
    for (; p[i]; i++) {
        if (quoted && p[i] == '\\' && p[i + 1]) {
            i++;
        } else if (p[i] == '"') {
            quoted = !quoted;
        } else if (!quoted && isspace((unsigned char)p[i])) {
            break;
        }
    }
    return i;
}

/* Whether a filter value is written quoted in a canonical spec: anything but letters,
 * digits, _ . - (so the specs of unquoted values read as they always did). */
static bool needs_quotes(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '_' && c != '.' && c != '-') {
            return true;
        }
    }
    return len == 0;
}

static const char *skip_ws(const char *p) {
    while (*p && isspace((unsigned char)*p)) {
        p++;
    }
    return p;
}

static void trim(const char **s, size_t *len) {
    while (*len && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && isspace((unsigned char)(*s)[*len - 1])) {
        (*len)--;
    }
}

/* Parses "kind" or "kind(args)" and returns a pointer after it. */
static int parse_head(ch_features_t *fs, feature_t *f, const char *spec, const char **ret_rest,
                      char *errbuf, size_t errlen) {
    const char *p = skip_ws(spec);
    const char *k = p;
    while (*p && (isalnum((unsigned char)*p) || *p == '_')) {
        p++;
    }
    size_t klen = (size_t)(p - k);
    int kind = -1;
    for (size_t i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++) {
        if (strlen(kind_names[i]) == klen && memcmp(kind_names[i], k, klen) == 0) {
            kind = (int)i;
        }
    }
    if (kind < 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "unknown feature kind '%.*s' (count, sum, mean, std, max, since_last, "
                    "since_prev, ratio, share, distinct)",
                    (int)klen, k);
    }
    f->kind = (ch_feat_kind_t)kind;
    const char *args = NULL;
    size_t args_len = 0;
    if (*p == '(') {
        args = p + 1;
        const char *close = strchr(args, ')');
        if (!close) {
            return fail(errbuf, errlen, -EINVAL, "missing ')' in '%s'", spec);
        }
        args_len = (size_t)(close - args);
        p = close + 1;
    }
    if (*p && !isspace((unsigned char)*p)) {
        return fail(errbuf, errlen, -EINVAL, "unexpected '%c' after '%.*s'", *p, (int)klen, k);
    }
    *ret_rest = p;

    switch (f->kind) {
    case CH_FEAT_SUM:
    case CH_FEAT_MEAN:
    case CH_FEAT_STD:
    case CH_FEAT_MAX:
        if (!args) {
            return fail(errbuf, errlen, -EINVAL, "%s needs a field, e.g. %s(amount)",
                        kind_names[kind], kind_names[kind]);
        }
        /* fall through */
    case CH_FEAT_COUNT:
        if (args) {
            trim(&args, &args_len);
            int fi = intern_field(fs, args, args_len, errbuf, errlen);
            if (fi < 0) {
                return fi;
            }
            f->field = fi;
        }
        return 0;
    case CH_FEAT_SINCE_LAST:
    case CH_FEAT_SINCE_PREV:
    case CH_FEAT_SHARE:
        if (args) {
            return fail(errbuf, errlen, -EINVAL, "%s takes no field, only filters",
                        kind_names[kind]);
        }
        return 0;
    case CH_FEAT_DISTINCT: {
        if (args) {
            trim(&args, &args_len);
        }
        f->text = args ? text_field(fs, args, args_len, true) : -1;
        if (f->text == -E2BIG) {
            return fail(errbuf, errlen, -E2BIG, "more than %d text fields read by name",
                        CH_FEATURES_MAX_TEXTS);
        }
        if (f->text < 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "distinct needs a text field: distinct(item), distinct(category), "
                        "distinct(type) or the name or dotted path of a field of the events");
        }
        fs->hashed[f->text] = true;
        return 0;
    }
    case CH_FEAT_RATIO: {
        const char *comma = args ? memchr(args, ',', args_len) : NULL;
        if (!comma) {
            return fail(errbuf, errlen, -EINVAL, "ratio needs two features: ratio(a, b)");
        }
        const char *a = args, *b = comma + 1;
        size_t alen = (size_t)(comma - args), blen = args_len - alen - 1;
        trim(&a, &alen);
        trim(&b, &blen);
        f->ratio_a = find_feature(fs, a, alen);
        f->ratio_b = find_feature(fs, b, blen);
        if (f->ratio_a < 0 || f->ratio_b < 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "ratio operand '%.*s' is not a feature declared before this one",
                        (int)(f->ratio_a < 0 ? alen : blen), f->ratio_a < 0 ? a : b);
        }
        return 0;
    }
    }
    return -EINVAL;
}

/* A key of an option rather than of a filter. */
static bool option_key(const char *k, size_t n) {
    static const char *const keys[] = {"half_life", "default", "window", "k", "slots"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strlen(keys[i]) == n && memcmp(keys[i], k, n) == 0) {
            return true;
        }
    }
    return false;
}

static int parse_option(ch_features_t *fs, feature_t *f, const char *tok, size_t len,
                        char *errbuf, size_t errlen) {
    const char *eq = memchr(tok, '=', len);
    if (!eq) {
        return fail(errbuf, errlen, -EINVAL, "expected key=value, got '%.*s'", (int)len, tok);
    }
    size_t klen = (size_t)(eq - tok);
    char val[SPEC_MAX];
    size_t vlen = len - klen - 1;
    if (vlen == 0 || vlen >= sizeof(val)) {
        return fail(errbuf, errlen, -EINVAL, "bad value in '%.*s'", (int)len, tok);
    }
    memcpy(val, eq + 1, vlen);
    val[vlen] = '\0';

    bool negate = klen > 0 && tok[klen - 1] == '!';
    int text = text_field(fs, tok, klen - negate, false);
    if (text < 0 && !option_key(tok, klen)) {
        /* any other key names a text field of the events, by name or path */
        text = text_field(fs, tok, klen - negate, true);
        if (text == -E2BIG) {
            return fail(errbuf, errlen, -E2BIG, "more than %d text fields read by name",
                        CH_FEATURES_MAX_TEXTS);
        }
    }
    if (text >= 0) {
        if (f->kind == CH_FEAT_RATIO) {
            return fail(errbuf, errlen, -EINVAL, "ratio takes no filter");
        }
        if (f->filtered[text]) {
            return fail(errbuf, errlen, -EINVAL, "two %s filters", text_name(fs, text));
        }
        f->filtered[text] = true;
        f->negate[text] = negate;
        f->filter[text] = 0;
        /* values separated by | or ,; "quoted" ones may hold anything (\" and \\ escaped) */
        const char *v = val;
        while (*v) {
            char one[SPEC_MAX];
            size_t n = 0;
            if (*v == '"') {
                for (v++; *v && *v != '"'; v++) {
                    if (*v == '\\' && v[1]) {
                        v++;
                    }
                    one[n++] = *v; /* n < vlen < SPEC_MAX */
                }
                if (*v != '"') {
                    return fail(errbuf, errlen, -EINVAL, "unterminated quote in '%.*s'", (int)len,
                                tok);
                }
                v++;
                if (*v && *v != '|' && *v != ',') {
                    return fail(errbuf, errlen, -EINVAL,
                                "'%c' after a quoted value in '%.*s' (values are separated by "
                                "| or ,)",
                                *v, (int)len, tok);
                }
            } else {
                n = strcspn(v, "|,\"\\");
                if (v[n] == '"' || v[n] == '\\') {
                    return fail(errbuf, errlen, -EINVAL,
                                "'%c' inside an unquoted value in '%.*s' (quote the whole value: "
                                "\"a b\", with \\\" and \\\\ inside)",
                                v[n], (int)len, tok);
                }
                memcpy(one, v, n);
                v += n;
            }
            int vi = intern_value(fs, text, one, n, errbuf, errlen);
            if (vi < 0) {
                return vi;
            }
            f->filter[text] |= UINT64_C(1) << vi;
            if (*v) {
                v++;
            }
        }
        return 0;
    }
    if (klen == 6 && memcmp(tok, "window", 6) == 0 && f->kind == CH_FEAT_DISTINCT) {
        double ms;
        if (ch_duration_parse(val, &ms) < 0 || !(ms > 0)) {
            return fail(errbuf, errlen, -EINVAL, "bad window '%s' (e.g. 1h, 7d, inf)", val);
        }
        f->window_ms = ms;
        return 0;
    }
    if (klen == 1 && tok[0] == 'k' && f->kind == CH_FEAT_DISTINCT) {
        char *end = NULL;
        long k = strtol(val, &end, 10);
        if (*end || k < 4 || k > CH_DISTINCT_K_MAX) {
            return fail(errbuf, errlen, -EINVAL, "bad k '%s' (4..%d)", val, CH_DISTINCT_K_MAX);
        }
        f->k = (int)k;
        return 0;
    }
    if (klen == 9 && memcmp(tok, "half_life", 9) == 0) {
        if (f->kind == CH_FEAT_DISTINCT) { /* since_last has always taken (and ignored) it */
            return fail(errbuf, errlen, -EINVAL,
                        "distinct does not decay (it counts over window=)");
        }
        if (f->kind == CH_FEAT_SINCE_PREV) {
            return fail(errbuf, errlen, -EINVAL,
                        "since_prev does not decay (it is the gap between two events)");
        }
        double ms;
        if (ch_duration_parse(val, &ms) < 0 || !(ms > 0)) {
            return fail(errbuf, errlen, -EINVAL,
                        "bad half_life '%s' (e.g. 30s, 15m, 1h, 7d, inf)", val);
        }
        f->half_life_ms = ms;
        return 0;
    }
    if (klen == 7 && memcmp(tok, "default", 7) == 0) {
        char *end = NULL;
        double d = strtod(val, &end);
        if (end == val || *end || !isfinite(d)) {
            return fail(errbuf, errlen, -EINVAL, "bad default '%s' (a finite number)", val);
        }
        f->dflt = d;
        return 0;
    }
    return fail(errbuf, errlen, -EINVAL,
                "option '%.*s' does not apply here (filters: type, item, category or a field's "
                "name or path, = or !=; half_life, default; distinct: window, k)",
                (int)klen, tok);
}

static void format_duration(char *buf, size_t len, double ms) {
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"w", 604800000.0}, {"d", 86400000.0}, {"h", 3600000.0},
                 {"m", 60000},       {"s", 1000}};
    if (isinf(ms)) {
        snprintf(buf, len, "inf");
        return;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (fmod(ms, units[i].ms) == 0) {
            snprintf(buf, len, "%.17g%s", ms / units[i].ms, units[i].unit);
            return;
        }
    }
    snprintf(buf, len, "%.17gms", ms);
}

static void format_spec(const ch_features_t *fs, feature_t *f) {
    char hl[48];
    int n = snprintf(f->spec, sizeof(f->spec), "%s", kind_names[f->kind]);
    if (f->kind == CH_FEAT_RATIO) {
        n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "(%s, %s)",
                      fs->feats[f->ratio_a].name, fs->feats[f->ratio_b].name);
    } else {
        if (f->field >= 0) {
            n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "(%s)", fs->fields[f->field]);
        } else if (f->kind == CH_FEAT_DISTINCT) {
            n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "(%s)", text_name(fs, f->text));
        }
        for (int k = 0; k < CH_TEXT_N; k++) {
            if (f->filtered[k] && n < (int)sizeof(f->spec)) {
                n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, " %s%s", text_name(fs, k),
                              f->negate[k] ? "!=" : "=");
            }
            const char *sep = "";
            for (size_t v = 0; f->filtered[k] && v < fs->n_values[k]; v++) {
                if ((f->filter[k] & (UINT64_C(1) << v)) && n < (int)sizeof(f->spec)) {
                    const char *s = fs->values[k][v];
                    size_t len = fs->value_lens[k][v];
                    if (!needs_quotes(s, len)) {
                        n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "%s%s", sep, s);
                    } else {
                        n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "%s\"", sep);
                        for (size_t i = 0; i < len && n < (int)sizeof(f->spec); i++) {
                            n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "%s%c",
                                          s[i] == '"' || s[i] == '\\' ? "\\" : "", s[i]);
                        }
                        if (n < (int)sizeof(f->spec)) {
                            n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "\"");
                        }
                    }
                    sep = "|";
                }
            }
        }
        if (f->kind == CH_FEAT_DISTINCT && n < (int)sizeof(f->spec)) {
            format_duration(hl, sizeof(hl), f->window_ms);
            n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, " window=%s k=%d", hl, f->k);
        }
        if (f->kind != CH_FEAT_SINCE_LAST && f->kind != CH_FEAT_SINCE_PREV &&
            f->kind != CH_FEAT_DISTINCT && n < (int)sizeof(f->spec)) {
            format_duration(hl, sizeof(hl), f->half_life_ms);
            n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, " half_life=%s", hl);
        }
    }
    if (n < (int)sizeof(f->spec)) {
        snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, " default=%.17g", f->dflt);
    }
}

int ch_features_add(ch_features_t *fs, const char *name, const char *spec, char *errbuf,
                    size_t errlen) {
    if (fs->sealed) {
        return fail(errbuf, errlen, -EBUSY, "feature set is sealed");
    }
    if (!valid_name(name, strlen(name))) {
        return fail(errbuf, errlen, -EINVAL,
                    "bad feature name '%s' (letters, digits, _ . -; at most %d bytes)", name,
                    CH_FEATURE_NAME_MAX - 1);
    }
    if (find_feature(fs, name, strlen(name)) >= 0) {
        return fail(errbuf, errlen, -EINVAL, "feature '%s' declared twice", name);
    }
    if (fs->n_feats == CH_FEATURES_MAX) {
        return fail(errbuf, errlen, -E2BIG, "more than %d features", CH_FEATURES_MAX);
    }
    /* Work on a copy so a failed declaration leaves the set unchanged, except for
     * interned fields/types, which are harmless. */
    feature_t f = {.field = -1,
                   .text = -1,
                   .half_life_ms = fs->default_half_life_ms,
                   .window_ms = fs->default_half_life_ms,
                   .k = CH_DISTINCT_K_DEFAULT,
                   .ratio_a = -1,
                   .ratio_b = -1};
    snprintf(f.name, sizeof(f.name), "%s", name);
    const char *p = NULL;
    int r = parse_head(fs, &f, spec, &p, errbuf, errlen);
    if (r < 0) {
        return r;
    }
    for (p = skip_ws(p); *p; p = skip_ws(p)) {
        size_t n = token_len(p);
        r = parse_option(fs, &f, p, n, errbuf, errlen);
        if (r < 0) {
            return r;
        }
        p += n;
    }
    bool any_filter = false;
    for (int k = 0; k < CH_TEXT_N; k++) {
        any_filter |= f.filtered[k];
    }
    if (f.kind == CH_FEAT_SHARE && !any_filter) {
        return fail(errbuf, errlen, -EINVAL,
                    "share needs a filter: the share of the events it matches, e.g. share "
                    "type=refund");
    }
    if (f.kind == CH_FEAT_DISTINCT) {
        f.half_life_ms = INFINITY; /* no decay: its state only ages out of the window */
    }
    format_spec(fs, &f);
    fs->feats[fs->n_feats++] = f;
    return 0;
}

static size_t state_width(const feature_t *f) {
    switch (f->kind) {
    case CH_FEAT_COUNT:
    case CH_FEAT_SUM:
    case CH_FEAT_MAX:
    case CH_FEAT_SINCE_LAST:
        return 1;
    case CH_FEAT_MEAN:
    case CH_FEAT_SHARE:
    case CH_FEAT_SINCE_PREV:
        return 2;
    case CH_FEAT_STD:
        return 3;
    case CH_FEAT_RATIO:
        return 0;
    case CH_FEAT_DISTINCT:
        return 2 + 6 * (size_t)f->k; /* n, t_lost, then 3k (hash, time) pairs */
    }
    return 0;
}

int ch_features_seal(ch_features_t *fs) {
    if (fs->n_feats == 0) {
        return -EINVAL;
    }
    size_t off = 0;
    for (size_t i = 0; i < fs->n_feats; i++) {
        feature_t *f = &fs->feats[i];
        f->off = off;
        off += state_width(f);
        size_t h = 0;
        while (h < fs->n_half_lives && fs->half_lives[h] != f->half_life_ms) {
            h++;
        }
        if (h == fs->n_half_lives) {
            fs->half_lives[fs->n_half_lives++] = f->half_life_ms;
        }
        f->hl_index = (int)h;
    }
    for (size_t i = 0; i < fs->n_tags; i++) {
        tag_t *t = &fs->tags[i];
        t->f.off = off;
        off += SLOT * (size_t)t->slots;
        size_t h = 0;
        while (h < fs->n_half_lives && fs->half_lives[h] != t->f.half_life_ms) {
            h++;
        }
        if (h == fs->n_half_lives) {
            fs->half_lives[fs->n_half_lives++] = t->f.half_life_ms;
        }
        t->f.hl_index = (int)h;
    }
    fs->state_len = off;
    fs->sealed = true;
    return 0;
}

int ch_features_add_tag(ch_features_t *fs, const char *name, const char *spec, char *errbuf,
                        size_t errlen) {
    if (fs->sealed) {
        return fail(errbuf, errlen, -EBUSY, "feature set is sealed");
    }
    if (!valid_name(name, strlen(name))) {
        return fail(errbuf, errlen, -EINVAL, "bad tag name '%s' (letters, digits, _ . -)", name);
    }
    for (size_t i = 0; i < fs->n_tags; i++) {
        if (strcmp(fs->tags[i].name, name) == 0) {
            return fail(errbuf, errlen, -EINVAL, "tag '%s' declared twice", name);
        }
    }
    if (fs->n_tags == CH_TAGS_MAX) {
        return fail(errbuf, errlen, -E2BIG, "more than %d tags", CH_TAGS_MAX);
    }
    tag_t t = {.f = {.kind = CH_FEAT_COUNT,
                     .field = -1,
                     .text = -1,
                     .half_life_ms = fs->default_half_life_ms}};
    snprintf(t.name, sizeof(t.name), "%s", name);
    const char *p = skip_ws(spec), *open = NULL, *comma = NULL, *close = NULL;
    if (strncmp(p, "top", 3) == 0 && *skip_ws(p + 3) == '(') {
        open = skip_ws(p + 3);
        comma = strchr(open, ',');
        close = comma ? strchr(comma, ')') : NULL;
    }
    if (!close) {
        return fail(errbuf, errlen, -EINVAL,
                    "expected top(<item|category|type|field>, N), e.g. top(category, 3)");
    }
    const char *fld = open + 1;
    size_t flen = (size_t)(comma - fld);
    trim(&fld, &flen);
    t.text = text_field(fs, fld, flen, true);
    if (t.text == -E2BIG) {
        return fail(errbuf, errlen, -E2BIG, "more than %d text fields read by name",
                    CH_FEATURES_MAX_TEXTS);
    }
    char *end = NULL;
    long n = strtol(comma + 1, &end, 10);
    if (t.text < 0 || *skip_ws(end) != ')' || n < 1 || n > CH_TAG_TOP_MAX) {
        return fail(errbuf, errlen, -EINVAL,
                    "top(<item|category|type|field>, N) with N in 1..%d, got '%.*s'",
                    CH_TAG_TOP_MAX, (int)(close - open + 1), open);
    }
    t.n = (int)n;
    t.slots = 4 * t.n > CH_TAG_SLOTS_MAX ? CH_TAG_SLOTS_MAX : 4 * t.n;
    for (p = skip_ws(close + 1); *p; p = skip_ws(p)) {
        size_t len = token_len(p);
        if (len > 6 && strncmp(p, "slots=", 6) == 0) {
            long m = strtol(p + 6, &end, 10);
            if (end != p + len || m < t.n || m > CH_TAG_SLOTS_MAX) {
                return fail(errbuf, errlen, -EINVAL, "bad slots '%.*s' (N..%d)", (int)len, p,
                            CH_TAG_SLOTS_MAX);
            }
            t.slots = (int)m;
        } else if (len > 8 && strncmp(p, "default=", 8) == 0) {
            return fail(errbuf, errlen, -EINVAL, "a tag has no default");
        } else {
            int r = parse_option(fs, &t.f, p, len, errbuf, errlen);
            if (r < 0) {
                return r;
            }
        }
        p += len;
    }
    /* the canonical spec: the feature's filters and half-life after top(...) */
    format_spec(fs, &t.f);
    const char *rest = strchr(t.f.spec, ' ');
    const char *dflt = strstr(t.f.spec, " default=");
    snprintf(t.spec, sizeof(t.spec), "top(%s, %d)%.*s slots=%d", text_name(fs, t.text), t.n,
             rest && dflt ? (int)(dflt - rest) : 0, rest ? rest : "", t.slots);
    fs->tags[fs->n_tags++] = t;
    return 0;
}

size_t ch_features_tag_count(const ch_features_t *fs) { return fs->n_tags; }

const char *ch_features_tag_name(const ch_features_t *fs, size_t i) { return fs->tags[i].name; }

const char *ch_features_tag_spec(const ch_features_t *fs, size_t i) { return fs->tags[i].spec; }

/* Is slot a (weight wa) ahead of slot b: heavier, or as heavy with smaller bytes? */
static bool tag_before(const double *a, const double *b) {
    if (a[0] != b[0]) {
        return a[0] > b[0];
    }
    size_t la = (size_t)a[1], lb = (size_t)b[1];
    int c = memcmp(a + 2, b + 2, la < lb ? la : lb);
    return c < 0 || (c == 0 && la < lb);
}

size_t ch_features_tag_read(const ch_features_t *fs, const double *state, size_t i,
                            const char **vals, size_t *lens, double *weights) {
    const tag_t *t = &fs->tags[i];
    const double *s = state + t->f.off;
    const double *top[CH_TAG_TOP_MAX];
    size_t n = 0;
    for (int j = 0; j < t->slots; j++) {
        const double *x = s + SLOT * j;
        if (x[1] < 0 || !(x[0] > 0)) {
            continue;
        }
        size_t at = n < (size_t)t->n ? n++ : (size_t)t->n;
        if (at == (size_t)t->n) {
            if (!tag_before(x, top[n - 1])) {
                continue;
            }
            at = n - 1;
        }
        while (at > 0 && tag_before(x, top[at - 1])) { /* insertion, heaviest first */
            top[at] = top[at - 1];
            at--;
        }
        top[at] = x;
    }
    for (size_t k = 0; k < n; k++) {
        vals[k] = (const char *)(top[k] + 2);
        lens[k] = (size_t)top[k][1];
        if (weights) {
            weights[k] = top[k][0];
        }
    }
    return n;
}

size_t ch_features_count(const ch_features_t *fs) {
    return fs->n_feats;
}

const char *ch_features_name(const ch_features_t *fs, size_t i) {
    return fs->feats[i].name;
}

ch_feat_kind_t ch_features_kind(const ch_features_t *fs, size_t i) {
    return fs->feats[i].kind;
}

const char *ch_features_spec(const ch_features_t *fs, size_t i) {
    return fs->feats[i].spec;
}

size_t ch_features_state_len(const ch_features_t *fs) {
    return fs->state_len;
}

size_t ch_features_state_width(const ch_features_t *fs, size_t i) {
    return state_width(&fs->feats[i]);
}

size_t ch_features_tag_state_len(const ch_features_t *fs, size_t i) {
    return SLOT * (size_t)fs->tags[i].slots;
}

double ch_features_longest_half_life(const ch_features_t *fs) {
    double hl = 0;
    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        if (f->kind == CH_FEAT_DISTINCT && f->window_ms > hl) {
            hl = f->window_ms; /* what it remembers: counted like a half-life */
        } else if (f->kind != CH_FEAT_SINCE_LAST && f->kind != CH_FEAT_SINCE_PREV &&
                   f->kind != CH_FEAT_RATIO && f->kind != CH_FEAT_DISTINCT &&
                   f->half_life_ms > hl) {
            hl = f->half_life_ms;
        }
    }
    for (size_t i = 0; i < fs->n_tags; i++) {
        hl = fs->tags[i].f.half_life_ms > hl ? fs->tags[i].f.half_life_ms : hl;
    }
    return hl;
}

size_t ch_features_field_count(const ch_features_t *fs) {
    return fs->n_fields;
}

const char *ch_features_field_name(const ch_features_t *fs, size_t i) {
    return fs->fields[i];
}

void ch_features_obs_text(const ch_features_t *fs, ch_obs_t *obs, ch_text_field_t k, const char *v,
                          size_t len) {
    obs->value_mask[k] = 0;
    obs->text_hash[k] = 0;
    if (!v) {
        obs->text_present &= ~(1u << k);
        return;
    }
    obs->text_present |= 1u << k;
    obs->text[k] = v;
    obs->text_len[k] = len;
    for (size_t i = 0; i < fs->n_values[k]; i++) {
        if (fs->value_lens[k][i] == len && memcmp(fs->values[k][i], v, len) == 0) {
            obs->value_mask[k] = UINT64_C(1) << i;
            break;
        }
    }
    if (fs->hashed[k]) { /* a fixed key: the state outlives the process */
        obs->text_hash[k] = siphash13(0x636f686f72746431ULL, 0x64697374696e6374ULL,
                                      (const unsigned char *)v, len) >>
                            (64 - HASH_BITS);
    }
}

void ch_features_state_init(const ch_features_t *fs, double *state) {
    for (size_t i = 0; i < fs->n_tags; i++) {
        double *s = state + fs->tags[i].f.off;
        memset(s, 0, SLOT * (size_t)fs->tags[i].slots * sizeof(double));
        for (int j = 0; j < fs->tags[i].slots; j++) {
            s[SLOT * j + 1] = -1; /* empty */
        }
    }
    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        for (size_t j = 0; j < state_width(f); j++) {
            state[f->off + j] = 0.0;
        }
        if (f->kind == CH_FEAT_MAX || f->kind == CH_FEAT_SINCE_LAST) {
            state[f->off] = -INFINITY;
        }
        if (f->kind == CH_FEAT_SINCE_PREV) {
            state[f->off] = state[f->off + 1] = -INFINITY;
        }
        if (f->kind == CH_FEAT_DISTINCT) {
            state[f->off + 1] = -INFINITY;
        }
    }
}

/* 2^(-dt/h) for dt >= 0; exactly 1 for dt == 0 or h == inf. */
static double decay(double dt_ms, double h_ms) {
    if (dt_ms == 0 || isinf(h_ms)) {
        return 1.0;
    }
    return exp2(-dt_ms / h_ms);
}

/* Does the observation pass every filter of f? */
static bool matches(const feature_t *f, const ch_obs_t *obs) {
    for (int k = 0; k < CH_TEXT_N; k++) {
        if (f->filtered[k] && ((obs->value_mask[k] & f->filter[k]) != 0) == f->negate[k]) {
            return false;
        }
    }
    return true;
}

/* distinct(): s[0] pairs (hash, time) from s[2], in increasing hash order; s[1] the
 * latest time of a value dropped while it could still be in the window (-inf: none). */

/* The index of the first pair whose hash is >= h. */
static size_t distinct_find(const double *e, size_t n, double h) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e[2 * mid] < h) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* Keeps the k largest of the times pushed: heap[0] is the smallest of them. */
static void heap_push(double *heap, int *n, int k, double t) {
    int i;
    if (*n < k) {
        i = (*n)++;
        while (i > 0 && heap[(i - 1) / 2] > t) { /* sift up */
            heap[i] = heap[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        heap[i] = t;
        return;
    }
    if (t <= heap[0]) {
        return;
    }
    i = 0; /* replace the root, sift down */
    for (;;) {
        int c = 2 * i + 1;
        if (c >= k) {
            break;
        }
        if (c + 1 < k && heap[c + 1] < heap[c]) {
            c++;
        }
        if (heap[c] >= t) {
            break;
        }
        heap[i] = heap[c];
        i = c;
    }
    heap[i] = t;
}

/* Makes room: drops the pairs out of the window at t_ref; if that frees nothing, those
 * that k pairs of smaller hashes outlive (seen at least as late: one pass in hash order
 * with a heap of k times, O(n log k)), whose values may still be in the window: s[1]
 * keeps the latest time of such a value. Returns the count left. */
static size_t distinct_prune(double *s, int k, double window_ms, int64_t t_ref) {
    size_t n = (size_t)s[0], out = 0;
    double *e = s + 2, heap[CH_DISTINCT_K_MAX];
    for (size_t i = 0; i < n; i++) {
        if ((double)t_ref - e[2 * i + 1] < window_ms) {
            e[2 * out] = e[2 * i];
            e[2 * out + 1] = e[2 * i + 1];
            out++;
        }
    }
    if (out == n) {
        int in_heap = 0;
        out = 0;
        for (size_t i = 0; i < n; i++) {
            double h = e[2 * i], t = e[2 * i + 1];
            if (in_heap == k && heap[0] >= t) {
                s[1] = t > s[1] ? t : s[1];
                continue;
            }
            e[2 * out] = h;
            e[2 * out + 1] = t;
            out++;
            heap_push(heap, &in_heap, k, t);
        }
    }
    s[0] = (double)out;
    return out;
}

static void distinct_add(const feature_t *f, double *s, int64_t t_ref, double h, double t) {
    if ((double)t_ref - t >= f->window_ms) {
        return; /* already out of the window */
    }
    size_t n = (size_t)s[0], cap = 3 * (size_t)f->k;
    double *e = s + 2;
    size_t i = distinct_find(e, n, h);
    if (i < n && e[2 * i] == h) {
        if (t > e[2 * i + 1]) {
            e[2 * i + 1] = t;
        }
        return;
    }
    if (n == cap) {
        n = distinct_prune(s, f->k, f->window_ms, t_ref);
        i = distinct_find(e, n, h);
    }
    if (n == cap) { /* every pair may still count: the largest hash goes */
        double lost = i == n ? t : e[2 * (n - 1) + 1];
        s[1] = lost > s[1] ? lost : s[1];
        if (i == n) {
            return;
        }
        n--;
    }
    memmove(e + 2 * (i + 1), e + 2 * i, 2 * (n - i) * sizeof(*e));
    e[2 * i] = h;
    e[2 * i + 1] = t;
    s[0] = (double)(n + 1);
}

static double distinct_read(const feature_t *f, const double *s, int64_t t_ref) {
    size_t n = (size_t)s[0], live = 0;
    double h_k = 0;
    for (size_t i = 0; i < n; i++) {
        if ((double)t_ref - s[3 + 2 * i] < f->window_ms && ++live == (size_t)f->k) {
            h_k = s[2 + 2 * i];
        }
    }
    if (live < (size_t)f->k || !((double)t_ref - s[1] < f->window_ms)) {
        return (double)live; /* no value of the window was dropped: the exact count */
    }
    double est = (f->k - 1) / ((h_k + 1.0) / (double)(UINT64_C(1) << HASH_BITS));
    return est > (double)live ? est : (double)live;
}

/* A tag's slots: decay (factor NULL: the reference time did not move), then the value's
 * weight, Space-Saving style: its slot, a free one, or the lightest one, which it takes
 * over with that weight plus its own (an overestimate only once the user has had more
 * values than slots). */
static void tag_update(const tag_t *t, double *s, const double *factor, const double *weight,
                       const ch_obs_t *obs) {
    double fac = factor ? factor[t->f.hl_index] : 1.0;
    if (fac != 1.0) {
        for (int j = 0; j < t->slots; j++) {
            s[SLOT * j] *= fac;
        }
    }
    if (!(obs->text_present & (1u << t->text)) || !matches(&t->f, obs)) {
        return;
    }
    const char *v = obs->text[t->text];
    size_t len = obs->text_len[t->text];
    len = len > CH_TAG_VALUE_MAX ? CH_TAG_VALUE_MAX : len;
    double *free_slot = NULL, *light = NULL;
    for (int j = 0; j < t->slots; j++) {
        double *x = s + SLOT * j;
        if (x[1] < 0) {
            free_slot = free_slot ? free_slot : x;
        } else if ((size_t)x[1] == len && memcmp(x + 2, v, len) == 0) {
            x[0] += weight[t->f.hl_index];
            return;
        } else if (!light || x[0] < light[0]) {
            light = x;
        }
    }
    double *x = free_slot ? free_slot : light;
    x[0] = (free_slot ? 0 : x[0]) + weight[t->f.hl_index];
    x[1] = (double)len;
    memset(x + 2, 0, CH_TAG_VALUE_MAX);
    memcpy(x + 2, v, len);
}

void ch_features_update(const ch_features_t *fs, double *state, int64_t *t_ref_ms,
                        const ch_obs_t *obs) {
    double factor[CH_FEATURES_MAX + CH_TAGS_MAX];
    double weight[CH_FEATURES_MAX + CH_TAGS_MAX];
    bool advance = false;

    if (*t_ref_ms == INT64_MIN || obs->ts_ms >= *t_ref_ms) {
        double dt = *t_ref_ms == INT64_MIN ? 0.0 : (double)(obs->ts_ms - *t_ref_ms);
        for (size_t h = 0; h < fs->n_half_lives; h++) {
            factor[h] = decay(dt, fs->half_lives[h]);
            weight[h] = 1.0;
        }
        advance = dt > 0;
        *t_ref_ms = obs->ts_ms;
    } else {
        double dt = (double)(*t_ref_ms - obs->ts_ms);
        for (size_t h = 0; h < fs->n_half_lives; h++) {
            factor[h] = 1.0;
            weight[h] = decay(dt, fs->half_lives[h]);
        }
    }

    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        double *s = state + f->off;
        double fac = factor[f->hl_index];
        if (advance && fac != 1.0) {
            switch (f->kind) {
            case CH_FEAT_COUNT:
            case CH_FEAT_SUM:
                s[0] *= fac;
                break;
            case CH_FEAT_MEAN:
            case CH_FEAT_SHARE:
                s[0] *= fac;
                s[1] *= fac;
                break;
            case CH_FEAT_STD:
                s[0] *= fac; /* weight; the mean is unchanged by uniform decay */
                s[2] *= fac;
                break;
            case CH_FEAT_MAX:
                if (s[0] != -INFINITY) {
                    s[0] *= fac;
                }
                break;
            case CH_FEAT_SINCE_LAST:
            case CH_FEAT_SINCE_PREV:
            case CH_FEAT_RATIO:
            case CH_FEAT_DISTINCT:
                break;
            }
        }
        if (f->kind == CH_FEAT_SHARE) {
            s[1] += weight[f->hl_index]; /* every event counts in the whole */
        }
        if (f->kind == CH_FEAT_RATIO || !matches(f, obs)) {
            continue;
        }
        if (f->kind == CH_FEAT_DISTINCT) {
            if (obs->text_present & (1u << f->text)) {
                distinct_add(f, s, *t_ref_ms, (double)obs->text_hash[f->text], (double)obs->ts_ms);
            }
            continue;
        }
        bool has_value = f->field >= 0 && (obs->present_mask & (UINT64_C(1) << f->field));
        if (f->field >= 0 && !has_value) {
            continue; /* the event does not carry the aggregated field */
        }
        double w = weight[f->hl_index];
        double v = has_value ? obs->values[f->field] : 0.0;
        switch (f->kind) {
        case CH_FEAT_COUNT:
        case CH_FEAT_SHARE:
            s[0] += w;
            break;
        case CH_FEAT_SUM:
            s[0] += w * v;
            break;
        case CH_FEAT_MEAN:
            s[0] += w;
            s[1] += w * v;
            break;
        case CH_FEAT_STD: {
            double c = s[0] + w;
            double delta = v - s[1];
            double r = delta * w / c;
            s[1] += r;
            s[2] += s[0] * delta * r;
            s[0] = c;
            break;
        }
        case CH_FEAT_MAX:
            if (w * v > s[0]) {
                s[0] = w * v;
            }
            break;
        case CH_FEAT_SINCE_LAST:
            if ((double)obs->ts_ms > s[0]) {
                s[0] = (double)obs->ts_ms;
            }
            break;
        case CH_FEAT_SINCE_PREV: /* the two latest matching times, whatever the order */
            if ((double)obs->ts_ms >= s[0]) {
                s[1] = s[0];
                s[0] = (double)obs->ts_ms;
            } else if ((double)obs->ts_ms > s[1]) {
                s[1] = (double)obs->ts_ms;
            }
            break;
        case CH_FEAT_RATIO:
        case CH_FEAT_DISTINCT:
            break;
        }
    }
    for (size_t i = 0; i < fs->n_tags; i++) {
        tag_update(&fs->tags[i], state + fs->tags[i].f.off, advance ? factor : NULL, weight, obs);
    }
}

void ch_features_read(const ch_features_t *fs, const double *state, int64_t t_ref_ms,
                      double *out) {
    ch_features_read_at(fs, state, t_ref_ms, t_ref_ms, out);
}

void ch_features_read_at(const ch_features_t *fs, const double *state, int64_t t_ref_ms,
                         int64_t at_ms, double *out) {
    double factor[CH_FEATURES_MAX + CH_TAGS_MAX];
    if (at_ms < t_ref_ms) {
        at_ms = t_ref_ms;
    }
    for (size_t h = 0; h < fs->n_half_lives; h++) {
        factor[h] = at_ms == t_ref_ms ? 1.0 : decay((double)(at_ms - t_ref_ms), fs->half_lives[h]);
    }
    t_ref_ms = at_ms; /* since_last and distinct() are read at that time too */
    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        const double *s = state + f->off;
        double v = f->dflt;
        switch (f->kind) {
        case CH_FEAT_COUNT:
        case CH_FEAT_SUM:
            v = s[0] * factor[f->hl_index];
            break;
        case CH_FEAT_MEAN:
            if (s[0] > 0) {
                v = s[1] / s[0];
            }
            break;
        case CH_FEAT_STD:
            if (s[0] > 0) {
                v = sqrt(s[2] > 0 ? s[2] / s[0] : 0.0);
            }
            break;
        case CH_FEAT_MAX:
            if (s[0] != -INFINITY) {
                v = s[0] * factor[f->hl_index];
            }
            break;
        case CH_FEAT_SINCE_LAST:
            if (s[0] != -INFINITY) {
                v = ((double)t_ref_ms - s[0]) / 1000.0;
            }
            break;
        case CH_FEAT_SINCE_PREV:
            if (s[1] != -INFINITY) {
                v = (s[0] - s[1]) / 1000.0;
            }
            break;
        case CH_FEAT_RATIO:
            if (out[f->ratio_b] != 0) {
                v = out[f->ratio_a] / out[f->ratio_b];
            }
            break;
        case CH_FEAT_SHARE:
            if (s[1] > 0) {
                v = s[0] / s[1];
            }
            break;
        case CH_FEAT_DISTINCT:
            v = distinct_read(f, s, t_ref_ms);
            break;
        }
        out[i] = v;
    }
}
