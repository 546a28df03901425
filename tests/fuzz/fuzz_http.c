/*
 * fuzz_http - the HTTP request head as cohortd's endpoint reads it (daemon/src/http.c):
 * the end-of-head scan over the input fed in arbitrary pieces, then the request-line
 * parser with percent-decoding. A parsed path must start with '/', lie inside the head
 * and be no longer than it was encoded; the scan must find the same end whatever the
 * pieces.
 */
#include "fuzz_common.h"

#include <string.h>

#include "http.h"

#define HEAD_MAX 8192

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    /* the first byte sets the size of the pieces the head arrives in */
    size_t piece = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    static char in[HEAD_MAX];
    size_t len = size < HEAD_MAX ? size : HEAD_MAX;
    memcpy(in, data, len);
    long whole = ch_http_head_end(in, len, 0);
    long end = -1;
    for (size_t have = 0; have < len && end < 0;) {
        size_t from = have >= 3 ? have - 3 : 0;
        have = have + piece < len ? have + piece : len;
        end = ch_http_head_end(in, have, from);
    }
    FUZZ_CHECK(end == whole);
    if (end < 0) {
        return 0;
    }
    FUZZ_CHECK(end >= 1 && (size_t)end <= len && in[end - 1] == '\n');
    ch_http_request_t req;
    const char *why = NULL;
    int status = ch_http_parse(in, (size_t)end, &req, &why);
    if (status) {
        FUZZ_CHECK((status == 400 || status == 405) && why && strlen(why) > 0);
        return 0;
    }
    FUZZ_CHECK(req.path >= in && req.path + req.path_len <= in + end);
    FUZZ_CHECK(req.path_len >= 1 && req.path[0] == '/');
    (void)touch(req.path, req.path_len);
    return 0;
}
