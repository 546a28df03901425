/*
 * tool_jsonl.h - JSON Lines files for the tools, read whole and flattened into columns.
 *
 * Each non-blank line is one JSON object (parsed by jansson). Its scalars become
 * columns named by their dotted paths ("customer.id"); the columns of the file are
 * every path met, in order of first appearance; a line without a path has "" there.
 * Strings stay as they are, numbers take their JSON text (integers exactly, others
 * with 17 significant digits), true/false their names, null is "". Arrays are skipped.
 */
#ifndef CH_TOOL_JSONL_H
#define CH_TOOL_JSONL_H

#include <stdio.h>

typedef struct tool_jsonl_row {
    long line;
    int n;
    int *idx;   /* column of each value */
    char **val; /* owned */
} tool_jsonl_row_t;

typedef struct tool_jsonl {
    char **names; /* owned; the columns */
    int n_names, max_names;
    tool_jsonl_row_t *rows;
    long n_rows;
} tool_jsonl_t;

/**
 * @brief Read every line of f.
 * @returns 0, or -1 with "PATH:LINE:COLUMN: why" printed (malformed JSON, a line that is
 *          not an object, more than max_cols paths, out of memory).
 */
int tool_jsonl_read(FILE *f, const char *path, int max_cols, tool_jsonl_t *t);

/** @brief Row i as t->n_names columns ("" where absent); borrows from t. */
void tool_jsonl_row(const tool_jsonl_t *t, long i, char **cols, long *ret_line);

/** @brief Free everything read. */
void tool_jsonl_free(tool_jsonl_t *t);

#endif
