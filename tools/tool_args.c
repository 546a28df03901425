/*
 * tool_args.c - command-line helpers shared by every tool.
 */
#include "tool_args.h"

#include <errno.h>
#include <stdlib.h>

int tool_parse_number(const char *s, double lo, double hi, double *ret) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        return -EINVAL;
    }
    *ret = v;
    return 0;
}
