/*
 * kafka_settings.c - cohortd's librdkafka defaults and which client a setting is for.
 *
 * Design notes
 * - The defaults carry cohortd's delivery discipline: offsets are stored by the
 *   caller only after outputs are acknowledged (enable.auto.offset.store=false)
 *   and committed by librdkafka's auto-commit and at close; the producer is
 *   idempotent and partitions like the Java client.
 * - The scope tables list properties that only one client understands, so a
 *   kafka.* (both) key among them goes to that client only.
 */
#include "ch/kafka_settings.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char *const consumer_defaults[][2] = {
    {"group.id", "cohortd"},
    {"auto.offset.reset", "earliest"},
    {"enable.auto.commit", "true"},
    {"auto.commit.interval.ms", "1000"},
    {"enable.auto.offset.store", "false"},
    {"partition.assignment.strategy", "cooperative-sticky"},
    {"enable.partition.eof", "false"},
    {NULL, NULL},
};
static const char *const producer_defaults[][2] = {
    {"enable.idempotence", "true"},
    {"partitioner", "murmur2_random"},
    {"linger.ms", "5"},
    {NULL, NULL},
};

static const char *const consumer_only[] = {"group.id",
                                            "group.instance.id",
                                            "partition.assignment.strategy",
                                            "session.timeout.ms",
                                            "heartbeat.interval.ms",
                                            "group.protocol.type",
                                            "coordinator.query.interval.ms",
                                            "max.poll.interval.ms",
                                            "enable.auto.commit",
                                            "auto.commit.interval.ms",
                                            "enable.auto.offset.store",
                                            "queued.min.messages",
                                            "queued.max.messages.kbytes",
                                            "fetch.wait.max.ms",
                                            "fetch.message.max.bytes",
                                            "fetch.max.bytes",
                                            "fetch.min.bytes",
                                            "fetch.error.backoff.ms",
                                            "auto.offset.reset",
                                            "isolation.level",
                                            "check.crcs",
                                            "enable.partition.eof",
                                            NULL};
static const char *const producer_only[] = {"transactional.id",
                                            "transaction.timeout.ms",
                                            "enable.idempotence",
                                            "enable.gapless.guarantee",
                                            "queue.buffering.max.messages",
                                            "queue.buffering.max.kbytes",
                                            "queue.buffering.max.ms",
                                            "linger.ms",
                                            "message.send.max.retries",
                                            "retries",
                                            "retry.backoff.ms",
                                            "compression.codec",
                                            "compression.type",
                                            "compression.level",
                                            "batch.num.messages",
                                            "batch.size",
                                            "delivery.report.only.error",
                                            "acks",
                                            "request.required.acks",
                                            "request.timeout.ms",
                                            "message.timeout.ms",
                                            "delivery.timeout.ms",
                                            "partitioner",
                                            "sticky.partitioning.linger.ms",
                                            NULL};

static bool in_list(const char *const *list, const char *key) {
    for (; *list; list++) {
        if (strcmp(*list, key) == 0) {
            return true;
        }
    }
    return false;
}

static const char *const (*defaults_of(ch_kafka_scope_t client))[2] {
    return client == CH_KAFKA_CONSUMER ? consumer_defaults : producer_defaults;
}

const char *ch_kafka_settings_default(ch_kafka_scope_t client, const char *key) {
    if (client == CH_KAFKA_BOTH) {
        return NULL;
    }
    for (const char *const(*d)[2] = defaults_of(client); (*d)[0]; d++) {
        if (strcmp((*d)[0], key) == 0) {
            return (*d)[1];
        }
    }
    return NULL;
}

int ch_kafka_settings_build(ch_kafka_scope_t client, const ch_kafka_setting_t *user, size_t n_user,
                            const char ***ret_keys, const char ***ret_values, size_t *ret_n) {
    if (client == CH_KAFKA_BOTH) {
        return -EINVAL;
    }
    const char *const(*dflt)[2] = defaults_of(client);
    size_t n_dflt = 0;
    while (dflt[n_dflt][0]) {
        n_dflt++;
    }
    size_t cap = n_dflt + n_user;
    const char **k = calloc(cap, sizeof(*k));
    const char **v = calloc(cap, sizeof(*v));
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < n_dflt; i++, n++) {
        k[n] = dflt[i][0];
        v[n] = dflt[i][1];
    }
    const char *const *other_only = client == CH_KAFKA_CONSUMER ? producer_only : consumer_only;
    for (size_t i = 0; i < n_user; i++) {
        if ((user[i].scope == CH_KAFKA_BOTH && !in_list(other_only, user[i].key)) ||
            user[i].scope == client) {
            k[n] = user[i].key;
            v[n++] = user[i].value;
        }
    }
    *ret_keys = k;
    *ret_values = v;
    *ret_n = n;
    return 0;
}
