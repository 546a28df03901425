/*
 * events.h - an input message to a validated observation, or to a bad-input reason.
 */
#ifndef CH_EVENTS_H
#define CH_EVENTS_H

#include <stddef.h>

#include "ch/codec.h"
#include "ch/features.h"
#include "ch/kafka.h"
#include "config.h"

typedef enum ch_bad_reason {
    CH_BAD_DECODE,            /* not decodable as Avro in the expected framing */
    CH_BAD_SCHEMA,            /* unknown or unresolvable writer schema id */
    CH_BAD_TOO_MANY_ATTRS,    /* attrs beyond CH_CODEC_MAX_ATTRS */
    CH_BAD_EMPTY_USER_ID,     /* user_id "" */
    CH_BAD_USER_ID_TOO_LONG,  /* user_id longer than state.key_max_bytes */
    CH_BAD_EVENT_ID_TOO_LONG, /* event_id longer than input.event_id_max_bytes */
    CH_BAD_NON_FINITE,        /* NaN or Inf in amount or attrs */
    CH_BAD_TS_NEGATIVE,       /* ts before 1970 */
    CH_BAD_TS_FUTURE,         /* ts beyond wall clock + input.max_future (0: no limit) */
    CH_BAD_OUT_OF_RANGE,      /* a number a feature reads beyond input.max_abs/input.range */
    CH_BAD_TS_OLD,            /* ts before wall clock - input.max_age (0: no limit) */
    CH_BAD_N,
    CH_BAD_NONE = -1, /* not bad: a valid event */
} ch_bad_reason_t;

typedef struct ch_events ch_events_t;

/**
 * @brief The reader for input.topic: the decoder (schemas from schema.dir, the
 *        reader schema, the framing) and the map from event fields to the
 *        features' numeric fields.
 * @param schemas borrowed; must outlive the reader.
 * @param fs borrowed, sealed; must outlive the reader.
 * @returns 0, -EINVAL (errbuf says which schema or setting), -ENOMEM.
 */
int ch_events_new(const ch_config_t *cfg, ch_schemas_t *schemas, const ch_features_t *fs,
                  ch_events_t **ret_events, char *errbuf, size_t errlen);

/**
 * @brief The mapping input.map.* and the features' numeric fields make: roles at their
 *        paths, then each field a feature reads by name (not amount, not attrs.<key>)
 *        in the feature set's field order.
 * @returns 0, -EINVAL (a bad or overlapping path; errbuf names the key), -E2BIG.
 */
int ch_events_mapping(const ch_config_t *cfg, const ch_features_t *fs, ch_mapping_t *m,
                      char *errbuf, size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_events_t *ch_events_free(ch_events_t *e);

/**
 * @brief Decode and validate one message.
 * @param now_ms the wall clock (for input.max_future).
 * @param ret_ev the event's view (borrows from m); ret_obs its observation for the
 *        features (values borrowed from the reader until the next call).
 * @returns CH_BAD_NONE, or the reason it is bad input with the detail in why.
 */
ch_bad_reason_t ch_events_read(ch_events_t *e, const ch_msg_t *m, double now_ms,
                               ch_event_view_t *ret_ev, ch_obs_t *ret_obs, char *why,
                               size_t len);

/**
 * @brief Validate an event decoded elsewhere (cohortd featurize's files) as
 *        ch_events_read() validates its own, and build its observation; the roles
 *        input.map.* sets to a "literal" are set in ev first.
 * @param now_ms the wall clock for input.max_future and input.max_age; NAN: neither
 *        is checked (history is old by nature).
 */
ch_bad_reason_t ch_events_check(ch_events_t *e, ch_event_view_t *ev, double now_ms,
                                ch_obs_t *ret_obs, char *why, size_t len);

/** @brief The reader schema's path: input.schema, or user_event.avsc in schema.dir. */
void ch_events_reader_schema(const ch_config_t *cfg, char *buf, size_t len);

/** @brief Whether m names (Confluent framing) a writer schema id the decoder does not
 *  know yet; *ret_id the id. Always false for JSON input. */
bool ch_events_unknown_id(const ch_events_t *e, const ch_msg_t *m, int32_t *ret_id);

/** @brief Teach the decoder a writer schema (ch_decoder_add_schema()). @returns as it. */
int ch_events_add_schema(ch_events_t *e, int32_t id, const char *json, size_t len, const char *why,
                         char *errbuf, size_t errlen);

/** @brief The batch's outputs are written: the views of its events may go (JSON input
 *  holds them until then). */
void ch_events_release(ch_events_t *e);

/** @brief The metric label of a bad-input reason. */
const char *ch_events_bad_name(ch_bad_reason_t r);

#endif
