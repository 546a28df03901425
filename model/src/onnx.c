/*
 * onnx.c - load an ONNX graph into a step list and evaluate it batched.
 *
 * Design notes
 * - Parsing is protobuf-c code generated at build time from the system's onnx.proto.
 *   The parsed message lives only during load: every tensor the steps need is
 *   copied into values owned by the model, so a model never points into the file.
 * - Values are at most 2-D. A runtime value is [N, cols] (rank 2) or [N] (rank 1,
 *   cols = 1) with N the batch; a constant (initializer, Constant node, or a node
 *   folded at load because all its inputs are constant) is [rows, cols].
 *   Elementwise broadcasting supports what exported models use: a constant row
 *   [cols] / [1, cols] / scalar against a runtime value, or two runtime values with
 *   equal or unit widths. Anything else is a load error naming the node.
 * - Invariant after load: every step's operands exist and have shapes that fit,
 *   so evaluation has no error paths besides the batch-size check.
 * - Nodes are evaluated in file order: ONNX requires a topologically sorted graph,
 *   and a node that reads a value not yet produced is a load error.
 * - Contributions run a backward pass for one row over the same steps, reusing the
 *   forward buffers of the last batch (gradient buffers are one row wide).
 */
#include "ch/onnx.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onnx.pb-c.h"

#include "errbuf.h"
#include "trees_int.h"

#define MAX_ELEMS (64u << 20) /* per tensor */

typedef enum op {
    OP_GEMM,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_RELU,
    OP_LEAKY,
    OP_SIGMOID,
    OP_TANH,
    OP_SOFTMAX,
    OP_COPY,
    OP_TREES, /* ai.onnx.ml TreeEnsembleClassifier / TreeEnsembleRegressor */
} op_t;

typedef struct val {
    char *name;
    bool is_const, is_int, produced;
    int rank;
    size_t rows, cols; /* runtime: rows unused (N) */
    float *data;       /* const rows*cols, runtime max_batch*cols */
    int64_t *ints;     /* int64 constants (Reshape shapes) */
    size_t n_ints;
    float *grad; /* runtime: one row */
} val_t;

typedef struct step {
    op_t op;
    int a, b, c, y; /* value indices; -1 absent */
    bool trans_b;
    float alpha, beta;
    size_t k, m;       /* gemm: A is [N,k], output [N,m] */
    ch_trees_t *trees; /* OP_TREES */
} step_t;

struct ch_onnx {
    val_t *vals;
    size_t n_vals, cap_vals;
    step_t *steps;
    size_t n_steps;
    int input, output;
    size_t n_inputs, max_batch, last_n;
    int seed_val, seed_step; /* backward start */
    int seed_kind;           /* 0 output column, 1 sigmoid input, 2 softmax log-odds */
    int shap_step;           /* >= 0: contributions are this tree step's Shapley values */
    bool no_reasons;         /* trees that cannot be explained: reasons says why */
    double *phi;             /* n_inputs, for shap_step */
    char reasons[200];       /* how contributions are computed, or why there are none */
    char *drift_meta;        /* metadata "cohortd.drift", or NULL */
    /* an autoencoder (metadata cohortd.autoencoder.*): the output is the input's
     * reconstruction; the score is the percentile of the scaled squared error among
     * the training errors */
    float *ae_scale;  /* n_inputs, or NULL: not an autoencoder */
    double *ae_quant; /* the training errors' quantiles, ascending */
    size_t ae_n_quant;
    const char *ae_meta_scale, *ae_meta_quant; /* during load */
    char version[CH_ONNX_VERSION_MAX];
};

ch_onnx_t *ch_onnx_free(ch_onnx_t *m) {
    if (!m) {
        return NULL;
    }
    for (size_t i = 0; i < m->n_vals; i++) {
        free(m->vals[i].name);
        free(m->vals[i].data);
        free(m->vals[i].ints);
        free(m->vals[i].grad);
    }
    for (size_t i = 0; i < m->n_steps; i++) {
        ch_trees_free(m->steps[i].trees);
    }
    free(m->vals);
    free(m->steps);
    free(m->phi);
    free(m->drift_meta);
    free(m->ae_scale);
    free(m->ae_quant);
    free(m);
    return NULL;
}

size_t ch_onnx_inputs(const ch_onnx_t *m) {
    return m->n_inputs;
}

const char *ch_onnx_version(const ch_onnx_t *m) {
    return m->version;
}

size_t ch_onnx_nodes(const ch_onnx_t *m) {
    return m->n_steps;
}

const char *ch_onnx_reasons(const ch_onnx_t *m) { return m->reasons; }

const char *ch_onnx_drift_meta(const ch_onnx_t *m) { return m->drift_meta; }

/* ---- load ---------------------------------------------------------------- */

static int find_val(const ch_onnx_t *m, const char *name) {
    for (size_t i = 0; i < m->n_vals; i++) {
        if (strcmp(m->vals[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static int add_val(ch_onnx_t *m, const char *name) {
    if (m->n_vals == m->cap_vals) {
        size_t cap = m->cap_vals ? 2 * m->cap_vals : 32;
        val_t *v = realloc(m->vals, cap * sizeof(*v));
        if (!v) {
            return -ENOMEM;
        }
        m->vals = v;
        m->cap_vals = cap;
    }
    val_t *v = &m->vals[m->n_vals];
    memset(v, 0, sizeof(*v));
    v->name = strdup(name);
    if (!v->name) {
        return -ENOMEM;
    }
    return (int)m->n_vals++;
}

/* Copy an initializer or Constant tensor into a constant value. */
static int load_tensor(ch_onnx_t *m, const Onnx__TensorProto *t, const char *name,
                       const char *what, char *errbuf, size_t errlen) {
    if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        return fail(errbuf, errlen, -EINVAL, "%s '%s': external tensor data is not supported",
                    what, name);
    }
    if (t->n_dims > 2) {
        return fail(errbuf, errlen, -EINVAL, "%s '%s': %zu-D tensors are not supported (max 2)",
                    what, name, t->n_dims);
    }
    size_t rows = 1, cols = 1, count = 1;
    for (size_t i = 0; i < t->n_dims; i++) {
        if (t->dims[i] < 0 || (uint64_t)t->dims[i] > MAX_ELEMS) {
            return fail(errbuf, errlen, -EINVAL, "%s '%s': dimension %zu is %lld", what, name, i,
                        (long long)t->dims[i]);
        }
        count *= (size_t)t->dims[i];
        if (count > MAX_ELEMS) {
            return fail(errbuf, errlen, -EINVAL, "%s '%s': more than %u elements", what, name,
                        MAX_ELEMS);
        }
    }
    if (t->n_dims == 1) {
        cols = (size_t)t->dims[0];
    } else if (t->n_dims == 2) {
        rows = (size_t)t->dims[0];
        cols = (size_t)t->dims[1];
    }
    int32_t dt = t->has_data_type ? t->data_type : 0;
    size_t width = dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT    ? 4
                   : dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64  ? 8
                   : dt == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE ? 8
                                                                 : 0;
    if (!width) {
        return fail(errbuf, errlen, -EINVAL,
                    "%s '%s': data type %d is not supported (float, double, int64)", what, name,
                    (int)dt);
    }
    size_t have = t->has_raw_data ? t->raw_data.len / width
                  : dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT ? t->n_float_data
                  : dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 ? t->n_int64_data
                                                               : t->n_double_data;
    if (have != count || (t->has_raw_data && t->raw_data.len % width)) {
        return fail(errbuf, errlen, -EINVAL, "%s '%s': %zu elements for a shape of %zu", what,
                    name, have, count);
    }
    int vi = add_val(m, name);
    if (vi < 0) {
        return vi;
    }
    val_t *v = &m->vals[vi];
    v->is_const = v->produced = true;
    v->rank = (int)t->n_dims;
    v->rows = rows;
    v->cols = cols;
    if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64) {
        v->is_int = true;
        v->n_ints = count;
        v->ints = malloc((count ? count : 1) * sizeof(int64_t));
        if (!v->ints) {
            return -ENOMEM;
        }
        if (t->has_raw_data) {
            memcpy(v->ints, t->raw_data.data, count * 8); /* little-endian host */
        } else if (count) {
            memcpy(v->ints, t->int64_data, count * 8);
        }
        return vi;
    }
    v->data = malloc((count ? count : 1) * sizeof(float));
    if (!v->data) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        double x;
        if (dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
            float f;
            if (t->has_raw_data) {
                memcpy(&f, t->raw_data.data + 4 * i, 4);
            } else {
                f = t->float_data[i];
            }
            x = f;
        } else if (t->has_raw_data) {
            memcpy(&x, t->raw_data.data + 8 * i, 8);
        } else {
            x = t->double_data[i];
        }
        if (!isfinite(x)) {
            return fail(errbuf, errlen, -EINVAL, "%s '%s': element %zu is not finite", what,
                        name, i);
        }
        v->data[i] = (float)x;
    }
    return vi;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name) {
    for (size_t i = 0; i < n->n_attribute; i++) {
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0) {
            return n->attribute[i];
        }
    }
    return NULL;
}

static int64_t attr_i(const Onnx__NodeProto *n, const char *name, int64_t dflt) {
    const Onnx__AttributeProto *a = attr(n, name);
    return a && a->has_i ? a->i : dflt;
}

static float attr_f(const Onnx__NodeProto *n, const char *name, float dflt) {
    const Onnx__AttributeProto *a = attr(n, name);
    return a && a->has_f ? a->f : dflt;
}

static const struct {
    const char *name;
    op_t op;
    int min_in, max_in;
} op_table[] = {
    {"Gemm", OP_GEMM, 2, 3},       {"MatMul", OP_GEMM, 2, 2},   {"Add", OP_ADD, 2, 2},
    {"Sub", OP_SUB, 2, 2},         {"Mul", OP_MUL, 2, 2},       {"Div", OP_DIV, 2, 2},
    {"Relu", OP_RELU, 1, 1},       {"LeakyRelu", OP_LEAKY, 1, 1}, {"Sigmoid", OP_SIGMOID, 1, 1},
    {"Tanh", OP_TANH, 1, 1},       {"Softmax", OP_SOFTMAX, 1, 1}, {"Identity", OP_COPY, 1, 1},
    {"Flatten", OP_COPY, 1, 1},    {"Reshape", OP_COPY, 2, 2},  {"Constant", OP_COPY, 0, 0},
};

static void run_step(ch_onnx_t *m, const step_t *s, size_t n);

/* An operand of an elementwise op: its element (i, j) of an [n, cols] result. */
static inline float elem(const val_t *v, size_t i, size_t j) {
    size_t r = v->is_const ? 0 : i;
    return v->data[r * v->cols + (v->cols == 1 ? 0 : j)];
}

/* A node's output value: [N, cols] for the batch, or [1, cols] when folded at load. */
static int add_out(ch_onnx_t *m, const char *out, int rank, size_t cols, bool is_const) {
    int yi = add_val(m, out);
    if (yi < 0) {
        return yi;
    }
    val_t *Y = &m->vals[yi];
    Y->rank = rank;
    Y->cols = cols;
    Y->rows = 1;
    Y->is_const = is_const;
    Y->produced = true;
    Y->data = calloc((is_const ? 1 : m->max_batch) * cols, sizeof(float));
    Y->grad = is_const ? NULL : calloc(cols, sizeof(float));
    if (!Y->data || (!is_const && !Y->grad)) {
        return -ENOMEM;
    }
    return yi;
}

static int push_step(ch_onnx_t *m, const step_t *s) {
    step_t *ns = realloc(m->steps, (m->n_steps + 1) * sizeof(*ns));
    if (!ns) {
        return -ENOMEM;
    }
    m->steps = ns;
    m->steps[m->n_steps++] = *s;
    return 0;
}

/* A tree ensemble: one [N, d] batch input; outputs (label, scores) or (values). */
static int compile_trees(ch_onnx_t *m, const Onnx__NodeProto *nd, const char *where, char *errbuf,
                         size_t errlen) {
    bool classifier = strcmp(nd->op_type, "TreeEnsembleClassifier") == 0;
    if (nd->n_input != 1 || !nd->input[0][0] || nd->n_output < (classifier ? 2u : 1u)) {
        return fail(errbuf, errlen, -EINVAL, "%s: %zu inputs and %zu outputs (expected 1, %d)",
                    where, nd->n_input, nd->n_output, classifier ? 2 : 1);
    }
    int a = find_val(m, nd->input[0]);
    if (a < 0 || m->vals[a].is_const || m->vals[a].is_int || m->vals[a].rank != 2) {
        return fail(errbuf, errlen, -EINVAL, "%s: input '%s' must be the [N, d] float batch", where,
                    nd->input[0]);
    }
    for (size_t i = 0; i < nd->n_output; i++) {
        if (nd->output[i][0] && find_val(m, nd->output[i]) >= 0) {
            return fail(errbuf, errlen, -EINVAL, "%s: output '%s' is produced twice", where,
                        nd->output[i]);
        }
    }
    step_t s = {.op = OP_TREES, .a = a, .b = -1, .c = -1};
    int r = ch_trees_compile(nd, m->vals[a].cols, m->max_batch, where, &s.trees, errbuf, errlen);
    if (r < 0) {
        return r;
    }
    const char *out = nd->output[classifier ? 1 : 0];
    if (classifier && nd->output[0][0]) { /* the label: int64, never computed */
        int li = add_val(m, nd->output[0]);
        if (li < 0) {
            ch_trees_free(s.trees);
            return li;
        }
        m->vals[li].is_int = m->vals[li].produced = true;
        m->vals[li].rank = 1;
        m->vals[li].cols = 1;
    }
    if (!out[0]) {
        ch_trees_free(s.trees);
        return fail(errbuf, errlen, -EINVAL, "%s: the scores output is unnamed", where);
    }
    s.y = add_out(m, out, 2, ch_trees_cols(s.trees), false);
    r = s.y < 0 ? s.y : push_step(m, &s);
    if (r < 0) {
        ch_trees_free(s.trees);
    }
    return r;
}

static int compile_node(ch_onnx_t *m, const Onnx__NodeProto *nd, size_t idx, int64_t opset,
                        char *errbuf, size_t errlen) {
    char where[160];
    snprintf(where, sizeof(where), "node %zu '%s' (%s)", idx, nd->name ? nd->name : "",
             nd->op_type ? nd->op_type : "?");
    if (nd->domain && strcmp(nd->domain, "ai.onnx.ml") == 0 && nd->op_type &&
        (strcmp(nd->op_type, "TreeEnsembleClassifier") == 0 ||
         strcmp(nd->op_type, "TreeEnsembleRegressor") == 0)) {
        return compile_trees(m, nd, where, errbuf, errlen);
    }
    if (nd->domain && nd->domain[0] && strcmp(nd->domain, "ai.onnx") != 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "%s: operator domain '%s' is not supported (ai.onnx.ml: only "
                    "TreeEnsembleClassifier and TreeEnsembleRegressor)",
                    where, nd->domain);
    }
    size_t t;
    for (t = 0; t < sizeof(op_table) / sizeof(op_table[0]); t++) {
        if (nd->op_type && strcmp(nd->op_type, op_table[t].name) == 0) {
            break;
        }
    }
    if (t == sizeof(op_table) / sizeof(op_table[0])) {
        return fail(errbuf, errlen, -EINVAL,
                    "%s: unsupported operator (supported: Gemm MatMul Add Sub Mul Div Relu "
                    "LeakyRelu Sigmoid Tanh Softmax Identity Flatten Reshape Constant)",
                    where);
    }
    const char *opname = op_table[t].name;
    size_t n_in = nd->n_input;
    while (n_in > 0 && nd->input[n_in - 1][0] == '\0') {
        n_in--; /* trailing optional inputs left empty */
    }
    if ((int)n_in < op_table[t].min_in || (int)n_in > op_table[t].max_in || nd->n_output < 1 ||
        !nd->output[0][0]) {
        return fail(errbuf, errlen, -EINVAL, "%s: %zu inputs and %zu outputs (expected %d-%d, 1)",
                    where, n_in, nd->n_output, op_table[t].min_in, op_table[t].max_in);
    }
    if (find_val(m, nd->output[0]) >= 0) {
        return fail(errbuf, errlen, -EINVAL, "%s: output '%s' is produced twice", where,
                    nd->output[0]);
    }
    if (strcmp(opname, "Constant") == 0) {
        const Onnx__AttributeProto *va = attr(nd, "value");
        if (!va || !va->t) {
            return fail(errbuf, errlen, -EINVAL, "%s: only the 'value' tensor form is supported",
                        where);
        }
        int r = load_tensor(m, va->t, nd->output[0], where, errbuf, errlen);
        return r < 0 ? r : 0;
    }
    int in[3] = {-1, -1, -1};
    for (size_t i = 0; i < n_in; i++) {
        if (!nd->input[i][0]) {
            return fail(errbuf, errlen, -EINVAL, "%s: input %zu is empty", where, i);
        }
        in[i] = find_val(m, nd->input[i]);
        if (in[i] < 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: input '%s' is not an initializer, the graph input, or the output "
                        "of an earlier node",
                        where, nd->input[i]);
        }
    }
    step_t s = {.op = op_table[t].op, .a = in[0], .b = in[1], .c = in[2], .alpha = 1, .beta = 1};
    const val_t *A = &m->vals[in[0]];
    if (A->is_int || (in[1] >= 0 && m->vals[in[1]].is_int && s.op != OP_COPY)) {
        return fail(errbuf, errlen, -EINVAL, "%s: integer tensors are only supported as shapes",
                    where);
    }
    int rank = A->rank;
    size_t cols = A->cols;
    bool is_const = A->is_const;

    switch (s.op) {
    case OP_GEMM: {
        bool matmul = strcmp(opname, "MatMul") == 0;
        const val_t *B = &m->vals[in[1]];
        if (A->is_const || A->rank != 2) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: input A must be the [N, k] batch (a constant or 1-D A is not "
                        "supported)",
                        where);
        }
        if (!B->is_const || (B->rank != 2 && !(matmul && B->rank == 1))) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: input B must be a 2-D constant (weights)", where);
        }
        if (!matmul) {
            if (attr_i(nd, "transA", 0)) {
                return fail(errbuf, errlen, -EINVAL, "%s: transA=1 is not supported", where);
            }
            s.trans_b = attr_i(nd, "transB", 0) != 0;
            s.alpha = attr_f(nd, "alpha", 1.0f);
            s.beta = attr_f(nd, "beta", 1.0f);
        }
        size_t bk = B->rank == 1 ? B->cols : (s.trans_b ? B->cols : B->rows);
        size_t bm = B->rank == 1 ? 1 : (s.trans_b ? B->rows : B->cols);
        if (bk != A->cols) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: A has %zu columns but B has %zu rows (after transB)", where, A->cols,
                        bk);
        }
        s.k = bk;
        s.m = bm;
        if (in[2] >= 0) {
            const val_t *C = &m->vals[in[2]];
            if (!C->is_const || C->rows != 1 || (C->cols != 1 && C->cols != bm)) {
                return fail(errbuf, errlen, -EINVAL,
                            "%s: bias C must be a constant of shape [%zu], [1, %zu] or a scalar",
                            where, bm, bm);
            }
        }
        rank = B->rank == 1 ? 1 : 2;
        cols = bm;
        is_const = false;
        break;
    }
    case OP_ADD:
    case OP_SUB:
    case OP_MUL:
    case OP_DIV: {
        const val_t *B = &m->vals[in[1]];
        for (int k = 0; k < 2; k++) {
            const val_t *v = k ? B : A;
            if (v->is_const && v->rows != 1) {
                return fail(errbuf, errlen, -EINVAL,
                            "%s: constant '%s' has %zu rows; only a row or a scalar broadcasts "
                            "over the batch",
                            where, v->name, v->rows);
            }
        }
        if (A->cols != B->cols && A->cols != 1 && B->cols != 1) {
            return fail(errbuf, errlen, -EINVAL, "%s: widths %zu and %zu do not broadcast", where,
                        A->cols, B->cols);
        }
        if (!A->is_const && !B->is_const && A->rank != B->rank) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: a [N] and an [N, c] batch value do not broadcast", where);
        }
        if ((!A->is_const && A->rank == 1 && B->cols != 1) ||
            (!B->is_const && B->rank == 1 && A->cols != 1)) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: a [N] batch value only combines with scalars", where);
        }
        cols = A->cols > B->cols ? A->cols : B->cols;
        rank = A->is_const ? (B->is_const ? (A->rank > B->rank ? A->rank : B->rank) : B->rank)
                           : (B->is_const ? (B->rank > A->rank ? B->rank : A->rank) : A->rank);
        is_const = A->is_const && B->is_const;
        break;
    }
    case OP_LEAKY:
        s.alpha = attr_f(nd, "alpha", 0.01f);
        break;
    case OP_SOFTMAX: {
        int64_t axis = attr_i(nd, "axis", opset < 13 ? 1 : -1);
        if (A->rank != 2 || (axis != 1 && axis != -1)) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: only a softmax over the last axis of [N, c] is supported", where);
        }
        break;
    }
    case OP_COPY:
        if (strcmp(opname, "Flatten") == 0) {
            if (attr_i(nd, "axis", 1) != 1 || A->is_const) {
                return fail(errbuf, errlen, -EINVAL,
                            "%s: only Flatten(axis=1) of the batch is supported", where);
            }
            rank = 2;
        } else if (strcmp(opname, "Reshape") == 0) {
            const val_t *S = &m->vals[in[1]];
            if (!S->is_int || A->is_const) {
                return fail(errbuf, errlen, -EINVAL,
                            "%s: the shape must be an int64 constant and the data the batch",
                            where);
            }
            bool ok = false;
            if (S->n_ints == 2) {
                int64_t s0 = S->ints[0], s1 = S->ints[1];
                ok = (s0 == -1 || s0 == 0) && (s1 == (int64_t)A->cols || (s1 == -1 && s0 == 0) ||
                                               (s1 == 0 && A->rank == 2));
                rank = 2;
            } else if (S->n_ints == 1) {
                ok = S->ints[0] == -1 && A->cols == 1;
                rank = 1;
            }
            if (!ok) {
                return fail(errbuf, errlen, -EINVAL,
                            "%s: only reshapes that keep the batch as rows ([-1, %zu]) are "
                            "supported",
                            where, A->cols);
            }
            s.b = -1;
        }
        break;
    default:
        break;
    }

    s.y = add_out(m, nd->output[0], rank, cols, is_const);
    if (s.y < 0) {
        return s.y;
    }
    if (is_const) { /* fold now: it never depends on the batch */
        run_step(m, &s, 1);
        return 0;
    }
    return push_step(m, &s);
}

/*
 * How contributions are computed. A tree ensemble that reads the graph input and
 * produces the scores is explained by its Shapley values; gradients through trees
 * are zero, so any other graph with trees has no reasons.
 */
static int plan_reasons(ch_onnx_t *m) {
    m->shap_step = -1;
    size_t trees = 0;
    int at = -1;
    for (size_t i = 0; i < m->n_steps; i++) {
        if (m->steps[i].op == OP_TREES) {
            trees++;
            at = (int)i;
        }
    }
    if (trees == 0) {
        snprintf(m->reasons, sizeof(m->reasons), "gradient x input of the logit");
        return 0;
    }
    const step_t *s = &m->steps[at];
    m->no_reasons = true;
    if (trees > 1 || s->a != m->input || s->y != m->output) {
        snprintf(m->reasons, sizeof(m->reasons),
                 "no reasons: a tree ensemble is explained only when it reads the graph input "
                 "and produces the scores");
        return 0;
    }
    snprintf(m->reasons, sizeof(m->reasons), "%s", ch_trees_explain(s->trees));
    if (!ch_trees_explains(s->trees)) {
        return 0;
    }
    m->no_reasons = false;
    m->phi = calloc(m->n_inputs, sizeof(double));
    if (!m->phi) {
        return -ENOMEM;
    }
    m->shap_step = at;
    return 0;
}

/* A comma-separated list of at most max finite numbers; returns the count or -1. */
static long parse_list(const char *s, double *out, size_t max) {
    size_t n = 0;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !isfinite(v) || n == max || (*end && *end != ',')) {
            return -1;
        }
        out[n++] = v;
        s = *end ? end + 1 : end;
    }
    return (long)n;
}

#define AE_MAX_QUANTILES 10001

/* An autoencoder: its output reconstructs the input; the metadata gives the error's
 * per-feature scale and the training errors' quantiles. */
static int plan_autoencoder(ch_onnx_t *m, char *errbuf, size_t errlen) {
    if (!m->ae_meta_scale || !m->ae_meta_quant) {
        return fail(errbuf, errlen, -EINVAL,
                    "metadata: an autoencoder needs both cohortd.autoencoder.scale and "
                    "cohortd.autoencoder.error_quantiles");
    }
    const val_t *out = &m->vals[m->output];
    if (out->cols != m->n_inputs) {
        return fail(errbuf, errlen, -EINVAL,
                    "autoencoder: output '%s' has %zu columns; a reconstruction of the input "
                    "has %zu",
                    out->name, out->cols, m->n_inputs);
    }
    double *scale = malloc(m->n_inputs * sizeof(double));
    m->ae_scale = malloc(m->n_inputs * sizeof(float));
    m->ae_quant = malloc(AE_MAX_QUANTILES * sizeof(double));
    if (!scale || !m->ae_scale || !m->ae_quant) {
        free(scale);
        return -ENOMEM;
    }
    long ns = parse_list(m->ae_meta_scale, scale, m->n_inputs);
    for (long j = 0; j < ns; j++) {
        m->ae_scale[j] = (float)scale[j];
        if (!(scale[j] > 0)) {
            ns = -1;
        }
    }
    free(scale);
    if (ns != (long)m->n_inputs) {
        return fail(errbuf, errlen, -EINVAL,
                    "metadata cohortd.autoencoder.scale: expected %zu positive numbers",
                    m->n_inputs);
    }
    long nq = parse_list(m->ae_meta_quant, m->ae_quant, AE_MAX_QUANTILES);
    for (long i = 1; i < nq; i++) {
        if (m->ae_quant[i] < m->ae_quant[i - 1]) {
            nq = -1;
        }
    }
    if (nq < 2) {
        return fail(errbuf, errlen, -EINVAL,
                    "metadata cohortd.autoencoder.error_quantiles: expected 2 to %d "
                    "non-decreasing numbers",
                    AE_MAX_QUANTILES);
    }
    m->ae_n_quant = (size_t)nq;
    m->ae_meta_scale = m->ae_meta_quant = NULL; /* they point into the parsed file */
    snprintf(m->reasons, sizeof(m->reasons),
             "autoencoder: each feature's share of the reconstruction error");
    m->shap_step = -1;
    return 0;
}

/* The scaled squared reconstruction error of row i of the last batch. */
static double ae_error(const ch_onnx_t *m, size_t i, float *ret_terms) {
    const float *x = m->vals[m->input].data + i * m->n_inputs;
    const float *r = m->vals[m->output].data + i * m->n_inputs;
    double sum = 0;
    for (size_t j = 0; j < m->n_inputs; j++) {
        double t = ((double)x[j] - (double)r[j]) / m->ae_scale[j];
        t = t * t / (double)m->n_inputs;
        if (ret_terms) {
            ret_terms[j] = (float)t;
        }
        sum += t;
    }
    return sum;
}

/* The error's percentile among the training errors, as a fraction in [0, 1]: linear
 * between the stored quantiles (0 below the first, 1 above the last). */
static float ae_percentile(const ch_onnx_t *m, double err) {
    const double *q = m->ae_quant;
    size_t n = m->ae_n_quant;
    if (!(err > q[0])) {
        return 0.0f;
    }
    if (err >= q[n - 1]) {
        return 1.0f;
    }
    size_t lo = 0, hi = n - 1; /* q[lo] < err <= q[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (q[mid] < err) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    double f = (err - q[lo]) / (q[hi] - q[lo]);
    return (float)(((double)lo + f) / (double)(n - 1));
}

const char *ch_onnx_kind(const ch_onnx_t *m) { return m->ae_scale ? "autoencoder" : "classifier"; }

static uint32_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 16777619u;
    }
    return h;
}

static int compile_model(ch_onnx_t *m, const Onnx__ModelProto *mp,
                         const char *const *feature_names, char *errbuf, size_t errlen) {
    const Onnx__GraphProto *g = mp->graph;
    if (!g) {
        return fail(errbuf, errlen, -EINVAL, "model has no graph");
    }
    int64_t opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if ((!o->domain || !o->domain[0] || strcmp(o->domain, "ai.onnx") == 0) && o->has_version) {
            opset = o->version;
        }
    }
    if (opset < 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "model has no opset_import for the default domain (truncated file?)");
    }
    for (size_t i = 0; i < mp->n_metadata_props; i++) {
        const Onnx__StringStringEntryProto *e = mp->metadata_props[i];
        if (!e->key || !e->value) {
            continue;
        }
        if (strcmp(e->key, "cohortd.autoencoder.scale") == 0) {
            m->ae_meta_scale = e->value;
        } else if (strcmp(e->key, "cohortd.autoencoder.error_quantiles") == 0) {
            m->ae_meta_quant = e->value;
        }
        if (strcmp(e->key, "cohortd.drift") == 0 && !m->drift_meta) {
            m->drift_meta = strdup(e->value);
            if (!m->drift_meta) {
                return -ENOMEM;
            }
        }
        if (strcmp(e->key, "model_version") == 0 && e->value[0]) {
            snprintf(m->version, sizeof(m->version), "%s", e->value);
        } else if (strcmp(e->key, "cohortd.features") == 0 && feature_names) {
            const char *p = e->value;
            for (size_t f = 0; f < m->n_inputs; f++) {
                size_t len = strcspn(p, ",");
                if (strlen(feature_names[f]) != len || strncmp(p, feature_names[f], len) != 0) {
                    return fail(errbuf, errlen, -EINVAL,
                                "model input %zu is feature '%.*s' but the config declares "
                                "'%s' there (model features: %s)",
                                f, (int)len, p, feature_names[f], e->value);
                }
                p += len;
                if (*p == ',') {
                    p++;
                }
            }
            if (*p) {
                return fail(errbuf, errlen, -EINVAL,
                            "model was trained on more features than the config declares "
                            "(model features: %s)",
                            e->value);
            }
        }
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *t = g->initializer[i];
        if (!t->name || !t->name[0] || find_val(m, t->name) >= 0) {
            return fail(errbuf, errlen, -EINVAL, "initializer %zu: missing or duplicate name", i);
        }
        int r = load_tensor(m, t, t->name, "initializer", errbuf, errlen);
        if (r < 0) {
            return r;
        }
    }
    m->input = -1;
    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__ValueInfoProto *vi = g->input[i];
        if (!vi->name || find_val(m, vi->name) >= 0) {
            continue; /* an initializer listed as input (older exporters) */
        }
        if (m->input >= 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "graph has more than one input ('%s' and '%s'); expected one [N, %zu] "
                        "float tensor",
                        m->vals[m->input].name, vi->name, m->n_inputs);
        }
        const Onnx__TypeProto *tp = vi->type;
        if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE ||
            !tp->tensor_type->has_elem_type ||
            tp->tensor_type->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
            return fail(errbuf, errlen, -EINVAL, "graph input '%s' is not a float tensor",
                        vi->name);
        }
        const Onnx__TensorShapeProto *sh = tp->tensor_type->shape;
        if (sh) {
            if (sh->n_dim != 2) {
                return fail(errbuf, errlen, -EINVAL,
                            "graph input '%s' has rank %zu; expected [N, %zu]", vi->name,
                            sh->n_dim, m->n_inputs);
            }
            const Onnx__TensorShapeProto__Dimension *d = sh->dim[1];
            if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                d->dim_value != (int64_t)m->n_inputs) {
                return fail(errbuf, errlen, -EINVAL,
                            "graph input '%s' has %lld features; the config declares %zu",
                            vi->name, (long long)d->dim_value, m->n_inputs);
            }
        }
        int x = add_val(m, vi->name);
        if (x < 0) {
            return x;
        }
        m->input = x;
        m->vals[x].rank = 2;
        m->vals[x].cols = m->n_inputs;
        m->vals[x].produced = true;
        m->vals[x].data = calloc(m->max_batch * m->n_inputs, sizeof(float));
        m->vals[x].grad = calloc(m->n_inputs, sizeof(float));
        if (!m->vals[x].data || !m->vals[x].grad) {
            return -ENOMEM;
        }
    }
    if (m->input < 0) {
        return fail(errbuf, errlen, -EINVAL, "graph has no input tensor");
    }
    for (size_t i = 0; i < g->n_node; i++) {
        int r = compile_node(m, g->node[i], i, opset, errbuf, errlen);
        if (r < 0) {
            return r;
        }
    }
    if (g->n_output < 1 || !g->output[0]->name) {
        return fail(errbuf, errlen, -EINVAL, "graph has no output");
    }
    /* The scores: the first output, or a tree classifier's scores after its label. */
    size_t oi = 0;
    m->output = find_val(m, g->output[0]->name);
    while (m->output >= 0 && m->vals[m->output].is_int && oi + 1 < g->n_output &&
           g->output[oi + 1]->name) {
        m->output = find_val(m, g->output[++oi]->name);
    }
    if (m->output >= 0 && m->vals[m->output].is_int) {
        return fail(errbuf, errlen, -EINVAL,
                    "graph output '%s' is an int64 tensor (a label); the scores must be float",
                    g->output[oi]->name);
    }
    if (m->output < 0 || m->vals[m->output].is_const) {
        return fail(errbuf, errlen, -EINVAL,
                    "graph output '%s' is not computed from the input by any node",
                    g->output[oi]->name);
    }
    /* The logit for contributions: the input of a final Sigmoid/Softmax, else the score. */
    m->seed_val = m->output;
    m->seed_kind = 0;
    m->seed_step = -1;
    for (size_t i = m->n_steps; i-- > 0;) {
        if (m->steps[i].y == m->output) {
            m->seed_step = (int)i;
            const step_t *s = &m->steps[i];
            if (s->op == OP_SIGMOID) {
                m->seed_val = s->a;
                m->seed_kind = 1;
                m->seed_step = (int)i - 1;
            } else if (s->op == OP_SOFTMAX) {
                m->seed_kind = 2;
            }
            break;
        }
    }
    if (m->seed_step < 0 && m->seed_kind == 0) {
        m->seed_step = (int)m->n_steps - 1;
    }
    if (m->ae_meta_scale || m->ae_meta_quant) {
        return plan_autoencoder(m, errbuf, errlen);
    }
    return plan_reasons(m);
}

int ch_onnx_load_buffer(const void *buf, size_t len, const char *version_hint, size_t n_inputs,
                        const char *const *feature_names, size_t max_batch,
                        ch_onnx_t **ret_model, char *errbuf, size_t errlen) {
    if (n_inputs == 0 || max_batch == 0 || max_batch > (1u << 20)) {
        return fail(errbuf, errlen, -EINVAL, "input width and batch size must be positive");
    }
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, buf);
    if (!mp) {
        return fail(errbuf, errlen, -EBADMSG,
                    "not a valid ONNX model: the protobuf does not parse (%zu bytes; truncated "
                    "or not an .onnx file?)",
                    len);
    }
    ch_onnx_t *m = calloc(1, sizeof(*m));
    int r = -ENOMEM;
    if (!m) {
        goto out_free_proto;
    }
    m->n_inputs = n_inputs;
    m->max_batch = max_batch;
    r = compile_model(m, mp, feature_names, errbuf, errlen);
    if (r < 0) {
        if (r == -ENOMEM) {
            fail(errbuf, errlen, r, "out of memory");
        }
        m = ch_onnx_free(m);
        goto out_free_proto;
    }
    if (!m->version[0]) {
        snprintf(m->version, sizeof(m->version), "%s@%08x", version_hint ? version_hint : "model",
                 fnv1a(buf, len));
    }
    *ret_model = m;
out_free_proto:
    onnx__model_proto__free_unpacked(mp, NULL);
    return r;
}

int ch_onnx_load(const char *path, size_t n_inputs, const char *const *feature_names,
                 size_t max_batch, ch_onnx_t **ret_model, char *errbuf, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return fail(errbuf, errlen, e == ENOENT ? -ENOENT : -EIO, "%s: %s", path, strerror(e));
    }
    struct stat st;
    int r;
    unsigned char *buf = NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        r = fail(errbuf, errlen, -EIO, "%s: not a regular file", path);
        goto out_close;
    }
    if ((uint64_t)st.st_size > CH_ONNX_MAX_FILE_BYTES) {
        r = fail(errbuf, errlen, -EINVAL, "%s: %lld bytes is larger than the %u MiB limit", path,
                 (long long)st.st_size, CH_ONNX_MAX_FILE_BYTES >> 20);
        goto out_close;
    }
    size_t len = (size_t)st.st_size;
    buf = malloc(len ? len : 1);
    if (!buf) {
        r = -ENOMEM;
        goto out_close;
    }
    for (size_t got = 0; got < len;) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0) {
            r = fail(errbuf, errlen, -EIO, "%s: read failed: %s", path,
                     n < 0 ? strerror(errno) : "file shrank while reading");
            goto out_free;
        }
        got += (size_t)n;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char sub[CH_ONNX_VERSION_MAX];
    r = ch_onnx_load_buffer(buf, len, base, n_inputs, feature_names, max_batch, ret_model, sub,
                            sizeof(sub));
    if (r < 0) {
        fail(errbuf, errlen, r, "%s: %s", path, sub);
    }
out_free:
    free(buf);
out_close:
    close(fd);
    return r;
}

/* ---- evaluation ---------------------------------------------------------- */

static void run_step(ch_onnx_t *m, const step_t *s, size_t n) {
    const val_t *A = &m->vals[s->a];
    const val_t *B = s->b >= 0 ? &m->vals[s->b] : NULL;
    val_t *Y = &m->vals[s->y];
    size_t cols = Y->cols;
    float *y = Y->data;
    switch (s->op) {
    case OP_TREES:
        ch_trees_eval(s->trees, A->data, n, A->cols, y);
        break;
    case OP_GEMM: {
        float beta = 0;
        if (s->c >= 0) {
            const val_t *C = &m->vals[s->c];
            for (size_t i = 0; i < n; i++) {
                for (size_t j = 0; j < cols; j++) {
                    y[i * cols + j] = C->data[C->cols == 1 ? 0 : j];
                }
            }
            beta = s->beta;
        }
        size_t ldb = B->rank == 1 ? 1 : B->cols;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, s->trans_b ? CblasTrans : CblasNoTrans, (int)n,
                    (int)s->m, (int)s->k, s->alpha, A->data, (int)A->cols, B->data, (int)ldb,
                    beta, y, (int)cols);
        break;
    }
    case OP_ADD:
    case OP_SUB:
    case OP_MUL:
    case OP_DIV:
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < cols; j++) {
                float a = elem(A, i, j), b = elem(B, i, j);
                y[i * cols + j] = s->op == OP_ADD   ? a + b
                                  : s->op == OP_SUB ? a - b
                                  : s->op == OP_MUL ? a * b
                                                    : a / b;
            }
        }
        break;
    case OP_SOFTMAX:
        for (size_t i = 0; i < n; i++) {
            const float *x = A->data + i * cols;
            float *o = y + i * cols, mx = x[0], sum = 0;
            for (size_t j = 1; j < cols; j++) {
                mx = x[j] > mx ? x[j] : mx;
            }
            for (size_t j = 0; j < cols; j++) {
                o[j] = expf(x[j] - mx);
                sum += o[j];
            }
            for (size_t j = 0; j < cols; j++) {
                o[j] /= sum;
            }
        }
        break;
    default: {
        size_t total = n * cols;
        const float *x = A->data;
        for (size_t i = 0; i < total; i++) {
            float v = x[i];
            y[i] = s->op == OP_RELU      ? (v > 0 ? v : 0)
                   : s->op == OP_LEAKY   ? (v > 0 ? v : s->alpha * v)
                   : s->op == OP_SIGMOID ? 1.0f / (1.0f + expf(-v))
                   : s->op == OP_TANH    ? tanhf(v)
                                         : v;
        }
        break;
    }
    }
}

int ch_onnx_eval(ch_onnx_t *m, const float *x, size_t n, float *ret_scores) {
    if (n == 0 || n > m->max_batch) {
        return -EINVAL;
    }
    memcpy(m->vals[m->input].data, x, n * m->n_inputs * sizeof(float));
    for (size_t i = 0; i < m->n_steps; i++) {
        run_step(m, &m->steps[i], n);
    }
    const val_t *out = &m->vals[m->output];
    for (size_t i = 0; i < n; i++) {
        ret_scores[i] = m->ae_scale ? ae_percentile(m, ae_error(m, i, NULL))
                                    : out->data[i * out->cols + out->cols - 1];
    }
    m->last_n = n;
    return 0;
}

/* ---- contributions (backward pass for one row) --------------------------- */

static void back_step(ch_onnx_t *m, const step_t *s, size_t r) {
    val_t *A = &m->vals[s->a];
    val_t *B = s->b >= 0 ? &m->vals[s->b] : NULL;
    const val_t *Y = &m->vals[s->y];
    const float *gy = Y->grad;
    size_t cols = Y->cols;
    const float *yr = Y->data + r * cols;
    switch (s->op) {
    case OP_TREES: /* piecewise constant: no gradient */
        break;
    case OP_GEMM:
        for (size_t kk = 0; kk < s->k; kk++) {
            float acc = 0;
            for (size_t mm = 0; mm < s->m; mm++) {
                float b = B->rank == 1   ? B->data[kk]
                          : s->trans_b ? B->data[mm * s->k + kk]
                                       : B->data[kk * s->m + mm];
                acc += gy[mm] * b;
            }
            A->grad[kk] += s->alpha * acc;
        }
        break;
    case OP_ADD:
    case OP_SUB:
    case OP_MUL:
    case OP_DIV:
        for (size_t j = 0; j < cols; j++) {
            float a = elem(A, r, j), b = elem(B, r, j), da, db;
            switch (s->op) {
            case OP_ADD:
                da = 1, db = 1;
                break;
            case OP_SUB:
                da = 1, db = -1;
                break;
            case OP_MUL:
                da = b, db = a;
                break;
            default:
                da = 1 / b, db = -a / (b * b);
                break;
            }
            if (!A->is_const) {
                A->grad[A->cols == 1 ? 0 : j] += gy[j] * da;
            }
            if (!B->is_const) {
                B->grad[B->cols == 1 ? 0 : j] += gy[j] * db;
            }
        }
        break;
    case OP_SOFTMAX: {
        float dot = 0;
        for (size_t j = 0; j < cols; j++) {
            dot += gy[j] * yr[j];
        }
        for (size_t j = 0; j < cols; j++) {
            A->grad[j] += yr[j] * (gy[j] - dot);
        }
        break;
    }
    default: {
        const float *xr = A->data + r * A->cols;
        for (size_t j = 0; j < cols; j++) {
            float d = s->op == OP_RELU      ? (xr[j] > 0 ? 1.0f : 0.0f)
                      : s->op == OP_LEAKY   ? (xr[j] > 0 ? 1.0f : s->alpha)
                      : s->op == OP_SIGMOID ? yr[j] * (1 - yr[j])
                      : s->op == OP_TANH    ? 1 - yr[j] * yr[j]
                                            : 1.0f;
            A->grad[j] += gy[j] * d;
        }
        break;
    }
    }
}

int ch_onnx_contributions(ch_onnx_t *m, size_t row, float *ret_contrib) {
    if (row >= m->last_n) {
        return -EINVAL;
    }
    if (m->ae_scale) {
        ae_error(m, row, ret_contrib);
        return 0;
    }
    if (m->shap_step >= 0) {
        const step_t *s = &m->steps[m->shap_step];
        int r = ch_trees_shap(s->trees, m->vals[m->input].data + row * m->n_inputs, m->phi);
        if (r < 0) {
            return r;
        }
        for (size_t j = 0; j < m->n_inputs; j++) {
            ret_contrib[j] = (float)m->phi[j];
        }
        return 0;
    }
    if (m->no_reasons) {
        return -ENOTSUP;
    }
    for (size_t i = 0; i < m->n_vals; i++) {
        if (m->vals[i].grad) {
            memset(m->vals[i].grad, 0, m->vals[i].cols * sizeof(float));
        }
    }
    val_t *sv = &m->vals[m->seed_val];
    size_t c = sv->cols;
    if (m->seed_kind == 2) { /* softmax output: log-odds of the last class, w.r.t. its input */
        const step_t *s = &m->steps[m->seed_step];
        val_t *in = &m->vals[s->a];
        const float *p = sv->data + row * c;
        if (c == 2) {
            in->grad[0] = -1, in->grad[1] = 1;
        } else {
            /* d/dz [log p_c - log(1 - p_c)] = (e_c - p) / (1 - p_c) */
            float q = 1 - p[c - 1] > 1e-12f ? 1 - p[c - 1] : 1e-12f;
            for (size_t j = 0; j < c; j++) {
                in->grad[j] = ((j == c - 1 ? 1.0f : 0.0f) - p[j]) / q;
            }
        }
        for (int i = m->seed_step - 1; i >= 0; i--) {
            back_step(m, &m->steps[i], row);
        }
    } else {
        sv->grad[c - 1] = 1;
        for (int i = m->seed_step; i >= 0; i--) {
            back_step(m, &m->steps[i], row);
        }
    }
    const val_t *x = &m->vals[m->input];
    for (size_t j = 0; j < m->n_inputs; j++) {
        ret_contrib[j] = x->grad[j] * x->data[row * m->n_inputs + j];
    }
    return 0;
}
