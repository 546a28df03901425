/*
 * ch/json_in.h - user events as JSON objects (input.format = json), decoded with
 * jansson into the same view as the Avro decoder's.
 *
 * One message is one JSON object. The mapping (ch/mapping.h) says where each role
 * sits (by default cohortd's own field names): event_id, user_id, type, item and
 * category are strings (an integer is read as its decimal text), ts a number in the
 * mapping's unit (milliseconds unless stated) or an ISO-8601 string, amount and the
 * numeric fields numbers, attrs an object of numbers. Absent or null: the role is
 * absent (user_id and ts must be there). Unknown fields are ignored; a mistyped field
 * is an error naming it.
 */
#ifndef CH_JSON_IN_H
#define CH_JSON_IN_H

#include <stddef.h>

#include "ch/codec.h"
#include "ch/mapping.h"

typedef struct ch_json_decoder ch_json_decoder_t;

/** @brief Create. @param map copied; NULL = cohortd's own field names. @returns 0, -ENOMEM. */
int ch_json_decoder_new(const ch_mapping_t *map, ch_json_decoder_t **ret);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_json_decoder_t *ch_json_decoder_free(ch_json_decoder_t *d);

/** @brief Let go of the events decoded so far (their views become invalid). */
void ch_json_decoder_release(ch_json_decoder_t *d);

/**
 * @brief Decode one message.
 * @param ret_ev the view; borrows from the decoder until ch_json_decoder_release().
 * @returns 0; -EBADMSG (not a JSON object, user_id or ts missing, a field of the wrong type:
 *          errbuf names it, with line and column for malformed JSON); -E2BIG (more than
 *          CH_CODEC_MAX_ATTRS attrs).
 */
int ch_json_decoder_decode(ch_json_decoder_t *d, const void *buf, size_t len,
                           ch_event_view_t *ret_ev, char *errbuf, size_t errlen);

#endif
