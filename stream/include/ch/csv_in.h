/*
 * ch/csv_in.h - user events as CSV rows (cohortd featurize), mapped into the same view
 * as the Avro and JSON decoders'.
 *
 * A file's header names its columns; the mapping (ch/mapping.h) names, for each role,
 * the column it is read from (a dotted path is a column name as written:
 * "customer.id"). Cells are text: ids, type, item, category and the text fields as
 * they are; ts in the mapping's unit or ISO-8601 (ch_ts_from_text()); amount, the
 * numeric fields and attrs (the columns named "<input.map.attrs>.<key>") as numbers
 * (strtod(3), the whole cell). An empty cell is an absent value (an empty user_id stays
 * empty: the caller rejects it).
 *
 * @locality Not thread-safe; one decoder per file.
 */
#ifndef CH_CSV_IN_H
#define CH_CSV_IN_H

#include <stddef.h>

#include "ch/codec.h"
#include "ch/mapping.h"

typedef struct ch_csv_decoder ch_csv_decoder_t;

/**
 * @brief A decoder for the rows under one header.
 * @param header the n column names (NUL-terminated), borrowed for the call only.
 * @param what names the file in messages.
 * @returns 0; -EPROTO (a mapped column is missing: errbuf names it and lists the
 *          header); -E2BIG (more than CH_CODEC_MAX_ATTRS attrs columns); -ENOMEM.
 */
int ch_csv_decoder_new(const ch_mapping_t *map, const char *const *header, size_t n,
                       const char *what, ch_csv_decoder_t **ret, char *errbuf, size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_csv_decoder_t *ch_csv_decoder_free(ch_csv_decoder_t *d);

/**
 * @brief Decode one row.
 * @param cells the n cells, each NUL-terminated (lens their lengths); the view borrows
 *        from them, and from the decoder until the next call.
 * @returns 0; -EBADMSG (a column count other than the header's, an unreadable time or
 *          number: errbuf names the column).
 */
int ch_csv_decoder_decode(ch_csv_decoder_t *d, const char *const *cells, const size_t *lens,
                          size_t n, ch_event_view_t *ret_ev, char *errbuf, size_t errlen);

#endif
