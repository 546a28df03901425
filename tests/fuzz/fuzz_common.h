/*
 * fuzz_common.h - what the libFuzzer targets share: where the repository is, and a
 * byte sum that makes every decoded view read (so AddressSanitizer sees each byte).
 */
#ifndef CH_FUZZ_COMMON_H
#define CH_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef CH_FUZZ_SOURCE_DIR
#error "CH_FUZZ_SOURCE_DIR must name the repository (set by tests/fuzz/CMakeLists.txt)"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Read every byte of a view; the result only keeps the reads from being optimized out. */
static inline unsigned touch(const void *p, size_t n) {
    const volatile unsigned char *b = p;
    unsigned s = 0;
    for (size_t i = 0; p && i < n; i++) {
        s += b[i];
    }
    return s;
}

/* A broken invariant: report it the way libFuzzer records a crash. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
