/*
 * test_registry_url.c - a password in a registry URL's userinfo never shows:
 * ch_registry_redact_url against URLs written out by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ch/registry.h"

static void check(const char *url, const char *want) {
    char out[256];
    ch_registry_redact_url(url, out, sizeof(out));
    assert_string_equal(out, want);
}

static void test_redact(void **state) {
    (void)state;
    check("http://user:s3cret@registry:8081/prefix", "http://user:***@registry:8081/prefix");
    check("https://user:s3cret@registry", "https://user:***@registry");
    check("http://u:p@ss@host/x", "http://u:***@host/x"); /* the last @ ends the userinfo */
    check("http://user:@host", "http://user:***@host");
    check("http://registry:8081", "http://registry:8081");
    check("http://user@registry:8081", "http://user@registry:8081"); /* no password */
    check("http://host/a:b@c", "http://host/a:b@c");                 /* @ in the path */
    check("http://host?q=a:b@c", "http://host?q=a:b@c");             /* @ in the query */
    check("", "");
    char small[12];
    ch_registry_redact_url("http://user:s3cret@registry", small, sizeof(small));
    assert_string_equal(small, "http://user");
    assert_null(strstr(small, "s3cret"));
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_redact)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
