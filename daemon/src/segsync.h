/*
 * segsync.h - one set of segments across the instances of a consumer group
 * (segments.sync_topic; README "Delivery guarantees", README "One set of segments across
 * instances").
 */
#ifndef CH_SEGSYNC_H
#define CH_SEGSYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ch_pipeline ch_pipeline_t;
typedef struct ch_segsync ch_segsync_t;

/**
 * @brief The side channel on segments.sync_topic (a producer and a reader of its
 *        partition 0 from the beginning) for the pipeline's segments.
 * @returns 0, -EINVAL (errbuf says why), -EIO, -ENOMEM.
 */
int ch_segsync_new(ch_pipeline_t *p, ch_segsync_t **ret_sync, char *errbuf, size_t errlen);

/** @brief Free (outstanding records get up to a second). Accepts NULL. @returns NULL. */
ch_segsync_t *ch_segsync_free(ch_segsync_t *y);

/** @brief A non-blocking fd that turns readable when the topic has records. */
int ch_segsync_fd(const ch_segsync_t *y);

/**
 * @brief One budget of the protocol, from the loop's background work: read the topic,
 *        take or give up the coordinator's role, work on the round in progress (this
 *        instance's statistics; as coordinator its own fit, the folding, the next step
 *        or the version).
 * @returns true if there is more to do at once.
 */
bool ch_segsync_work(ch_pipeline_t *p);

/**
 * @brief Apply the newest version read, if newer than the live one.
 * @returns true if applied: the caller reassigns every user.
 */
bool ch_segsync_apply(ch_pipeline_t *p);

/** @brief Ask for a refresh (POST /segments/refresh): the coordinator's own, or a
 *  request record it acts on. @returns 0, -EAGAIN (no version yet), -EIO. */
int ch_segsync_ask(ch_pipeline_t *p);

/** @brief Whether this instance is the coordinator. */
bool ch_segsync_coordinating(const ch_segsync_t *y);

typedef struct ch_segsync_status {
    bool coordinating;
    uint64_t version;        /* applied (0: none yet) */
    bool round_open;         /* a round is in progress in the topic */
    int iteration;           /* its Lloyd step */
    uint64_t rounds_done;    /* versions this instance published as coordinator */
    uint64_t rounds_dropped; /* rounds it gave up (a partition's statistics missing) */
    uint64_t stats_sent;     /* Lloyd steps this instance contributed to */
} ch_segsync_status_t;

void ch_segsync_status(const ch_segsync_t *y, ch_segsync_status_t *ret);

#endif
