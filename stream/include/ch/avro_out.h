/*
 * ch/avro_out.h - writing Avro object container files (codec null): a header with the
 * writer schema, then blocks of records, each followed by the file's sync marker.
 * Records are encoded by the caller with the ch_avro_put_* helpers.
 *
 * @locality Not thread-safe; one writer per file.
 */
#ifndef CH_AVRO_OUT_H
#define CH_AVRO_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ch/codec.h"

typedef struct ch_avro_out ch_avro_out_t;

/**
 * @brief Start a container on out (borrowed) with this schema (JSON text).
 * @param sync the 16-byte sync marker (the caller picks it: a digest of the schema
 *        makes the same rows give the same file).
 * @returns 0, -EIO (writing the header failed), -ENOMEM.
 */
int ch_avro_out_new(FILE *out, const char *schema_json, const unsigned char sync[16],
                    ch_avro_out_t **ret);

/** @brief Where the next record is encoded (appended); ch_avro_out_commit() counts it. */
ch_buf_t *ch_avro_out_record(ch_avro_out_t *w);

/** @brief The record just appended is complete; a full block is written out.
 *  @returns 0, -EIO. */
int ch_avro_out_commit(ch_avro_out_t *w);

/** @brief Write the last block and free (not out). Accepts NULL. @returns 0, -EIO. */
int ch_avro_out_close(ch_avro_out_t *w);

/** @brief Append an Avro long (zig-zag varint), float (4 bytes, little-endian), boolean,
 *  string (length, bytes), or a union branch index. @returns 0, -ENOMEM. */
int ch_avro_put_long(ch_buf_t *b, int64_t v);
int ch_avro_put_float(ch_buf_t *b, float v);
int ch_avro_put_double(ch_buf_t *b, double v);
int ch_avro_put_bool(ch_buf_t *b, bool v);
int ch_avro_put_string(ch_buf_t *b, const char *s, size_t n);

#endif
