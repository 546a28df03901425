/*
 * fuzz_onnx - the ONNX loader and evaluator (model/src/onnx.c): the input is a model
 * file for 16 features (the shipped models' width). A model that loads is evaluated
 * on fixed rows (zeros, ones, large and small values) with contributions for each (or
 * a model that says why it has none); a refusal must come with a message. Seeds
 * include tree ensembles (ai.onnx.ml).
 */
#include "fuzz_common.h"

#include <errno.h>
#include <string.h>

#include "ch/onnx.h"

#define D 16
#define ROWS 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ch_onnx_t *m = NULL;
    char err[512] = "";
    if (ch_onnx_load_buffer(data, size, "fuzz", D, NULL, ROWS, &m, err, sizeof(err)) < 0) {
        FUZZ_CHECK(err[0] != '\0');
        return 0;
    }
    FUZZ_CHECK(ch_onnx_inputs(m) == D);
    float x[ROWS * D], scores[ROWS], contrib[D];
    for (int i = 0; i < D; i++) {
        x[i] = 0.0f;
        x[D + i] = 1.0f;
        x[2 * D + i] = (i % 2 ? -1.0f : 1.0f) * 1e30f;
        x[3 * D + i] = 1e-30f * (float)i;
    }
    FUZZ_CHECK(ch_onnx_eval(m, x, ROWS, scores) == 0);
    for (size_t r = 0; r < ROWS; r++) {
        int rc = ch_onnx_contributions(m, r, contrib);
        FUZZ_CHECK(rc == 0 ||
                   (rc == -ENOTSUP && strncmp(ch_onnx_reasons(m), "no reasons", 10) == 0));
    }
    FUZZ_CHECK(ch_onnx_eval(m, x, ROWS + 1, scores) < 0); /* beyond max_batch */
    ch_onnx_free(m);
    return 0;
}
