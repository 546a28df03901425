/*
 * cohort-bench-trees - the speed of cohortd's model evaluator on rows in memory (the
 * bench's trees phase): rows/s of ch_onnx_eval() in batches, and of the reasons
 * (ch_onnx_contributions(): TreeSHAP for a tree model) one row at a time.
 *
 *   cohort-bench-trees MODEL.onnx ROWS.f32 D [SECONDS] [BATCH]
 *
 * ROWS.f32 holds n x D little-endian float32 values. Each measure repeats whole passes
 * over the rows until SECONDS (default 2) have passed. Prints one JSON line; with
 * CH_BENCH_SCORES=1 the score of every row follows, one a line (for a parity check).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ch/onnx.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[1], "--help") == 0) {
        fprintf(argc < 4 ? stderr : stdout,
                "Usage: cohort-bench-trees MODEL.onnx ROWS.f32 D [SECONDS] [BATCH]\n");
        return argc < 4 ? 2 : 0;
    }
    size_t d = strtoul(argv[3], NULL, 10);
    double seconds = argc > 4 ? strtod(argv[4], NULL) : 2.0;
    size_t batch = argc > 5 ? strtoul(argv[5], NULL, 10) : 256;
    if (d == 0 || batch == 0 || !(seconds > 0)) {
        fprintf(stderr, "cohort-bench-trees: D, SECONDS and BATCH must be positive\n");
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        fprintf(stderr, "cohort-bench-trees: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t n = bytes > 0 ? (size_t)bytes / (d * sizeof(float)) : 0;
    float *x = malloc((n ? n : 1) * d * sizeof(float));
    float *scores = malloc(batch * sizeof(float));
    float *contrib = malloc(d * sizeof(float));
    if (!x || !scores || !contrib || n == 0 || fread(x, d * sizeof(float), n, f) != n) {
        fprintf(stderr, "cohort-bench-trees: cannot read %zu rows of %zu floats\n", n, d);
        return 1;
    }
    fclose(f);
    char err[512];
    ch_onnx_t *m = NULL;
    if (ch_onnx_load(argv[1], d, NULL, batch, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "cohort-bench-trees: %s\n", err);
        return 1;
    }
    double sum = 0;
    size_t rows = 0, passes = 0;
    double t0 = now(), t;
    do {
        for (size_t i = 0; i < n; i += batch) {
            size_t b = n - i < batch ? n - i : batch;
            ch_onnx_eval(m, x + i * d, b, scores);
            sum += scores[0];
        }
        rows += n;
        passes++;
    } while ((t = now()) - t0 < seconds);
    double eval_rate = (double)rows / (t - t0);

    /* reasons: one row per batch, as the daemon explains one alert */
    size_t explained = 0;
    int explain_ok = 1;
    t0 = now();
    do {
        for (size_t i = 0; i < n && explain_ok; i++) {
            ch_onnx_eval(m, x + i * d, 1, scores);
            explain_ok = ch_onnx_contributions(m, 0, contrib) == 0;
            explained++;
            if ((i & 255) == 255 && now() - t0 >= seconds) {
                break;
            }
        }
    } while (explain_ok && (t = now()) - t0 < seconds);
    double explain_rate = explain_ok ? (double)explained / (t - t0) : 0;
    printf("{\"rows\": %zu, \"d\": %zu, \"batch\": %zu, \"passes\": %zu, "
           "\"rows_per_s\": %.1f, \"explained_rows_per_s\": %.1f, \"reasons\": \"%s\", "
           "\"checksum\": %.6g}\n",
           n, d, batch, passes, eval_rate, explain_rate, ch_onnx_reasons(m), sum);
    if (getenv("CH_BENCH_SCORES")) {
        for (size_t i = 0; i < n; i += batch) {
            size_t b = n - i < batch ? n - i : batch;
            ch_onnx_eval(m, x + i * d, b, scores);
            for (size_t j = 0; j < b; j++) {
                printf("%.9g\n", scores[j]);
            }
        }
    }
    ch_onnx_free(m);
    free(x);
    free(scores);
    free(contrib);
    return 0;
}
