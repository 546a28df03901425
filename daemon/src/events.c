/*
 * events.c - decode, validate and map one input event (README "Your own events").
 *
 * Design notes
 * - Avro decoding borrows from the Kafka message (no copy, no allocation per event);
 *   JSON (input.format = json) is parsed by jansson, whose trees are held until the
 *   batch is written (ch_events_release).
 * - Validation rejects what must never reach the state or an output: empty or
 *   over-long ids, non-finite numbers, times before 1970 or too far in the future.
 * - The field map is resolved once from the feature set: each numeric field a
 *   feature reads is the amount, one attrs key, or a field of the events by path, which
 *   joins the decoder's mapping (input.map.*) and comes back in the view's fields.
 */
#include "events.h"

#include "ch/json_in.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(CH_FEATURES_MAX_TEXTS == CH_MAPPING_MAX_TEXTS,
               "every text field a feature reads has a place in the mapping");

typedef enum field_kind {
    FIELD_AMOUNT,
    FIELD_ATTR,
    FIELD_PATH,
} field_kind_t;

typedef struct field_map {
    field_kind_t kind;
    const char *attr; /* FIELD_ATTR: key within attrs (borrowed from the feature set) */
    size_t attr_len;
    size_t index; /* FIELD_PATH: index in the mapping's fields */
    const char *name; /* the feature's field name (borrowed from the feature set) */
    double lo, hi;    /* the values accepted (input.max_abs, input.range.<field>) */
} field_map_t;

struct ch_events {
    const ch_config_t *cfg;
    const ch_features_t *fs;
    ch_decoder_t *dec;       /* input.format = avro */
    ch_json_decoder_t *json; /* input.format = json */
    field_map_t *fields;
    size_t n_fields;
    size_t n_texts; /* text fields read by name: the mapping's, in the features' order */
    double *values;
    const char *lit[CH_ROLE_N]; /* input.map.<role> = "literal": every event's value */
    size_t lit_len[CH_ROLE_N];
};

/* A quoted value of input.map.<role>: a literal, for type, item and category. */
static bool is_literal(const char *v, size_t n) { return n >= 2 && v[0] == '"' && v[n - 1] == '"'; }

static const char *const bad_names[CH_BAD_N] = {
    [CH_BAD_DECODE] = "decode_error",
    [CH_BAD_SCHEMA] = "schema_error",
    [CH_BAD_TOO_MANY_ATTRS] = "too_many_attrs",
    [CH_BAD_EMPTY_USER_ID] = "empty_user_id",
    [CH_BAD_USER_ID_TOO_LONG] = "user_id_too_long",
    [CH_BAD_EVENT_ID_TOO_LONG] = "event_id_too_long",
    [CH_BAD_NON_FINITE] = "non_finite",
    [CH_BAD_TS_NEGATIVE] = "ts_negative",
    [CH_BAD_TS_FUTURE] = "ts_in_future",
    [CH_BAD_OUT_OF_RANGE] = "out_of_range",
    [CH_BAD_TS_OLD] = "ts_too_old",
};

const char *ch_events_bad_name(ch_bad_reason_t r) {
    return r >= 0 && r < CH_BAD_N ? bad_names[r] : "unknown";
}

int ch_events_mapping(const ch_config_t *cfg, const ch_features_t *fs, ch_mapping_t *m,
                      char *errbuf, size_t errlen) {
    ch_mapping_default(m);
    m->ts_unit = cfg->input_ts_unit;
    for (int k = 0; k < CH_ROLE_N; k++) {
        const char *path = cfg->input_map[k];
        size_t n = strlen(path);
        if (is_literal(path, n)) {
            if ((k != CH_ROLE_TYPE && k != CH_ROLE_ITEM && k != CH_ROLE_CATEGORY) || n == 2) {
                snprintf(errbuf, errlen,
                         "input.map.%s: a \"literal\" %s", ch_role_name((ch_role_t)k),
                         n == 2 ? "must not be empty (leave the key empty: none)"
                                : "is for type, item and category only (the same value in "
                                  "every event)");
                return -EINVAL;
            }
            m->path[k][0] = '\0'; /* not in the events: the value comes from the config */
            m->is_default[k] = false;
            continue;
        }
        if (n && !ch_mapping_path_valid(path, n)) {
            snprintf(errbuf, errlen,
                     "input.map.%s: '%s' is not a field name or dotted path (names of letters, "
                     "digits and _, joined by '.')",
                     ch_role_name((ch_role_t)k), path);
            return -EINVAL;
        }
        memcpy(m->path[k], path, n + 1); /* n < CH_MAPPING_PATH_MAX: a valid path */
        m->is_default[k] = strcmp(path, ch_role_name((ch_role_t)k)) == 0;
    }
    for (int a = 0; a < CH_ROLE_N; a++) {
        for (int b = a + 1; b < CH_ROLE_N; b++) {
            const char *x = m->path[a], *y = m->path[b];
            size_t nx = strlen(x), ny = strlen(y), n = nx < ny ? nx : ny;
            const char *longer = nx < ny ? y : x;
            if (n && strncmp(x, y, n) == 0 && (longer[n] == '\0' || longer[n] == '.')) {
                snprintf(errbuf, errlen, "input.map.%s = %s and input.map.%s = %s overlap",
                         ch_role_name((ch_role_t)a), x, ch_role_name((ch_role_t)b), y);
                return -EINVAL;
            }
        }
    }
    for (size_t f = 0; f < ch_features_field_count(fs); f++) {
        const char *name = ch_features_field_name(fs, f);
        if (!strcmp(name, m->path[CH_ROLE_AMOUNT]) || !strcmp(name, "amount") ||
            !strncmp(name, "attrs.", 6)) {
            continue;
        }
        int r = ch_mapping_add_field(m, name);
        if (r == -E2BIG) {
            snprintf(errbuf, errlen, "more than %d numeric fields read by name",
                     CH_MAPPING_MAX_FIELDS);
            return r;
        }
        if (r < 0) {
            snprintf(errbuf, errlen,
                     "feature field '%s' is the path of a role that is not a number "
                     "(input.map.*)",
                     name);
            return -EINVAL;
        }
    }
    for (size_t j = 0; j < ch_features_text_count(fs); j++) {
        const char *name = ch_features_text_path(fs, j);
        int r = ch_mapping_add_text(m, name);
        if (r == -E2BIG) {
            snprintf(errbuf, errlen, "more than %d text fields read by name", CH_MAPPING_MAX_TEXTS);
            return r;
        }
        if (r != (int)j) {
            snprintf(errbuf, errlen,
                     "'%s' is read as text by a feature or tag, but it is the path of a role "
                     "(filter on type, item or category instead) or a numeric field",
                     name);
            return -EINVAL;
        }
    }
    return 0;
}

int ch_events_new(const ch_config_t *cfg, ch_schemas_t *schemas, const ch_features_t *fs,
                  ch_events_t **ret_events, char *errbuf, size_t errlen) {
    ch_events_t *e = calloc(1, sizeof(*e));
    if (!e) {
        return -ENOMEM;
    }
    e->cfg = cfg;
    e->fs = fs;
    e->n_fields = ch_features_field_count(fs);
    e->n_texts = ch_features_text_count(fs);
    for (int k = 0; k < CH_ROLE_N; k++) {
        size_t n = strlen(cfg->input_map[k]);
        if (is_literal(cfg->input_map[k], n)) {
            e->lit[k] = cfg->input_map[k] + 1;
            e->lit_len[k] = n - 2;
        }
    }
    e->fields = calloc(e->n_fields ? e->n_fields : 1, sizeof(*e->fields));
    e->values = calloc(e->n_fields ? e->n_fields : 1, sizeof(*e->values));
    if (!e->fields || !e->values) {
        ch_events_free(e);
        return -ENOMEM;
    }
    ch_mapping_t map;
    int r = ch_events_mapping(cfg, fs, &map, errbuf, errlen);
    if (r < 0) {
        ch_events_free(e);
        return r;
    }
    for (size_t f = 0, j = 0; f < e->n_fields; f++) {
        const char *name = ch_features_field_name(fs, f);
        if (strcmp(name, map.path[CH_ROLE_AMOUNT]) == 0 || strcmp(name, "amount") == 0) {
            e->fields[f].kind = FIELD_AMOUNT;
        } else if (strncmp(name, "attrs.", 6) == 0) {
            e->fields[f].kind = FIELD_ATTR;
            e->fields[f].attr = name + 6;
            e->fields[f].attr_len = strlen(name + 6);
        } else {
            e->fields[f].kind = FIELD_PATH;
            e->fields[f].index = j++; /* ch_events_mapping added them in this order */
        }
        e->fields[f].name = name;
        e->fields[f].lo = -cfg->input_max_abs;
        e->fields[f].hi = cfg->input_max_abs;
    }
    for (size_t i = 0; i < cfg->n_ranges; i++) {
        const ch_conf_pair_t *rg = &cfg->ranges[i];
        double lo, hi;
        bool found = false;
        if (ch_config_parse_range(rg->value, &lo, &hi) < 0) {
            snprintf(errbuf, errlen, "%s: input.range.%s = '%s' is not LOW..HIGH", rg->where,
                     rg->key, rg->value);
            ch_events_free(e);
            return -EINVAL;
        }
        for (size_t f = 0; f < e->n_fields; f++) {
            bool amount = e->fields[f].kind == FIELD_AMOUNT && strcmp(rg->key, "amount") == 0;
            if (amount || strcmp(e->fields[f].name, rg->key) == 0) {
                e->fields[f].lo = lo;
                e->fields[f].hi = hi;
                found = true;
            }
        }
        if (!found) {
            snprintf(errbuf, errlen,
                     "%s: input.range.%s: no feature reads a field '%s' (declare one, or remove "
                     "the range)",
                     rg->where, rg->key, rg->key);
            ch_events_free(e);
            return -EINVAL;
        }
    }
    if (cfg->input_format == CH_FORMAT_JSON) {
        r = ch_json_decoder_new(&map, &e->json);
        if (r < 0) {
            ch_events_free(e);
            return r;
        }
        *ret_events = e;
        return 0;
    }
    char reader[CH_CONF_STR + 32];
    ch_events_reader_schema(cfg, reader, sizeof(reader));
    r = ch_decoder_new(schemas, reader, cfg->input_framing,
                       cfg->input_writer_schema[0] ? cfg->input_writer_schema : NULL, &map, &e->dec,
                       errbuf, errlen);
    if (r < 0) {
        ch_events_free(e);
        return r;
    }
    *ret_events = e;
    return 0;
}

bool ch_events_unknown_id(const ch_events_t *e, const ch_msg_t *m, int32_t *ret_id) {
    return e->dec && ch_decoder_unknown_id(e->dec, m->value, m->value_len, ret_id);
}

int ch_events_add_schema(ch_events_t *e, int32_t id, const char *json, size_t len, const char *why,
                         char *errbuf, size_t errlen) {
    if (!e->dec) {
        return -EINVAL;
    }
    return ch_decoder_add_schema(e->dec, id, json, len, why, errbuf, errlen);
}

void ch_events_release(ch_events_t *e) {
    if (e->json) {
        ch_json_decoder_release(e->json);
    }
    if (e->dec) {
        ch_decoder_release(e->dec);
    }
}

ch_events_t *ch_events_free(ch_events_t *e) {
    if (!e) {
        return NULL;
    }
    ch_decoder_free(e->dec);
    ch_json_decoder_free(e->json);
    free(e->fields);
    free(e->values);
    free(e);
    return NULL;
}

static ch_bad_reason_t validate(const ch_events_t *e, const ch_event_view_t *ev, double now_ms,
                                char *why, size_t len) {
    if (ev->user_id_len == 0) {
        snprintf(why, len, "user_id is empty");
        return CH_BAD_EMPTY_USER_ID;
    }
    if (ev->user_id_len > (size_t)e->cfg->state_key_max_bytes) {
        snprintf(why, len, "user_id of %zu bytes exceeds state.key_max_bytes = %ld",
                 ev->user_id_len, e->cfg->state_key_max_bytes);
        return CH_BAD_USER_ID_TOO_LONG;
    }
    if (ev->event_id_len > (size_t)e->cfg->input_event_id_max_bytes) {
        snprintf(why, len, "event_id of %zu bytes exceeds input.event_id_max_bytes = %ld",
                 ev->event_id_len, e->cfg->input_event_id_max_bytes);
        return CH_BAD_EVENT_ID_TOO_LONG;
    }
    if (ev->has_amount && !isfinite(ev->amount)) {
        snprintf(why, len, "amount is %f", ev->amount);
        return CH_BAD_NON_FINITE;
    }
    for (size_t i = 0; i < ev->n_attrs; i++) {
        if (!isfinite(ev->attrs[i].value)) {
            snprintf(why, len, "attrs[%.*s] is %f", (int)ev->attrs[i].key_len, ev->attrs[i].key,
                     ev->attrs[i].value);
            return CH_BAD_NON_FINITE;
        }
    }
    if (ev->ts_ms < 0) {
        snprintf(why, len, "ts %lld is before 1970", (long long)ev->ts_ms);
        return CH_BAD_TS_NEGATIVE;
    }
    if (e->cfg->input_max_age_ms > 0 && isfinite(e->cfg->input_max_age_ms) &&
        (double)ev->ts_ms < now_ms - e->cfg->input_max_age_ms) {
        snprintf(why, len, "ts %lld is %.0f s old (input.max_age)", (long long)ev->ts_ms,
                 (now_ms - (double)ev->ts_ms) / 1000.0);
        return CH_BAD_TS_OLD;
    }
    if (e->cfg->input_max_future_ms > 0 &&
        (double)ev->ts_ms > now_ms + e->cfg->input_max_future_ms) {
        snprintf(why, len, "ts %lld is %.0f s in the future (input.max_future)",
                 (long long)ev->ts_ms, ((double)ev->ts_ms - now_ms) / 1000.0);
        return CH_BAD_TS_FUTURE;
    }
    return CH_BAD_NONE;
}

/* A number a feature reads: finite and within its field's range. */
static ch_bad_reason_t check_value(const field_map_t *fm, double v, char *why, size_t len) {
    if (!isfinite(v)) {
        snprintf(why, len, "%s is %f", fm->name, v);
        return CH_BAD_NON_FINITE;
    }
    if (v < fm->lo || v > fm->hi) {
        snprintf(why, len, "%s = %g is outside %g..%g (input.max_abs, input.range.%s)", fm->name,
                 v, fm->lo, fm->hi, fm->name);
        return CH_BAD_OUT_OF_RANGE;
    }
    return CH_BAD_NONE;
}

/* The event's numeric fields in the order the features read them, each checked. */
static ch_bad_reason_t build_obs(ch_events_t *e, const ch_event_view_t *ev, ch_obs_t *obs,
                                 char *why, size_t len) {
    obs->ts_ms = ev->ts_ms;
    ch_features_obs_text(e->fs, obs, CH_TEXT_TYPE, ev->type, ev->type_len);
    ch_features_obs_text(e->fs, obs, CH_TEXT_ITEM, ev->item, ev->item_len);
    ch_features_obs_text(e->fs, obs, CH_TEXT_CATEGORY, ev->category, ev->category_len);
    for (size_t j = 0; j < e->n_texts; j++) {
        ch_features_obs_text(e->fs, obs, (ch_text_field_t)(CH_TEXT_FIELD0 + j), ev->texts[j],
                             ev->text_lens[j]);
    }
    obs->present_mask = 0;
    obs->values = e->values;
    for (size_t f = 0; f < e->n_fields; f++) {
        const field_map_t *fm = &e->fields[f];
        if (fm->kind == FIELD_AMOUNT) {
            if (ev->has_amount) {
                e->values[f] = ev->amount;
                obs->present_mask |= UINT64_C(1) << f;
                ch_bad_reason_t bad = check_value(fm, ev->amount, why, len);
                if (bad != CH_BAD_NONE) {
                    return bad;
                }
            }
            continue;
        }
        if (fm->kind == FIELD_PATH) {
            if (ev->fields_present & (UINT64_C(1) << fm->index)) {
                e->values[f] = ev->fields[fm->index];
                obs->present_mask |= UINT64_C(1) << f;
                ch_bad_reason_t bad = check_value(fm, e->values[f], why, len);
                if (bad != CH_BAD_NONE) {
                    return bad;
                }
            }
            continue;
        }
        for (size_t a = 0; a < ev->n_attrs; a++) {
            if (ev->attrs[a].key_len == fm->attr_len &&
                memcmp(ev->attrs[a].key, fm->attr, fm->attr_len) == 0) {
                e->values[f] = ev->attrs[a].value;
                obs->present_mask |= UINT64_C(1) << f;
                ch_bad_reason_t bad = check_value(fm, e->values[f], why, len);
                if (bad != CH_BAD_NONE) {
                    return bad;
                }
                break;
            }
        }
    }
    return CH_BAD_NONE;
}

ch_bad_reason_t ch_events_read(ch_events_t *e, const ch_msg_t *m, double now_ms,
                               ch_event_view_t *ret_ev, ch_obs_t *ret_obs, char *why, size_t len) {
    int r = e->json ? ch_json_decoder_decode(e->json, m->value, m->value_len, ret_ev, why, len)
                    : ch_decoder_decode(e->dec, m->value, m->value_len, ret_ev, why, len);
    if (r < 0) {
        return r == -EPROTO ? CH_BAD_SCHEMA : r == -E2BIG ? CH_BAD_TOO_MANY_ATTRS : CH_BAD_DECODE;
    }
    return ch_events_check(e, ret_ev, now_ms, ret_obs, why, len);
}

ch_bad_reason_t ch_events_check(ch_events_t *e, ch_event_view_t *ev, double now_ms,
                                ch_obs_t *ret_obs, char *why, size_t len) {
    for (int k = 0; k < CH_ROLE_N; k++) {
        if (e->lit[k]) {
            ch_event_set_text(ev, (ch_role_t)k, e->lit[k], e->lit_len[k]);
        }
    }
    ch_bad_reason_t bad = validate(e, ev, now_ms, why, len);
    return bad != CH_BAD_NONE ? bad : build_obs(e, ev, ret_obs, why, len);
}

void ch_events_reader_schema(const ch_config_t *cfg, char *buf, size_t len) {
    if (cfg->input_schema[0]) {
        snprintf(buf, len, "%s", cfg->input_schema);
    } else {
        snprintf(buf, len, "%s/user_event.avsc", cfg->schema_dir);
    }
}
