/*
 * test_kafka_settings.c - cohortd's librdkafka defaults come first, the user's settings
 * after them, and each client gets only the settings it understands.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ch/kafka_settings.h"

/* The value librdkafka ends up with: the last pair for key wins. */
static const char *effective(const char **k, const char **v, size_t n, const char *key) {
    const char *r = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(k[i], key) == 0) {
            r = v[i];
        }
    }
    return r;
}

static void test_defaults_then_user_settings_per_client(void **state) {
    (void)state;
    const ch_kafka_setting_t user[] = {
        {"bootstrap.servers", "127.0.0.1:9092", CH_KAFKA_BOTH},
        {"group.id", "fraud", CH_KAFKA_BOTH}, /* consumer-only property */
        {"linger.ms", "20", CH_KAFKA_BOTH},   /* producer-only property */
        {"fetch.wait.max.ms", "5", CH_KAFKA_CONSUMER},
        {"acks", "all", CH_KAFKA_PRODUCER},
        {"client.id", "c1", CH_KAFKA_CONSUMER}, /* both understand it; one asked */
    };
    const char **k = NULL, **v = NULL;
    size_t n = 0;
    assert_int_equal(ch_kafka_settings_build(CH_KAFKA_CONSUMER, user, 6, &k, &v, &n), 0);
    /* cohortd's delivery discipline, then the user's overrides */
    assert_string_equal(k[0], "group.id");
    assert_string_equal(v[0], "cohortd");
    assert_string_equal(effective(k, v, n, "group.id"), "fraud");
    assert_string_equal(effective(k, v, n, "enable.auto.offset.store"), "false");
    assert_string_equal(effective(k, v, n, "partition.assignment.strategy"), "cooperative-sticky");
    assert_string_equal(effective(k, v, n, "bootstrap.servers"), "127.0.0.1:9092");
    assert_string_equal(effective(k, v, n, "fetch.wait.max.ms"), "5");
    assert_string_equal(effective(k, v, n, "client.id"), "c1");
    assert_null(effective(k, v, n, "linger.ms")); /* the producer's, not given here */
    assert_null(effective(k, v, n, "acks"));
    assert_null(effective(k, v, n, "enable.idempotence"));
    free(k);
    free(v);

    assert_int_equal(ch_kafka_settings_build(CH_KAFKA_PRODUCER, user, 6, &k, &v, &n), 0);
    assert_string_equal(effective(k, v, n, "enable.idempotence"), "true");
    assert_string_equal(effective(k, v, n, "partitioner"), "murmur2_random");
    assert_string_equal(effective(k, v, n, "linger.ms"), "20");
    assert_string_equal(effective(k, v, n, "acks"), "all");
    assert_string_equal(effective(k, v, n, "bootstrap.servers"), "127.0.0.1:9092");
    assert_null(effective(k, v, n, "group.id"));
    assert_null(effective(k, v, n, "fetch.wait.max.ms"));
    assert_null(effective(k, v, n, "client.id"));
    free(k);
    free(v);

    assert_int_equal(ch_kafka_settings_build(CH_KAFKA_BOTH, user, 6, &k, &v, &n), -EINVAL);
}

static void test_default_lookup(void **state) {
    (void)state;
    assert_string_equal(ch_kafka_settings_default(CH_KAFKA_CONSUMER, "auto.offset.reset"),
                        "earliest");
    assert_string_equal(ch_kafka_settings_default(CH_KAFKA_PRODUCER, "linger.ms"), "5");
    assert_null(ch_kafka_settings_default(CH_KAFKA_PRODUCER, "group.id"));
    assert_null(ch_kafka_settings_default(CH_KAFKA_BOTH, "group.id"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_then_user_settings_per_client),
        cmocka_unit_test(test_default_lookup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
