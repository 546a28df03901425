/* errbuf.h - daemon/'s private helper for "errbuf, errlen" error reporting. */
#ifndef CH_DAEMON_ERRBUF_H
#define CH_DAEMON_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Formats the reason into errbuf (if any) and returns err. */
static inline int fail(char *errbuf, size_t errlen, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline int fail(char *errbuf, size_t errlen, int err, const char *fmt, ...) {
    if (errbuf && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errbuf, errlen, fmt, ap);
        va_end(ap);
    }
    return err;
}

#endif
