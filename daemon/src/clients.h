/*
 * clients.h - cohortd's two Kafka clients, built from the config, and their errors.
 */
#ifndef CH_CLIENTS_H
#define CH_CLIENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/kafka.h"
#include "config.h"
#include "log.h"

typedef struct ch_clients {
    ch_producer_t *producer;
    ch_consumer_t *consumer;
    ch_reader_t *reader; /* state.changelog: restores partitions' users; else NULL */
    uint64_t errors;   /* client-level errors seen (callbacks and error events) */
    bool fatal;        /* a fatal error: the clients cannot continue */
    ch_ratelimit_t rl; /* their log lines */
    char txn_id[512];  /* processing.guarantee = exactly_once: the transactional.id */
} ch_clients_t;

/** @brief The transactional.id exactly_once uses: kafka.producer.transactional.id, or
 *  cohortd-<group.id>-<host name>. */
void ch_clients_transactional_id(const ch_config_t *cfg, char *buf, size_t len);

/**
 * @brief Build the producer, then the consumer subscribed to input.topic, each with
 *        cohortd's librdkafka defaults and the kafka.* keys meant for it.
 * @param on_delivery, delivery_opaque the producer's delivery reports.
 * @param hooks the consumer's rebalance hooks.
 * @remark c must not move while the clients live (their callbacks point at it).
 * @returns 0, -EINVAL (a setting was refused: errbuf names it), -EIO, -ENOMEM.
 */
int ch_clients_init(ch_clients_t *c, const ch_config_t *cfg, ch_delivery_fn *on_delivery,
                    void *delivery_opaque, const ch_rebalance_hooks_t *hooks, char *errbuf,
                    size_t errlen);

/**
 * @brief Build the reader of topic (consumer settings) into c->reader.
 * @returns 0, -EINVAL, -EIO, -ENOMEM.
 */
int ch_clients_reader(ch_clients_t *c, const ch_config_t *cfg, const char *topic, char *errbuf,
                      size_t errlen);

/**
 * @brief A side channel on topic: a producer that is never transactional (idempotent,
 *        whatever processing.guarantee) and a reader, both with the kafka.* keys meant
 *        for them; the caller frees them.
 * @returns 0, -EINVAL, -EIO, -ENOMEM.
 */
int ch_clients_side(ch_clients_t *c, const ch_config_t *cfg, const char *topic,
                    ch_delivery_fn *on_delivery, void *delivery_opaque,
                    ch_producer_t **ret_producer, ch_reader_t **ret_reader, char *errbuf,
                    size_t errlen);

/** @brief Free the clients (the consumer closes if it was not closed). */
void ch_clients_done(ch_clients_t *c);

/**
 * @brief Count a client error and log it (rate-limited unless fatal); a fatal one
 *        marks the clients unusable. what names the source ("kafka consumer").
 */
void ch_clients_error(ch_clients_t *c, bool fatal, const char *what, const char *reason);

#endif
