/*
 * ch/tracker.h - which input offsets may be committed: batches in flight until every
 * output they produced is acknowledged.
 *
 * A consumer that produces outputs must not commit an input offset before the
 * outputs of that input (and of every input before it) are durable. The tracker
 * keeps a ring of up to max_batches batches. Each batch records, per input
 * partition, the highest offset + 1 it consumed, and counts the outputs it sent
 * that await acknowledgement. The oldest batches that are sealed (no more outputs
 * will be added), fully acknowledged and not failed release their offsets, in
 * order; acknowledgements may arrive in any order across batches and partitions.
 * A failed output freezes the ring: neither that batch nor any later one ever
 * releases an offset, so a restart reprocesses from the last commit.
 *
 * @locality Not thread-safe: call from the thread that serves delivery reports.
 *           Batch handles stay valid until the batch is released; they are
 *           aligned to 8 bytes, so a caller may keep a tag in the low 3 bits of a
 *           handle it passes as a message opaque.
 */
#ifndef CH_TRACKER_H
#define CH_TRACKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ch_tracker ch_tracker_t;
typedef struct ch_tracked ch_tracked_t; /* one batch in flight */

/**
 * @brief Create a tracker for at most max_batches batches in flight (1..65536).
 * @returns 0, -EINVAL, -ENOMEM.
 */
int ch_tracker_new(size_t max_batches, ch_tracker_t **ret_tracker);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_tracker_t *ch_tracker_free(ch_tracker_t *t);

/** @brief Batches opened and not yet released (0..max_batches). */
size_t ch_tracker_inflight(const ch_tracker_t *t);

/** @brief Whether a batch can be opened (fewer than max_batches in flight). */
bool ch_tracker_has_room(const ch_tracker_t *t);

/**
 * @brief Open the next batch (empty, not sealed).
 * @returns the batch, or NULL when max_batches are in flight.
 */
ch_tracked_t *ch_tracker_open(ch_tracker_t *t);

/** @brief The ring slot of a batch, 0..max_batches-1: an index for per-batch data
 *  the caller keeps beside the tracker. */
size_t ch_tracker_slot(const ch_tracker_t *t, const ch_tracked_t *b);

/**
 * @brief Record that b consumed offset of partition.
 * @returns 0, -ENOMEM (the batch keeps what it had; the caller should fail it).
 * @remark Allocates only when a batch sees more partitions than ever before.
 */
int ch_tracker_consumed(ch_tracked_t *b, int32_t partition, int64_t offset);

/** @brief One more output of b awaits acknowledgement. */
void ch_tracker_sent(ch_tracked_t *b);

/**
 * @brief An output of b was acknowledged (ok) or failed for good (!ok: b fails).
 * @returns true if b is now complete (sealed, nothing outstanding, not failed).
 */
bool ch_tracker_acked(ch_tracked_t *b, bool ok);

/** @brief Fail b without an output (e.g. an output could not even be enqueued). */
void ch_tracker_fail(ch_tracked_t *b);

/**
 * @brief No more outputs will be added to b.
 * @returns true if b is complete already (every output acknowledged, or none).
 */
bool ch_tracker_seal(ch_tracked_t *b);

/**
 * @brief Move from's offsets into into (per partition, the higher), leaving from with
 *        none: from still waits for its outputs, and its offsets are released with into's.
 * @returns 0, -ENOMEM (from is unchanged, into may hold some of its offsets; the caller
 *          should fail both).
 * @remark Release is in order, so merging every batch of a run into its newest one makes
 *         the run's offsets land at once, after every output of the run is acknowledged,
 *         never one batch's offsets while a later batch of the run is outstanding.
 */
int ch_tracker_merge(ch_tracked_t *from, ch_tracked_t *into);

/** @brief Whether some batch in flight has failed (nothing after it is released). */
bool ch_tracker_frozen(const ch_tracker_t *t);

/* Receives a released offset: partition processed up to next_offset (exclusive). */
typedef void(ch_tracker_store_fn)(void *opaque, int32_t partition, int64_t next_offset);

/**
 * @brief Release the oldest complete batches, in order, calling store for each
 *        partition they consumed; stops at the first batch that is not complete.
 * @returns the number of batches released.
 */
size_t ch_tracker_advance(ch_tracker_t *t, ch_tracker_store_fn *store, void *opaque);

/**
 * @brief Forget partition in every batch in flight (it was revoked or lost): its
 *        offsets are no longer ours to release. The batches themselves stay until
 *        their outputs are acknowledged.
 * @returns the number of batches that had consumed from it.
 */
size_t ch_tracker_revoke(ch_tracker_t *t, int32_t partition);

#endif
