/*
 * ch/kafka_settings.h - the librdkafka settings of cohortd's clients: its defaults,
 * then the user's settings that apply to each client.
 *
 * One place, so that every program that runs cohortd's clients (cohortd itself,
 * and the benchmark's pass-through ceiling that mirrors it) runs them alike.
 */
#ifndef CH_KAFKA_SETTINGS_H
#define CH_KAFKA_SETTINGS_H

#include <stddef.h>

typedef enum ch_kafka_scope {
    CH_KAFKA_BOTH,     /* kafka.<prop>: both clients (see ch_kafka_settings_build()) */
    CH_KAFKA_CONSUMER, /* kafka.consumer.<prop> */
    CH_KAFKA_PRODUCER, /* kafka.producer.<prop> */
} ch_kafka_scope_t;

/* One user setting: a librdkafka property, its value and which client it is for. */
typedef struct ch_kafka_setting {
    const char *key;
    const char *value;
    ch_kafka_scope_t scope;
} ch_kafka_setting_t;

/**
 * @brief The settings of one client, in order (later ones win in librdkafka):
 *        cohortd's defaults for that client, then each user setting for it. A
 *        CH_KAFKA_BOTH setting that only the other client understands (e.g.
 *        group.id for the producer) goes to that client only, so neither warns
 *        about the other's settings.
 * @param client CH_KAFKA_CONSUMER or CH_KAFKA_PRODUCER.
 * @param ret_keys, ret_values arrays of *ret_n borrowed strings (from the defaults
 *        and from user); the caller frees the two arrays with free().
 * @returns 0, -EINVAL (client is CH_KAFKA_BOTH), -ENOMEM.
 */
int ch_kafka_settings_build(ch_kafka_scope_t client, const ch_kafka_setting_t *user, size_t n_user,
                            const char ***ret_keys, const char ***ret_values, size_t *ret_n);

/**
 * @brief cohortd's default for a property of one client (before the user's).
 * @returns the value, or NULL when cohortd sets none.
 */
const char *ch_kafka_settings_default(ch_kafka_scope_t client, const char *key);

#endif
