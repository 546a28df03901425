/*
 * ch/scorestore.h - the scores cohortd gave recent events, by event id, for joining
 * labels that arrive later (live evaluation).
 *
 * Bounded two ways: entries older than the TTL (in event time: behind the newest
 * score's time) leave, and when full the oldest leaves. Events are kept by a keyed
 * 64-bit SipHash of their id (random key per process), 24 bytes an entry plus 8 to
 * 16 bytes of index (two to four 4-byte slots an entry); two ids share a hash with
 * probability 2^-64 per pair.
 *
 * @locality Not thread-safe.
 */
#ifndef CH_SCORESTORE_H
#define CH_SCORESTORE_H

#include <stddef.h>
#include <stdint.h>

#define CH_SCORESTORE_MODELS 2 /* champion, challenger */

typedef struct ch_scorestore ch_scorestore_t;

typedef struct ch_scorestore_stats {
    size_t held;
    uint64_t put, taken, expired, evicted, replaced;
} ch_scorestore_stats_t;

/** @returns 0, -EINVAL (capacity 0 or above 2^30), -ENOMEM. */
int ch_scorestore_new(size_t capacity, int64_t ttl_ms, ch_scorestore_t **ret);

ch_scorestore_t *ch_scorestore_free(ch_scorestore_t *s);

/**
 * @brief Keep an event's scores (a second score of the same id replaces the first).
 * @param scores CH_SCORESTORE_MODELS scores (NaN: that model did not score).
 */
void ch_scorestore_put(ch_scorestore_t *s, const void *id, size_t len, int64_t ts_ms,
                       const float *scores);

/**
 * @brief Take an event's scores out of the store.
 * @returns 0 (ret_scores, ret_ts_ms set), -ENOENT (never held, taken, or gone).
 */
int ch_scorestore_take(ch_scorestore_t *s, const void *id, size_t len, float *ret_scores,
                       int64_t *ret_ts_ms);

/** @brief The newest score's event time (INT64_MIN before the first). */
int64_t ch_scorestore_newest(const ch_scorestore_t *s);

void ch_scorestore_stats(const ch_scorestore_t *s, ch_scorestore_stats_t *ret);

#endif
