/*
 * cohort-pseudonym - the pseudonyms cohortd gives user ids under privacy.pseudonymize,
 * for the key holder: re-identification is computing the pseudonyms of the ids one
 * knows and matching them. Prints "user id<TAB>pseudonym" per id, from the arguments
 * or one id per stdin line.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pseudonym.h"

static void usage(FILE *f) {
    fprintf(f, "Usage: cohort-pseudonym --key-file FILE [USER_ID...]\n\n"
               "Print the pseudonym cohortd gives each user id with privacy.pseudonymize = on\n"
               "and this privacy.key_file (HMAC-SHA-256, base64url, 43 characters), as\n"
               "\"user id<TAB>pseudonym\"; without ids, one id per line is read from stdin.\n\n"
               "  -k, --key-file FILE   the key (mode 600, at least 32 bytes)\n"
               "  -h, --help            this text\n\n"
               "Exit status: 0 ok, 1 key or I/O error, 2 usage error.\n");
}

static int print(ch_pseudonym_t *ps, const char *id, size_t len) {
    char out[CH_PSEUDONYM_LEN];
    if (ch_pseudonym_of(ps, id, len, out) < 0) {
        fprintf(stderr, "cohort-pseudonym: libcrypto failed\n");
        return -1;
    }
    printf("%.*s\t%.*s\n", (int)len, id, CH_PSEUDONYM_LEN, out);
    return 0;
}

int main(int argc, char **argv) {
    const char *key_file = NULL;
    static const struct option opts[] = {{"key-file", required_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "k:h", opts, NULL)) != -1) {
        if (opt == 'k') {
            key_file = optarg;
        } else if (opt == 'h') {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!key_file) {
        fprintf(stderr, "cohort-pseudonym: --key-file is required\n");
        usage(stderr);
        return 2;
    }
    char err[512];
    ch_pseudonym_t *ps = NULL;
    if (ch_pseudonym_new(key_file, &ps, err, sizeof(err)) < 0) {
        fprintf(stderr, "cohort-pseudonym: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (optind < argc) {
        for (int i = optind; i < argc && rc == 0; i++) {
            rc = print(ps, argv[i], strlen(argv[i]));
        }
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (rc == 0 && (n = getline(&line, &cap, stdin)) >= 0) {
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
                n--;
            }
            rc = print(ps, line, (size_t)n);
        }
        free(line);
    }
    ch_pseudonym_free(ps);
    return rc < 0 || fflush(stdout) != 0 ? 1 : 0;
}
