/*
 * test_http.c - which Host and Origin the HTTP endpoint answers: IP literals, localhost
 * and configured names; POSTs from no other origin; requests parsed from whole heads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http.h"

static bool allowed(const char *host, const char *names) {
    return ch_http_host_allowed(host, strlen(host), names);
}

static void test_hosts(void **state) {
    (void)state;
    const char *yes[] = {"127.0.0.1",    "127.0.0.1:9180", "10.1.2.3:80", "localhost",
                         "LOCALHOST:1",  "localhost.",     "[::1]:9180",  "[::1]",
                         "[fe80::1]:80", "cohortd.internal:9180"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        assert_true(allowed(yes[i], "cohortd.internal, other"));
    }
    const char *no[] = {"",          "evil.example", "evil.example:9180", "127.0.0.1.evil.example",
                        "localhost.evil", "[::1",   "[nope]:1",          "cohortd.internal.evil",
                        "cohortd"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        assert_false(allowed(no[i], "cohortd.internal, other"));
    }
    assert_true(allowed("other:1", " cohortd.internal , other "));
    assert_false(allowed("cohortd.internal", NULL));
}

static int check(const char *head, const char *names) {
    char buf[512];
    snprintf(buf, sizeof(buf), "%s\r\n\r\n", head);
    ch_http_request_t req;
    const char *why = NULL;
    long end = ch_http_head_end(buf, strlen(buf), 0);
    assert_true(end > 0);
    int r = ch_http_parse(buf, (size_t)end, &req, &why);
    return r ? r : ch_http_check(&req, names, &why);
}

static void test_requests(void **state) {
    (void)state;
    assert_int_equal(check("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9180", NULL), 0);
    assert_int_equal(check("GET /healthz HTTP/1.1", NULL), 400);
    assert_int_equal(check("GET /healthz HTTP/1.1\r\nhOsT:   evil.example  ", NULL), 421);
    assert_int_equal(check("GET /healthz HTTP/1.1\r\nHost: svc.ns\r\nX: y", "svc.ns"), 0);
    const char *post = "POST /segments/refresh HTTP/1.1\r\nHost: 127.0.0.1:9180";
    char head[256];
    assert_int_equal(check(post, NULL), 0); /* curl: no Origin */
    snprintf(head, sizeof(head), "%s\r\nOrigin: http://127.0.0.1:9180", post);
    assert_int_equal(check(head, NULL), 0);
    snprintf(head, sizeof(head), "%s\r\nOrigin: https://evil.example", post);
    assert_int_equal(check(head, NULL), 403);
    snprintf(head, sizeof(head), "%s\r\nOrigin: null", post);
    assert_int_equal(check(head, NULL), 403);
    snprintf(head, sizeof(head), "%s\r\nSec-Fetch-Site: cross-site", post);
    assert_int_equal(check(head, NULL), 403);
    snprintf(head, sizeof(head), "%s\r\nSec-Fetch-Site: same-origin", post);
    assert_int_equal(check(head, NULL), 0);
    /* a GET is not refused for its Origin (it changes nothing; its Host is checked) */
    assert_int_equal(
        check("GET /metrics HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example", NULL),
        0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_hosts),
                                       cmocka_unit_test(test_requests)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
