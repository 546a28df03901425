/*
 * trees_int.h - model/'s private evaluator of ONNX-ML tree ensembles
 * (ai.onnx.ml TreeEnsembleClassifier and TreeEnsembleRegressor), used by onnx.c.
 *
 * A node is compiled at load into one flat array of 16-byte nodes, trees in
 * preorder (the true child follows its parent), every split turned into
 * "x <= threshold" on the float input. Evaluation is batched, tree-major and
 * allocation-free. Shapley values (path-dependent TreeSHAP) use the node covers an
 * exporter writes to nodes_hitrates.
 */
#ifndef CH_MODEL_TREES_INT_H
#define CH_MODEL_TREES_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "onnx.pb-c.h"

typedef struct ch_trees ch_trees_t;

/**
 * @brief Compile a TreeEnsembleClassifier or TreeEnsembleRegressor node.
 * @param nd the node (domain ai.onnx.ml).
 * @param d input width: every feature id must be below it.
 * @param max_batch the largest batch ch_trees_eval() gets.
 * @param where "node 3 'name' (op)", prefixed to errors.
 * @returns 0, -EINVAL (a malformed or unsupported attribute, named), -ENOMEM.
 */
int ch_trees_compile(const Onnx__NodeProto *nd, size_t d, size_t max_batch, const char *where,
                     ch_trees_t **ret, char *errbuf, size_t errlen);

ch_trees_t *ch_trees_free(ch_trees_t *t);

/** @brief Output columns: classes (classifier) or targets (regressor). */
size_t ch_trees_cols(const ch_trees_t *t);

/** @brief True for TreeEnsembleClassifier (it has a label output before its scores). */
bool ch_trees_is_classifier(const ch_trees_t *t);

/**
 * @brief Score n rows (row i at x + i * ldx) into y ([n, cols], after post_transform).
 */
void ch_trees_eval(ch_trees_t *t, const float *x, size_t n, size_t ldx, float *y);

/**
 * @brief Path-dependent TreeSHAP of the last column's raw score (before post_transform)
 *        for one row: phi[j] is feature j's Shapley value; they sum to the raw score
 *        minus its expectation over the training covers.
 * @returns 0, -ENOTSUP (no usable covers: why in ch_trees_explain()).
 */
int ch_trees_shap(ch_trees_t *t, const float *x, double *phi);

/** @brief "TreeSHAP" or why there are no Shapley values for this model. */
const char *ch_trees_explain(const ch_trees_t *t);

/** @brief Whether ch_trees_shap() works: every node has a positive cover. */
bool ch_trees_explains(const ch_trees_t *t);

/** @brief Trees and nodes, for logs. */
size_t ch_trees_count(const ch_trees_t *t);
size_t ch_trees_nodes(const ch_trees_t *t);

#endif
