/*
 * ch/mapping.h - where cohortd's event roles sit in a user's own events.
 *
 * A mapping names, for each role (user id, event time, type, amount, item, category,
 * event id, attrs), a dotted path into the event ("user_id", "customer.id",
 * "meta.when"), plus the numeric fields features read by name ("quantity",
 * "price.unit"). Both decoders (Avro: ch/codec.h, JSON: ch/json_in.h) follow it;
 * the default mapping is cohortd's own user_event schema.
 *
 * Event time: a number in the stated unit (ms, us or s since 1970; also as a string),
 * an Avro long with logicalType timestamp-millis or timestamp-micros (unit auto), or an
 * ISO-8601 string
 * ("2019-10-01T00:00:00Z", "2019-10-01 00:00:00 UTC", "2019-10-01T02:00:00.5+02:00";
 * no zone means UTC).
 *
 * @locality Immutable once built; shared by reference.
 */
#ifndef CH_MAPPING_H
#define CH_MAPPING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CH_MAPPING_MAX_FIELDS 64 /* numeric fields read by name */
#define CH_MAPPING_MAX_TEXTS 5   /* text fields read by name (beyond the roles) */
#define CH_MAPPING_PATH_MAX 256  /* bytes of a dotted path, NUL included */

typedef enum ch_role {
    CH_ROLE_EVENT_ID,
    CH_ROLE_USER_ID,
    CH_ROLE_TS,
    CH_ROLE_TYPE,
    CH_ROLE_AMOUNT,
    CH_ROLE_ITEM,
    CH_ROLE_CATEGORY,
    CH_ROLE_ATTRS,
    CH_ROLE_N,
} ch_role_t;

typedef enum ch_ts_unit {
    CH_TS_AUTO, /* Avro logical type, else milliseconds; strings are ISO-8601 */
    CH_TS_MS,
    CH_TS_US,
    CH_TS_S,
    CH_TS_ISO8601,
} ch_ts_unit_t;

typedef struct ch_mapping {
    char path[CH_ROLE_N][CH_MAPPING_PATH_MAX]; /* "" : the role is not in the events */
    bool is_default[CH_ROLE_N];                /* the role's own name, not set by the user: a schema
                                                  without it is not an error (optional roles) */
    ch_ts_unit_t ts_unit;
    char fields[CH_MAPPING_MAX_FIELDS][CH_MAPPING_PATH_MAX];
    size_t n_fields;
    char texts[CH_MAPPING_MAX_TEXTS][CH_MAPPING_PATH_MAX]; /* text fields read by name */
    size_t n_texts;
} ch_mapping_t;

/** @brief The role's name ("user_id", "ts", ...). */
const char *ch_role_name(ch_role_t r);

/** @brief Roles every event must carry (user_id, ts). */
static inline bool ch_role_required(ch_role_t r) { return r == CH_ROLE_USER_ID || r == CH_ROLE_TS; }

/** @brief cohortd's own event schema: every role at its name, unit auto, no fields. */
void ch_mapping_default(ch_mapping_t *m);

/**
 * @brief Is s a dotted path of names ([A-Za-z_][A-Za-z0-9_]*, joined by '.')?
 *        Length n (not NUL-terminated).
 */
bool ch_mapping_path_valid(const char *s, size_t n);

/**
 * @brief Add a numeric field read by name (duplicates are merged).
 * @returns its index, -EINVAL (not a valid path, or a role's path), -E2BIG.
 */
int ch_mapping_add_field(ch_mapping_t *m, const char *path);

/**
 * @brief Add a text field read by name (a string, enum or integer that filters,
 *        distinct() or tags read; duplicates are merged).
 * @returns its index, -EINVAL (not a valid path, a role's path or a numeric field's),
 *          -E2BIG.
 */
int ch_mapping_add_text(ch_mapping_t *m, const char *path);

/**
 * @brief Parse an ISO-8601 date-time: YYYY-MM-DD, then 'T' or ' ', hh:mm[:ss[.frac]],
 *        then nothing (UTC), 'Z', " UTC", or +hh[:mm] / -hh[:mm].
 *        Also a bare date (midnight UTC).
 * @returns 0 and *ret_ms (milliseconds since 1970, fraction truncated to ms), -EINVAL.
 */
int ch_iso8601_parse(const char *s, size_t n, int64_t *ret_ms);

/**
 * @brief Convert a time of unit u (CH_TS_MS, CH_TS_US, CH_TS_S; AUTO means ms) to
 *        milliseconds: an integer exactly (microseconds round toward minus infinity),
 *        a double rounded to the nearest millisecond.
 * @returns 0, -ERANGE (not finite, or beyond +-2^62 ms).
 */
int ch_ts_from_int(int64_t v, ch_ts_unit_t u, int64_t *ret_ms);
int ch_ts_from_double(double v, ch_ts_unit_t u, int64_t *ret_ms);

/**
 * @brief An event time written as text: a number (the whole string) in unit u (AUTO:
 *        ms), else ISO-8601; with u = CH_TS_ISO8601, ISO-8601 only.
 * @returns 0, -EINVAL (neither), -ERANGE.
 */
int ch_ts_from_text(const char *s, size_t n, ch_ts_unit_t u, int64_t *ret_ms);

#endif
