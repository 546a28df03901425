/*
 * tool_common.h - shared plumbing of cohort-gen and cohort-replay: a producer of
 * Avro-encoded events with pacing, progress lines and a final delivery check.
 */
#ifndef CH_TOOL_COMMON_H
#define CH_TOOL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
#include "tool_args.h"

typedef struct tool_out {
    const char *name; /* for messages: "cohort-gen" */
    const char *topic;
    ch_framing_t framing;
    int32_t schema_id;
    double rate; /* events/s cap; 0 = none */
    struct ch_producer *producer;
    ch_buf_t buf;
    uint64_t sent, delivered, failed;
    double start_s, last_progress_s;
    uint64_t last_progress_sent;
    bool quiet;
    uint64_t total; /* events to send, when known (> 0: progress as a bar with a percentage) */
} tool_out_t;

/** @brief Connect a producer. @returns 0 or -errno (message printed). */
int tool_out_open(tool_out_t *o, const char *name, const char *brokers, const char *topic,
                  const char *framing, int32_t schema_id, double rate, bool quiet);

/** @brief Encode and send one event (paced, progress printed), its record timestamp the
 *  event time, as in a topic written live. @returns 0 or -errno. */
int tool_out_event(tool_out_t *o, const ch_event_view_t *ev);

/** @brief Send raw bytes (for injected bad input) with record timestamp ts_ms (0: now).
 *  @returns 0 or -errno. */
int tool_out_raw(tool_out_t *o, const char *key, size_t key_len, const void *value, size_t len,
                 int64_t ts_ms);

/** @brief Flush, print a summary. @returns 0 if every message was delivered, else -EIO. */
int tool_out_close(tool_out_t *o);

/** @brief Set by SIGINT/SIGTERM handlers that tool_out_open() installs. */
extern volatile int tool_stop;

/** @brief Seconds on the monotonic clock. */
double tool_now_s(void);

#endif
