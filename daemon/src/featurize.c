/*
 * featurize.c - cohortd featurize: one row per event of files, the vector the daemon
 * publishes for that event (README "Featurize: features from history").
 *
 * Design notes
 * - The daemon's own code, not a copy: events are decoded by the decoders the daemon
 *   uses (Avro with the reader schema and input.map.*, JSON by jansson), CSV rows are
 *   mapped by the same keys (ch/csv_in.h), validated by ch_events_check() and folded
 *   by ch_features_update()/ch_features_read() into a user table like the daemon's
 *   (same state.max_users, same idle eviction), so a row is bit for bit the profile
 *   update's features.
 * - Order. A user's vector depends on the order of that user's events. --order time
 *   (the default) folds every event in event-time order, ties in input order, as
 *   cohort-produce sends a file and a live topic receives events; it reads everything
 *   first (holding the records, not their decoded form) and decodes again in order.
 *   --order file folds in the order read, streaming, for files already in topic order.
 *   A late event (older than its user's newest) is folded as the daemon folds it:
 *   weighted by its age, its row read at the user's newest time.
 * - Wall-clock checks (input.max_future, input.max_age) do not apply: history is old
 *   by nature. Every other check does, with the daemon's reasons.
 * - Bad input is never silent: without --skip-bad the first bad record stops with
 *   FILE:LINE and the reason (exit 1); with it, each goes to the reject file and is
 *   counted in the summary.
 * - Segments (segments.k > 0): the daemon's segmenter (segments.c), fed the rows a batch
 *   of batch.max_events at a time as the daemon's batch path feeds it (the inline
 *   seeding, then the online step with each row's previous segment); passes over the
 *   population run whole after a batch, when stream time makes them due. The segmenter
 *   is shown a fixed wall clock, so a wall-clock refresh is never due: the result does
 *   not depend on how fast featurize runs.
 * - Bootstrap (--state-out): after the last event before --until, a pass over every
 *   user (as a refresh), then one seed file per input partition (seed.h; users placed
 *   by the Kafka default partitioner on the user id as sent) and the segment model.
 */
#include "featurize.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ch/csv_in.h"
#include "ch/features.h"
#include "ch/filein.h"
#include "ch/json.h"
#include "ch/json_in.h"
#include "ch/keyset.h"
#include "ch/users.h"
#include "backtest.h"
#include "config.h"
#include "events.h"
#include "foldrow.h"
#include "log.h"
#include "pseudonym.h"
#include "rowout.h"
#include "scorer.h"
#include "seed.h"
#include "segments.h"
#include "snapfile.h"
#include "staterec.h"
#include "userrec.h"

#define MAX_COLS 4096

typedef enum order { ORDER_TIME, ORDER_FILE } order_t;
_Static_assert((int)CH_ROWOUT_CSV == (int)CH_FILE_CSV && (int)CH_ROWOUT_JSONL == (int)CH_FILE_JSONL &&
                   (int)CH_ROWOUT_AVRO == (int)CH_FILE_AVRO,
               "an output format is named as a file format");

typedef struct input {
    const char *path;
    ch_file_format_t fmt;
    ch_csv_decoder_t *csv; /* CSV: the decoder of its header */
} input_t;

/* A record held for --order time: its bytes in the arena. */
typedef struct held {
    int64_t ts_ms;
    uint32_t file;
    long line;
    size_t off, len;
} held_t;

typedef struct label {
    double value;
    int64_t ts_ms; /* INT64_MIN: none */
    bool used;
} label_t;

/* A row waiting for its batch to be scored: its ids in fz_t.ids. */
typedef struct pending {
    size_t uid_off, uid_len, eid_off, eid_len;
    size_t tag_off; /* its tags in fz_t.tagbuf */
    bool has_eid;
    bool drop; /* --labeled-only without a label: segmented (the segmenter sees every
                * event, as the daemon's), not written */
    int64_t ts_ms;
    const label_t *l;
} pending_t;

typedef struct fz {
    const ch_config_t *cfg;
    ch_config_t *check_cfg; /* cfg as JSON input: ch_events_new() makes no Avro decoder */
    ch_features_t *fs;
    ch_events_t *events;
    ch_users_t *users;
    ch_pseudonym_t *pseud;
    ch_mapping_t map;
    ch_json_decoder_t *json;
    ch_decoder_t *avro;
    input_t *inputs;
    size_t n_inputs;
    size_t n_feats;
    double *feats;
    float *x;
    double idle_evict_ms;
    int64_t stream_time_ms;
    uint64_t since_evict;
    /* options */
    order_t order;
    ch_rowout_format_t format;
    FILE *out;
    const char *out_path;
    bool skip_bad, labeled_only, quiet, progress;
    FILE *rejects;
    char rejects_path[4096];
    ch_keyset_t *label_ids;
    label_t *labels;
    size_t n_labels;
    bool label_times;
    /* --order time */
    ch_buf_t arena;
    held_t *held;
    size_t n_held, cap_held;
    /* counts */
    uint64_t records, folded, rows, unlabelled, labelled, bad[CH_BAD_N], bad_total;
    double t0, last_progress;
    ch_buf_t line; /* a reject file's line */
    ch_rowout_t *rows_out;
    bool format_set;
    char pseud_id[CH_PSEUDONYM_LEN];
    /* scoring (model.path set): rows scored a batch at a time, as in the daemon */
    ch_scorer_t scorer, challenger;
    const char **names;
    size_t batch, n_pend;
    pending_t *pend;
    float *X, *scores, *scores2;
    ch_buf_t ids;
    ch_reason_t *reasons;
    /* backtest */
    bool report;
    const char *report_json;
    ch_backtest_t *bt;
    /* bootstrap: --state-out DIR --partitions N --until T */
    const char *state_out;
    int32_t partitions;
    int64_t until_ms; /* events stamped at or after it are left to the daemon; -1: none */
    uint64_t after_until;
    uint64_t seed_files, seed_users;
    /* segments (segments.k > 0, one instance's): assigned a batch at a time as the
     * daemon assigns them; passes over the population by stream time only */
    ch_config_t *seg_cfg; /* cfg without segments.state_file: featurize starts fresh */
    ch_segments_t *segs;
    int32_t *prev_seg;
    uint32_t *prev_gen;
    ch_kmeans_assign_t *assign;
    float *RX;        /* a reassignment's vectors (X holds the batch's rows meanwhile) */
    ch_kmeans_assign_t *rassign;
    double seg_clock; /* the wall clock the segmenter is shown: fixed, so never due */
    const char *seg_export;
    uint64_t seg_passes;
    /* tags.*: each row's values as of its event, copied (a batch's later events change
     * its user's), then viewed through tagv when written */
    size_t n_tags;
    const char *tag_names[CH_TAGS_MAX];
    ch_buf_t tagbuf;
    ch_tag_values_t tagv[CH_TAGS_MAX];
    const char *tag_vals[CH_TAGS_MAX][CH_TAG_TOP_MAX];
    size_t tag_lens[CH_TAGS_MAX][CH_TAG_TOP_MAX];
} fz_t;

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohortd featurize --config FILE [--set KEY=VALUE]... [OPTIONS] INPUT...\n"
            "Fold events from files through the daemon's own decode, validation and feature\n"
            "code (no Kafka) and write one row per event: user_id, event_id, event_time and\n"
            "the feature vector the daemon publishes for that event, bit for bit. With a model\n"
            "(model.path), every row is scored as the daemon scores it: score, alert, reasons\n"
            "(and the challenger's score and alert).\n\n"
            "  -c, --config FILE     the daemon's configuration (features, input.map.*, state.*)\n"
            "  -s, --set KEY=VALUE   override one setting (repeatable; after the file)\n"
            "  -o, --output FILE     write rows to FILE (default: standard output)\n"
            "  -f, --format F        csv (a header of column names), jsonl or avro (an object\n"
            "                        container file, floats as float); default: by the name\n"
            "                        of --output, else csv\n"
            "      --input-format F  csv, jsonl or avro for every INPUT (default: by each name:\n"
            "                        .csv, .jsonl/.ndjson/.json, .avro, each optionally .gz;\n"
            "                        required for - , standard input)\n"
            "      --order O         time (default): fold in event-time order, ties in input\n"
            "                        order, as cohort-produce sends events (holds the records in\n"
            "                        memory); file: in the order read, streaming\n"
            "      --labels FILE     CSV with a header: event id, label[, label time]; adds the\n"
            "                        label (and label_time) column, empty where none\n"
            "      --labeled-only    drop rows without a label (counted)\n"
            "      --skip-bad        write bad records to the reject file with FILE:LINE and the\n"
            "                        reason, count them and go on (default: stop at the first)\n"
            "      --rejects FILE    the reject file (default: OUTPUT.rejects.csv, or\n"
            "                        featurize-rejects.csv when writing to standard output)\n"
            "      --report          with a model and --labels: print the backtest, the live\n"
            "                        evaluation's figures on the labelled rows (ROC AUC, average\n"
            "                        precision, precision and recall at risk.threshold, log loss,\n"
            "                        calibration by score decile) and alerts per day\n"
            "      --report-json FILE  the same figures as JSON\n"
            "      --until T         fold only the events stamped before T (ISO-8601 or ms since\n"
            "                        1970; default: the config's input.start_at); later ones\n"
            "                        are counted and left to the daemon\n"
            "      --state-out DIR   bootstrap: write each input partition's users as the seed\n"
            "                        file DIR/<input.topic>-<partition>.seed, loaded by a daemon\n"
            "                        with state.dir = DIR whose group has no committed offset\n"
            "                        (needs --partitions and --until or input.start_at; no rows\n"
            "                        are written unless --output names a file)\n"
            "      --partitions N    the input topic's partition count (users are placed by\n"
            "                        the Kafka default partitioner, murmur2 of the user id)\n"
            "                        With segments (segments.k > 0) the rows get a segment\n"
            "                        column, and --state-out also writes DIR/segments.state, the\n"
            "                        model after a pass over every user at the last event\n"
            "      --segments-export FILE  after that pass, one JSON line per user: segment and\n"
            "                        vector (x, and z transformed), as GET /segments/export\n"
            "  -q, --quiet           no progress bar, no summary\n"
            "  -h, --help            this help\n\n"
            "Inputs are read in the order given; - is standard input; gzip is read whatever\n"
            "the name. CSV cells and JSON fields are found by the config's input.map.* keys.\n"
            "Exit status: 0 done, 1 bad input (without --skip-bad) or an I/O error, 2 usage or\n"
            "configuration error.\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- bad records */

/* "FILE:LINE" of a record ("FILE: record N" in an Avro container). */
static void where(const fz_t *z, uint32_t file, long line, char *buf, size_t len) {
    const input_t *in = &z->inputs[file];
    const char *name = strcmp(in->path, "-") == 0 ? "(stdin)" : in->path;
    if (in->fmt == CH_FILE_AVRO) {
        snprintf(buf, len, "%s: record %ld", name, line);
    } else {
        snprintf(buf, len, "%s:%ld", name, line);
    }
}

/* A bad record: stop (-1), or rejected and counted (0). */
static int reject(fz_t *z, uint32_t file, long line, ch_bad_reason_t reason, const char *why) {
    char at[4200];
    where(z, file, line, at, sizeof(at));
    const char *name = ch_events_bad_name(reason);
    if (!z->skip_bad) {
        fprintf(stderr, "cohortd featurize: %s: %s: %s (--skip-bad writes bad records to a "
                        "reject file and goes on)\n",
                at, name, why);
        return -1;
    }
    z->bad[reason]++;
    z->bad_total++;
    if (!z->rejects) {
        if (!(z->rejects = fopen(z->rejects_path, "w"))) {
            fprintf(stderr, "cohortd featurize: %s: %s\n", z->rejects_path, strerror(errno));
            return -1;
        }
        fputs("where,reason,detail\n", z->rejects);
    }
    ch_buf_t *b = &z->line;
    b->len = 0;
    int r = ch_rowout_csv_cell(b, at, strlen(at));
    r = r ? r : ch_buf_append(b, ",", 1);
    r = r ? r : ch_buf_append(b, name, strlen(name));
    r = r ? r : ch_buf_append(b, ",", 1);
    r = r ? r : ch_rowout_csv_cell(b, why, strlen(why));
    r = r ? r : ch_buf_append(b, "\n", 1);
    if (r < 0 || fwrite(b->data, 1, b->len, z->rejects) != b->len) {
        fprintf(stderr, "cohortd featurize: %s: cannot write\n", z->rejects_path);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- labels */

static int load_labels(fz_t *z, const char *path, char *err, size_t errlen) {
    ch_filein_t *f = NULL;
    int r = ch_filein_open(path, CH_FILE_CSV, &f, err, errlen);
    if (r < 0) {
        return r;
    }
    size_t n_head = 0;
    ch_filein_header(f, &n_head);
    if (n_head < 2 || n_head > 3) {
        ch_filein_close(f);
        snprintf(err, errlen,
                 "%s: %zu columns; a labels file has event id, label[, label time] under a "
                 "header",
                 path, n_head);
        return -EINVAL;
    }
    z->label_times = n_head == 3;
    if ((r = ch_keyset_new(&z->label_ids)) < 0) {
        ch_filein_close(f);
        return r;
    }
    size_t cap = 0;
    ch_file_rec_t rec;
    while ((r = ch_filein_next(f, &rec, err, errlen)) == 1) {
        const char *cells[3];
        size_t lens[3];
        size_t n = ch_filein_cells(rec.data, rec.len, cells, lens, 3);
        label_t l = {.ts_ms = INT64_MIN};
        char *end = NULL;
        if (n != n_head || !lens[0] || !lens[1] || (l.value = strtod(cells[1], &end), *end) ||
            !isfinite(l.value)) {
            snprintf(err, errlen, "%s:%ld: expected event id, label (a number)%s", path, rec.line,
                     z->label_times ? ", label time" : "");
            r = -EINVAL;
            break;
        }
        if (z->label_times && lens[2] &&
            ch_ts_from_text(cells[2], lens[2], z->cfg->input_ts_unit, &l.ts_ms) < 0) {
            snprintf(err, errlen, "%s:%ld: label time '%.40s' is not a time", path, rec.line,
                     cells[2]);
            r = -EINVAL;
            break;
        }
        if (z->n_labels == cap) {
            cap = cap ? 2 * cap : 1024;
            label_t *nl = realloc(z->labels, cap * sizeof(*nl));
            if (!nl) {
                r = -ENOMEM;
                break;
            }
            z->labels = nl;
        }
        int64_t idx = (int64_t)z->n_labels;
        if (ch_keyset_get(z->label_ids, cells[0], lens[0], &idx)) {
            z->labels[idx] = l; /* a repeated id: the last label wins */
            continue;
        }
        if ((r = ch_keyset_put(z->label_ids, cells[0], lens[0], idx)) < 0) {
            break;
        }
        z->labels[z->n_labels++] = l;
    }
    ch_filein_close(f);
    return r < 0 ? r : 0;
}

/* ---------------------------------------------------------------- rows */

/* Copy u's tags now into tagbuf: per tag a count byte, then per value a length byte
 * (values are at most CH_TAG_VALUE_MAX bytes) and its bytes. @returns 0, -ENOMEM. */
static int capture_tags(fz_t *z, const ch_user_t *u) {
    int r = 0;
    for (size_t t = 0; t < z->n_tags && !r; t++) {
        const char *vals[CH_TAG_TOP_MAX];
        size_t lens[CH_TAG_TOP_MAX];
        size_t n = ch_features_tag_read(z->fs, u->state, t, vals, lens, NULL);
        unsigned char c = (unsigned char)n;
        r = ch_buf_append(&z->tagbuf, &c, 1);
        for (size_t i = 0; i < n && !r; i++) {
            c = (unsigned char)lens[i];
            r = ch_buf_append(&z->tagbuf, &c, 1);
            r = r ? r : ch_buf_append(&z->tagbuf, vals[i], lens[i]);
        }
    }
    return r;
}

/* z->tagv: views of the tags captured at off (valid until tagbuf changes). */
static const ch_tag_values_t *tags_at(fz_t *z, size_t off) {
    const unsigned char *p = z->tagbuf.data + off;
    for (size_t t = 0; t < z->n_tags; t++) {
        size_t n = *p++;
        for (size_t i = 0; i < n; i++) {
            z->tag_lens[t][i] = *p++;
            z->tag_vals[t][i] = (const char *)p;
            p += z->tag_lens[t][i];
        }
        z->tagv[t] = (ch_tag_values_t){.name = z->tag_names[t],
                                       .vals = z->tag_vals[t],
                                       .lens = z->tag_lens[t],
                                       .n = n};
    }
    return z->tagv;
}

static int write_row(fz_t *z, const ch_row_t *w) {
    int r = ch_rowout_write(z->rows_out, w);
    if (r < 0) {
        fprintf(stderr, "cohortd featurize: %s: %s\n", z->out_path,
                r == -ENOMEM ? strerror(ENOMEM) : "cannot write");
        return -1;
    }
    z->rows++;
    return 0;
}

/* ---------------------------------------------------------------- segments */

static int reassign_all(fz_t *z);

/* The pending rows' segments, as the daemon's batch path gives them: the seeding at once
 * in the batch that ends the warm-up (tables of at most 100,000 users), then the online
 * step with hysteresis against each row's user's segment before the batch; each user
 * then holds the segment of its last row. @returns 0, -1. */
static int segment_batch(fz_t *z, size_t n) {
    if (ch_segments_seed_inline(z->segs, z->users, z->fs, n, z->stream_time_ms) &&
        reassign_all(z) < 0) {
        return -1;
    }
    ch_segments_update(z->segs, z->X, n, z->stream_time_ms, z->prev_seg, z->prev_gen, z->assign);
    for (size_t i = 0; i < n; i++) {
        const pending_t *p = &z->pend[i];
        ch_user_t *u = ch_users_find(z->users, (const char *)z->ids.data + p->uid_off, p->uid_len);
        const ch_kmeans_assign_t *a = &z->assign[i];
        if (u && a->segment >= 0) {
            ch_segments_moved(z->segs, u->segment, a->segment);
            u->segment = (int16_t)a->segment;
            u->seg_gen = a->generation;
        }
    }
    return 0;
}

/* After a pass adopted new centroids: every user to the nearest, its vector read at the
 * stream time now (as the daemon's reassignment walk). @returns 0, -1. */
static int reassign_all(fz_t *z) {
    size_t cursor = 0, max = z->batch, users = 0, moved = 0;
    ch_user_t **us = malloc(max * sizeof(*us));
    if (!us) {
        fprintf(stderr, "cohortd featurize: out of memory\n");
        return -1;
    }
    for (;;) {
        size_t m = 0;
        ch_user_t *u;
        while (m < max && (u = ch_users_next(z->users, &cursor))) {
            ch_read_row_at(z->fs, u, z->stream_time_ms, z->feats, z->RX + m * z->n_feats,
                           z->n_feats);
            us[m++] = u;
        }
        if (m == 0) {
            break;
        }
        ch_segments_assign(z->segs, z->RX, m, z->rassign);
        for (size_t i = 0; i < m; i++) {
            const ch_kmeans_assign_t *a = &z->rassign[i];
            if (a->segment >= 0 && (a->segment != us[i]->segment || a->generation != us[i]->seg_gen)) {
                ch_segments_moved(z->segs, us[i]->segment, a->segment);
                us[i]->segment = (int16_t)a->segment;
                us[i]->seg_gen = a->generation;
                moved++;
            }
        }
        users += m;
    }
    free(us);
    ch_segments_reassigned(z->segs, users, moved, ch_now_s()); /* after seg_clock: never due */
    z->seg_passes++;
    return 0;
}

/* Passes due by stream time (segments.refresh_clock = stream), or a seeding that could
 * not run inline, run whole after the batch that made them due. @returns 0, -1. */
static int segment_passes(fz_t *z) {
    for (int guard = 0; guard < 4; guard++) {
        ch_seg_step_t r = ch_segments_step(z->segs, z->users, z->fs, z->stream_time_ms,
                                           z->seg_clock, INFINITY);
        if (r == CH_SEG_IDLE) {
            return 0;
        }
        if (r == CH_SEG_FITTED && reassign_all(z) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The end of history (--state-out, --segments-export): a pass over every user, as a
 * refresh (or the seeding, if warm-up ended but none ran), so the segments the seeds
 * carry are fitted on the whole population as it is at the last event. @returns 0, -1. */
static int final_pass(fz_t *z) {
    if (ch_segments_request_refresh(z->segs) < 0 && !ch_segments_due(z->segs, z->users,
                                                                     z->stream_time_ms,
                                                                     z->seg_clock)) {
        if (!z->quiet) {
            fprintf(stderr, "cohortd featurize: warning: the segments were never seeded (fewer "
                            "than segments.warmup events, or fewer users than segments.k): the "
                            "seeds carry no segments\n");
        }
        return 0;
    }
    return segment_passes(z);
}

/* --segments-export: one JSON line per user, as GET /segments/export: segment, and the
 * vector read at the last event's time, raw (x) and transformed (z). @returns 0, -1. */
static int write_seg_export(fz_t *z) {
    FILE *f = fopen(z->seg_export, "w");
    ch_kmeans_t *km = NULL;
    ch_buf_t b;
    ch_buf_init(&b);
    float *x = calloc(z->n_feats, sizeof(float)), *zz = calloc(z->n_feats, sizeof(float));
    int r = f && x && zz ? ch_segments_copy_model(z->segs, &km) : -ENOMEM;
    size_t cursor = 0;
    ch_user_t *u;
    while (r == 0 && (u = ch_users_next(z->users, &cursor))) {
        int64_t t = ch_read_row_at(z->fs, u, z->stream_time_ms, z->feats, x, z->n_feats);
        ch_kmeans_transform(km, x, 1, zz);
        b.len = 0;
        r = ch_buf_append(&b, "{\"user_id\":", 11);
        r = r ? r : ch_json_string(&b, ch_users_key(z->users, u), u->key_len);
        r = r ? r
              : u->segment >= 0 ? ch_buf_printf(&b, ",\"segment\":%d,\"generation\":%u",
                                                (int)u->segment, (unsigned)u->seg_gen)
                                : ch_buf_printf(&b, ",\"segment\":null,\"generation\":null");
        r = r ? r : ch_buf_printf(&b, ",\"ts\":%lld,\"x\":", (long long)t);
        r = r ? r : ch_json_floats(&b, x, z->n_feats);
        r = r ? r : ch_buf_append(&b, ",\"z\":", 5);
        r = r ? r : ch_json_floats(&b, zz, z->n_feats);
        r = r ? r : ch_buf_append(&b, "}\n", 2);
        if (r == 0 && fwrite(b.data, 1, b.len, f) != b.len) {
            r = -EIO;
        }
    }
    if (f && fclose(f) != 0 && r == 0) {
        r = -EIO;
    }
    ch_kmeans_free(km);
    ch_buf_done(&b);
    free(x);
    free(zz);
    if (r < 0) {
        fprintf(stderr, "cohortd featurize: --segments-export %s: %s\n", z->seg_export,
                !f ? strerror(errno) : r == -ENOMEM ? strerror(ENOMEM) : "cannot write");
        return -1;
    }
    return 0;
}

/* Score the pending rows at once (as the daemon scores a batch), then write them. */
static int flush(fz_t *z) {
    size_t n = z->n_pend;
    z->n_pend = 0;
    if (n == 0) {
        return 0;
    }
    if (z->scorer.model) {
        ch_onnx_eval(z->scorer.model, z->X, n, z->scores);
    }
    if (z->challenger.model) { /* the same rows: compared, never acted on */
        ch_onnx_eval(z->challenger.model, z->X, n, z->scores2);
    }
    if (z->segs && segment_batch(z, n) < 0) {
        return -1;
    }
    float thr = (float)z->cfg->risk_threshold;
    for (size_t i = 0; i < n; i++) {
        const pending_t *p = &z->pend[i];
        if (p->drop) {
            continue;
        }
        ch_row_t w = {.uid = (const char *)z->ids.data + p->uid_off,
                      .uid_len = p->uid_len,
                      .eid = p->has_eid ? (const char *)z->ids.data + p->eid_off : NULL,
                      .eid_len = p->eid_len,
                      .ts_ms = p->ts_ms,
                      .x = z->X + i * z->n_feats,
                      .segment = z->segs ? z->assign[i].segment : -1,
                      .tags = z->n_tags ? tags_at(z, p->tag_off) : NULL,
                      .has_label = p->l != NULL,
                      .label = p->l ? p->l->value : 0,
                      .label_ts_ms = p->l ? p->l->ts_ms : INT64_MIN,
                      .score = z->scores[i],
                      .score2 = z->challenger.model ? z->scores2[i] : NAN,
                      .reasons = z->reasons};
        w.alert = z->scorer.model && w.score >= thr;
        w.alert2 = z->challenger.model && w.score2 >= thr;
        w.n_reasons = w.alert ? ch_scorer_reasons(&z->scorer, i, z->reasons) : 0;
        if (z->bt && ch_backtest_add(z->bt, w.ts_ms, w.score, w.alert, w.score2, w.alert2,
                                     w.has_label, w.label) < 0) {
            fprintf(stderr, "cohortd featurize: out of memory\n");
            return -1;
        }
        if (write_row(z, &w) < 0) {
            return -1;
        }
    }
    z->ids.len = 0;
    z->tagbuf.len = 0;
    return z->segs ? segment_passes(z) : 0;
}

/* The row of the event just folded (its vector in z->x): written, or held to be scored
 * with its batch. @returns 0, -1. */
static int emit(fz_t *z, const ch_event_view_t *ev, const ch_user_t *u, const char *uid,
                size_t uid_len) {
    const label_t *l = NULL;
    int64_t idx;
    if (z->label_ids) {
        if (ev->event_id && ch_keyset_get(z->label_ids, ev->event_id, ev->event_id_len, &idx)) {
            l = &z->labels[idx];
            z->labels[idx].used = true;
            z->labelled++;
        } else {
            z->unlabelled++;
            if (z->labeled_only && !z->segs) {
                return 0;
            }
        }
    }
    bool drop = z->label_ids && z->labeled_only && !l;
    if (z->n_tags) {
        if (!z->batch) {
            z->tagbuf.len = 0;
        }
        size_t off = z->tagbuf.len;
        if (capture_tags(z, u) < 0) {
            fprintf(stderr, "cohortd featurize: out of memory\n");
            return -1;
        }
        if (z->batch) {
            z->pend[z->n_pend].tag_off = off;
        }
    }
    if (!z->batch) {
        ch_row_t w = {.uid = uid,
                      .uid_len = uid_len,
                      .eid = ev->event_id,
                      .eid_len = ev->event_id_len,
                      .ts_ms = ev->ts_ms,
                      .x = z->x,
                      .segment = -1,
                      .tags = z->n_tags ? tags_at(z, 0) : NULL,
                      .has_label = l != NULL,
                      .label = l ? l->value : 0,
                      .label_ts_ms = l ? l->ts_ms : INT64_MIN};
        return write_row(z, &w);
    }
    pending_t *p = &z->pend[z->n_pend];
    *p = (pending_t){.tag_off = p->tag_off,
                     .uid_off = z->ids.len,
                     .uid_len = uid_len,
                     .eid_off = z->ids.len + uid_len,
                     .eid_len = ev->event_id ? ev->event_id_len : 0,
                     .has_eid = ev->event_id != NULL,
                     .ts_ms = ev->ts_ms,
                     .l = l,
                     .drop = drop};
    if (ch_buf_append(&z->ids, uid, uid_len) < 0 ||
        (ev->event_id && ch_buf_append(&z->ids, ev->event_id, ev->event_id_len) < 0)) {
        fprintf(stderr, "cohortd featurize: out of memory\n");
        return -1;
    }
    memcpy(z->X + z->n_pend * z->n_feats, z->x, z->n_feats * sizeof(float));
    z->prev_seg[z->n_pend] = u->segment; /* before this batch, as the daemon's rows */
    z->prev_gen[z->n_pend] = u->seg_gen;
    return ++z->n_pend == z->batch ? flush(z) : 0;
}

/* ---------------------------------------------------------------- decode and fold */

/* Decode one record of file (Avro: the one at the front of data; *used its size).
 * @returns CH_BAD_NONE, or the reason with the detail in why. */
static ch_bad_reason_t decode(fz_t *z, uint32_t file, const unsigned char *data, size_t len,
                              size_t *used, ch_event_view_t *ev, char *why, size_t wlen) {
    const input_t *in = &z->inputs[file];
    int r;
    *used = len;
    if (in->fmt == CH_FILE_CSV) {
        const char *cells[MAX_COLS];
        size_t lens[MAX_COLS];
        size_t n = ch_filein_cells(data, len, cells, lens, MAX_COLS);
        r = n > MAX_COLS ? -EBADMSG : ch_csv_decoder_decode(in->csv, cells, lens, n, ev, why, wlen);
        if (n > MAX_COLS) {
            snprintf(why, wlen, "%zu columns (at most %d)", n, MAX_COLS);
        }
    } else if (in->fmt == CH_FILE_JSONL) {
        r = ch_json_decoder_decode(z->json, data, len, ev, why, wlen);
    } else {
        r = ch_decoder_decode_next(z->avro, (int32_t)file, data, len, used, ev, why, wlen);
    }
    if (r < 0) {
        return r == -EPROTO ? CH_BAD_SCHEMA : r == -E2BIG ? CH_BAD_TOO_MANY_ATTRS : CH_BAD_DECODE;
    }
    return CH_BAD_NONE;
}

static void release(fz_t *z) {
    ch_json_decoder_release(z->json);
    if (z->avro) {
        ch_decoder_release(z->avro);
    }
}

/* Fold a valid event into its user's state and write its row. @returns 0, -1 (stop). */
static int fold(fz_t *z, ch_event_view_t *ev, const ch_obs_t *obs) {
    if (z->until_ms >= 0 && ev->ts_ms >= z->until_ms) {
        z->after_until++; /* the daemon's, from input.start_at on */
        return 0;
    }
    const char *uid = ev->user_id;
    size_t uid_len = ev->user_id_len;
    int32_t partition = -1;
    if (z->state_out) { /* where the record lands: by its key, the user id as sent */
        partition = ch_seed_partition(uid, uid_len, z->partitions);
    }
    if (z->pseud) { /* the user known by their pseudonym only, as in the daemon */
        if (ch_pseudonym_of(z->pseud, uid, uid_len, z->pseud_id) < 0) {
            fprintf(stderr, "cohortd featurize: computing a pseudonym failed\n");
            return -1;
        }
        uid = z->pseud_id;
        uid_len = CH_PSEUDONYM_LEN;
    }
    ch_user_t *u = NULL;
    int r = ch_users_upsert(z->users, uid, uid_len, &u);
    if (r < 0) {
        fprintf(stderr, "cohortd featurize: user table: %s\n", strerror(-r));
        return -1;
    }
    if (r == 1) {
        ch_features_state_init(z->fs, u->state);
        if (z->state_out) {
            ch_userrec_init(ch_userrec(z->users, u));
        }
    }
    if (z->state_out) {
        ch_userrec(z->users, u)->partition = partition;
    }
    ch_fold_row(z->fs, u, obs, z->feats, z->x, z->n_feats);
    if (ev->ts_ms > z->stream_time_ms) {
        z->stream_time_ms = ev->ts_ms;
    }
    z->folded++;
    /* idle users leave as in the daemon, which looks at up to 100,000 of them a second
     * (about one per event at its rates); here one per event, batch.max_events at once */
    if (++z->since_evict >= (uint64_t)z->cfg->batch_max_events && z->idle_evict_ms > 0) {
        z->since_evict = 0;
        ch_users_evict_idle(z->users, z->stream_time_ms - (int64_t)z->idle_evict_ms,
                            (size_t)z->cfg->batch_max_events);
    }
    return emit(z, ev, u, uid, uid_len);
}

static void progress(fz_t *z, const char *what, double frac) {
    double t = now_s();
    if (!z->progress || t - z->last_progress < 0.25) {
        return;
    }
    z->last_progress = t;
    double rate = (double)z->records / fmax(t - z->t0, 1e-9);
    if (frac >= 0) {
        int w = (int)(frac * 30);
        fprintf(stderr, "\rfeaturize: %s [%.*s%*s] %3.0f%% %llu records, %.0f/s ", what, w,
                "##############################", 30 - w, "", frac * 100,
                (unsigned long long)z->records, rate);
    } else {
        fprintf(stderr, "\rfeaturize: %s %llu records, %.0f/s ", what,
                (unsigned long long)z->records, rate);
    }
}

/* Hold a valid record for --order time. */
static int hold(fz_t *z, uint32_t file, long line, int64_t ts, const unsigned char *data,
                size_t len) {
    if (z->n_held == z->cap_held) {
        size_t cap = z->cap_held ? 2 * z->cap_held : 65536;
        held_t *nh = realloc(z->held, cap * sizeof(*nh));
        if (!nh) {
            return -ENOMEM;
        }
        z->held = nh;
        z->cap_held = cap;
    }
    z->held[z->n_held++] = (held_t){ts, file, line, z->arena.len, len};
    return ch_buf_append(&z->arena, data, len);
}

/* Every record of one block (one, unless an Avro block): decoded, checked, then folded
 * (--order file) or held (--order time). @returns 0, -1 (stop). */
static int take(fz_t *z, uint32_t file, const ch_file_rec_t *rec) {
    const unsigned char *p = rec->data;
    size_t left = rec->len;
    for (long k = 0; k < rec->count; k++) {
        char why[512];
        ch_event_view_t ev;
        ch_obs_t obs;
        size_t used = 0;
        long line = rec->line + k;
        z->records++;
        ch_bad_reason_t bad = decode(z, file, p, left, &used, &ev, why, sizeof(why));
        if (bad == CH_BAD_NONE) {
            bad = ch_events_check(z->events, &ev, NAN, &obs, why, sizeof(why));
        }
        if (bad != CH_BAD_NONE) {
            if (reject(z, file, line, bad, why) < 0) {
                return -1;
            }
            if (z->inputs[file].fmt == CH_FILE_AVRO && used == left && k + 1 < rec->count) {
                /* an undecodable Avro record: where the next one starts is unknown */
                z->records += (uint64_t)(rec->count - k - 1);
                snprintf(why, sizeof(why),
                         "the %ld record(s) after an undecodable one in its block cannot be "
                         "located",
                         rec->count - k - 1);
                if (reject(z, file, line + 1, CH_BAD_DECODE, why) < 0) {
                    return -1;
                }
                z->bad[CH_BAD_DECODE] += (uint64_t)(rec->count - k - 2);
                z->bad_total += (uint64_t)(rec->count - k - 2);
                break;
            }
        } else if (z->order == ORDER_FILE) {
            if (fold(z, &ev, &obs) < 0) {
                return -1;
            }
        } else if (hold(z, file, line, ev.ts_ms, p, used) < 0) {
            fprintf(stderr, "cohortd featurize: out of memory holding the input for --order "
                            "time (--order file streams)\n");
            return -1;
        }
        release(z);
        p += used;
        left -= used;
    }
    return 0;
}

static int open_input(fz_t *z, uint32_t file, ch_filein_t **ret) {
    input_t *in = &z->inputs[file];
    char err[1024];
    int r = ch_filein_open(in->path, in->fmt, ret, err, sizeof(err));
    if (r == 0 && in->fmt == CH_FILE_CSV) {
        size_t n = 0;
        const char *const *h = ch_filein_header(*ret, &n);
        r = ch_csv_decoder_new(&z->map, h, n, in->path, &in->csv, err, sizeof(err));
    } else if (r == 0 && in->fmt == CH_FILE_AVRO) {
        const char *schema = ch_filein_schema(*ret);
        if (!z->avro) {
            char reader[CH_CONF_STR + 32];
            ch_events_reader_schema(z->cfg, reader, sizeof(reader));
            r = ch_decoder_new(NULL, reader, CH_FRAMING_CONFLUENT, NULL, &z->map, &z->avro, err,
                               sizeof(err));
        }
        if (r == 0) {
            char why[512];
            r = ch_decoder_add_schema(z->avro, (int32_t)file, schema, strlen(schema), NULL, why,
                                      sizeof(why));
            if (r < 0) {
                snprintf(err, sizeof(err), "%s: the writer schema: %s", in->path, why);
            }
        }
    }
    if (r < 0) {
        fprintf(stderr, "cohortd featurize: %s\n", r == -ENOMEM ? strerror(ENOMEM) : err);
        *ret = ch_filein_close(*ret);
        return -1;
    }
    return 0;
}

/* Read every input: folded as read (--order file) or held. @returns 0, -1. */
static int read_inputs(fz_t *z) {
    for (uint32_t i = 0; i < z->n_inputs; i++) {
        ch_filein_t *f = NULL;
        if (open_input(z, i, &f) < 0) {
            return -1;
        }
        char err[1024], what[64];
        snprintf(what, sizeof(what), "%u/%zu", i + 1, z->n_inputs);
        ch_file_rec_t rec;
        int r;
        while ((r = ch_filein_next(f, &rec, err, sizeof(err))) == 1) {
            if (take(z, i, &rec) < 0) {
                ch_filein_close(f);
                return -1;
            }
            if (z->progress && (z->records & 4095) < (uint64_t)rec.count) {
                progress(z, what, ch_filein_progress(f)); /* a system call: not per record */
            }
        }
        ch_filein_close(f);
        if (r < 0) {
            fprintf(stderr, "cohortd featurize: %s\n", r == -ENOMEM ? strerror(ENOMEM) : err);
            return -1;
        }
    }
    return 0;
}

static int by_time(const void *a, const void *b) {
    const held_t *x = a, *y = b;
    if (x->ts_ms != y->ts_ms) {
        return x->ts_ms < y->ts_ms ? -1 : 1;
    }
    return x->off < y->off ? -1 : x->off > y->off; /* input order */
}

/* --order time: fold the held records by event time. @returns 0, -1. */
static int fold_held(fz_t *z) {
    qsort(z->held, z->n_held, sizeof(*z->held), by_time);
    for (size_t i = 0; i < z->n_held; i++) {
        const held_t *h = &z->held[i];
        char why[512];
        ch_event_view_t ev;
        ch_obs_t obs;
        size_t used;
        ch_bad_reason_t bad = decode(z, h->file, z->arena.data + h->off, h->len, &used, &ev, why,
                                     sizeof(why));
        if (bad == CH_BAD_NONE) {
            bad = ch_events_check(z->events, &ev, NAN, &obs, why, sizeof(why));
        }
        if (bad != CH_BAD_NONE) { /* it was read once already: cannot happen */
            release(z);
            if (reject(z, h->file, h->line, bad, why) < 0) {
                return -1;
            }
            continue;
        }
        if (fold(z, &ev, &obs) < 0) {
            return -1;
        }
        release(z);
        if ((i & 4095) == 0) {
            progress(z, "folding", (double)i / (double)z->n_held);
        }
    }
    return 0;
}

/* --state-out: every user in the table now, as the seed of its input partition: the
 * state a daemon that had consumed these events would hold, reflecting no input offset.
 * Users are bucketed by partition first, so one file is open at a time. @returns 0, -1. */
static int write_seeds(fz_t *z) {
    size_t n = ch_users_count(z->users), cursor = 0, state_len = ch_features_state_len(z->fs);
    size_t *start = calloc((size_t)z->partitions + 1, sizeof(*start));
    ch_user_t **by = malloc((n ? n : 1) * sizeof(*by));
    unsigned char *rec = malloc(ch_staterec_size(state_len));
    ch_snaphdr_t h = {.partitions = z->partitions,
                      .state_len = (uint32_t)state_len,
                      .changelog_from = -1,
                      .epoch_offset = -1};
    char err[1024] = "";
    int r = start && by && rec ? 0 : -ENOMEM;
    if (r == 0 && mkdir(z->state_out, 0750) < 0 && errno != EEXIST) {
        snprintf(err, sizeof(err), "cannot create %s: %s", z->state_out, strerror(errno));
        r = -EIO;
    }
    r = r ? r : ch_staterec_layout(z->fs, z->cfg->features_half_life_ms, &h.layout);
    r = r ? r : ch_seed_identity(z->cfg->input_topic, h.identity);
    ch_user_t *u;
    size_t k = 0;
    while (r == 0 && (u = ch_users_next(z->users, &cursor)) && k < n) {
        start[ch_userrec(z->users, u)->partition + 1]++;
        by[k++] = u;
    }
    for (int32_t i = 0; r == 0 && i < z->partitions; i++) {
        start[i + 1] += start[i];
    }
    size_t *fill = r == 0 ? calloc((size_t)z->partitions, sizeof(*fill)) : NULL;
    ch_user_t **sorted = r == 0 ? malloc((n ? n : 1) * sizeof(*sorted)) : NULL;
    if (r == 0 && (!fill || !sorted)) {
        r = -ENOMEM;
    }
    for (size_t i = 0; r == 0 && i < k; i++) {
        int32_t pt = ch_userrec(z->users, by[i])->partition;
        sorted[start[pt] + fill[pt]++] = by[i];
    }
    for (int32_t pt = 0; r == 0 && pt < z->partitions; pt++) {
        char name[600];
        ch_seed_name(z->cfg->input_topic, pt, name, sizeof(name));
        h.partition = pt;
        ch_snapw_t *w = NULL;
        r = ch_snapw_open(z->state_out, name, &h, &w, err, sizeof(err));
        for (size_t i = start[pt]; r == 0 && i < start[pt + 1]; i++) {
            const ch_user_t *su = sorted[i];
            ch_userrec_t ur = *ch_userrec(z->users, su);
            ur.offset = -1; /* before any record of the topic */
            ch_staterec_encode(h.layout, -1, su, state_len, &ur, rec);
            if (ch_snapw_add(w, ch_users_key(z->users, su), su->key_len, rec, -1) < 0) {
                snprintf(err, sizeof(err), "%s/%s: cannot write", z->state_out, name);
                r = -EIO;
            }
        }
        if (r == 0) {
            r = ch_snapw_commit(w, err, sizeof(err));
            w = NULL;
            z->seed_files++;
            z->seed_users += start[pt + 1] - start[pt];
        }
        ch_snapw_abort(w);
    }
    free(start);
    free(by);
    free(rec);
    free(fill);
    free(sorted);
    if (r < 0) {
        fprintf(stderr, "cohortd featurize: --state-out: %s\n", err[0] ? err : strerror(-r));
        return -1;
    }
    return 0;
}

/* After the last event: the segments' pass over the population, their export, the
 * seeds and the segment model beside them. @returns 0, -1. */
static int finish_history(fz_t *z) {
    if (z->segs && (z->state_out || z->seg_export) && final_pass(z) < 0) {
        return -1;
    }
    if (z->seg_export && write_seg_export(z) < 0) {
        return -1;
    }
    if (!z->state_out) {
        return 0;
    }
    if (write_seeds(z) < 0) {
        return -1;
    }
    if (z->segs) {
        char path[4200], err[1024];
        snprintf(path, sizeof(path), "%s/segments.state", z->state_out);
        if (ch_kmeans_save(ch_segments_model(z->segs), path, err, sizeof(err)) < 0) {
            fprintf(stderr, "cohortd featurize: --state-out: %s\n", err);
            return -1;
        }
    }
    return 0;
}

static void summary(fz_t *z) {
    if (z->progress) {
        fprintf(stderr, "\r%*s\r", 78, "");
    }
    if (z->quiet) {
        return;
    }
    double dt = now_s() - z->t0;
    fprintf(stderr,
            "featurize: %llu records from %zu file(s) -> %llu rows, %zu users, %llu bad; %.2f s "
            "(%.0f records/s)\n",
            (unsigned long long)z->records, z->n_inputs, (unsigned long long)z->rows,
            ch_users_count(z->users), (unsigned long long)z->bad_total, dt,
            (double)z->records / fmax(dt, 1e-9));
    if (z->bad_total) {
        fprintf(stderr, "featurize: bad records (in %s):", z->rejects_path);
        for (int k = 0; k < CH_BAD_N; k++) {
            if (z->bad[k]) {
                fprintf(stderr, " %s %llu", ch_events_bad_name((ch_bad_reason_t)k),
                        (unsigned long long)z->bad[k]);
            }
        }
        fprintf(stderr, "\n");
    }
    if (z->label_ids) {
        size_t unused = 0;
        for (size_t i = 0; i < z->n_labels; i++) {
            unused += !z->labels[i].used;
        }
        fprintf(stderr,
                "featurize: labels: %llu row(s) labelled, %llu without a label%s; %zu label(s) "
                "matched no event\n",
                (unsigned long long)z->labelled, (unsigned long long)z->unlabelled,
                z->labeled_only ? " (dropped: --labeled-only)" : " (label empty)", unused);
    }
    char until[64] = "";
    if (z->until_ms >= 0) {
        time_t secs = (time_t)(z->until_ms / 1000);
        struct tm tm;
        size_t k = gmtime_r(&secs, &tm) ? strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%S", &tm)
                                        : 0;
        snprintf(until + k, sizeof(until) - k, z->until_ms % 1000 ? ".%03dZ" : "Z",
                 (int)(z->until_ms % 1000));
        fprintf(stderr, "featurize: %llu event(s) stamped at or after %s left out (--until)\n",
                (unsigned long long)z->after_until, until);
    }
    if (z->segs) {
        ch_segments_status_t st;
        ch_segments_status(z->segs, &st);
        fprintf(stderr,
                "featurize: segments: %llu pass(es) over the population (the last on %zu users, "
                "inertia per user %.4g)%s\n",
                (unsigned long long)z->seg_passes, st.users,
                st.users ? st.inertia / (double)st.users : 0.0,
                ch_segments_ready(z->segs) ? "" : "; never seeded (segments.warmup not reached)");
    }
    if (z->seed_files) {
        int64_t start_at = -1;
        ch_config_start_at(z->cfg, &start_at);
        fprintf(stderr,
                "featurize: seeds: %llu user(s) in %llu file(s) in %s; start the daemon with "
                "state.dir = %s and input.start_at = %s%s\n",
                (unsigned long long)z->seed_users, (unsigned long long)z->seed_files,
                z->state_out, z->state_out, until,
                start_at == z->until_ms ? " (as the config has it)" : "");
        if (z->segs) {
            fprintf(stderr,
                    "featurize: segments: the model is %s/segments.state; start the daemon with "
                    "segments.state_file = %s/segments.state\n",
                    z->state_out, z->state_out);
        }
    }
    uint64_t cap = ch_users_cap_evictions(z->users);
    if (cap) {
        fprintf(stderr,
                "featurize: warning: %llu user(s) were dropped at state.max_users = %ld (their "
                "later rows start from empty state, as in the daemon)\n",
                (unsigned long long)cap, z->cfg->state_max_users);
    }
}

/* ---------------------------------------------------------------- set-up */

/* model.path set: the champion (and challenger) loaded as the daemon loads them. */
static int setup_scoring(fz_t *z, char *err, size_t errlen) {
    const ch_config_t *cfg = z->cfg;
    size_t d = z->n_feats;
    int r = ch_scorer_init(&z->scorer, cfg, cfg->model_path, "champion", z->names, d, z->batch,
                           err, errlen);
    if (r < 0) {
        return r;
    }
    return ch_scorer_init(&z->challenger, cfg, cfg->model_challenger_path, "challenger", z->names,
                          d, z->batch, err, errlen);
}

/* A user leaves the table (idle, over the cap): its segment loses it, as in the daemon. */
static void on_evicted(void *opaque, const ch_user_t *rec) {
    fz_t *z = opaque;
    ch_segments_moved(z->segs, rec->segment, -1);
}

/* segments.k > 0: the daemon's segmenter, fresh (segments.state_file is the daemon's). */
static int setup_segments(fz_t *z, char *err, size_t errlen) {
    const ch_config_t *cfg = z->cfg;
    if (cfg->segments_sync_topic[0]) {
        snprintf(err, errlen, "segments.sync_topic: featurize segments as one instance does; "
                              "set it empty (--set segments.sync_topic=)");
        return -EINVAL;
    }
    if (!(z->seg_cfg = malloc(sizeof(*z->seg_cfg)))) {
        return -ENOMEM;
    }
    *z->seg_cfg = *cfg; /* a shallow copy, never freed with ch_config_done() */
    z->seg_cfg->segments_state_file[0] = '\0';
    z->seg_clock = ch_now_s();
    size_t k = cfg->segments.k, batch = z->batch;
    z->prev_seg = calloc(batch, sizeof(*z->prev_seg));
    z->prev_gen = calloc(batch, sizeof(*z->prev_gen));
    z->assign = calloc(batch, sizeof(*z->assign));
    z->rassign = calloc(batch, sizeof(*z->rassign));
    z->RX = calloc(batch * z->n_feats, sizeof(float));
    if (!z->prev_seg || !z->prev_gen || !z->assign || !z->rassign || !z->RX ||
        k == 0 /* not called then */) {
        return -ENOMEM;
    }
    int r = ch_segments_new(z->seg_cfg, z->n_feats, batch, &z->segs, err, errlen);
    if (r == 0) {
        ch_users_set_evict_hook(z->users, on_evicted, z);
    }
    return r;
}

/* Rows wait for their batch (scores, segments), batch.max_events at a time. */
static int setup_batch(fz_t *z, char *err, size_t errlen) {
    const ch_config_t *cfg = z->cfg;
    size_t d = z->n_feats;
    z->batch = (size_t)cfg->batch_max_events;
    z->pend = calloc(z->batch, sizeof(*z->pend));
    z->X = calloc(z->batch * d, sizeof(float));
    z->scores = calloc(z->batch, sizeof(float));
    z->scores2 = calloc(z->batch, sizeof(float));
    z->reasons = calloc(d, sizeof(*z->reasons));
    if (!z->pend || !z->X || !z->scores || !z->scores2 || !z->reasons) {
        return -ENOMEM;
    }
    int r = cfg->model_path[0] ? setup_scoring(z, err, errlen) : 0;
    return r < 0 || cfg->segments.k == 0 ? r : setup_segments(z, err, errlen);
}


static int setup(fz_t *z, char *err, size_t errlen) {
    const ch_config_t *cfg = z->cfg;
    int r = ch_config_features(cfg, &z->fs, err, errlen);
    if (r < 0) {
        return r;
    }
    z->n_feats = ch_features_count(z->fs);
    if (!(z->names = calloc(z->n_feats, sizeof(*z->names)))) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < z->n_feats; i++) {
        z->names[i] = ch_features_name(z->fs, i);
    }
    z->n_tags = ch_features_tag_count(z->fs);
    for (size_t t = 0; t < z->n_tags; t++) {
        z->tag_names[t] = ch_features_tag_name(z->fs, t);
    }
    ch_rowout_cols_t cols = {.features = z->names,
                             .n_features = z->n_feats,
                             .segments = cfg->segments.k > 0,
                             .tags = z->tag_names,
                             .n_tags = z->n_tags};
    if ((r = ch_rowout_check(z->format, &cols, err, errlen)) < 0) {
        return r;
    }
    if (!(z->check_cfg = malloc(sizeof(*z->check_cfg)))) {
        return -ENOMEM;
    }
    *z->check_cfg = *cfg; /* a shallow copy, never freed with ch_config_done() */
    z->check_cfg->input_format = CH_FORMAT_JSON;
    if ((r = ch_events_new(z->check_cfg, NULL, z->fs, &z->events, err, errlen)) < 0 ||
        (r = ch_events_mapping(cfg, z->fs, &z->map, err, errlen)) < 0 ||
        (r = ch_json_decoder_new(&z->map, &z->json)) < 0) {
        return r;
    }
    if (cfg->privacy_pseudonymize &&
        (r = ch_pseudonym_new(cfg->privacy_key_file, &z->pseud, err, errlen)) < 0) {
        return r;
    }
    char warning[512];
    z->idle_evict_ms = ch_config_idle_evict_ms(cfg, z->fs, warning, sizeof(warning));
    if (warning[0] && !z->quiet) {
        fprintf(stderr, "cohortd featurize: warning: %s\n", warning);
    }
    size_t extra = z->state_out ? sizeof(ch_userrec_t) : 0;
    if ((r = ch_config_check_state(cfg, z->fs, extra, err, errlen)) < 0) {
        return r;
    }
    r = ch_users_new((size_t)cfg->state_max_users, (size_t)cfg->state_key_max_bytes,
                     ch_features_state_len(z->fs), extra, &z->users);
    if (r < 0) {
        snprintf(err, errlen, "cannot reserve the user table for state.max_users = %ld: %s",
                 cfg->state_max_users, strerror(-r));
        return r;
    }
    z->feats = calloc(z->n_feats, sizeof(double));
    z->x = calloc(z->n_feats, sizeof(float));
    z->stream_time_ms = INT64_MIN;
    if (!z->feats || !z->x) {
        return -ENOMEM;
    }
    return cfg->model_path[0] || cfg->segments.k > 0 ? setup_batch(z, err, errlen) : 0;
}

static void teardown(fz_t *z) {
    for (size_t i = 0; i < z->n_inputs; i++) {
        ch_csv_decoder_free(z->inputs[i].csv);
    }
    free(z->inputs);
    ch_events_free(z->events);
    free(z->check_cfg);
    ch_json_decoder_free(z->json);
    ch_decoder_free(z->avro);
    ch_pseudonym_free(z->pseud);
    ch_users_free(z->users);
    ch_features_free(z->fs);
    ch_keyset_free(z->label_ids);
    free(z->labels);
    free(z->feats);
    free(z->x);
    free(z->held);
    if (z->batch) { /* batches were set up */
        ch_scorer_done(&z->scorer);
        ch_scorer_done(&z->challenger);
    }
    ch_segments_free(z->segs);
    free(z->seg_cfg);
    free(z->prev_seg);
    free(z->prev_gen);
    free(z->assign);
    free(z->rassign);
    free(z->RX);
    free(z->names);
    free(z->pend);
    free(z->X);
    free(z->scores);
    free(z->scores2);
    free(z->reasons);
    ch_backtest_free(z->bt);
    ch_buf_done(&z->ids);
    ch_buf_done(&z->tagbuf);
    ch_buf_done(&z->arena);
    ch_buf_done(&z->line);
    if (z->rejects) {
        fclose(z->rejects);
    }
}

static int parse_args(fz_t *z, int argc, char **argv, ch_config_t *cfg, const char **labels) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"set", required_argument, NULL, 's'},
                                         {"output", required_argument, NULL, 'o'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"input-format", required_argument, NULL, 'I'},
                                         {"order", required_argument, NULL, 'O'},
                                         {"labels", required_argument, NULL, 'L'},
                                         {"labeled-only", no_argument, NULL, 'l'},
                                         {"skip-bad", no_argument, NULL, 'B'},
                                         {"rejects", required_argument, NULL, 'R'},
                                         {"report", no_argument, NULL, 'r'},
                                         {"report-json", required_argument, NULL, 'J'},
                                         {"state-out", required_argument, NULL, 'S'},
                                         {"partitions", required_argument, NULL, 'P'},
                                         {"until", required_argument, NULL, 'U'},
                                         {"segments-export", required_argument, NULL, 'E'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *config_path = NULL, *input_format = NULL, *until = NULL;
    char err[1024] = "";
    int r = 0, opt;
    bool loaded = false;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:s:o:f:qh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            if ((r = ch_config_load(cfg, config_path, err, sizeof(err))) < 0) {
                fprintf(stderr, "cohortd featurize: %s\n", err);
                return 2;
            }
            loaded = true;
            break;
        case 's':
            if (!loaded) {
                fprintf(stderr, "cohortd featurize: --set comes after --config\n");
                return 2;
            }
            if ((r = ch_config_set(cfg, optarg, err, sizeof(err))) < 0) {
                fprintf(stderr, "cohortd featurize: %s\n", err);
                return 2;
            }
            break;
        case 'o':
            z->out_path = optarg;
            break;
        case 'f': {
            ch_file_format_t ff;
            if (ch_file_format_parse(optarg, &ff) < 0) {
                fprintf(stderr,
                        "cohortd featurize: --format takes csv, jsonl or avro, not '%s'\n",
                        optarg);
                return 2;
            }
            z->format = (ch_rowout_format_t)ff; /* the same order */
            z->format_set = true;
            break;
        }
        case 'I':
            input_format = optarg;
            break;
        case 'O':
            if (strcmp(optarg, "time") != 0 && strcmp(optarg, "file") != 0) {
                fprintf(stderr, "cohortd featurize: --order takes time or file, not '%s'\n",
                        optarg);
                return 2;
            }
            z->order = strcmp(optarg, "time") == 0 ? ORDER_TIME : ORDER_FILE;
            break;
        case 'L':
            *labels = optarg;
            break;
        case 'l':
            z->labeled_only = true;
            break;
        case 'B':
            z->skip_bad = true;
            break;
        case 'R':
            snprintf(z->rejects_path, sizeof(z->rejects_path), "%s", optarg);
            break;
        case 'r':
            z->report = true;
            break;
        case 'J':
            z->report_json = optarg;
            break;
        case 'S':
            z->state_out = optarg;
            break;
        case 'P': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 100000) {
                fprintf(stderr, "cohortd featurize: --partitions takes 1 to 100000, not '%s'\n",
                        optarg);
                return 2;
            }
            z->partitions = (int32_t)v;
            break;
        }
        case 'U':
            until = optarg;
            break;
        case 'E':
            z->seg_export = optarg;
            break;
        case 'q':
            z->quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!config_path) {
        fprintf(stderr, "cohortd featurize: --config FILE is required (see --help)\n");
        return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "cohortd featurize: no input files (see --help)\n");
        return 2;
    }
    if (until && ch_config_parse_time(until, &z->until_ms) < 0) {
        fprintf(stderr, "cohortd featurize: --until takes ISO-8601 (2026-11-01T00:00:00Z) or "
                        "milliseconds since 1970, not '%s'\n",
                until);
        return 2;
    }
    if (!until && ch_config_start_at(cfg, &z->until_ms) < 0) {
        z->until_ms = -1; /* reported by the configuration's own check */
    }
    if (z->seg_export && cfg->segments.k == 0) {
        fprintf(stderr, "cohortd featurize: --segments-export needs segments (segments.k > 0)\n");
        return 2;
    }
    if (z->state_out && (z->partitions == 0 || z->until_ms < 0)) {
        fprintf(stderr, "cohortd featurize: --state-out needs --partitions N (the input "
                        "topic's) and --until T or input.start_at (where the daemon's input "
                        "begins)\n");
        return 2;
    }
    if (!z->state_out && z->partitions) {
        fprintf(stderr, "cohortd featurize: --partitions goes with --state-out\n");
        return 2;
    }
    if (z->labeled_only && !*labels) {
        fprintf(stderr, "cohortd featurize: --labeled-only needs --labels FILE\n");
        return 2;
    }
    if ((z->report || z->report_json) && (!*labels || !cfg->model_path[0])) {
        fprintf(stderr, "cohortd featurize: --report%s needs --labels FILE and a model "
                        "(model.path)\n",
                z->report_json ? "-json" : "");
        return 2;
    }
    z->n_inputs = (size_t)(argc - optind);
    if (!(z->inputs = calloc(z->n_inputs, sizeof(*z->inputs)))) {
        return 1;
    }
    for (size_t i = 0; i < z->n_inputs; i++) {
        input_t *in = &z->inputs[i];
        in->path = argv[optind + (int)i];
        if (input_format ? ch_file_format_parse(input_format, &in->fmt) < 0
                         : ch_file_format_of(in->path, &in->fmt) < 0) {
            fprintf(stderr,
                    input_format ? "cohortd featurize: --input-format takes csv, jsonl or avro, "
                                   "not '%s'\n"
                                 : "cohortd featurize: %s: name the format with --input-format "
                                   "(csv, jsonl or avro): the name does not end in .csv, .jsonl, "
                                   ".ndjson, .json or .avro (optionally .gz)\n",
                    input_format ? input_format : in->path);
            return 2;
        }
    }
    ch_file_format_t of;
    if (!z->format_set && z->out_path && ch_file_format_of(z->out_path, &of) == 0) {
        z->format = (ch_rowout_format_t)of;
    }
    if (!z->rejects_path[0]) {
        snprintf(z->rejects_path, sizeof(z->rejects_path), "%s%s",
                 z->out_path ? z->out_path : "featurize-rejects.csv",
                 z->out_path ? ".rejects.csv" : "");
    }
    if (z->state_out && !z->out_path) {
        z->out_path = "/dev/null"; /* the seeds are the output */
    }
    return -1; /* go on */
}

int ch_featurize_main(int argc, char **argv) {
    fz_t z = {.order = ORDER_TIME, .format = CH_ROWOUT_CSV, .until_ms = -1};
    ch_config_t cfg;
    ch_config_init(&cfg);
    const char *labels = NULL;
    int code = parse_args(&z, argc, argv, &cfg, &labels);
    char err[1024] = "";
    if (code < 0) {
        z.cfg = &cfg;
        ch_log_set_level(z.quiet ? CH_LOG_WARNING : cfg.log_level);
        int r = ch_config_validate_offline(&cfg, err, sizeof(err));
        r = r < 0 ? r : setup(&z, err, sizeof(err));
        r = r < 0 || !labels ? r : load_labels(&z, labels, err, sizeof(err));
        if (r == 0 && (z.report || z.report_json)) {
            r = ch_backtest_new(cfg.risk_threshold, z.challenger.model != NULL, &z.bt);
        }
        if (r < 0) {
            fprintf(stderr, "cohortd featurize: %s\n", err[0] ? err : strerror(-r));
            code = 2;
        }
    }
    if (code < 0) {
        z.out = z.out_path ? fopen(z.out_path, "w") : stdout;
        if (!z.out) {
            fprintf(stderr, "cohortd featurize: %s: %s\n", z.out_path, strerror(errno));
            code = 1;
        }
    }
    if (code < 0) {
        if (!z.out_path) {
            z.out_path = "(stdout)";
        }
        z.progress = !z.quiet && isatty(STDERR_FILENO);
        z.t0 = now_s();
        ch_rowout_cols_t cols = {.features = z.names,
                                 .n_features = z.n_feats,
                                 .segments = z.segs != NULL,
                                 .tags = z.tag_names,
                                 .n_tags = z.n_tags,
                                 .scores = z.scorer.model != NULL,
                                 .challenger = z.challenger.model != NULL,
                                 .labels = z.label_ids != NULL,
                                 .label_times = z.label_times};
        if (ch_rowout_new(z.format, z.out, &cols, &z.rows_out) < 0) {
            fprintf(stderr, "cohortd featurize: %s: cannot write\n", z.out_path);
            code = 1;
        } else {
            code = read_inputs(&z) < 0 || (z.order == ORDER_TIME && fold_held(&z) < 0) ||
                           flush(&z) < 0 || finish_history(&z) < 0
                       ? 1
                       : 0;
        }
        if (ch_rowout_close(z.rows_out) < 0 && code == 0) {
            fprintf(stderr, "cohortd featurize: %s: cannot write\n", z.out_path);
            code = 1;
        }
        z.rows_out = NULL;
        if (fflush(z.out) != 0 || (z.out != stdout && fclose(z.out) != 0)) {
            fprintf(stderr, "cohortd featurize: %s: %s\n", z.out_path, strerror(errno));
            code = 1;
        }
        summary(&z);
        if (code == 0 && z.bt &&
            ch_backtest_report(z.bt, ch_scorer_version(&z.scorer),
                               ch_scorer_version(&z.challenger), z.report,
                               z.report_json) < 0) {
            fprintf(stderr, "cohortd featurize: %s: cannot write the report\n",
                    z.report_json ? z.report_json : "(stderr)");
            code = 1;
        }
    }
    teardown(&z);
    ch_config_done(&cfg);
    return code;
}
