/*
 * seed.h - seed snapshots: the state of every user as history left it, written by
 * `cohortd featurize --state-out` and loaded by a daemon whose group has no committed
 * offset for the partition yet (README "Bootstrapping state from history").
 *
 * A seed is a snapshot file (snapfile.h) named <input topic>-<partition>.seed in
 * state.dir, whose identity is a digest of the input topic alone (history has no
 * cluster and no changelog yet), with no changelog offset and no epoch: its records
 * reflect input offset -1, before any record of the topic.
 */
#ifndef CH_SEED_H
#define CH_SEED_H

#include <stddef.h>
#include <stdint.h>

/** @brief The seed file's name (no directory) of an input partition. */
void ch_seed_name(const char *input_topic, int32_t partition, char *buf, size_t len);

/**
 * @brief The identity a seed of input_topic carries: SHA-256 of "cohortd-seed" and the
 *        topic name (OpenSSL's libcrypto).
 * @returns 0, -EIO (the digest failed).
 */
int ch_seed_identity(const char *input_topic, unsigned char out[32]);

/**
 * @brief The partition a record keyed key lands on among partitions, by the Kafka
 *        default partitioner (murmur2, as the Java client and cohort-produce place
 *        keys; librdkafka's own function).
 */
int32_t ch_seed_partition(const void *key, size_t key_len, int32_t partitions);

#endif
