/*
 * ch/json_in.h - user events as JSON objects (input.format = json), decoded with
 * jansson into the same view as the Avro decoder's.
 *
 * One message is one JSON object with cohortd's event fields: event_id (string),
 * user_id (string, or an integer written as one), ts (milliseconds since 1970, a
 * number), type (string), amount (number or null), item and category (string or null),
 * attrs (an object of numbers). Unknown fields are ignored; a missing or mistyped field
 * is an error naming it.
 */
#ifndef CH_JSON_IN_H
#define CH_JSON_IN_H

#include <stddef.h>

#include "ch/codec.h"

typedef struct ch_json_decoder ch_json_decoder_t;

/** @brief Create. @returns 0, -ENOMEM. */
int ch_json_decoder_new(ch_json_decoder_t **ret);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_json_decoder_t *ch_json_decoder_free(ch_json_decoder_t *d);

/** @brief Let go of the events decoded so far (their views become invalid). */
void ch_json_decoder_release(ch_json_decoder_t *d);

/**
 * @brief Decode one message.
 * @param ret_ev the view; borrows from the decoder until ch_json_decoder_release().
 * @returns 0; -EBADMSG (not a JSON object, or a field missing or of the wrong type:
 *          errbuf names it, with line and column for malformed JSON); -E2BIG (more than
 *          CH_CODEC_MAX_ATTRS attrs).
 */
int ch_json_decoder_decode(ch_json_decoder_t *d, const void *buf, size_t len,
                           ch_event_view_t *ret_ev, char *errbuf, size_t errlen);

#endif
