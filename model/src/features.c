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
 *   ratio [] (computed from two earlier features at read time).
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

#define SPEC_MAX 192
#define ANY_TYPE UINT64_MAX /* no type= filter; filters use bits 0..62 only */

typedef struct feature {
    char name[CH_FEATURE_NAME_MAX];
    char spec[SPEC_MAX];
    ch_feat_kind_t kind;
    int field;           /* index into fields, -1 = none */
    uint64_t type_mask;  /* types this feature counts; all ones = any type */
    double half_life_ms; /* INFINITY = no decay */
    int hl_index;        /* index into distinct half-lives */
    double dflt;         /* value when undefined */
    int ratio_a, ratio_b;
    size_t off; /* first state double */
} feature_t;

struct ch_features {
    double default_half_life_ms;
    feature_t feats[CH_FEATURES_MAX];
    size_t n_feats;
    char fields[CH_FEATURES_MAX_FIELDS][CH_FEATURE_NAME_MAX + 8];
    size_t n_fields;
    char types[CH_FEATURES_MAX_TYPES][CH_FEATURE_NAME_MAX];
    size_t type_lens[CH_FEATURES_MAX_TYPES];
    size_t n_types;
    double half_lives[CH_FEATURES_MAX];
    size_t n_half_lives;
    size_t state_len;
    bool sealed;
};

static const char *const kind_names[] = {
    [CH_FEAT_COUNT] = "count", [CH_FEAT_SUM] = "sum",
    [CH_FEAT_MEAN] = "mean",   [CH_FEAT_STD] = "std",
    [CH_FEAT_MAX] = "max",     [CH_FEAT_SINCE_LAST] = "since_last",
    [CH_FEAT_RATIO] = "ratio",
};

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
    bool ok = (len == 6 && memcmp(s, "amount", 6) == 0) ||
              (len > 6 && memcmp(s, "attrs.", 6) == 0 && valid_name(s + 6, len - 6));
    if (!ok) {
        return fail(errbuf, errlen, -EINVAL,
                    "unknown field '%.*s' (expected 'amount' or 'attrs.<key>')", (int)len, s);
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

static int intern_type(ch_features_t *fs, const char *s, size_t len, char *errbuf,
                       size_t errlen) {
    if (!valid_name(s, len)) {
        return fail(errbuf, errlen, -EINVAL, "bad event type '%.*s' in filter", (int)len, s);
    }
    for (size_t i = 0; i < fs->n_types; i++) {
        if (fs->type_lens[i] == len && memcmp(fs->types[i], s, len) == 0) {
            return (int)i;
        }
    }
    if (fs->n_types == CH_FEATURES_MAX_TYPES) {
        return fail(errbuf, errlen, -E2BIG, "more than %d distinct event types in filters",
                    CH_FEATURES_MAX_TYPES);
    }
    memcpy(fs->types[fs->n_types], s, len);
    fs->types[fs->n_types][len] = '\0';
    fs->type_lens[fs->n_types] = len;
    return (int)fs->n_types++;
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
                    "unknown feature kind '%.*s' (count, sum, mean, std, max, since_last, ratio)",
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
        if (args) {
            return fail(errbuf, errlen, -EINVAL, "since_last takes no field, only type=");
        }
        return 0;
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

    if (klen == 4 && memcmp(tok, "type", 4) == 0) {
        if (f->kind == CH_FEAT_RATIO) {
            return fail(errbuf, errlen, -EINVAL, "ratio takes no type= filter");
        }
        f->type_mask = 0;
        const char *s = val;
        while (*s) {
            size_t n = strcspn(s, "|,");
            int ti = intern_type(fs, s, n, errbuf, errlen);
            if (ti < 0) {
                return ti;
            }
            f->type_mask |= UINT64_C(1) << ti;
            s += n;
            if (*s) {
                s++;
            }
        }
        return 0;
    }
    if (klen == 9 && memcmp(tok, "half_life", 9) == 0) {
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
    return fail(errbuf, errlen, -EINVAL, "unknown option '%.*s' (type, half_life, default)",
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
        }
        if (f->type_mask != ANY_TYPE) {
            const char *sep = " type=";
            for (size_t t = 0; t < fs->n_types && n < (int)sizeof(f->spec); t++) {
                if (f->type_mask & (UINT64_C(1) << t)) {
                    n += snprintf(f->spec + n, sizeof(f->spec) - (size_t)n, "%s%s", sep,
                                  fs->types[t]);
                    sep = "|";
                }
            }
        }
        if (f->kind != CH_FEAT_SINCE_LAST && n < (int)sizeof(f->spec)) {
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
                   .type_mask = ANY_TYPE,
                   .half_life_ms = fs->default_half_life_ms,
                   .ratio_a = -1,
                   .ratio_b = -1};
    snprintf(f.name, sizeof(f.name), "%s", name);
    const char *p = NULL;
    int r = parse_head(fs, &f, spec, &p, errbuf, errlen);
    if (r < 0) {
        return r;
    }
    for (p = skip_ws(p); *p; p = skip_ws(p)) {
        size_t n = strcspn(p, " \t\r\n");
        r = parse_option(fs, &f, p, n, errbuf, errlen);
        if (r < 0) {
            return r;
        }
        p += n;
    }
    format_spec(fs, &f);
    fs->feats[fs->n_feats++] = f;
    return 0;
}

static size_t state_width(ch_feat_kind_t kind) {
    switch (kind) {
    case CH_FEAT_COUNT:
    case CH_FEAT_SUM:
    case CH_FEAT_MAX:
    case CH_FEAT_SINCE_LAST:
        return 1;
    case CH_FEAT_MEAN:
        return 2;
    case CH_FEAT_STD:
        return 3;
    case CH_FEAT_RATIO:
        return 0;
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
        off += state_width(f->kind);
        size_t h = 0;
        while (h < fs->n_half_lives && fs->half_lives[h] != f->half_life_ms) {
            h++;
        }
        if (h == fs->n_half_lives) {
            fs->half_lives[fs->n_half_lives++] = f->half_life_ms;
        }
        f->hl_index = (int)h;
    }
    fs->state_len = off;
    fs->sealed = true;
    return 0;
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

double ch_features_longest_half_life(const ch_features_t *fs) {
    double hl = 0;
    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        if (f->kind != CH_FEAT_SINCE_LAST && f->kind != CH_FEAT_RATIO && f->half_life_ms > hl) {
            hl = f->half_life_ms;
        }
    }
    return hl;
}

size_t ch_features_field_count(const ch_features_t *fs) {
    return fs->n_fields;
}

const char *ch_features_field_name(const ch_features_t *fs, size_t i) {
    return fs->fields[i];
}

uint64_t ch_features_type_mask(const ch_features_t *fs, const char *type, size_t type_len) {
    for (size_t i = 0; i < fs->n_types; i++) {
        if (fs->type_lens[i] == type_len && memcmp(fs->types[i], type, type_len) == 0) {
            return UINT64_C(1) << i;
        }
    }
    return 0;
}

void ch_features_state_init(const ch_features_t *fs, double *state) {
    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        for (size_t j = 0; j < state_width(f->kind); j++) {
            state[f->off + j] = 0.0;
        }
        if (f->kind == CH_FEAT_MAX || f->kind == CH_FEAT_SINCE_LAST) {
            state[f->off] = -INFINITY;
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

void ch_features_update(const ch_features_t *fs, double *state, int64_t *t_ref_ms,
                        const ch_obs_t *obs) {
    double factor[CH_FEATURES_MAX];
    double weight[CH_FEATURES_MAX];
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
            case CH_FEAT_RATIO:
                break;
            }
        }
        bool matches = f->type_mask == ANY_TYPE || (obs->type_mask & f->type_mask);
        if (!matches || f->kind == CH_FEAT_RATIO) {
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
        case CH_FEAT_RATIO:
            break;
        }
    }
}

void ch_features_read(const ch_features_t *fs, const double *state, int64_t t_ref_ms,
                      double *out) {
    for (size_t i = 0; i < fs->n_feats; i++) {
        const feature_t *f = &fs->feats[i];
        const double *s = state + f->off;
        double v = f->dflt;
        switch (f->kind) {
        case CH_FEAT_COUNT:
        case CH_FEAT_SUM:
            v = s[0];
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
                v = s[0];
            }
            break;
        case CH_FEAT_SINCE_LAST:
            if (s[0] != -INFINITY) {
                v = ((double)t_ref_ms - s[0]) / 1000.0;
            }
            break;
        case CH_FEAT_RATIO:
            if (out[f->ratio_b] != 0) {
                v = out[f->ratio_a] / out[f->ratio_b];
            }
            break;
        }
        out[i] = v;
    }
}
