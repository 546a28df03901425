/*
 * log.h - the daemon's logger: one line per event of interest, level-filtered,
 * journald-friendly ("<N>" priority prefixes when stderr goes to the journal).
 * Only daemon/ logs.
 */
#ifndef CH_LOG_H
#define CH_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum ch_log_level {
    CH_LOG_ERR = 3,
    CH_LOG_WARNING = 4,
    CH_LOG_NOTICE = 5,
    CH_LOG_INFO = 6,
    CH_LOG_DEBUG = 7,
} ch_log_level_t;

/** @brief Set the least severe level that is written (default CH_LOG_INFO). */
void ch_log_set_level(int level);

/** @brief Write one line at a syslog level. Thread-safe (one write per line). */
void ch_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A token bucket: at most `per_min` lines a minute; the rest are counted. */
typedef struct ch_ratelimit {
    double tokens;
    double per_min;
    double last_s;
    uint64_t suppressed;
} ch_ratelimit_t;

/** @brief Initialise a limiter. */
void ch_ratelimit_init(ch_ratelimit_t *rl, double per_min);

/**
 * @brief Whether to log now. When it returns true after suppressing lines,
 *        *ret_suppressed says how many were dropped since the last line.
 */
bool ch_ratelimit_allow(ch_ratelimit_t *rl, uint64_t *ret_suppressed);

/** @brief Seconds on the monotonic clock. */
double ch_now_s(void);

/** @brief Milliseconds since the Unix epoch (wall clock, as event timestamps). */
double ch_wall_ms(void);

#endif
