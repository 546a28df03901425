/*
 * ch/codec.h - Avro codec for cohortd's events and outputs.
 *
 * Input: Confluent wire format (byte 0, 4-byte big-endian schema id, Avro binary)
 * with ids resolved from a local schema directory or learned at run time
 * (ch_decoder_add_schema(), e.g. from a schema registry), or plain Avro binary with a
 * configured writer schema. Writer schemas are resolved against the reader
 * schema (conf/schemas/user_event.avsc) per Avro's rules: fields matched by name,
 * unknown writer fields skipped, optional reader fields defaulted, numeric
 * promotions int->long->float->double, string<->bytes.
 * Decoding is bounds-checked, allocation-free and zero-copy: a decoded view
 * borrows from the message buffer and from the decoder.
 *
 * Output: hand-encoded Avro binary matching conf/schemas/profile_update.avsc.
 *
 * @locality Not thread-safe; one decoder per thread.
 */
#ifndef CH_CODEC_H
#define CH_CODEC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/mapping.h"

#define CH_CODEC_MAX_ATTRS 256

typedef enum ch_framing {
    CH_FRAMING_CONFLUENT,
    CH_FRAMING_PLAIN,
} ch_framing_t;

typedef struct ch_attr {
    const char *key;
    size_t key_len;
    double value;
} ch_attr_t;

/* A decoded user event. Strings are not NUL-terminated; NULL means null or absent
 * (user_id and ts are never absent). */
typedef struct ch_event_view {
    const char *event_id;
    size_t event_id_len;
    const char *user_id;
    size_t user_id_len;
    int64_t ts_ms;
    const char *type;
    size_t type_len;
    bool has_amount;
    double amount;
    const char *item;
    size_t item_len;
    const char *category;
    size_t category_len;
    const ch_attr_t *attrs;
    size_t n_attrs;
    const double *fields;    /* the mapping's numeric fields, by index */
    uint64_t fields_present; /* bit j: fields[j] was in the event */
    const char *texts[CH_MAPPING_MAX_TEXTS]; /* the mapping's text fields; NULL: absent */
    size_t text_lens[CH_MAPPING_MAX_TEXTS];
    int32_t schema_id;       /* writer schema id; -1 for plain framing */
} ch_event_view_t;

/* The values of one interest tag, heaviest first. */
typedef struct ch_tag_values {
    const char *name;
    const char *const *vals; /* not NUL-terminated */
    const size_t *lens;
    size_t n;
} ch_tag_values_t;

/* A profile update as published (conf/schemas/profile_update.avsc; with tags,
 * profile_update_v2.avsc). */
typedef struct ch_profile {
    const char *user_id;
    size_t user_id_len;
    const char *event_id; /* NULL: no triggering event */
    size_t event_id_len;
    int64_t ts_ms;
    bool has_segment; /* false: segment fields are null */
    int32_t segment;
    int32_t segment_generation;
    float segment_distance;
    int32_t previous_segment; /* < 0: null */
    const float *features;
    size_t n_features;
    const char *model_version; /* NULL: null */
    bool with_tags;            /* version 2: the tags field (possibly empty) */
    const ch_tag_values_t *tags;
    size_t n_tags;
} ch_profile_t;

/* One trending value of a segment. */
typedef struct ch_trend {
    const char *value; /* not NUL-terminated */
    size_t len;
    double weight;
} ch_trend_t;

/* A segment update as published (conf/schemas/segment_update.avsc). */
typedef struct ch_segment_rec {
    int32_t segment, generation;
    int64_t ts_ms;
    int64_t users;
    double weight;
    const char *const *feature_names;
    const float *centroid, *feature_means; /* n_features each */
    size_t n_features;
    const ch_trend_t *items, *categories;
    size_t n_items, n_categories;
} ch_segment_rec_t;

/* One reason code of a risk update. */
typedef struct ch_reason {
    const char *feature;
    float contribution;
} ch_reason_t;

/* A risk update as published (conf/schemas/risk_update.avsc). */
typedef struct ch_risk {
    const char *user_id;
    size_t user_id_len;
    const char *event_id; /* NULL: no triggering event */
    size_t event_id_len;
    int64_t ts_ms;
    float score;
    bool alert;
    float threshold;
    const ch_reason_t *reasons;
    size_t n_reasons;
    const char *model_version;
    /* risk_update_v2.avsc: the challenger model's score (with_challenger: the v2 layout,
     * the field present; has_challenger: not null) */
    bool with_challenger, has_challenger, challenger_alert;
    float challenger_score;
    const char *challenger_version;
} ch_risk_t;

/* A growable output buffer. Embedded; ch_buf_done() frees. */
typedef struct ch_buf {
    unsigned char *data;
    size_t len, cap;
} ch_buf_t;

typedef struct ch_schemas ch_schemas_t;
typedef struct ch_decoder ch_decoder_t;

/**
 * @brief Load the schema directory: its "ids" file maps schema ids to .avsc files,
 *        one "<id> <file>" per line ('#' comments).
 * @param ret_schemas set on success.
 * @param errbuf, errlen the reason on failure, naming file:line (may be NULL).
 * @returns 0, -ENOENT (directory or file missing), -EINVAL (bad ids line or schema),
 *          -ENOMEM.
 */
int ch_schemas_load(const char *dir, ch_schemas_t **ret_schemas, char *errbuf, size_t errlen);

/** @brief Free schemas. Accepts NULL. @returns NULL. */
ch_schemas_t *ch_schemas_free(ch_schemas_t *s);

/**
 * @brief The id under which a schema file (name relative to the directory) is registered.
 * @returns 0 and *ret_id, or -ENOENT.
 */
int ch_schemas_id_of(const ch_schemas_t *s, const char *file_name, int32_t *ret_id);

/**
 * @brief Create a decoder for user events.
 * @param schemas registry for Confluent framing; borrowed, must outlive the decoder.
 * @param reader_path the reader schema file: the events' own schema.
 * @param framing how messages are framed.
 * @param plain_writer_path writer schema for plain framing; NULL = the reader schema.
 * @param map where the roles sit (copied); NULL = cohortd's user_event schema.
 * @returns 0, -ENOENT, -EINVAL (bad schema), -EPROTO (the reader schema lacks a mapped
 *          field or has one of a type its role cannot be read from, or the plain writer
 *          schema cannot be resolved), -ENOMEM.
 * @remark Every registered id is resolved up front; ids whose schema cannot be
 *         resolved are kept with the reason and fail at decode time with -EPROTO.
 */
int ch_decoder_new(ch_schemas_t *schemas, const char *reader_path, ch_framing_t framing,
                   const char *plain_writer_path, const ch_mapping_t *map,
                   ch_decoder_t **ret_decoder, char *errbuf, size_t errlen);

/**
 * @brief Learn the writer schema registered under id (e.g. fetched from a schema
 *        registry), resolved against the reader schema and the mapping as the schema
 *        directory's are.
 * @param json_text the schema (Avro JSON, len bytes); NULL: the id is known not to
 *        exist, and why (may be NULL) is what its records fail with.
 * @returns 0; -EEXIST (id already known); -EINVAL (not an Avro schema: errbuf says why;
 *          the id is kept as failing with that reason); -E2BIG (too many schemas);
 *          -ENOMEM. A schema that cannot be resolved is kept with the reason, and its
 *          records fail with -EPROTO, as for the directory's.
 */
int ch_decoder_add_schema(ch_decoder_t *d, int32_t id, const char *json_text, size_t len,
                          const char *why, char *errbuf, size_t errlen);

/** @brief Whether a message in Confluent framing names a schema id the decoder does not
 *  know (false for other framing, or bytes too short to name one); *ret_id the id. */
bool ch_decoder_unknown_id(const ch_decoder_t *d, const void *buf, size_t len, int32_t *ret_id);

/** @brief Let go of the text of integer ids decoded so far (views become invalid). */
void ch_decoder_release(ch_decoder_t *d);

/** @brief Point a text role (event_id, user_id, type, item, category) of a view at s
 *  (n bytes; NULL: absent). Other roles are ignored. */
void ch_event_set_text(ch_event_view_t *ev, ch_role_t role, const char *s, size_t n);

/** @brief Free a decoder. Accepts NULL. @returns NULL. */
ch_decoder_t *ch_decoder_free(ch_decoder_t *d);

/**
 * @brief Decode one message.
 * @param ret_ev the view; borrows from buf, and from the decoder until the next call
 *        (attrs, numeric fields) or ch_decoder_release() (integer ids as text).
 * @returns 0; -EBADMSG (bad framing, truncated or malformed Avro, trailing bytes, a
 *          required field null); -EPROTO (unknown or unresolvable schema id); -E2BIG
 *          (more than CH_CODEC_MAX_ATTRS attrs). errbuf says why.
 */
int ch_decoder_decode(ch_decoder_t *d, const void *buf, size_t len, ch_event_view_t *ret_ev,
                      char *errbuf, size_t errlen);

/**
 * @brief Decode the record at the front of buf, written with the schema learned under id
 *        (ch_decoder_add_schema()), whatever the decoder's framing: the records of an
 *        Avro object container file's block, one after another.
 * @param ret_used the record's size in bytes.
 * @returns as ch_decoder_decode(), without the trailing-bytes check.
 */
int ch_decoder_decode_next(ch_decoder_t *d, int32_t id, const void *buf, size_t len,
                           size_t *ret_used, ch_event_view_t *ret_ev, char *errbuf,
                           size_t errlen);
/** @brief Short machine-friendly reason for a decode error code ("decode_error", ...). */
const char *ch_decoder_reason(int err);

/** @brief Initialise an empty buffer. */
void ch_buf_init(ch_buf_t *b);
/** @brief Free a buffer's memory. */
void ch_buf_done(ch_buf_t *b);
/** @brief Append n bytes. @returns 0, -ENOMEM. */
int ch_buf_append(ch_buf_t *b, const void *p, size_t n);
/** @brief Append formatted text (no terminating NUL), of any length.
 *  @returns 0, -ENOMEM, -EINVAL. */
int ch_buf_printf(ch_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** @brief The same with a va_list. */
int ch_buf_vprintf(ch_buf_t *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/**
 * @brief Encode a profile update into b (replacing its contents).
 * @param schema_id written in the Confluent header when framing is CONFLUENT.
 * @returns 0, -ENOMEM.
 */
int ch_encode_profile(ch_buf_t *b, ch_framing_t framing, int32_t schema_id,
                      const ch_profile_t *p);

/** @brief Encode a segment update into b (replacing its contents). @returns 0, -ENOMEM. */
int ch_encode_segment(ch_buf_t *b, ch_framing_t framing, int32_t schema_id,
                      const ch_segment_rec_t *s);

/**
 * @brief Encode a risk update into b (replacing its contents).
 * @returns 0, -ENOMEM.
 */
int ch_encode_risk(ch_buf_t *b, ch_framing_t framing, int32_t schema_id, const ch_risk_t *r);

/**
 * @brief Encode a user event (conf/schemas/user_event.avsc) into b, replacing its contents.
 *        Used by the event tools and tests.
 * @returns 0, -ENOMEM, -EINVAL (a required string is NULL).
 */
int ch_encode_event(ch_buf_t *b, ch_framing_t framing, int32_t schema_id,
                    const ch_event_view_t *ev);

#endif
