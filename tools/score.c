/*
 * cohort-score - load an ONNX model the way cohortd does and score vectors offline.
 *
 * Reads comma-separated rows of floats from stdin (or --input FILE), writes one score
 * per line (and with --contributions, the per-feature contributions after it). Used to
 * check a model file before deploying it and by the parity tests against sklearn.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ch/onnx.h"
#include "tool_args.h"

#define BATCH 1024
#define MAX_COLS 1024

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohort-score MODEL.onnx [options] < rows.csv\n\n"
            "Load an ONNX model as cohortd does and print one score per input row.\n\n"
            "  -i, --input FILE      rows of comma-separated floats (default stdin)\n"
            "  -d, --inputs N        feature count (default: columns of the first row)\n"
            "  -f, --features LIST   comma-separated names, checked against the model's own\n"
            "  -c, --contributions   also print the per-feature contributions\n"
            "      --check           only load the model and print its version\n"
            "  -h, --help            this text\n\n"
            "Exit status: 0 ok, 1 load or input error, 2 usage error.\n");
}

static size_t split_names(char *list, const char **names, size_t max) {
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n < max;
         t = strtok_r(NULL, ",", &save)) {
        names[n++] = t;
    }
    return n;
}

static size_t parse_row(char *line, float *row, size_t max, int *ret_bad) {
    size_t n = 0;
    char *p = line;
    *ret_bad = 0;
    while (*p && *p != '\n' && n < max) {
        char *end;
        errno = 0;
        row[n++] = strtof(p, &end);
        if (end == p || errno) {
            *ret_bad = 1;
            return n;
        }
        p = end;
        if (*p == ',') {
            p++;
        }
    }
    return n;
}

int main(int argc, char **argv) {
    const char *input = NULL;
    char *features = NULL;
    double dv = 0;
    long d = 0;
    int contrib = 0, check = 0;
    static const struct option opts[] = {{"input", required_argument, NULL, 'i'},
                                         {"inputs", required_argument, NULL, 'd'},
                                         {"features", required_argument, NULL, 'f'},
                                         {"contributions", no_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "i:d:f:ch", opts, NULL)) != -1) {
        switch (ch) {
        case 'i':
            input = optarg;
            break;
        case 'd':
            if (tool_parse_number(optarg, 1, MAX_COLS, &dv) < 0 || dv != (long)dv) {
                fprintf(stderr, "cohort-score: --inputs: expected an integer in 1..%d, got '%s'\n",
                        MAX_COLS, optarg);
                return 2;
            }
            d = (long)dv;
            break;
        case 'f':
            features = optarg;
            break;
        case 'c':
            contrib = 1;
            break;
        case 'k':
            check = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *path = argv[optind];
    static const char *names[MAX_COLS];
    size_t n_names = features ? split_names(features, names, MAX_COLS) : 0;
    if (n_names) {
        d = (long)n_names;
    }
    FILE *in = stdin;
    if (input && !(in = fopen(input, "re"))) {
        fprintf(stderr, "cohort-score: %s: %s\n", input, strerror(errno));
        return 1;
    }
    static char line[1 << 16];
    static float rows[BATCH * MAX_COLS], first[MAX_COLS];
    size_t first_n = 0;
    int bad = 0;
    if (!check && d == 0) { /* width from the first row */
        if (!fgets(line, sizeof(line), in)) {
            fprintf(stderr, "cohort-score: no input rows\n");
            return 1;
        }
        first_n = parse_row(line, first, MAX_COLS, &bad);
        d = (long)first_n;
    }
    if (d == 0) {
        fprintf(stderr, "cohort-score: give --inputs N or --features with --check\n");
        return 2;
    }
    char err[512];
    ch_onnx_t *m = NULL;
    int r = ch_onnx_load(path, (size_t)d, n_names ? names : NULL, BATCH, &m, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "cohort-score: %s\n", err);
        return 1;
    }
    if (check) {
        printf("%s: ok, %ld inputs, %zu nodes, version %s, reasons: %s\n", path, d,
               ch_onnx_nodes(m), ch_onnx_version(m), ch_onnx_reasons(m));
        ch_onnx_free(m);
        return 0;
    }
    static float scores[BATCH], cbuf[MAX_COLS];
    size_t n = 0, lineno = first_n ? 1 : 0;
    int rc = 0;
    if (first_n) {
        if (bad) {
            fprintf(stderr, "cohort-score: line 1: not a number\n");
            rc = 1;
            goto out;
        }
        memcpy(rows, first, first_n * sizeof(float));
        n = 1;
    }
    for (;;) {
        int more = fgets(line, sizeof(line), in) != NULL;
        if (more) {
            lineno++;
            size_t got = parse_row(line, rows + n * (size_t)d, (size_t)d, &bad);
            if (bad || got != (size_t)d) {
                fprintf(stderr, "cohort-score: line %zu: expected %ld numbers\n", lineno, d);
                rc = 1;
                break;
            }
            n++;
        }
        if (n == BATCH || (!more && n > 0)) {
            ch_onnx_eval(m, rows, n, scores);
            for (size_t i = 0; i < n; i++) {
                printf("%.9g", scores[i]);
                if (contrib) {
                    if (ch_onnx_contributions(m, i, cbuf) < 0) {
                        fprintf(stderr, "cohort-score: no contributions: %s\n", ch_onnx_reasons(m));
                        rc = 1;
                        goto out;
                    }
                    for (long j = 0; j < d; j++) {
                        printf(",%.9g", cbuf[j]);
                    }
                }
                putchar('\n');
            }
            n = 0;
        }
        if (!more) {
            break;
        }
    }
out:
    ch_onnx_free(m);
    if (in != stdin) {
        fclose(in);
    }
    return rc;
}
