/*
 * ch/json.h - JSON text for the outputs (output.format = json) and for the
 * daemon's HTTP answers. Writing only; cohortd never parses JSON.
 */
#ifndef CH_JSON_H
#define CH_JSON_H

#include <stddef.h>

#include "ch/codec.h"

/**
 * @brief Append s (n bytes) as a JSON string: quoted, with '"', '\\' and control
 *        characters escaped. Bytes that are not valid UTF-8 become U+FFFD.
 * @returns 0, -ENOMEM.
 */
int ch_json_string(ch_buf_t *b, const char *s, size_t n);

/**
 * @brief Append a number with enough digits to read back the same float (float32:
 *        9 significant digits) or double (17); NaN and infinities become null.
 * @returns 0, -ENOMEM.
 */
int ch_json_float(ch_buf_t *b, float v);
int ch_json_double(ch_buf_t *b, double v);
/** @brief Append a JSON array of n floats (as ch_json_float). @returns 0, -ENOMEM. */
int ch_json_floats(ch_buf_t *b, const float *v, size_t n);

/** @brief Append ,"tags":{name: [values...], ...} (the field with its leading comma).
 *  @returns 0, -ENOMEM. */
int ch_json_tags(ch_buf_t *b, const ch_tag_values_t *tags, size_t n);

/** @brief Append reason codes as [{"feature": ..., "contribution": ...}, ...].
 *  @returns 0, -ENOMEM. */
int ch_json_reasons(ch_buf_t *b, const ch_reason_t *reasons, size_t n);

/**
 * @brief Encode a profile update as one JSON object with the fields of
 *        profile_update.avsc (nullable fields are null or the bare value), replacing
 *        b's contents.
 * @returns 0, -ENOMEM.
 */
int ch_json_encode_profile(ch_buf_t *b, const ch_profile_t *p);

/** @brief The same for a segment update (segment_update.avsc). @returns 0, -ENOMEM. */
int ch_json_encode_segment(ch_buf_t *b, const ch_segment_rec_t *s);

/** @brief The same for a risk update (risk_update.avsc). @returns 0, -ENOMEM. */
int ch_json_encode_risk(ch_buf_t *b, const ch_risk_t *r);

#endif
