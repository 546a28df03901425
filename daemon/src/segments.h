/*
 * segments.h - the daemon's side of the online segments: the segmenter built from the
 * config, seeded from the user table, its saved state, and users per segment.
 */
#ifndef CH_SEGMENTS_H
#define CH_SEGMENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/features.h"
#include "ch/kmeans.h"
#include "ch/users.h"
#include "config.h"

typedef struct ch_segments ch_segments_t;

/**
 * @brief The segmenter of segments.* for dim features and batches of max_batch rows,
 *        restored from segments.state_file when there is one (a file that does not
 *        load is logged and ignored).
 * @returns 0, -EINVAL (errbuf says which option), -ENOMEM.
 */
int ch_segments_new(const ch_config_t *cfg, size_t dim, size_t max_batch,
                    ch_segments_t **ret_segments, char *errbuf, size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_segments_t *ch_segments_free(ch_segments_t *s);

/**
 * @brief Segment a batch of n rows (raw features at stream_ms). Once warm-up has seen
 *        segments.warmup events and the table holds at least k users, the segmenter is
 *        first seeded on the current vectors of (up to segments.warmup of) the users;
 *        after that they refresh the centroids every segments.refresh of stream time.
 * @param prev, prev_gen the rows' users' current segments (for hysteresis).
 */
void ch_segments_update(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs,
                        const float *x, size_t n, int64_t stream_ms, const int32_t *prev,
                        const uint32_t *prev_gen, ch_kmeans_assign_t *ret);

/** @brief A user moved from segment `from` (-1 none) to `to` (-1 none). */
void ch_segments_moved(ch_segments_t *s, int32_t from, int32_t to);

/** @brief Segment j: users in it, centroid weight, generation. @returns 0, -ENOENT. */
int ch_segments_info(const ch_segments_t *s, size_t j, uint64_t *ret_users, double *ret_weight,
                     uint32_t *ret_generation);

/** @brief Whether seeding has run; dead segments re-seeded; refreshes on the population,
 *  and of them the restarts from k-means++ in ret_restarts (may be NULL). */
bool ch_segments_ready(const ch_segments_t *s);
uint64_t ch_segments_reseeds(const ch_segments_t *s);
uint64_t ch_segments_refreshes(const ch_segments_t *s, uint64_t *ret_restarts);

/** @brief Save to segments.state_file (if set); failures are logged. @returns 0, -EIO. */
int ch_segments_save(const ch_segments_t *s);

/**
 * @brief The segmenter's invariants, and the users per segment against the table
 *        (the counts equal the users whose record names each segment).
 * @returns true if they hold; otherwise false with the first violation in why.
 */
bool ch_segments_check(const ch_segments_t *s, const ch_users_t *users, char *why, size_t len);

#endif
