/*
 * log.c - level-filtered line logger.
 *
 * Design notes
 * - Under systemd (JOURNAL_STREAM names our stderr) lines carry "<N>" priority
 *   prefixes and no timestamp (journald adds both); otherwise they carry an
 *   ISO-8601 UTC timestamp and the level name.
 * - Each line is formatted into a buffer and written with one write(2), so
 *   lines from librdkafka's threads never interleave mid-line.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int g_level = CH_LOG_INFO;
static int g_journal = -1; /* -1 unknown, 0 no, 1 yes */

void ch_log_set_level(int level) {
    g_level = level;
}

static bool to_journal(void) {
    if (g_journal < 0) {
        const char *js = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long dev = 0, ino = 0;
        g_journal = js && sscanf(js, "%lu:%lu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                    st.st_dev == dev && st.st_ino == ino;
    }
    return g_journal == 1;
}

void ch_log(int level, const char *fmt, ...) {
    if (level > g_level) {
        return;
    }
    static const char *const names[] = {"emerg", "alert", "crit",  "error",
                                        "warn",  "notice", "info", "debug"};
    char line[2048];
    size_t n;
    if (to_journal()) {
        n = (size_t)snprintf(line, sizeof(line), "<%d>", level);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %s ", ts.tv_nsec / 1000000,
                              names[level & 7]);
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : n + (size_t)m;
    if (n > sizeof(line) - 2) {
        n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

double ch_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double ch_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

void ch_ratelimit_init(ch_ratelimit_t *rl, double per_min) {
    rl->tokens = per_min;
    rl->per_min = per_min;
    rl->last_s = ch_now_s();
    rl->suppressed = 0;
}

bool ch_ratelimit_allow(ch_ratelimit_t *rl, uint64_t *ret_suppressed) {
    double now = ch_now_s();
    rl->tokens += (now - rl->last_s) * rl->per_min / 60.0;
    if (rl->tokens > rl->per_min) {
        rl->tokens = rl->per_min;
    }
    rl->last_s = now;
    if (rl->tokens < 1.0) {
        rl->suppressed++;
        return false;
    }
    rl->tokens -= 1.0;
    *ret_suppressed = rl->suppressed;
    rl->suppressed = 0;
    return true;
}
