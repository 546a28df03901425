/*
 * clients.c - Kafka client construction and client-level errors.
 *
 * Design notes
 * - Settings come from stream/'s ch_kafka_settings_build(): cohortd's defaults
 *   (the offset discipline the delivery tracker relies on), then the user's kafka.*
 *   keys in file order. The benchmark's pass-through uses the same builder.
 * - librdkafka retries transient errors by itself: they are counted and logged
 *   (rate-limited); a fatal one stops the daemon, and a restart reprocesses from
 *   the last commit.
 */
#include "clients.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void kafka_log(void *opaque, int level, const char *fac, const char *msg) {
    (void)opaque;
    /* A connection failure is also reported to the error callback (counted and
     * rate-limited there): its FAIL log line would say the same thing twice. */
    if (strcmp(fac, "FAIL") == 0) {
        level = CH_LOG_DEBUG;
    }
    ch_log(level < CH_LOG_ERR ? CH_LOG_ERR : level, "librdkafka %s: %s", fac, msg);
}

void ch_clients_error(ch_clients_t *c, bool fatal, const char *what, const char *reason) {
    c->errors++;
    uint64_t dropped = 0;
    if (fatal || ch_ratelimit_allow(&c->rl, &dropped)) {
        ch_log(fatal ? CH_LOG_ERR : CH_LOG_WARNING, "%s: %s%s", what, reason,
               dropped ? " (similar errors were not logged, see cohortd_kafka_errors_total)" : "");
    }
    if (fatal) {
        c->fatal = true;
    }
}

static void kafka_error(void *opaque, bool fatal, const char *reason) {
    ch_clients_error(opaque, fatal, "kafka", reason);
}

#define TXN_INIT_TIMEOUT_MS 30000

/* The last value of a kafka.* key given by the user, or NULL. */
static const char *user_value(const ch_config_t *cfg, const char *key) {
    const char *v = NULL;
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        if (strcmp(cfg->kafka[i].key, key) == 0) {
            v = cfg->kafka[i].value;
        }
    }
    return v;
}

void ch_clients_transactional_id(const ch_config_t *cfg, char *buf, size_t len) {
    const char *id = user_value(cfg, "transactional.id");
    if (id) {
        snprintf(buf, len, "%s", id);
        return;
    }
    const char *group = user_value(cfg, "group.id");
    if (!group) {
        group = ch_kafka_settings_default(CH_KAFKA_CONSUMER, "group.id");
    }
    char host[256] = "localhost";
    if (gethostname(host, sizeof(host)) < 0) {
        snprintf(host, sizeof(host), "localhost");
    }
    host[sizeof(host) - 1] = '\0';
    snprintf(buf, len, "cohortd-%s-%s", group ? group : "cohortd", host);
}

/* One client's settings as librdkafka pairs: with exactly_once, the producer is
 * transactional and the consumer commits only through transactions. */
static int settings_for(const ch_config_t *cfg, ch_kafka_scope_t client, bool plain,
                        ch_clients_t *c, ch_kafka_conf_t *ret_kc) {
    ch_kafka_setting_t *user = calloc(cfg->n_kafka + 2, sizeof(*user));
    if (!user) {
        return -ENOMEM;
    }
    size_t n_user = 0;
    if (plain && client == CH_KAFKA_CONSUMER) {
        /* a side channel's records are few and awaited: do not let an idle fetch hold
         * them for librdkafka's default 500 ms (a kafka.* setting still wins) */
        user[n_user++] = (ch_kafka_setting_t){"fetch.wait.max.ms", "50", CH_KAFKA_CONSUMER};
    }
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        user[n_user++] =
            (ch_kafka_setting_t){cfg->kafka[i].key, cfg->kafka[i].value, cfg->kafka[i].scope};
    }
    bool eos = cfg->processing_guarantee == CH_EXACTLY_ONCE && !plain;
    if (eos && client == CH_KAFKA_PRODUCER) {
        ch_clients_transactional_id(cfg, c->txn_id, sizeof(c->txn_id));
        user[n_user++] = (ch_kafka_setting_t){"transactional.id", c->txn_id, CH_KAFKA_PRODUCER};
    } else if (eos && client == CH_KAFKA_CONSUMER) {
        user[n_user++] = (ch_kafka_setting_t){"enable.auto.commit", "false", CH_KAFKA_CONSUMER};
    }
    const char **keys = NULL, **vals = NULL;
    size_t n = 0;
    int r = ch_kafka_settings_build(client, user, n_user, &keys, &vals, &n);
    free(user);
    if (r < 0) {
        return r;
    }
    *ret_kc = (ch_kafka_conf_t){keys, vals, n, kafka_log, kafka_error, c};
    return 0;
}

static void settings_done(ch_kafka_conf_t *kc) {
    free((void *)kc->keys);
    free((void *)kc->values);
}

int ch_clients_init(ch_clients_t *c, const ch_config_t *cfg, ch_delivery_fn *on_delivery,
                    void *delivery_opaque, const ch_rebalance_hooks_t *hooks, char *errbuf,
                    size_t errlen) {
    *c = (ch_clients_t){0};
    ch_ratelimit_init(&c->rl, 10);
    ch_kafka_conf_t kc;
    int r = settings_for(cfg, CH_KAFKA_PRODUCER, false, c, &kc);
    if (r < 0) {
        return r;
    }
    r = ch_producer_new(&kc, on_delivery, delivery_opaque, &c->producer, errbuf, errlen);
    settings_done(&kc);
    if (r < 0) {
        return r;
    }
    if (cfg->processing_guarantee == CH_EXACTLY_ONCE) {
        char why[512];
        r = ch_producer_txn_init(c->producer, TXN_INIT_TIMEOUT_MS, why, sizeof(why));
        if (r < 0) {
            snprintf(errbuf, errlen, "exactly_once: transactional.id %s: %s", c->txn_id, why);
            return -EIO;
        }
    }
    if ((r = settings_for(cfg, CH_KAFKA_CONSUMER, false, c, &kc)) < 0) {
        return r;
    }
    r = ch_consumer_new(&kc, cfg->input_topic, hooks, &c->consumer, errbuf, errlen);
    settings_done(&kc);
    int64_t start_at = -1;
    if (r == 0 && ch_config_start_at(cfg, &start_at) == 0 && start_at >= 0) {
        ch_consumer_start_at(c->consumer, start_at); /* before the first drain's assignment */
    }
    bool align = cfg->input_max_skew_ms > 0 && isfinite(cfg->input_max_skew_ms);
    if (r == 0 && (align || cfg->state_changelog[0] || cfg->registry_url[0])) {
        /* without alignment, the aligner still holds partitions while they restore or
         * wait for a writer schema */
        r = ch_consumer_align(c->consumer, align ? (int64_t)cfg->input_max_skew_ms : 0,
                              cfg->input_align_idle_ms / 1000.0);
        if (r < 0) {
            snprintf(errbuf, errlen, "input.max_skew: %s", strerror(-r));
        }
    }
    return r;
}

int ch_clients_reader(ch_clients_t *c, const ch_config_t *cfg, const char *topic, char *errbuf,
                      size_t errlen) {
    ch_kafka_conf_t kc;
    int r = settings_for(cfg, CH_KAFKA_CONSUMER, false, c, &kc);
    if (r < 0) {
        return r;
    }
    r = ch_reader_new(&kc, topic, &c->reader, errbuf, errlen);
    settings_done(&kc);
    return r;
}

int ch_clients_side(ch_clients_t *c, const ch_config_t *cfg, const char *topic,
                    ch_delivery_fn *on_delivery, void *delivery_opaque,
                    ch_producer_t **ret_producer, ch_reader_t **ret_reader, char *errbuf,
                    size_t errlen) {
    ch_kafka_conf_t kc;
    int r = settings_for(cfg, CH_KAFKA_PRODUCER, true, c, &kc);
    if (r < 0) {
        return r;
    }
    r = ch_producer_new(&kc, on_delivery, delivery_opaque, ret_producer, errbuf, errlen);
    settings_done(&kc);
    if (r < 0 || (r = settings_for(cfg, CH_KAFKA_CONSUMER, true, c, &kc)) < 0) {
        return r;
    }
    r = ch_reader_new(&kc, topic, ret_reader, errbuf, errlen);
    settings_done(&kc);
    if (r < 0) {
        *ret_producer = ch_producer_free(*ret_producer);
    }
    return r;
}

void ch_clients_done(ch_clients_t *c) {
    c->reader = ch_reader_free(c->reader);
    c->consumer = ch_consumer_free(c->consumer);
    c->producer = ch_producer_free(c->producer);
}
