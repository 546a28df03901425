/*
 * mapping.c - event roles to paths, and the time formats of ch/mapping.h.
 *
 * Design notes
 * - ISO-8601 is parsed here, not with strptime(3)/timegm(3): strptime has no
 *   fractional seconds or "+02:00" offsets, and timegm depends on the TZ database being
 *   consulted for UTC. The date arithmetic is days_from_civil (Howard Hinnant's
 *   public-domain algorithm), exact for the proleptic Gregorian calendar.
 */
#include "ch/mapping.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT_MS (INT64_C(1) << 62)

static const char *const role_names[CH_ROLE_N] = {
    "event_id", "user_id", "ts", "type", "amount", "item", "category", "attrs",
};

const char *ch_role_name(ch_role_t r) { return r >= 0 && r < CH_ROLE_N ? role_names[r] : "?"; }

void ch_mapping_default(ch_mapping_t *m) {
    memset(m, 0, sizeof(*m));
    for (int r = 0; r < CH_ROLE_N; r++) {
        snprintf(m->path[r], sizeof(m->path[r]), "%s", role_names[r]);
        m->is_default[r] = true;
    }
    m->ts_unit = CH_TS_AUTO;
}

bool ch_mapping_path_valid(const char *s, size_t n) {
    if (n == 0 || n >= CH_MAPPING_PATH_MAX) {
        return false;
    }
    bool start = true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (start) {
                return false;
            }
            start = true;
        } else if (isalpha(c) || c == '_' || (!start && isdigit(c))) {
            start = false;
        } else {
            return false;
        }
    }
    return !start;
}

typedef char path_t[CH_MAPPING_PATH_MAX];

static int index_of(path_t *list, size_t n, const char *path) {
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i], path) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Add path to list (*n of cap) unless it is a role's path or in other. */
static int add_path(ch_mapping_t *m, path_t *list, size_t *n, size_t cap, path_t *other,
                    size_t n_other, const char *path) {
    size_t len = strlen(path);
    if (!ch_mapping_path_valid(path, len) || index_of(m->path, CH_ROLE_N, path) >= 0 ||
        index_of(other, n_other, path) >= 0) {
        return -EINVAL;
    }
    int i = index_of(list, *n, path);
    if (i >= 0) {
        return i;
    }
    if (*n == cap) {
        return -E2BIG;
    }
    memcpy(list[*n], path, len + 1);
    return (int)(*n)++;
}

int ch_mapping_add_field(ch_mapping_t *m, const char *path) {
    return add_path(m, m->fields, &m->n_fields, CH_MAPPING_MAX_FIELDS, m->texts, m->n_texts, path);
}

int ch_mapping_add_text(ch_mapping_t *m, const char *path) {
    return add_path(m, m->texts, &m->n_texts, CH_MAPPING_MAX_TEXTS, m->fields, m->n_fields, path);
}

/* ---------------------------------------------------------------- time */

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* Exactly n digits at s[*at]. */
static bool digits(const char *s, size_t len, size_t *at, int n, int *ret) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (*at >= len || !isdigit((unsigned char)s[*at])) {
            return false;
        }
        v = v * 10 + (s[(*at)++] - '0');
    }
    *ret = v;
    return true;
}

static bool lit(const char *s, size_t len, size_t *at, char c) {
    if (*at < len && s[*at] == c) {
        (*at)++;
        return true;
    }
    return false;
}

int ch_iso8601_parse(const char *s, size_t n, int64_t *ret_ms) {
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t at = 0;
    int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
    if (!digits(s, n, &at, 4, &y) || !lit(s, n, &at, '-') || !digits(s, n, &at, 2, &mo) ||
        !lit(s, n, &at, '-') || !digits(s, n, &at, 2, &d)) {
        return -EINVAL;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap(y))) {
        return -EINVAL;
    }
    int64_t offset_min = 0;
    if (at < n) {
        if (!lit(s, n, &at, 'T') && !lit(s, n, &at, ' ')) {
            return -EINVAL;
        }
        if (!digits(s, n, &at, 2, &h) || !lit(s, n, &at, ':') || !digits(s, n, &at, 2, &mi)) {
            return -EINVAL;
        }
        if (lit(s, n, &at, ':')) {
            if (!digits(s, n, &at, 2, &sec)) {
                return -EINVAL;
            }
            if (lit(s, n, &at, '.') || lit(s, n, &at, ',')) {
                int nd = 0;
                while (at < n && isdigit((unsigned char)s[at])) {
                    if (nd < 3) {
                        ms = ms * 10 + (s[at] - '0');
                    }
                    nd++, at++;
                }
                if (nd == 0) {
                    return -EINVAL;
                }
                for (; nd < 3; nd++) {
                    ms *= 10;
                }
            }
        }
        if (h > 23 || mi > 59 || sec > 60) { /* 60: a leap second, read as :59 + 1 s */
            return -EINVAL;
        }
        if (at < n && (s[at] == 'Z' || s[at] == 'z')) {
            at++;
        } else if (n - at == 4 && memcmp(s + at, " UTC", 4) == 0) {
            at += 4;
        } else if (at < n && (s[at] == '+' || s[at] == '-')) {
            int sign = s[at++] == '-' ? -1 : 1, oh, om = 0;
            if (!digits(s, n, &at, 2, &oh)) {
                return -EINVAL;
            }
            if (at < n) {
                lit(s, n, &at, ':');
                if (!digits(s, n, &at, 2, &om)) {
                    return -EINVAL;
                }
            }
            if (oh > 23 || om > 59) {
                return -EINVAL;
            }
            offset_min = sign * (oh * 60 + om);
        }
    }
    if (at != n) {
        return -EINVAL;
    }
    int64_t days = days_from_civil(y, mo, d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    *ret_ms = secs * 1000 + ms;
    return 0;
}

int ch_ts_from_int(int64_t v, ch_ts_unit_t u, int64_t *ret_ms) {
    switch (u) {
    case CH_TS_US:
        *ret_ms = v >= 0 ? v / 1000 : -((-(v + 1)) / 1000) - 1;
        return 0;
    case CH_TS_S:
        if (v > LIMIT_MS / 1000 || v < -LIMIT_MS / 1000) {
            return -ERANGE;
        }
        *ret_ms = v * 1000;
        return 0;
    default:
        if (v > LIMIT_MS || v < -LIMIT_MS) {
            return -ERANGE;
        }
        *ret_ms = v;
        return 0;
    }
}

int ch_ts_from_double(double v, ch_ts_unit_t u, int64_t *ret_ms) {
    double ms = u == CH_TS_US ? v / 1000.0 : u == CH_TS_S ? v * 1000.0 : v;
    ms = u == CH_TS_US ? floor(ms) : round(ms);
    if (!(fabs(ms) <= (double)LIMIT_MS)) {
        return -ERANGE;
    }
    *ret_ms = (int64_t)ms;
    return 0;
}

int ch_ts_from_text(const char *s, size_t n, ch_ts_unit_t u, int64_t *ret_ms) {
    char num[40];
    if (u != CH_TS_ISO8601 && n > 0 && n < sizeof(num)) {
        char *end = NULL;
        memcpy(num, s, n);
        num[n] = '\0';
        errno = 0;
        long long v = strtoll(num, &end, 10);
        if (*end == '\0' && errno == 0 && !isspace((unsigned char)num[0])) {
            return ch_ts_from_int(v, u, ret_ms);
        }
        double dv = strtod(num, &end);
        if (*end == '\0' && !isspace((unsigned char)num[0])) {
            return ch_ts_from_double(dv, u, ret_ms);
        }
    }
    return ch_iso8601_parse(s, n, ret_ms);
}
