/*
 * test_seed.c - seed placement, names and identity: a user's seed partition is the one
 * the Kafka default partitioner puts its key on (murmur2 as the Java client computes
 * it: the hashes are Kafka's own UtilsTest cases, recomputed independently).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "seed.h"

/* Utils.murmur2(key) of Kafka's Java client for these keys */
static const struct {
    const char *key;
    int32_t murmur2;
} cases[] = {
    {"21", -973932308},
    {"foobar", -790332482},
    {"a-little-bit-long-string", -985981536},
    {"a-little-bit-longer-string", -1486304829},
    {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
    {"abc", 479470107},
};

static void test_partition_is_the_java_clients(void **state) {
    (void)state;
    static const int32_t counts[] = {1, 2, 4, 12, 100, 1000};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t positive = (uint32_t)cases[i].murmur2 & 0x7fffffffu; /* Utils.toPositive */
        for (size_t j = 0; j < sizeof(counts) / sizeof(counts[0]); j++) {
            int32_t want = (int32_t)(positive % (uint32_t)counts[j]);
            assert_int_equal(
                ch_seed_partition(cases[i].key, strlen(cases[i].key), counts[j]), want);
        }
    }
}

static void test_names_and_identity(void **state) {
    (void)state;
    char name[64];
    ch_seed_name("events", 7, name, sizeof(name));
    assert_string_equal(name, "events-7.seed");
    unsigned char a[32], b[32], c[32];
    assert_int_equal(ch_seed_identity("events", a), 0);
    assert_int_equal(ch_seed_identity("events", b), 0);
    assert_int_equal(ch_seed_identity("events2", c), 0);
    assert_memory_equal(a, b, 32);
    assert_memory_not_equal(a, c, 32);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition_is_the_java_clients),
        cmocka_unit_test(test_names_and_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
