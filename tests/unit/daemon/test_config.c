/* Config tests: defaults, file:line errors, suggestions, overrides, secrets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ch/features.h"
#include "config.h"

static char *write_conf(const char *text) {
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/ch-conf-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_defaults_and_paths(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char *path = write_conf("kafka.bootstrap.servers = b:9092\nfeature.n = count\n");
    char err[512] = "";
    assert_int_equal(ch_config_load(&c, path, err, sizeof(err)), 0);
    assert_string_equal(c.input_topic, "events");
    assert_int_equal(c.batch_max_events, 1000);
    assert_true(c.features_half_life_ms == 3600000.0);
    assert_string_equal(c.schema_dir, "/tmp/schemas"); /* relative to the file's directory */
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    unlink(path);
    ch_config_done(&c);
}

static void test_errors_name_file_and_line(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char *path = write_conf("# comment\n\nbatch.max_evnts = 5\n");
    char err[512] = "", want[1024];
    assert_int_equal(ch_config_load(&c, path, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want), "%s:3: unknown key 'batch.max_evnts' (did you mean "
                                 "'batch.max_events'?)", path);
    assert_string_equal(err, want);
    unlink(path);
    ch_config_done(&c);

    ch_config_init(&c);
    path = write_conf("batch.max_events = 0\n");
    assert_int_equal(ch_config_load(&c, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, ":1: batch.max_events: expected an integer in 1..65536"));
    unlink(path);
    ch_config_done(&c);

    ch_config_init(&c);
    path = write_conf("emit.policy = sometimes\n");
    assert_int_equal(ch_config_load(&c, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "expected one of every, change"));
    unlink(path);
    ch_config_done(&c);

    ch_config_init(&c);
    path = write_conf("no equals sign\n");
    assert_int_equal(ch_config_load(&c, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, ":1: expected 'key = value'"));
    unlink(path);
    ch_config_done(&c);
}

static void test_overrides_and_validation(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_int_equal(ch_config_set(&c, "feature.n=count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "kafka.bootstrap.servers is required"));
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=a:1", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=b:2", err, sizeof(err)), 0);
    assert_string_equal(ch_config_kafka_get(&c, "bootstrap.servers", CH_KAFKA_CONSUMER), "b:2");
    assert_int_equal(ch_config_set(&c, "emit.heartbeat=90s", err, sizeof(err)), 0);
    assert_true(c.emit_heartbeat_ms == 90000.0);
    assert_int_equal(ch_config_set(&c, "log.level=debug", err, sizeof(err)), 0);
    assert_int_equal(c.log_level, 7);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.enable.auto.offset.store=true", err, sizeof(err)),
                     0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "must stay false"));
    assert_int_equal(ch_config_set(&c, "novalue", err, sizeof(err)), -EINVAL);
    ch_config_done(&c);
}

static void test_guarantee_keys(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_int_equal(ch_config_set(&c, "feature.n=count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=a:1", err, sizeof(err)), 0);
    assert_int_equal(c.processing_guarantee, CH_AT_LEAST_ONCE);
    assert_int_equal(ch_config_set(&c, "processing.guarantee=exactly_once", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "exactly_once needs state.changelog"));
    assert_int_equal(ch_config_set(&c, "state.changelog=cl", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.producer.transactional.id=t1", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "processing.guarantee=at_least_once", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "transactional.id is set but processing.guarantee"));
    assert_int_equal(ch_config_set(&c, "processing.guarantee=once", err, sizeof(err)), -EINVAL);
    ch_config_done(&c);
}

static void test_scoring_and_segment_keys(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_true(c.risk_threshold == 0.5);
    assert_int_equal(c.segments.k, 16);
    assert_int_equal(c.segments.warmup, 10000);
    assert_true(c.segments.log1p);
    assert_true(c.segments.refresh_ms == 3600e3); /* population refresh: hourly */
    assert_false(c.segments_refresh_stream);      /* by the wall clock */
    assert_int_equal(ch_config_set(&c, "segments.refresh_clock=stream", err, sizeof(err)), 0);
    assert_true(c.segments_refresh_stream);
    assert_int_equal(ch_config_set(&c, "segments.refresh_clock=event", err, sizeof(err)), -EINVAL);
    assert_int_equal(c.segments.lloyd_iters, 10); /* no key: the segmenter's default */
    assert_string_equal(c.model_path, ""); /* no model unless configured */
    assert_int_equal(ch_config_set(&c, "risk.threshold=0.125", err, sizeof(err)), 0);
    assert_true(c.risk_threshold == 0.125);
    assert_int_equal(ch_config_set(&c, "risk.threshold=1.5", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "risk.threshold: expected a number in 0..1, got '1.5'"));
    assert_int_equal(ch_config_set(&c, "risk.threshold=nan", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_config_set(&c, "segments.hysteresis=0.2x", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_config_set(&c, "segments.transform=none", err, sizeof(err)), 0);
    assert_false(c.segments.log1p);
    /* the key table writes the K-Means options directly, whatever their C type */
    assert_int_equal(ch_config_set(&c, "segments.seed=123456789", err, sizeof(err)), 0);
    assert_true(c.segments.seed == 123456789u);
    assert_int_equal(ch_config_set(&c, "segments.k=1024", err, sizeof(err)), 0);
    assert_int_equal(c.segments.k, 1024);
    assert_int_equal(ch_config_set(&c, "segments.k=1025", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_config_set(&c, "segments.refresh=-1h", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_config_set(&c, "segments.refresh=6h", err, sizeof(err)), 0);
    assert_true(c.segments.refresh_ms == 6 * 3600e3);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=b:1", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "feature.n = count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "segments.k=4", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "risk.emit=change", err, sizeof(err)), 0);
    assert_int_equal(c.risk_emit, CH_EMIT_CHANGE);
    assert_int_equal(ch_config_set(&c, "segment.k=4", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "did you mean 'segments.k'"));
    assert_int_equal(ch_config_set(&c, "feature.n=count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=a:1", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "segments.k=64", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "segments.warmup=10", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "segments.warmup (10) must be at least segments.k (64)"));
    assert_int_equal(ch_config_set(&c, "segments.k=0", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0); /* segments off */
    ch_config_done(&c);
}

static void test_operations_keys(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_string_equal(c.http_listen, "127.0.0.1:9180"); /* loopback only by default */
    assert_int_equal(c.http_max_connections, 64);
    assert_int_equal(c.output_format, CH_FORMAT_AVRO);
    assert_int_equal(ch_config_set(&c, "feature.n=count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=a:1", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "output.format=json", err, sizeof(err)), 0);
    assert_int_equal(c.output_format, CH_FORMAT_JSON);
    assert_int_equal(ch_config_set(&c, "output.format=xml", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "output.format: expected one of avro, json, got 'xml'"));
    const char *good[] = {"off", "0.0.0.0:9180", "[::1]:0", "localhost:65535"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char set[64];
        snprintf(set, sizeof(set), "http.listen=%s", good[i]);
        assert_int_equal(ch_config_set(&c, set, err, sizeof(err)), 0);
        assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    }
    const char *bad[] = {"9180", ":9180", "host:", "host:http", "host:70000", "host:-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char set[64];
        snprintf(set, sizeof(set), "http.listen=%s", bad[i]);
        assert_int_equal(ch_config_set(&c, set, err, sizeof(err)), 0);
        assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "http.listen: expected HOST:PORT"));
    }
    assert_int_equal(ch_config_set(&c, "http.max_connections=0", err, sizeof(err)), -EINVAL);
    ch_config_done(&c);
}

/* state.idle_evict: auto follows the longest half-life; a shorter value warns. */
static void test_idle_evict(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "", warning[512];
    assert_true(isnan(c.state_idle_evict_ms)); /* auto by default */
    assert_int_equal(ch_config_set(&c, "feature.a=count half_life=1h", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "feature.b=sum(amount) half_life=7d", err, sizeof(err)), 0);
    ch_features_t *fs = NULL;
    assert_int_equal(ch_config_features(&c, &fs, err, sizeof(err)), 0);
    assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 20 * 7 * 86400000.0);
    assert_string_equal(warning, "");
    assert_int_equal(ch_config_set(&c, "state.idle_evict=30d", err, sizeof(err)), 0);
    assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 30 * 86400000.0);
    assert_string_equal(warning, ""); /* longer than every half-life */
    assert_int_equal(ch_config_set(&c, "state.idle_evict=2d", err, sizeof(err)), 0);
    assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 2 * 86400000.0);
    assert_non_null(strstr(warning, "state.idle_evict = 2d is shorter than the longest feature "
                                    "half-life (7d)"));
    assert_int_equal(ch_config_set(&c, "state.idle_evict=0", err, sizeof(err)), 0);
    assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 0); /* never */
    assert_string_equal(warning, "");
    assert_int_equal(ch_config_set(&c, "state.idle_evict=later", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "or auto, got 'later'"));
    ch_features_free(fs);
    /* a feature that does not decay: auto never evicts */
    assert_int_equal(ch_config_set(&c, "state.idle_evict=auto", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "feature.d=count half_life=inf", err, sizeof(err)), 0);
    assert_int_equal(ch_config_features(&c, &fs, err, sizeof(err)), 0);
    assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 0);
    ch_features_free(fs);
    ch_config_done(&c);
    /* since_last, since_prev remember a time for ever: auto never evicts, a set value
     * says what it costs */
    const char *timeless[] = {"feature.c=since_last type=purchase",
                              "feature.c=since_prev type=purchase"};
    for (size_t i = 0; i < 2; i++) {
        ch_config_init(&c);
        assert_int_equal(ch_config_set(&c, "feature.a=count half_life=1h", err, sizeof(err)), 0);
        assert_int_equal(ch_config_set(&c, timeless[i], err, sizeof(err)), 0);
        assert_int_equal(ch_config_features(&c, &fs, err, sizeof(err)), 0);
        assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 0);
        assert_string_equal(warning, "");
        assert_int_equal(ch_config_set(&c, "state.idle_evict=140d", err, sizeof(err)), 0);
        assert_true(ch_config_idle_evict_ms(&c, fs, warning, sizeof(warning)) == 140 * 86400000.0);
        assert_non_null(strstr(warning, "state.idle_evict = 140d forgets users idle that long, and "
                                        "feature.c then reads its default"));
        ch_features_free(fs);
        ch_config_done(&c);
    }
}

/* The state the features need is checked against the user table's limits, naming the
 * largest feature: distinct() at the largest documented k starts. */
static void test_state_limits(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "", set[96];
    assert_int_equal(ch_config_set(&c, "feature.a=count half_life=1h", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "feature.d1=distinct(item) k=1024", err, sizeof(err)), 0);
    ch_features_t *fs = NULL;
    assert_int_equal(ch_config_features(&c, &fs, err, sizeof(err)), 0);
    assert_int_equal(ch_config_check_state(&c, fs, 40, err, sizeof(err)), 0); /* 10M users */
    ch_features_free(fs);
    for (int i = 2; i <= 11; i++) { /* 11 of them: 67,608 doubles > 65,535 */
        snprintf(set, sizeof(set), "feature.d%d=distinct(item) k=1024", i);
        assert_int_equal(ch_config_set(&c, set, err, sizeof(err)), 0);
    }
    assert_int_equal(ch_config_features(&c, &fs, err, sizeof(err)), 0);
    assert_int_equal(ch_config_check_state(&c, fs, 40, err, sizeof(err)), -E2BIG);
    assert_non_null(strstr(err, "the largest feature is feature.d1 with 6146"));
    ch_features_free(fs);
    ch_config_done(&c);
    ch_config_init(&c); /* within a user, but not times state.max_users */
    assert_int_equal(ch_config_set(&c, "feature.d=distinct(item) k=1024", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "state.max_users=1000000000", err, sizeof(err)), 0);
    assert_int_equal(ch_config_features(&c, &fs, err, sizeof(err)), 0);
    assert_int_equal(ch_config_check_state(&c, fs, 40, err, sizeof(err)), -E2BIG);
    assert_non_null(strstr(err, "state.max_users = 1000000000 users of"));
    ch_features_free(fs);
    ch_config_done(&c);
}

static void test_drop_fields(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_int_equal(ch_config_drop_mask(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "privacy.drop_fields= user_id ,attrs", err, sizeof(err)), 0);
    assert_int_equal(ch_config_drop_mask(&c, err, sizeof(err)),
                     CH_DROP_USER_ID | CH_DROP_KEY | CH_DROP_ATTRS); /* user_id: the key too */
    assert_int_equal(ch_config_set(&c, "privacy.drop_fields=item,email", err, sizeof(err)), 0);
    assert_int_equal(ch_config_drop_mask(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "privacy.drop_fields: unknown field 'email' (fields: key,"));
    ch_config_done(&c);
}

static void test_registry_keys(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_int_equal(ch_config_set(&c, "feature.n=count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=a:1", err, sizeof(err)), 0);
    assert_string_equal(c.registry_url, "");
    assert_true(c.registry_register_outputs);
    assert_true(c.registry_timeout_ms == 10000);
    assert_true(c.registry_retry_max_ms == 30000);
    assert_int_equal(ch_config_set(&c, "schema.registry.username=u", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "schema.registry.url is empty"));
    assert_int_equal(ch_config_set(&c, "schema.registry.url=ftp://r:8081", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "expected an http:// or https:// URL"));
    assert_int_equal(ch_config_set(&c, "schema.registry.url=https://r:8081", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "username and schema.registry.password_file go together"));
    assert_int_equal(ch_config_set(&c, "schema.registry.password_file=/pw", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "schema.registry.cert_file=/c.pem", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "cert_file and schema.registry.key_file go together"));
    assert_int_equal(ch_config_set(&c, "schema.registry.key_file=/k.pem", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "schema.registry.timeout=0", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_config_set(&c, "schema.registry.register_outputs=off", err, sizeof(err)),
                     0);
    assert_false(c.registry_register_outputs);
    ch_config_done(&c);
}

static void test_secrets_never_printed(void **st) {
    (void)st;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    assert_int_equal(ch_config_set(&c, "kafka.sasl.password=hunter2", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.ssl.key.password=s3cret", err, sizeof(err)), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ch_config_print(&c, f);
    fclose(f);
    assert_null(strstr(buf, "hunter2"));
    assert_null(strstr(buf, "s3cret"));
    assert_non_null(strstr(buf, "kafka.sasl.password = ********"));
    free(buf);
    ch_config_done(&c);
}

/* input.range.<field> = LOW..HIGH: two finite numbers in order, nothing else. */
static void test_value_ranges(void **state) {
    (void)state;
    double lo = 0, hi = 0;
    assert_int_equal(ch_config_parse_range("0..100000", &lo, &hi), 0);
    assert_true(lo == 0 && hi == 100000);
    assert_int_equal(ch_config_parse_range("-1e3..2.5", &lo, &hi), 0);
    assert_true(lo == -1000 && hi == 2.5);
    const char *bad[] = {"", "5", "1..", "..1", "2..1", "1..2x", "nan..1", "1..inf", "1-2",
                         "1e999..2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ch_config_parse_range(bad[i], &lo, &hi), -EINVAL);
    }
}

/* input.start_at: empty is off (-1); ISO-8601 or milliseconds since 1970; else refused. */
static void test_start_at(void **state) {
    (void)state;
    ch_config_t c;
    ch_config_init(&c);
    char err[512] = "";
    int64_t ms = 0;
    assert_int_equal(ch_config_start_at(&c, &ms), 0);
    assert_true(ms == -1);
    assert_int_equal(ch_config_set(&c, "input.start_at=2026-01-01T00:30:00Z", err, sizeof(err)),
                     0);
    assert_int_equal(ch_config_start_at(&c, &ms), 0);
    assert_true(ms == 1767227400000LL);
    assert_int_equal(ch_config_set(&c, "input.start_at=1767227400000", err, sizeof(err)), 0);
    assert_int_equal(ch_config_start_at(&c, &ms), 0);
    assert_true(ms == 1767227400000LL);
    assert_int_equal(ch_config_set(&c, "feature.n=count", err, sizeof(err)), 0);
    assert_int_equal(ch_config_set(&c, "kafka.bootstrap.servers=a:1", err, sizeof(err)), 0);
    assert_int_equal(ch_config_validate(&c, err, sizeof(err)), 0);
    const char *bad[] = {"yesterday", "-5", "2026-13-01T00:00:00Z", "12ms"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char set[80];
        snprintf(set, sizeof(set), "input.start_at=%s", bad[i]);
        assert_int_equal(ch_config_set(&c, set, err, sizeof(err)), 0);
        assert_int_equal(ch_config_start_at(&c, &ms), -EINVAL);
        assert_int_equal(ch_config_validate(&c, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "input.start_at"));
    }
    ch_config_done(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_at),
        cmocka_unit_test(test_defaults_and_paths),
        cmocka_unit_test(test_errors_name_file_and_line),
        cmocka_unit_test(test_overrides_and_validation),
        cmocka_unit_test(test_guarantee_keys),
        cmocka_unit_test(test_scoring_and_segment_keys),
        cmocka_unit_test(test_operations_keys),
        cmocka_unit_test(test_idle_evict),
        cmocka_unit_test(test_state_limits),
        cmocka_unit_test(test_drop_fields),
        cmocka_unit_test(test_registry_keys),
        cmocka_unit_test(test_secrets_never_printed),
        cmocka_unit_test(test_value_ranges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
