/*
 * rowout.h - cohortd featurize's rows, written as CSV (a header of column names), JSON
 * Lines or an Avro object container file: user_id, event_id, event_time, the features,
 * then the columns the run has (segment; score, alert, reasons, the challenger's score and
 * alert; label, label_time).
 */
#ifndef CH_ROWOUT_H
#define CH_ROWOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ch/codec.h"

typedef enum ch_rowout_format {
    CH_ROWOUT_CSV,
    CH_ROWOUT_JSONL,
    CH_ROWOUT_AVRO,
} ch_rowout_format_t;

/* The columns of a run. */
typedef struct ch_rowout_cols {
    const char *const *features; /* names, borrowed for the writer's life */
    size_t n_features;
    bool segments;           /* segment (empty / null before the segments are seeded) */
    const char *const *tags; /* tag names (tags.<name>), borrowed; n_tags of them */
    size_t n_tags;
    bool scores, challenger; /* score, alert, reasons; challenger_score, challenger_alert */
    bool labels, label_times;
} ch_rowout_cols_t;

/* One row. */
typedef struct ch_row {
    const char *uid, *eid; /* eid NULL: the event has none */
    size_t uid_len, eid_len;
    int64_t ts_ms;
    const float *x;
    int32_t segment; /* -1: none */
    const ch_tag_values_t *tags; /* cols.n_tags of them, in the columns' order */
    bool has_label;
    double label;
    int64_t label_ts_ms; /* INT64_MIN: none */
    bool alert, alert2;
    float score, score2;
    const ch_reason_t *reasons;
    size_t n_reasons;
} ch_row_t;

typedef struct ch_rowout ch_rowout_t;

/**
 * @brief Whether the feature names can be columns: none named as a fixed column, and for
 *        Avro each a field name ([A-Za-z_][A-Za-z0-9_]*).
 * @returns 0, -EINVAL (errbuf names the feature).
 */
int ch_rowout_check(ch_rowout_format_t fmt, const ch_rowout_cols_t *cols, char *errbuf,
                    size_t errlen);

/** @brief Start the rows on out (borrowed): the CSV header, or the container header.
 *  @returns 0, -EIO, -ENOMEM. */
int ch_rowout_new(ch_rowout_format_t fmt, FILE *out, const ch_rowout_cols_t *cols,
                  ch_rowout_t **ret);

/** @brief Write one row. @returns 0, -EIO, -ENOMEM. */
int ch_rowout_write(ch_rowout_t *w, const ch_row_t *r);

/** @brief Write what is buffered (the container's last block) and free; out stays open.
 *  Accepts NULL. @returns 0, -EIO. */
int ch_rowout_close(ch_rowout_t *w);

/** @brief Append s as one CSV cell: quoted (quotes doubled) when it holds a comma, a
 *  quote or a line end. @returns 0, -ENOMEM. */
int ch_rowout_csv_cell(ch_buf_t *b, const char *s, size_t n);

#endif
