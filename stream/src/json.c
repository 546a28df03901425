/*
 * json.c - JSON writers for outputs a person reads (kcat) and HTTP answers.
 *
 * Design notes
 * - The objects mirror the Avro schemas field for field, in schema order, so a
 *   consumer can switch formats without renaming anything. A union ["null", T]
 *   becomes null or the bare value (not Avro's {"T": v} JSON encoding).
 * - Floats are printed with 9 significant digits and doubles with 17: parsing
 *   the text gives back the exact value that the Avro encoding would carry.
 * - User ids are bytes from Kafka; invalid UTF-8 is replaced by U+FFFD so the
 *   output is always valid JSON.
 */
#include "ch/json.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        len = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0; /* overlong, beyond Unicode, or a surrogate */
    }
    return len;
}

int ch_json_string(ch_buf_t *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    if (ch_buf_append(b, "\"", 1) < 0) {
        return -ENOMEM;
    }
    size_t run = 0; /* bytes copied verbatim, flushed before each escape */
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        char esc[8];
        size_t esc_len = 0;
        size_t adv = 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            esc_len = 2;
        } else if (c < 0x20) {
            esc_len = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else if (c >= 0x80) {
            adv = utf8_len(u + i, n - i);
            if (adv == 0) {
                memcpy(esc, "\xef\xbf\xbd", 3); /* U+FFFD */
                esc_len = 3;
                adv = 1;
            }
        }
        if (esc_len) {
            if (ch_buf_append(b, s + i - run, run) < 0 || ch_buf_append(b, esc, esc_len) < 0) {
                return -ENOMEM;
            }
            run = 0;
        } else {
            run += adv;
        }
        i += adv;
    }
    if (ch_buf_append(b, s + n - run, run) < 0 || ch_buf_append(b, "\"", 1) < 0) {
        return -ENOMEM;
    }
    return 0;
}

/* v as "%.9g" writes it, without printf's arbitrary-precision arithmetic (most of the
 * time of a row of floats): for 1e-4 <= |v| < 1e9 (fixed notation), the nine digits of
 * v * 10^k rounded in double arithmetic. v has 24 significant bits and 10^k (k <= 12) is
 * exact, so the product is off by at most half a double ulp (< 1.2e-7 here): the
 * rounding is the correct one unless the product lies that close to a half, which is
 * left to printf, as are other magnitudes and a rounding that carries into a tenth
 * digit. @returns the length written into out (room for 32), or 0: use printf. */
static size_t fast_f32(float v, char *out) {
    static const double p10[] = {1e0, 1e1, 1e2, 1e3, 1e4,  1e5,  1e6,
                                 1e7, 1e8, 1e9, 1e10, 1e11, 1e12};
    double a = fabs((double)v);
    if (v == 0) {
        out[0] = '-';
        out[signbit(v) ? 1 : 0] = '0';
        return signbit(v) ? 2 : 1;
    }
    if (!(a >= 1e-4 && a < 1e9)) {
        return 0;
    }
    static const double dec[] = {1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1, 1e2,
                                 1e3,  1e4,  1e5,  1e6,  1e7, 1e8};
    int x = -4; /* the decimal exponent of a: 10^x <= a (by these doubles) < 10^(x+1) */
    while (x < 8 && a >= dec[x + 5]) {
        x++;
    }
    int k = 8 - x;
    double s = a * p10[k], fl = floor(s);
    if (fabs(s - fl - 0.5) < 1e-6) {
        return 0; /* too close to a half to round here */
    }
    uint64_t m = (uint64_t)fl + (s - fl > 0.5);
    if (m < 100000000u || m > 999999999u) {
        return 0; /* log10 one off, or the rounding carried: printf decides */
    }
    char digits[9];
    for (int i = 8; i >= 0; i--) {
        digits[i] = (char)('0' + m % 10);
        m /= 10;
    }
    int ip = 9 - k; /* digits before the point; <= 0: "0." and -ip zeros first */
    int last = 8;   /* the fraction's trailing zeros go */
    while (last >= (ip > 0 ? ip : 1) && digits[last] == '0') {
        last--;
    }
    size_t n = 0;
    if (v < 0) {
        out[n++] = '-';
    }
    if (ip > 0) {
        memcpy(out + n, digits, (size_t)ip);
        n += (size_t)ip;
        if (last >= ip) {
            out[n++] = '.';
            memcpy(out + n, digits + ip, (size_t)(last - ip + 1));
            n += (size_t)(last - ip + 1);
        }
    } else {
        out[n++] = '0';
        out[n++] = '.';
        memset(out + n, '0', (size_t)-ip);
        n += (size_t)-ip;
        memcpy(out + n, digits, (size_t)last + 1);
        n += (size_t)last + 1;
    }
    return n;
}

int ch_json_float(ch_buf_t *b, float v) {
    if (!isfinite(v)) {
        return ch_buf_append(b, "null", 4);
    }
    char out[32];
    size_t n = fast_f32(v, out);
    return n ? ch_buf_append(b, out, n) : ch_buf_printf(b, "%.9g", (double)v);
}

int ch_json_double(ch_buf_t *b, double v) {
    return isfinite(v) ? ch_buf_printf(b, "%.17g", v) : ch_buf_append(b, "null", 4);
}

static int opt_string(ch_buf_t *b, const char *s, size_t n) {
    return s ? ch_json_string(b, s, n) : ch_buf_append(b, "null", 4);
}

static int opt_int(ch_buf_t *b, bool present, int64_t v) {
    return present ? ch_buf_printf(b, "%lld", (long long)v) : ch_buf_append(b, "null", 4);
}

#define LIT(b, s) ch_buf_append((b), (s), sizeof(s) - 1)

int ch_json_encode_profile(ch_buf_t *b, const ch_profile_t *p) {
    b->len = 0;
    bool seg = p->has_segment;
    int r = LIT(b, "{\"user_id\":");
    r = r ? r : ch_json_string(b, p->user_id, p->user_id_len);
    r = r ? r : LIT(b, ",\"event_id\":");
    r = r ? r : opt_string(b, p->event_id, p->event_id_len);
    r = r ? r : ch_buf_printf(b, ",\"ts\":%lld,\"segment\":", (long long)p->ts_ms);
    r = r ? r : opt_int(b, seg, p->segment);
    r = r ? r : LIT(b, ",\"segment_generation\":");
    r = r ? r : opt_int(b, seg, p->segment_generation);
    r = r ? r : LIT(b, ",\"segment_distance\":");
    r = r ? r : (seg ? ch_json_float(b, p->segment_distance) : LIT(b, "null"));
    r = r ? r : LIT(b, ",\"previous_segment\":");
    r = r ? r : opt_int(b, seg && p->previous_segment >= 0, p->previous_segment);
    r = r ? r : LIT(b, ",\"features\":");
    r = r ? r : ch_json_floats(b, p->features, p->n_features);
    r = r ? r : LIT(b, ",\"model_version\":");
    r = r ? r
          : opt_string(b, p->model_version, p->model_version ? strlen(p->model_version) : 0);
    r = r || !p->with_tags ? r : ch_json_tags(b, p->tags, p->n_tags);
    r = r ? r : LIT(b, "}");
    return r;
}

int ch_json_floats(ch_buf_t *b, const float *v, size_t n) {
    int r = LIT(b, "[");
    for (size_t i = 0; !r && i < n; i++) {
        r = i ? LIT(b, ",") : 0;
        r = r ? r : ch_json_float(b, v[i]);
    }
    return r ? r : LIT(b, "]");
}

static int json_trends(ch_buf_t *b, const ch_trend_t *t, size_t n) {
    int r = LIT(b, "[");
    for (size_t i = 0; !r && i < n; i++) {
        r = i ? LIT(b, ",") : 0;
        r = r ? r : LIT(b, "{\"value\":");
        r = r ? r : ch_json_string(b, t[i].value, t[i].len);
        r = r ? r : LIT(b, ",\"weight\":");
        r = r ? r : ch_json_double(b, t[i].weight);
        r = r ? r : LIT(b, "}");
    }
    return r ? r : LIT(b, "]");
}

int ch_json_encode_segment(ch_buf_t *b, const ch_segment_rec_t *s) {
    b->len = 0;
    int r = ch_buf_printf(b,
                          "{\"segment\":%d,\"generation\":%d,\"ts\":%lld,\"users\":%lld,"
                          "\"weight\":",
                          (int)s->segment, (int)s->generation, (long long)s->ts_ms,
                          (long long)s->users);
    r = r ? r : ch_json_double(b, s->weight);
    r = r ? r : LIT(b, ",\"feature_names\":[");
    for (size_t i = 0; !r && i < s->n_features; i++) {
        r = i ? LIT(b, ",") : 0;
        r = r ? r : ch_json_string(b, s->feature_names[i], strlen(s->feature_names[i]));
    }
    r = r ? r : LIT(b, "],\"centroid\":");
    r = r ? r : ch_json_floats(b, s->centroid, s->n_features);
    r = r ? r : LIT(b, ",\"feature_means\":");
    r = r ? r : ch_json_floats(b, s->feature_means, s->n_features);
    r = r ? r : LIT(b, ",\"trending_items\":");
    r = r ? r : json_trends(b, s->items, s->n_items);
    r = r ? r : LIT(b, ",\"trending_categories\":");
    r = r ? r : json_trends(b, s->categories, s->n_categories);
    return r ? r : LIT(b, "}");
}

int ch_json_tags(ch_buf_t *b, const ch_tag_values_t *tags, size_t n) {
    int r = LIT(b, ",\"tags\":{");
    for (size_t i = 0; !r && i < n; i++) {
        r = i ? LIT(b, ",") : 0;
        r = r ? r : ch_json_string(b, tags[i].name, strlen(tags[i].name));
        r = r ? r : LIT(b, ":[");
        for (size_t k = 0; !r && k < tags[i].n; k++) {
            r = k ? LIT(b, ",") : 0;
            r = r ? r : ch_json_string(b, tags[i].vals[k], tags[i].lens[k]);
        }
        r = r ? r : LIT(b, "]");
    }
    return r ? r : LIT(b, "}");
}

int ch_json_reasons(ch_buf_t *b, const ch_reason_t *reasons, size_t n) {
    int r = LIT(b, "[");
    for (size_t i = 0; !r && i < n; i++) {
        r = i ? LIT(b, ",") : 0;
        r = r ? r : LIT(b, "{\"feature\":");
        r = r ? r : ch_json_string(b, reasons[i].feature, strlen(reasons[i].feature));
        r = r ? r : LIT(b, ",\"contribution\":");
        r = r ? r : ch_json_float(b, reasons[i].contribution);
        r = r ? r : LIT(b, "}");
    }
    return r ? r : LIT(b, "]");
}

int ch_json_encode_risk(ch_buf_t *b, const ch_risk_t *k) {
    b->len = 0;
    int r = LIT(b, "{\"user_id\":");
    r = r ? r : ch_json_string(b, k->user_id, k->user_id_len);
    r = r ? r : LIT(b, ",\"event_id\":");
    r = r ? r : opt_string(b, k->event_id, k->event_id_len);
    r = r ? r : ch_buf_printf(b, ",\"ts\":%lld,\"score\":", (long long)k->ts_ms);
    r = r ? r : ch_json_float(b, k->score);
    r = r ? r : (k->alert ? LIT(b, ",\"alert\":true") : LIT(b, ",\"alert\":false"));
    r = r ? r : LIT(b, ",\"threshold\":");
    r = r ? r : ch_json_float(b, k->threshold);
    r = r ? r : LIT(b, ",\"reasons\":");
    r = r ? r : ch_json_reasons(b, k->reasons, k->n_reasons);
    const char *v = k->model_version ? k->model_version : "";
    r = r ? r : LIT(b, ",\"model_version\":");
    r = r ? r : ch_json_string(b, v, strlen(v));
    if (!r && k->with_challenger && !k->has_challenger) {
        r = LIT(b, ",\"challenger\":null");
    } else if (!r && k->with_challenger) {
        const char *cv = k->challenger_version ? k->challenger_version : "";
        r = LIT(b, ",\"challenger\":{\"score\":");
        r = r ? r : ch_json_float(b, k->challenger_score);
        r = r ? r : (k->challenger_alert ? LIT(b, ",\"alert\":true") : LIT(b, ",\"alert\":false"));
        r = r ? r : LIT(b, ",\"model_version\":");
        r = r ? r : ch_json_string(b, cv, strlen(cv));
        r = r ? r : LIT(b, "}");
    }
    r = r ? r : LIT(b, "}");
    return r;
}
