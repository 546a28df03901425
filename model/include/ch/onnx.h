/*
 * ch/onnx.h - a batched evaluator for the ONNX operator subset of README "Risk scoring".
 *
 * A model is compiled once at load into a list of steps over preallocated buffers;
 * evaluation is allocation-free. The risk score is the last column of the graph's
 * first output (for an ai.onnx.ml TreeEnsembleClassifier whose label is that output:
 * of its scores, the next one). Reason codes are gradient x input of the model's
 * logit (for a logistic regression: exactly w_i * x_i), computed by a backward pass
 * over the same steps for one row of the last evaluated batch; for a tree ensemble
 * they are its Shapley values (path-dependent TreeSHAP of the last column's raw
 * score, from the node covers in nodes_hitrates).
 *
 * @locality Not thread-safe: evaluation writes into the model's own buffers. Use one
 *           model per thread.
 */
#ifndef CH_ONNX_H
#define CH_ONNX_H

#include <stddef.h>

#define CH_ONNX_MAX_FILE_BYTES (256u << 20) /* larger files are refused */
#define CH_ONNX_VERSION_MAX 128

typedef struct ch_onnx ch_onnx_t;

/**
 * @brief Load a model from a file.
 * @param path the .onnx file.
 * @param n_inputs the feature count d; the model's input must be [N, d].
 * @param feature_names d names, or NULL. When the model carries the metadata key
 *        "cohortd.features" (comma-separated, written by tools/export_onnx.py) it must
 *        equal these names in order.
 * @param max_batch largest N passed to ch_onnx_eval().
 * @param ret_model set on success.
 * @param errbuf, errlen the reason on failure, naming the node or field (may be NULL).
 * @returns 0, -ENOENT/-EIO (file unreadable), -EBADMSG (not a valid ONNX protobuf),
 *          -EINVAL (unsupported op, attribute, shape or input width), -ENOMEM.
 */
int ch_onnx_load(const char *path, size_t n_inputs, const char *const *feature_names,
                 size_t max_batch, ch_onnx_t **ret_model, char *errbuf, size_t errlen);

/** @brief As ch_onnx_load() from bytes in memory (not retained). */
int ch_onnx_load_buffer(const void *buf, size_t len, const char *version_hint, size_t n_inputs,
                        const char *const *feature_names, size_t max_batch,
                        ch_onnx_t **ret_model, char *errbuf, size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_onnx_t *ch_onnx_free(ch_onnx_t *m);

/**
 * @brief Score a batch.
 * @param x n rows of n_inputs floats, row-major.
 * @param n rows, 1..max_batch.
 * @param ret_scores n scores.
 * @returns 0, -EINVAL (n out of range).
 */
int ch_onnx_eval(ch_onnx_t *m, const float *x, size_t n, float *ret_scores);

/**
 * @brief Per-feature contributions for row `row` of the last ch_onnx_eval() batch:
 *        d(logit)/dx_i * x_i, where logit is the input of a final Sigmoid, the log-odds
 *        of the last class of a final Softmax, or else the score itself; for a tree
 *        ensemble, the Shapley value of feature i for the last column's raw score
 *        (before post_transform: the log-odds of a boosted classifier).
 * @param ret_contrib n_inputs floats.
 * @returns 0, -EINVAL (row not in the last batch), -ENOTSUP (a model without reasons:
 *          ch_onnx_reasons() says why).
 */
int ch_onnx_contributions(ch_onnx_t *m, size_t row, float *ret_contrib);

/** @brief Input width d. */
size_t ch_onnx_inputs(const ch_onnx_t *m);

/**
 * @brief The model's version string: metadata "model_version" if present, else the
 *        file name and a hash of its bytes ("model.onnx@1a2b3c4d").
 */
const char *ch_onnx_version(const ch_onnx_t *m);

/** @brief Number of compiled steps (graph nodes), for logs. */
size_t ch_onnx_nodes(const ch_onnx_t *m);

/**
 * @brief How ch_onnx_contributions() explains this model ("gradient x input of the
 *        logit", "TreeSHAP (...)"), or "no reasons: <why>", for logs.
 */
const char *ch_onnx_reasons(const ch_onnx_t *m);

/**
 * @brief The model's training distribution per feature for the drift check: metadata
 *        "cohortd.drift" as tools/export_onnx.py writes it (JSON), or NULL.
 */
const char *ch_onnx_drift_meta(const ch_onnx_t *m);

/**
 * @brief "classifier", or "autoencoder" for a model whose metadata carries
 *        cohortd.autoencoder.scale and cohortd.autoencoder.error_quantiles
 *        (tools/export_onnx.py): its output reconstructs the input, and
 *        ch_onnx_eval()'s score is the percentile (0..1) of the row's reconstruction
 *        error, mean over features of ((x - r) / scale)^2, among the training rows'
 *        errors; contributions are each feature's term of that mean.
 */
const char *ch_onnx_kind(const ch_onnx_t *m);

#endif
