/*
 * ch/align.h - hand consumed records over across partitions in timestamp order, so
 * that no partition runs more than max_skew ahead of one that still has records.
 *
 * A consumer reading a backlog (a replay, a restart after downtime) gets each
 * partition in large prefetched chunks: one partition can be processed days of
 * event time ahead of another, while live traffic arrives interleaved. Anything
 * that keeps a clock across partitions (segment decay on stream time) then sees a
 * different stream in a replay than live. The aligner buffers records per partition
 * and releases a record only when its timestamp is within max_skew of the floor:
 * the smallest of every partition's oldest buffered timestamp, or, for a partition
 * with nothing buffered that still has records on the broker (and delivered or was
 * resumed within idle_s), the latest timestamp it delivered. A partition buffering
 * pause_len records that reach beyond twice the skew is paused (it need not be
 * fetched now) and resumed when half of them are left or its buffer's end is
 * within the skew again. This is
 * the alignment Kafka Streams (by record timestamp) and Flink (watermark alignment)
 * do; an idle partition stops holding the others back, as in both.
 *
 * Records without a timestamp (ts < 0) never wait. If the buffer holds max_held
 * records and none is releasable, the partition with the oldest record is released
 * anyway (counted), so the aligner can never stall the consumer.
 *
 * @locality Not thread-safe. Items are opaque; the aligner never frees one except
 *           through the drop function given to revoke/free.
 */
#ifndef CH_ALIGN_H
#define CH_ALIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ch_align ch_align_t;

typedef struct ch_align_opts {
    int64_t max_skew_ms; /* > 0; 0: no alignment, only holds (see ch_align_hold) */
    double idle_s;       /* > 0: a partition silent this long stops holding the floor */
    size_t max_held;     /* > 0: beyond this many buffered records, release anyway */
    size_t pause_len;    /* >= 2: pause a partition ahead of the floor with this many buffered */
} ch_align_opts_t;

typedef struct ch_align_stats {
    size_t held;     /* records buffered */
    size_t paused;   /* partitions paused by the aligner */
    uint64_t forced; /* releases past the skew because max_held was reached */
    uint64_t pauses; /* partitions paused so far */
} ch_align_stats_t;

/* A pause (pause = true) or resume the caller must apply. */
typedef struct ch_align_change {
    int32_t partition;
    bool pause;
} ch_align_change_t;

/** @brief Create. @returns 0, -EINVAL, -ENOMEM. */
int ch_align_new(const ch_align_opts_t *o, ch_align_t **ret_align);

/** @brief Free, passing every buffered item to drop (may be NULL). @returns NULL. */
ch_align_t *ch_align_free(ch_align_t *a, void (*drop)(void *item));

/**
 * @brief A partition was assigned; start_offset is where its consumption begins
 *        (-1 unknown). It holds the floor from now until idle_s without records.
 * @returns 0, -EINVAL (partition < 0), -ENOMEM.
 */
int ch_align_assign(ch_align_t *a, int32_t partition, int64_t start_offset, double now_s);

/**
 * @brief A partition was revoked: its buffered items go to drop, its state is
 *        forgotten. @returns whether the aligner had paused it (the caller resumes it).
 */
bool ch_align_revoke(ch_align_t *a, int32_t partition, void (*drop)(void *item));

/**
 * @brief Buffer a consumed record (a partition not assigned is assigned here).
 * @returns 0, -EINVAL, -ENOMEM (the item was not taken).
 */
int ch_align_push(ch_align_t *a, int32_t partition, int64_t offset, int64_t ts_ms, void *item,
                  double now_s);

/**
 * @brief Put records a pop released back at the head of their partition, in front of
 *        what it buffers (items[0] first; their offsets precede the buffered ones).
 * @returns 0, -EINVAL, -ENOMEM (nothing was taken).
 */
int ch_align_unpop(ch_align_t *a, int32_t partition, void *const *items, const int64_t *offsets,
                   const int64_t *ts_ms, size_t n);

/**
 * @brief Tell which partitions still have records on the broker:
 *        high_watermark(opaque, partition) returns the partition's end offset, or -1
 *        if unknown (counts as having records). Call before ch_align_pop().
 */
void ch_align_refresh(ch_align_t *a, int64_t (*high_watermark)(void *opaque, int32_t partition),
                      void *opaque);

/**
 * @brief Release up to max items, each partition's in offset order.
 * @returns the number written to out.
 */
size_t ch_align_pop(ch_align_t *a, void **out, size_t max, double now_s);

/**
 * @brief Pauses and resumes due after the last pop, at most cap; the aligner
 *        considers them applied. @returns the number written.
 */
size_t ch_align_changes(ch_align_t *a, ch_align_change_t *out, size_t cap);

/** @brief Hold a partition (e.g. while its state is restored): its records are buffered
 *  but none is released (not even when the buffer is full), it holds nobody back, and
 *  with pause_len buffered it is paused until released. */
void ch_align_hold(ch_align_t *a, int32_t partition, bool hold, double now_s);

/** @brief Whether the aligner has the partition paused. */
bool ch_align_paused(const ch_align_t *a, int32_t partition);

/** @brief The next offset to hand over for a partition: its oldest buffered record,
 *  else -1 (nothing buffered). */
int64_t ch_align_next(const ch_align_t *a, int32_t partition);

void ch_align_stats(const ch_align_t *a, ch_align_stats_t *ret);

#endif
