/*
 * segments.h - the daemon's side of the online segments: the segmenter built from the
 * config, seeded from the user table, its saved state, and users per segment.
 */
#ifndef CH_SEGMENTS_H
#define CH_SEGMENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"
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
 * @brief Segment a batch of n rows (raw features at stream_ms) with the live centroids
 *        (segment -1 until seeded).
 * @param prev, prev_gen the rows' users' current segments (for hysteresis).
 */
void ch_segments_update(ch_segments_t *s, const float *x, size_t n, int64_t stream_ms,
                        const int32_t *prev, const uint32_t *prev_gen, ch_kmeans_assign_t *ret);

/* Where the pass over the population is. */
typedef enum {
    CH_SEG_IDLE,      /* no pass */
    CH_SEG_BUSY,      /* (step result) more to do */
    CH_SEG_FITTED,    /* (step result) new centroids are live: reassign every user */
    CH_SEG_GATHERING, /* (phase) reading every user's vector */
    CH_SEG_FITTING    /* (phase) Lloyd and k-means++ on them */
} ch_seg_step_t;

/**
 * @brief One slice (about budget_s of work) of the pass over the population: it starts
 *        when warm-up is over and the table holds segments.k users (a seeding), every
 *        segments.refresh, or when requested (a refresh); it reads every user's vector
 *        at the stream time of its start, fits them (ch_kmeans_fit_t) and adopts the
 *        result.
 * @returns CH_SEG_IDLE (nothing to do), CH_SEG_BUSY (call again), CH_SEG_FITTED (the
 *          new centroids are live: the caller now reassigns every user with
 *          ch_segments_assign() and then calls ch_segments_reassigned()).
 */
ch_seg_step_t ch_segments_step(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs,
                               int64_t stream_ms, double now_s, double budget_s);

/**
 * @brief In the batch of n rows that ends the warm-up, on a table of at most 100,000
 *        users: the whole seeding pass at once (CH_SEG_FITTED of ch_segments_step).
 * @returns true if it seeded: the caller reassigns every user as after CH_SEG_FITTED.
 */
bool ch_segments_seed_inline(ch_segments_t *s, ch_users_t *users, const ch_features_t *fs, size_t n,
                             int64_t stream_ms);

/** @brief Ask for a refresh at the next step (joins one already running).
 *  @returns 0, -EAGAIN (not seeded yet). */
int ch_segments_request_refresh(ch_segments_t *s);

/*
 * segments.sync_topic (segsync.c): the segmenter only follows versions applied with
 * ch_segments_apply(); the instance that coordinates runs its passes on a copy of the
 * applied model (ch_segments_master()) and ch_segments_step()'s CH_SEG_FITTED means that
 * copy is fitted on this instance's users (the Lloyd steps on everyone's follow).
 */

/** @brief Whether this instance coordinates (its passes run); on losing the role a
 *  pass in progress is dropped at the next step. */
void ch_segments_coordinate(ch_segments_t *s, bool on);

/** @brief Whether a pass is due (no pass running; at least segments.k users here; the
 *  warm-up over and not seeded yet, or segments.refresh since the last pass or one
 *  requested). */
bool ch_segments_due(const ch_segments_t *s, const ch_users_t *users, int64_t stream_ms,
                     double now_s);

/**
 * @brief Shared, coordinating: start a fit of a copy of the live model (the
 *        coordinator's copy) on n raw rows (a sample of every instance's users, read at
 *        stream_ms), whose transform statistics become the rows' (ch_kmeans_restat);
 *        ch_segments_step() then fits it in slices and returns CH_SEG_FITTED once the
 *        copy holds the result.
 * @returns 0, -EINVAL (a pass is running, or n < segments.k), -ENOMEM.
 */
int ch_segments_fit_rows(ch_segments_t *s, const float *x, size_t n, int64_t stream_ms,
                         double now_s);

/** @brief Drop the pass in progress, if any (a shared round given up). */
void ch_segments_drop(ch_segments_t *s);

/** @brief The coordinator's fitted copy (NULL before its first pass). */
ch_kmeans_t *ch_segments_master(ch_segments_t *s);

/** @brief Make a shared version (ch_kmeans_write() text) the live model; the next
 *  refresh is due segments.refresh after now_s. @returns 0, -EINVAL (errbuf), -ENOMEM. */
int ch_segments_apply(ch_segments_t *s, const char *buf, size_t len, uint64_t version, double now_s,
                      char *errbuf, size_t errlen);

/** @brief The shared version applied (0: none). */
uint64_t ch_segments_version(const ch_segments_t *s);

/** @brief A shared fit is over: users and inertia of its last Lloyd step, over every
 *  instance (for ch_segments_status()). */
void ch_segments_shared_fit(ch_segments_t *s, size_t users, double inertia);

/** @brief The segmenter (read only). */
const ch_kmeans_t *ch_segments_model(const ch_segments_t *s);

/** @brief Nearest live centroid of n <= max(batch, 1024) raw rows (no hysteresis). */
void ch_segments_assign(ch_segments_t *s, const float *x, size_t n, ch_kmeans_assign_t *ret);

/** @brief The caller's reassignment after CH_SEG_FITTED is over: users seen, moved. */
void ch_segments_reassigned(ch_segments_t *s, uint64_t users, uint64_t moved, double now_s);

/* The last pass, and totals. */
typedef struct ch_segments_status {
    int phase;            /* CH_SEG_IDLE, CH_SEG_GATHERING or CH_SEG_FITTING */
    bool asked;           /* a requested refresh waits for the next step */
    uint64_t passes;      /* passes completed (seeding and refreshes, reassignment done) */
    uint64_t moved_total; /* users moved by those reassignments */
    /* the last fit */
    size_t users;       /* rows it was fitted on */
    double inertia;     /* of the adopted centroids on them, in the transformed space */
    bool restarted;     /* a k-means++ fit replaced Lloyd from the live centroids */
    size_t renewed;     /* segments whose generation it bumped */
    double fit_seconds; /* from its start to adoption (wall clock) */
    double seconds;     /* from its start to the end of the reassignment */
    uint64_t moved;     /* users whose segment the reassignment changed */
} ch_segments_status_t;

void ch_segments_status(const ch_segments_t *s, ch_segments_status_t *ret);

/** @brief An event of a user in segment seg (-1: none): its item and category (NULL:
 *  none) count towards the segment's trending values. */
void ch_segments_observe(ch_segments_t *s, int32_t seg, const char *item, size_t item_len,
                         const char *cat, size_t cat_len, int64_t ts_ms);

/** @brief After a reassignment: per segment, the sums (k x dim) of its members' raw
 *  vectors and their counts. */
void ch_segments_set_means(ch_segments_t *s, const double *sums, const uint64_t *counts);

/** @brief Whether segment j's generation differs from the one last published. */
bool ch_segments_unpublished(const ch_segments_t *s, size_t j);

/**
 * @brief Segment j's update at now_ms (views into s, valid until the next call; names:
 *        the feature names), and mark it published. feature_means are the mean raw
 *        vectors of its members at the last reassignment, or the centroid mapped back to
 *        feature units if the segment got a new generation since.
 */
void ch_segments_record(ch_segments_t *s, size_t j, int64_t now_ms, const char *const *names,
                        ch_segment_rec_t *ret);

/** @brief A user moved from segment `from` (-1 none) to `to` (-1 none). */
void ch_segments_moved(ch_segments_t *s, int32_t from, int32_t to);

/** @brief Segment j: users in it, centroid weight, generation. @returns 0, -ENOENT. */
int ch_segments_info(const ch_segments_t *s, size_t j, uint64_t *ret_users, double *ret_weight,
                     uint32_t *ret_generation);

/** @brief Whether seeding has run; dead segments re-seeded; refreshes on the population,
 *  and of them the restarts from k-means++ in ret_restarts (may be NULL). */
bool ch_segments_ready(const ch_segments_t *s);
uint64_t ch_segments_reseeds(const ch_segments_t *s);
/** @brief A copy of the live model (its transform and centroids as they are now), for a
 *  reader that must not see later updates. @returns 0, -ENOMEM, -EINVAL. */
int ch_segments_copy_model(const ch_segments_t *s, ch_kmeans_t **ret_km);

/** @brief Vectors the segments refused: a value not finite (never in a centroid). */
uint64_t ch_segments_refused(const ch_segments_t *s);
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
