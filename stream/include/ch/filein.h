/*
 * ch/filein.h - records of event files: CSV (RFC 4180, read by libcsv), JSON Lines, and
 * Avro object container files (codec null or deflate), plain or gzip-compressed (zlib
 * reads both, whatever the name), a path or "-" for standard input.
 *
 * A record is what one decoder call takes: a CSV row as its cells, a JSON Lines line,
 * or an Avro container block (its records follow one another; only the decoder knows
 * where each ends: ch_decoder_decode_next()).
 *
 * @locality Not thread-safe; one reader per file.
 */
#ifndef CH_FILEIN_H
#define CH_FILEIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum ch_file_format {
    CH_FILE_CSV,
    CH_FILE_JSONL,
    CH_FILE_AVRO,
} ch_file_format_t;

/* One record. CSV: data holds the cells as (uint32 length, bytes, NUL) each
 * (ch_filein_cells() splits it). JSON Lines: one line without its end. Avro: one
 * block's records (count of them), decompressed. */
typedef struct ch_file_rec {
    const unsigned char *data;
    size_t len;
    long line;   /* CSV, JSON Lines: the line the record starts on; Avro: its first record's
                    number in the file (1-based) */
    long count;  /* Avro: records in the block; else 1 */
} ch_file_rec_t;

typedef struct ch_filein ch_filein_t;

/**
 * @brief The format a file's name says (".csv", ".jsonl", ".ndjson", ".json", ".avro",
 *        each optionally followed by ".gz").
 * @returns 0 and *ret, -EINVAL (no known suffix).
 */
int ch_file_format_of(const char *path, ch_file_format_t *ret);

/** @brief "csv", "jsonl" or "avro" to a format. @returns 0, -EINVAL. */
int ch_file_format_parse(const char *s, ch_file_format_t *ret);

/**
 * @brief Open path ("-": standard input) as fmt. CSV: the header is read; Avro: the
 *        container header (schema, codec).
 * @returns 0; -ENOENT and others from open(2); -EINVAL (not a container file, an
 *          unsupported codec, a CSV without a header: errbuf says which); -E2BIG (a CSV
 *          header of more than 4,096 columns); -ENOMEM.
 */
int ch_filein_open(const char *path, ch_file_format_t fmt, ch_filein_t **ret, char *errbuf,
                   size_t errlen);

/** @brief Close. Accepts NULL. @returns NULL. */
ch_filein_t *ch_filein_close(ch_filein_t *f);

/**
 * @brief The next record; it stays valid until the next call.
 * @returns 1 and *ret; 0 at the end; -EBADMSG (a malformed CSV quote, a corrupt
 *          container block: errbuf says "PATH:LINE: why"; the file cannot go on);
 *          -EIO; -ENOMEM.
 */
int ch_filein_next(ch_filein_t *f, ch_file_rec_t *ret, char *errbuf, size_t errlen);

/** @brief CSV: the header's column names (n of them, borrowed). Else NULL. */
const char *const *ch_filein_header(const ch_filein_t *f, size_t *ret_n);

/** @brief Avro: the writer schema (JSON text, borrowed). Else NULL. */
const char *ch_filein_schema(const ch_filein_t *f);

/** @brief The path as given ("-" for standard input). */
const char *ch_filein_path(const ch_filein_t *f);

/** @brief The fraction of the file read (0..1, by compressed bytes); -1 if unknown. */
double ch_filein_progress(const ch_filein_t *f);

/**
 * @brief Split a CSV record's data into cells.
 * @param cells, lens room for max cells: the first max are set.
 * @returns the number of cells in the record (more than max: the rest not set).
 */
size_t ch_filein_cells(const unsigned char *data, size_t len, const char **cells, size_t *lens,
                       size_t max);

#endif
