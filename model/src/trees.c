/*
 * trees.c - ONNX-ML tree ensembles: compile at load, evaluate batched, explain by
 * path-dependent TreeSHAP.
 *
 * Design notes
 * - Layout: one array of 16-byte nodes for all trees, each tree in preorder so a
 *   parent's true child is the next node. Every split mode is turned into
 *   "x <= thr" on float inputs at load: BRANCH_LT t becomes <= the largest float
 *   below t, BRANCH_GT and BRANCH_GTE swap their children, and a double threshold
 *   (nodes_values_as_tensor) is rounded so that the float comparison decides
 *   exactly as the double one would. NaN goes where nodes_missing_value_tracks_true
 *   says (the true child when set, else the false one), as onnxruntime does.
 *   Measured against a QuickScorer-style bitvector layout only on paper: with depth
 *   6 and d = 16 a tree-major walk of 6 dependent loads per tree and row keeps the
 *   node array (about 600 KB for 300 trees) in L2; the benchmark in tools/bench has
 *   the figure against XGBoost's own predict.
 * - Evaluation is tree-major (every row through one tree, then the next) into a
 *   double accumulator owned by the model, so a 300-tree sum loses nothing to float
 *   rounding; post_transform runs once per row at the end. No allocation.
 * - Classifier semantics follow the ONNX-ML spec as onnxruntime reads it: with two
 *   class labels and every weight on class 0 (what sklearn's gradient boosting and
 *   XGBoost exports write) there is one score s, and the output is [1 - T(s), T(s)]
 *   with T the logistic function under LOGISTIC and the identity under NONE.
 *   (onnxruntime skips the logistic there when every leaf weight is positive, a
 *   quirk no exporter relies on; cohortd does not copy it.)
 * - Shapley values: Lundberg, Erion and Lee, "Consistent individualized feature
 *   attribution for tree ensembles" (2018), algorithm 2, with the node covers taken
 *   from nodes_hitrates (the training weight or hessian reaching each node; only the
 *   ratio of a child's cover to its parent's is used). Without positive covers on
 *   every node the model still scores, and ch_trees_explain() says why there are no
 *   reasons.
 */
#include "trees_int.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"

#define MAX_DEPTH 512 /* deeper trees are refused: TreeSHAP recurses once a level */

enum post { POST_NONE, POST_LOGISTIC, POST_SOFTMAX, POST_SOFTMAX_ZERO };

typedef struct tnode {
    float thr;       /* branch: kid[0] when x <= thr; single-column leaf: its weight */
    uint16_t feat;   /* branch: input column */
    uint8_t leaf;    /* 1 for a leaf */
    uint8_t nan_kid; /* branch: the child NaN goes to */
    uint32_t kid[2]; /* branch: children; leaf: first weight and weight count */
} tnode_t;

/* A node of the complete-tree layout: the right child when x > thr, or x is NaN and
 * nan_right is set. Leaves above the tree's depth are padded with splits every value
 * takes to the left (thr = +inf), so every row takes exactly depth steps. */
typedef struct pnode {
    float thr;
    uint16_t feat;
    uint8_t nan_right;
    uint8_t pad;
} pnode_t;

typedef struct path_el {
    int feat;
    double zero, one, w;
} path_el_t;

struct ch_trees {
    bool classifier, binary, average;
    enum post post;
    size_t d, cols, acc_cols, max_batch;
    size_t n_trees, n_nodes, n_w, max_depth;
    tnode_t *nodes;
    uint32_t *roots;
    uint32_t *w_col;
    double *w_val;
    double *base; /* acc_cols */
    double *acc;  /* max_batch * acc_cols */
    double *cover;
    path_el_t *path; /* (max_depth + 2) * (max_depth + 3) / 2 elements */
    /* complete-tree layout (NULL when too sparse to pay): per tree its depth and the
     * offsets of its 2^depth - 1 splits and 2^depth leaves (indices into nodes) */
    pnode_t *p_split;
    uint32_t *p_leaf;
    uint8_t *p_depth;
    size_t *p_split_off, *p_leaf_off;
    char explain[200];
};

ch_trees_t *ch_trees_free(ch_trees_t *t) {
    if (t) {
        free(t->nodes);
        free(t->roots);
        free(t->w_col);
        free(t->w_val);
        free(t->base);
        free(t->acc);
        free(t->cover);
        free(t->path);
        free(t->p_split);
        free(t->p_leaf);
        free(t->p_depth);
        free(t->p_split_off);
        free(t->p_leaf_off);
        free(t);
    }
    return NULL;
}

size_t ch_trees_cols(const ch_trees_t *t) { return t->cols; }

bool ch_trees_is_classifier(const ch_trees_t *t) { return t->classifier; }

bool ch_trees_explains(const ch_trees_t *t) { return t->cover != NULL; }

const char *ch_trees_explain(const ch_trees_t *t) { return t->explain; }

size_t ch_trees_count(const ch_trees_t *t) { return t->n_trees; }

size_t ch_trees_nodes(const ch_trees_t *t) { return t->n_nodes; }

/* ---- attributes ---------------------------------------------------------- */

static const Onnx__AttributeProto *find_attr(const Onnx__NodeProto *nd, const char *name) {
    for (size_t i = 0; i < nd->n_attribute; i++) {
        if (nd->attribute[i]->name && strcmp(nd->attribute[i]->name, name) == 0) {
            return nd->attribute[i];
        }
    }
    return NULL;
}

typedef struct ctx {
    const Onnx__NodeProto *nd;
    const char *where;
    char *errbuf;
    size_t errlen;
} ctx_t;

static int bad_type(const ctx_t *c, const Onnx__AttributeProto *a, const char *want) {
    return fail(c->errbuf, c->errlen, -EINVAL, "%s: attribute %s is not %s (type %d)", c->where,
                a->name, want, a->has_type ? (int)a->type : -1);
}

/* An ints attribute: NULL and 0 when absent. */
static int get_ints(const ctx_t *c, const char *name, const int64_t **v, size_t *n) {
    const Onnx__AttributeProto *a = find_attr(c->nd, name);
    *v = NULL;
    *n = 0;
    if (!a) {
        return 0;
    }
    if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS) {
        return bad_type(c, a, "a list of ints");
    }
    *v = a->ints;
    *n = a->n_ints;
    return 0;
}

/* A floats attribute, or its double "_as_tensor" twin, copied as doubles. */
static int get_reals(const ctx_t *c, const char *name, double **v, size_t *n) {
    *v = NULL;
    *n = 0;
    const Onnx__AttributeProto *a = find_attr(c->nd, name);
    char tname[64];
    snprintf(tname, sizeof(tname), "%s_as_tensor", name);
    const Onnx__AttributeProto *at = find_attr(c->nd, tname);
    if (a && at) {
        return fail(c->errbuf, c->errlen, -EINVAL, "%s: both %s and %s are set", c->where, name,
                    tname);
    }
    size_t cnt = 0;
    if (a) {
        if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS) {
            return bad_type(c, a, "a list of floats");
        }
        cnt = a->n_floats;
    } else if (at) {
        const Onnx__TensorProto *t = at->t;
        if (!t || (at->has_type && at->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR)) {
            return bad_type(c, at, "a tensor");
        }
        bool dbl = t->has_data_type && t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE;
        bool flt = t->has_data_type && t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
        if (!dbl && !flt) {
            return fail(c->errbuf, c->errlen, -EINVAL, "%s: %s is not a double or float tensor",
                        c->where, tname);
        }
        size_t width = dbl ? 8 : 4;
        if (t->has_raw_data) {
            if (t->raw_data.len % width) {
                return fail(c->errbuf, c->errlen, -EINVAL, "%s: %s has %zu bytes of raw data",
                            c->where, tname, t->raw_data.len);
            }
            cnt = t->raw_data.len / width;
        } else {
            cnt = dbl ? t->n_double_data : t->n_float_data;
        }
    } else {
        return 0;
    }
    double *out = malloc((cnt ? cnt : 1) * sizeof(double));
    if (!out) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < cnt; i++) {
        if (a) {
            out[i] = a->floats[i];
            continue;
        }
        const Onnx__TensorProto *t = at->t;
        if (t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE) {
            if (t->has_raw_data) {
                memcpy(&out[i], t->raw_data.data + 8 * i, 8);
            } else {
                out[i] = t->double_data[i];
            }
        } else {
            float f;
            if (t->has_raw_data) {
                memcpy(&f, t->raw_data.data + 4 * i, 4);
            } else {
                f = t->float_data[i];
            }
            out[i] = f;
        }
    }
    *v = out;
    *n = cnt;
    return 0;
}

static int get_strings(const ctx_t *c, const char *name, const ProtobufCBinaryData **v, size_t *n) {
    const Onnx__AttributeProto *a = find_attr(c->nd, name);
    *v = NULL;
    *n = 0;
    if (!a) {
        return 0;
    }
    if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS) {
        return bad_type(c, a, "a list of strings");
    }
    *v = a->strings;
    *n = a->n_strings;
    return 0;
}

/* A string attribute's value, or dflt. */
static int get_string(const ctx_t *c, const char *name, const char *dflt, char *out, size_t len) {
    const Onnx__AttributeProto *a = find_attr(c->nd, name);
    if (!a) {
        snprintf(out, len, "%s", dflt);
        return 0;
    }
    if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING) || !a->has_s) {
        return bad_type(c, a, "a string");
    }
    snprintf(out, len, "%.*s", (int)(a->s.len < len ? a->s.len : len - 1), (const char *)a->s.data);
    return 0;
}

static bool str_is(const ProtobufCBinaryData *s, const char *lit) {
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->data, lit, n) == 0;
}

/* ---- compile ------------------------------------------------------------- */

enum mode { M_LEAF, M_LEQ, M_LT, M_GTE, M_GT };

typedef struct raw {
    /* nodes, in attribute order */
    size_t n;
    const int64_t *tree, *id, *feat, *tru, *fal, *mtt;
    size_t n_mtt;
    double *value, *hit;
    size_t n_hit;
    uint8_t *mode;
    /* weights */
    size_t n_w;
    const int64_t *w_tree, *w_node, *w_col;
    double *w_val;
    size_t *order;  /* node indices sorted by (tree, id) */
    size_t *w_head; /* per node: first weight in w_next chain, SIZE_MAX none */
    size_t *w_next;
    uint32_t *pos; /* per node: its index in the compiled array, UINT32_MAX not placed */
} raw_t;

typedef struct key {
    int64_t tree, id;
    size_t i;
} nkey_t;

static int cmp_key(const void *a, const void *b) {
    const nkey_t *x = a, *y = b;
    if (x->tree != y->tree) {
        return x->tree < y->tree ? -1 : 1;
    }
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Index of node (tree, id) among the sorted ones in [lo, hi), or SIZE_MAX. */
static size_t lookup(const raw_t *r, size_t lo, size_t hi, int64_t id) {
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int64_t v = r->id[r->order[mid]];
        if (v == id) {
            return r->order[mid];
        }
        if (v < id) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return SIZE_MAX;
}

/* The largest float f with f <= t (strict: f < t). */
static float float_below(double t, bool strict) {
    if (isinf(t)) {
        return (float)t;
    }
    float f = (float)t;
    while (strict ? (double)f >= t : (double)f > t) {
        f = nextafterf(f, -INFINITY);
    }
    return f;
}

typedef struct build {
    ch_trees_t *t;
    raw_t *r;
    const ctx_t *c;
    size_t lo, hi; /* this tree's nodes in r->order */
    size_t tree_no;
} build_t;

/* Place node i (attribute index) and its subtree in preorder. */
static int place(build_t *b, size_t i, size_t depth) {
    ch_trees_t *t = b->t;
    raw_t *r = b->r;
    if (r->pos[i] != UINT32_MAX) {
        return fail(b->c->errbuf, b->c->errlen, -EINVAL,
                    "%s: nodes_truenodeids/nodes_falsenodeids: node %lld of tree %lld is reached "
                    "twice (not a tree)",
                    b->c->where, (long long)r->id[i], (long long)r->tree[i]);
    }
    if (depth > MAX_DEPTH) {
        return fail(b->c->errbuf, b->c->errlen, -EINVAL, "%s: tree %lld is deeper than %d levels",
                    b->c->where, (long long)r->tree[i], MAX_DEPTH);
    }
    if (depth > t->max_depth) {
        t->max_depth = depth;
    }
    uint32_t at = (uint32_t)t->n_nodes++;
    r->pos[i] = at;
    tnode_t *nd = &t->nodes[at];
    if (t->cover) {
        t->cover[at] = r->hit ? r->hit[i] : 0;
    }
    if (r->mode[i] == M_LEAF) {
        nd->leaf = 1;
        nd->kid[0] = (uint32_t)t->n_w;
        double single = 0;
        for (size_t w = r->w_head[i]; w != SIZE_MAX; w = r->w_next[w]) {
            t->w_col[t->n_w] = (uint32_t)r->w_col[w];
            t->w_val[t->n_w] = r->w_val[w];
            t->n_w++;
            single += r->w_val[w];
        }
        nd->kid[1] = (uint32_t)(t->n_w - nd->kid[0]);
        nd->thr = (float)single;
        return 0;
    }
    if (r->w_head[i] != SIZE_MAX) {
        return fail(b->c->errbuf, b->c->errlen, -EINVAL,
                    "%s: class_nodeids/target_nodeids: node %lld of tree %lld has weights but "
                    "is not a LEAF",
                    b->c->where, (long long)r->id[i], (long long)r->tree[i]);
    }
    int64_t kid_id[2] = {r->tru[i], r->fal[i]};
    size_t kid[2];
    for (int k = 0; k < 2; k++) {
        kid[k] = lookup(r, b->lo, b->hi, kid_id[k]);
        if (kid[k] == SIZE_MAX) {
            return fail(b->c->errbuf, b->c->errlen, -EINVAL,
                        "%s: %s: node %lld of tree %lld names child %lld, which is not in that "
                        "tree",
                        b->c->where, k ? "nodes_falsenodeids" : "nodes_truenodeids",
                        (long long)r->id[i], (long long)r->tree[i], (long long)kid_id[k]);
        }
    }
    double v = r->value[i];
    bool mtt = r->mtt && r->mtt[i];
    bool swap = r->mode[i] == M_GT || r->mode[i] == M_GTE;
    nd->thr =
        r->mode[i] == M_LEQ || r->mode[i] == M_GT ? float_below(v, false) : float_below(v, true);
    nd->feat = (uint16_t)r->feat[i];
    /* the original true child is kid[swap]; NaN goes there when tracked as true */
    nd->nan_kid = (uint8_t)(mtt ? swap : !swap);
    size_t first = kid[swap], second = kid[!swap];
    int rc = place(b, first, depth + 1);
    if (rc < 0) {
        return rc;
    }
    nd->kid[0] = r->pos[first];
    rc = place(b, second, depth + 1);
    if (rc < 0) {
        return rc;
    }
    nd->kid[1] = r->pos[second];
    return 0;
}

static int check_len(const ctx_t *c, const char *name, size_t have, size_t want, const char *of) {
    if (have != want) {
        return fail(c->errbuf, c->errlen, -EINVAL, "%s: %s has %zu entries but %s has %zu",
                    c->where, name, have, of, want);
    }
    return 0;
}

static void free_raw(raw_t *r) {
    free(r->value);
    free(r->hit);
    free(r->mode);
    free(r->w_val);
    free(r->order);
    free(r->w_head);
    free(r->w_next);
    free(r->pos);
}

static int read_nodes(const ctx_t *c, raw_t *r, size_t d) {
    size_t n, k;
    const ProtobufCBinaryData *modes;
    int rc;
    if ((rc = get_ints(c, "nodes_treeids", &r->tree, &n)) < 0) {
        return rc;
    }
    if (n == 0) {
        return fail(c->errbuf, c->errlen, -EINVAL, "%s: nodes_treeids is missing or empty",
                    c->where);
    }
    r->n = n;
    struct {
        const char *name;
        const int64_t **v;
    } ints[] = {{"nodes_nodeids", &r->id},
                {"nodes_featureids", &r->feat},
                {"nodes_truenodeids", &r->tru},
                {"nodes_falsenodeids", &r->fal}};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        if ((rc = get_ints(c, ints[i].name, ints[i].v, &k)) < 0 ||
            (rc = check_len(c, ints[i].name, k, n, "nodes_treeids")) < 0) {
            return rc;
        }
    }
    if ((rc = get_ints(c, "nodes_missing_value_tracks_true", &r->mtt, &r->n_mtt)) < 0) {
        return rc;
    }
    if (r->n_mtt &&
        (rc = check_len(c, "nodes_missing_value_tracks_true", r->n_mtt, n, "nodes_treeids")) < 0) {
        return rc;
    }
    if ((rc = get_reals(c, "nodes_values", &r->value, &k)) < 0 ||
        (rc = check_len(c, "nodes_values", k, n, "nodes_treeids")) < 0) {
        return rc;
    }
    if ((rc = get_reals(c, "nodes_hitrates", &r->hit, &r->n_hit)) < 0) {
        return rc;
    }
    if (r->n_hit && (rc = check_len(c, "nodes_hitrates", r->n_hit, n, "nodes_treeids")) < 0) {
        return rc;
    }
    if ((rc = get_strings(c, "nodes_modes", &modes, &k)) < 0 ||
        (rc = check_len(c, "nodes_modes", k, n, "nodes_treeids")) < 0) {
        return rc;
    }
    r->mode = malloc(n);
    if (!r->mode) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const ProtobufCBinaryData *m = &modes[i];
        r->mode[i] = str_is(m, "LEAF")         ? M_LEAF
                     : str_is(m, "BRANCH_LEQ") ? M_LEQ
                     : str_is(m, "BRANCH_LT")  ? M_LT
                     : str_is(m, "BRANCH_GTE") ? M_GTE
                     : str_is(m, "BRANCH_GT")  ? M_GT
                                               : 255;
        if (r->mode[i] == 255) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: nodes_modes[%zu] is '%.*s' (supported: BRANCH_LEQ BRANCH_LT "
                        "BRANCH_GTE BRANCH_GT LEAF)",
                        c->where, i, (int)(m->len > 40 ? 40 : m->len), (const char *)m->data);
        }
        if (r->mode[i] == M_LEAF) {
            continue;
        }
        if (r->feat[i] < 0 || (uint64_t)r->feat[i] >= d) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: nodes_featureids[%zu] is %lld but the input has %zu features",
                        c->where, i, (long long)r->feat[i], d);
        }
        if (isnan(r->value[i])) {
            return fail(c->errbuf, c->errlen, -EINVAL, "%s: nodes_values[%zu] is NaN", c->where, i);
        }
    }
    for (size_t i = 0; i < r->n_hit; i++) {
        if (!(r->hit[i] >= 0) || isinf(r->hit[i])) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: nodes_hitrates[%zu] is %g (covers must be finite, not negative)",
                        c->where, i, r->hit[i]);
        }
    }
    return 0;
}

static int read_weights(const ctx_t *c, raw_t *r, bool classifier, size_t cols) {
    const char *pre = classifier ? "class" : "target";
    char nm[4][32];
    snprintf(nm[0], sizeof(nm[0]), "%s_treeids", pre);
    snprintf(nm[1], sizeof(nm[1]), "%s_nodeids", pre);
    snprintf(nm[2], sizeof(nm[2]), "%s_ids", pre);
    snprintf(nm[3], sizeof(nm[3]), "%s_weights", pre);
    size_t n, k;
    int rc;
    if ((rc = get_ints(c, nm[0], &r->w_tree, &n)) < 0) {
        return rc;
    }
    if (n == 0) {
        return fail(c->errbuf, c->errlen, -EINVAL, "%s: %s is missing or empty", c->where, nm[0]);
    }
    r->n_w = n;
    if ((rc = get_ints(c, nm[1], &r->w_node, &k)) < 0 ||
        (rc = check_len(c, nm[1], k, n, nm[0])) < 0 ||
        (rc = get_ints(c, nm[2], &r->w_col, &k)) < 0 ||
        (rc = check_len(c, nm[2], k, n, nm[0])) < 0 ||
        (rc = get_reals(c, nm[3], &r->w_val, &k)) < 0 ||
        (rc = check_len(c, nm[3], k, n, nm[0])) < 0) {
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (r->w_col[i] < 0 || (uint64_t)r->w_col[i] >= cols) {
            return fail(c->errbuf, c->errlen, -EINVAL, "%s: %s[%zu] is %lld; there are %zu %s",
                        c->where, nm[2], i, (long long)r->w_col[i], cols,
                        classifier ? "class labels" : "targets (n_targets)");
        }
        if (!isfinite(r->w_val[i])) {
            return fail(c->errbuf, c->errlen, -EINVAL, "%s: %s[%zu] is not finite", c->where, nm[3],
                        i);
        }
    }
    return 0;
}

/* Attach weights to nodes, find each tree's root, and lay the trees out. */
static int build(const ctx_t *c, ch_trees_t *t, raw_t *r) {
    size_t n = r->n;
    r->order = malloc(n * sizeof(size_t));
    r->w_head = malloc(n * sizeof(size_t));
    r->w_next = malloc(r->n_w * sizeof(size_t));
    r->pos = malloc(n * sizeof(uint32_t));
    t->nodes = calloc(n, sizeof(tnode_t));
    t->w_col = malloc(r->n_w * sizeof(uint32_t));
    t->w_val = malloc(r->n_w * sizeof(double));
    t->roots = malloc(n * sizeof(uint32_t));
    if (!r->order || !r->w_head || !r->w_next || !r->pos || !t->nodes || !t->w_col || !t->w_val ||
        !t->roots) {
        return -ENOMEM;
    }
    if (r->n_hit) {
        t->cover = malloc(n * sizeof(double));
        if (!t->cover) {
            return -ENOMEM;
        }
    }
    nkey_t *keys = malloc(n * sizeof(nkey_t));
    if (!keys) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        keys[i] = (nkey_t){.tree = r->tree[i], .id = r->id[i], .i = i};
        r->w_head[i] = SIZE_MAX;
        r->pos[i] = UINT32_MAX;
    }
    qsort(keys, n, sizeof(nkey_t), cmp_key);
    for (size_t i = 0; i < n; i++) {
        r->order[i] = keys[i].i;
    }
    free(keys);
    for (size_t s = 1; s < n; s++) {
        size_t a = r->order[s - 1], b = r->order[s];
        if (r->tree[a] == r->tree[b] && r->id[a] == r->id[b]) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: nodes_nodeids: node %lld of tree %lld appears twice (entries %zu "
                        "and %zu)",
                        c->where, (long long)r->id[b], (long long)r->tree[b], a < b ? a : b,
                        a < b ? b : a);
        }
    }
    /* weights, chained per node in attribute order (kept by prepending backwards) */
    for (size_t w = r->n_w; w-- > 0;) {
        size_t lo = 0, hi = n;
        /* this tree's range */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (r->tree[r->order[mid]] < r->w_tree[w]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        size_t end = lo;
        while (end < n && r->tree[r->order[end]] == r->w_tree[w]) {
            end++;
        }
        size_t i = lookup(r, lo, end, r->w_node[w]);
        if (i == SIZE_MAX) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: %s[%zu] names node %lld of tree %lld, which does not exist", c->where,
                        t->classifier ? "class_nodeids" : "target_nodeids", w,
                        (long long)r->w_node[w], (long long)r->w_tree[w]);
        }
        r->w_next[w] = r->w_head[i];
        r->w_head[i] = w;
    }
    build_t b = {.t = t, .r = r, .c = c};
    for (size_t s = 0; s < n;) {
        size_t e = s;
        while (e < n && r->tree[r->order[e]] == r->tree[r->order[s]]) {
            e++;
        }
        /* the root is the one node of the tree no other node names as a child */
        size_t root = SIZE_MAX, roots = 0;
        uint8_t *named = calloc(e - s, 1);
        if (!named) {
            return -ENOMEM;
        }
        for (size_t q = s; q < e; q++) {
            size_t i = r->order[q];
            if (r->mode[i] == M_LEAF) {
                continue;
            }
            int64_t kids[2] = {r->tru[i], r->fal[i]};
            for (int k = 0; k < 2; k++) {
                size_t lo = s, hi = e;
                while (lo < hi) {
                    size_t mid = lo + (hi - lo) / 2;
                    if (r->id[r->order[mid]] < kids[k]) {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                if (lo < e && r->id[r->order[lo]] == kids[k]) {
                    named[lo - s] = 1;
                }
            }
        }
        for (size_t q = s; q < e; q++) {
            if (!named[q - s]) {
                root = r->order[q];
                roots++;
            }
        }
        free(named);
        if (roots != 1) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: nodes_truenodeids/nodes_falsenodeids: tree %lld has %zu roots "
                        "(nodes no other node names as a child); a tree has one",
                        c->where, (long long)r->tree[r->order[s]], roots);
        }
        b.lo = s;
        b.hi = e;
        t->roots[t->n_trees++] = (uint32_t)t->n_nodes;
        int rc = place(&b, root, 0);
        if (rc < 0) {
            return rc;
        }
        s = e;
    }
    /* weights on nodes no tree reaches would silently vanish */
    for (size_t i = 0; i < n; i++) {
        if (r->pos[i] == UINT32_MAX && r->w_head[i] != SIZE_MAX) {
            return fail(c->errbuf, c->errlen, -EINVAL,
                        "%s: nodes_truenodeids/nodes_falsenodeids: node %lld of tree %lld "
                        "carries weights but no path from the tree's root reaches it",
                        c->where, (long long)r->id[i], (long long)r->tree[i]);
        }
    }
    return 0;
}

#define PERFECT_MAX_DEPTH 14
#define PERFECT_MAX_GROWTH 8 /* complete trees may take 8x the nodes of the real ones */

static unsigned depth_of(const ch_trees_t *t, uint32_t k) {
    if (t->nodes[k].leaf) {
        return 0;
    }
    unsigned a = depth_of(t, t->nodes[k].kid[0]), b = depth_of(t, t->nodes[k].kid[1]);
    return 1 + (a > b ? a : b);
}

static void fill_perfect(ch_trees_t *t, uint32_t k, size_t pos, unsigned level, unsigned depth,
                         pnode_t *split, uint32_t *leaf) {
    if (level == depth) {
        leaf[pos - (((size_t)1 << depth) - 1)] = k;
        return;
    }
    const tnode_t *nd = &t->nodes[k];
    if (nd->leaf) { /* pad: every value goes left, to the same leaf */
        split[pos] = (pnode_t){.thr = INFINITY};
        fill_perfect(t, k, 2 * pos + 1, level + 1, depth, split, leaf);
        fill_perfect(t, k, 2 * pos + 2, level + 1, depth, split, leaf);
        return;
    }
    split[pos] = (pnode_t){.thr = nd->thr, .feat = nd->feat, .nan_right = nd->nan_kid};
    fill_perfect(t, nd->kid[0], 2 * pos + 1, level + 1, depth, split, leaf);
    fill_perfect(t, nd->kid[1], 2 * pos + 2, level + 1, depth, split, leaf);
}

/*
 * The complete-tree layout, when the trees are shallow and dense enough: a row then
 * walks depth steps with no branch, and eight rows walk one tree together, so their
 * dependent loads overlap. Without it (deep or sparse trees) eval walks the preorder
 * array. Returns 0 or -ENOMEM.
 */
static int build_perfect(ch_trees_t *t) {
    t->p_depth = malloc(t->n_trees);
    t->p_split_off = malloc(t->n_trees * sizeof(size_t));
    t->p_leaf_off = malloc(t->n_trees * sizeof(size_t));
    if (!t->p_depth || !t->p_split_off || !t->p_leaf_off) {
        return -ENOMEM;
    }
    size_t splits = 0, leaves = 0;
    for (size_t tr = 0; tr < t->n_trees; tr++) {
        unsigned dep = depth_of(t, t->roots[tr]);
        if (dep > PERFECT_MAX_DEPTH) {
            goto sparse;
        }
        t->p_depth[tr] = (uint8_t)dep;
        t->p_split_off[tr] = splits;
        t->p_leaf_off[tr] = leaves;
        splits += ((size_t)1 << dep) - 1;
        leaves += (size_t)1 << dep;
    }
    if (splits + leaves > PERFECT_MAX_GROWTH * t->n_nodes + 4096) {
        goto sparse;
    }
    t->p_split = malloc((splits ? splits : 1) * sizeof(pnode_t));
    t->p_leaf = malloc(leaves * sizeof(uint32_t));
    if (!t->p_split || !t->p_leaf) {
        return -ENOMEM;
    }
    for (size_t tr = 0; tr < t->n_trees; tr++) {
        fill_perfect(t, t->roots[tr], 0, 0, t->p_depth[tr], t->p_split + t->p_split_off[tr],
                     t->p_leaf + t->p_leaf_off[tr]);
    }
    return 0;
sparse:
    free(t->p_depth);
    free(t->p_split_off);
    free(t->p_leaf_off);
    t->p_depth = NULL;
    t->p_split_off = t->p_leaf_off = NULL;
    return 0;
}

/* Covers usable for TreeSHAP: every placed node positive. */
static void check_covers(ch_trees_t *t) {
    if (!t->cover) {
        snprintf(t->explain, sizeof(t->explain),
                 "no reasons: the model has no node covers (nodes_hitrates)");
        return;
    }
    for (size_t i = 0; i < t->n_nodes; i++) {
        if (!(t->cover[i] > 0)) {
            snprintf(t->explain, sizeof(t->explain),
                     "no reasons: node covers (nodes_hitrates) are not all positive");
            free(t->cover);
            t->cover = NULL;
            return;
        }
    }
    snprintf(t->explain, sizeof(t->explain), "TreeSHAP (path-dependent, node covers)");
}

int ch_trees_compile(const Onnx__NodeProto *nd, size_t d, size_t max_batch, const char *where,
                     ch_trees_t **ret, char *errbuf, size_t errlen) {
    ctx_t c = {.nd = nd, .where = where, .errbuf = errbuf, .errlen = errlen};
    if (d > UINT16_MAX) {
        return fail(errbuf, errlen, -EINVAL, "%s: tree ensembles take at most %u features", where,
                    UINT16_MAX);
    }
    ch_trees_t *t = calloc(1, sizeof(*t));
    raw_t r = {0};
    double *base = NULL;
    size_t n_base = 0;
    int rc = -ENOMEM;
    if (!t) {
        return -ENOMEM;
    }
    t->d = d;
    t->max_batch = max_batch;
    t->classifier = strcmp(nd->op_type, "TreeEnsembleClassifier") == 0;
    char post[32], agg[32];
    if ((rc = get_string(&c, "post_transform", "NONE", post, sizeof(post))) < 0 ||
        (rc = get_string(&c, "aggregate_function", "SUM", agg, sizeof(agg))) < 0) {
        goto out;
    }
    t->post = strcmp(post, "NONE") == 0           ? POST_NONE
              : strcmp(post, "LOGISTIC") == 0     ? POST_LOGISTIC
              : strcmp(post, "SOFTMAX") == 0      ? POST_SOFTMAX
              : strcmp(post, "SOFTMAX_ZERO") == 0 ? POST_SOFTMAX_ZERO
                                                  : (enum post) - 1;
    if ((int)t->post < 0) {
        rc = fail(errbuf, errlen, -EINVAL,
                  "%s: post_transform '%s' is not supported (NONE LOGISTIC SOFTMAX "
                  "SOFTMAX_ZERO)",
                  where, post);
        goto out;
    }
    if (t->classifier) {
        const int64_t *li;
        const ProtobufCBinaryData *ls;
        size_t nli, nls;
        if ((rc = get_ints(&c, "classlabels_int64s", &li, &nli)) < 0 ||
            (rc = get_strings(&c, "classlabels_strings", &ls, &nls)) < 0) {
            goto out;
        }
        if ((nli == 0) == (nls == 0)) {
            rc = fail(errbuf, errlen, -EINVAL,
                      "%s: exactly one of classlabels_int64s and classlabels_strings must be set",
                      where);
            goto out;
        }
        t->cols = nli ? nli : nls;
    } else {
        const Onnx__AttributeProto *a = find_attr(nd, "n_targets");
        if (!a || !a->has_i || a->i < 1 || a->i > 4096) {
            rc = fail(errbuf, errlen, -EINVAL, "%s: n_targets is missing or not in 1..4096", where);
            goto out;
        }
        t->cols = (size_t)a->i;
        if (strcmp(agg, "AVERAGE") == 0) {
            t->average = true;
        } else if (strcmp(agg, "SUM") != 0) {
            rc = fail(errbuf, errlen, -EINVAL,
                      "%s: aggregate_function '%s' is not supported (SUM AVERAGE)", where, agg);
            goto out;
        }
    }
    if ((rc = read_nodes(&c, &r, d)) < 0 ||
        (rc = read_weights(&c, &r, t->classifier, t->cols)) < 0) {
        goto out;
    }
    t->acc_cols = t->cols;
    if (t->classifier && t->cols == 2) {
        t->binary = true;
        for (size_t w = 0; w < r.n_w; w++) {
            t->binary &= r.w_col[w] == 0;
        }
        if (t->binary) {
            t->acc_cols = 1;
            if (t->post == POST_SOFTMAX || t->post == POST_SOFTMAX_ZERO) {
                rc = fail(errbuf, errlen, -EINVAL,
                          "%s: post_transform %s over one score (every class_ids entry is 0 with "
                          "two class labels) is not defined",
                          where, post);
                goto out;
            }
        }
    }
    if ((rc = get_reals(&c, "base_values", &base, &n_base)) < 0) {
        goto out;
    }
    t->base = calloc(t->acc_cols, sizeof(double));
    t->acc = calloc(max_batch * t->acc_cols, sizeof(double));
    if (!t->base || !t->acc) {
        rc = -ENOMEM;
        goto out;
    }
    if (t->binary && (n_base == 1 || n_base == 2)) {
        t->base[0] = base[n_base - 1];
    } else if (n_base == t->acc_cols) {
        memcpy(t->base, base, n_base * sizeof(double));
    } else if (n_base) {
        rc = fail(errbuf, errlen, -EINVAL, "%s: base_values has %zu entries for %zu %s", where,
                  n_base, t->cols, t->classifier ? "classes" : "targets");
        goto out;
    }
    for (size_t i = 0; i < t->acc_cols; i++) {
        if (!isfinite(t->base[i])) {
            rc = fail(errbuf, errlen, -EINVAL, "%s: base_values[%zu] is not finite", where, i);
            goto out;
        }
    }
    if ((rc = build(&c, t, &r)) < 0) {
        goto out;
    }
    if ((rc = build_perfect(t)) < 0) {
        goto out;
    }
    check_covers(t);
    if (t->cover) {
        size_t md = t->max_depth;
        t->path = malloc((md + 2) * (md + 3) / 2 * sizeof(path_el_t));
        if (!t->path) {
            rc = -ENOMEM;
            goto out;
        }
    }
    *ret = t;
    t = NULL;
    rc = 0;
out:
    if (rc == -ENOMEM) {
        fail(errbuf, errlen, rc, "%s: out of memory", where);
    }
    free(base);
    free_raw(&r);
    ch_trees_free(t);
    return rc;
}

/* ---- evaluation ---------------------------------------------------------- */

static inline uint32_t leaf_of(const tnode_t *nodes, uint32_t k, const float *row) {
    while (!nodes[k].leaf) {
        const tnode_t *nd = &nodes[k];
        float v = row[nd->feat];
        k = v <= nd->thr ? nd->kid[0] : nd->kid[isnan(v) ? nd->nan_kid : 1];
    }
    return k;
}

static double logistic(double v) { return 1.0 / (1.0 + exp(-v)); }

static inline void add_leaf(const ch_trees_t *t, const tnode_t *lf, double *acc_row) {
    if (t->acc_cols == 1) {
        acc_row[0] += lf->thr;
        return;
    }
    for (uint32_t w = lf->kid[0]; w < lf->kid[0] + lf->kid[1]; w++) {
        acc_row[t->w_col[w]] += t->w_val[w];
    }
}

#define LANES 8

/* Every row through every complete tree, LANES rows at a time. */
static void eval_perfect(const ch_trees_t *t, const float *x, size_t n, size_t ldx, double *acc) {
    size_t ac = t->acc_cols;
    for (size_t tr = 0; tr < t->n_trees; tr++) {
        const pnode_t *split = t->p_split + t->p_split_off[tr];
        const uint32_t *leaf = t->p_leaf + t->p_leaf_off[tr];
        unsigned depth = t->p_depth[tr];
        size_t first_leaf = ((size_t)1 << depth) - 1;
        for (size_t i = 0; i < n; i += LANES) {
            size_t lanes = n - i < LANES ? n - i : LANES;
            const float *row[LANES];
            uint32_t at[LANES] = {0};
            for (size_t r = 0; r < LANES; r++) {
                row[r] = x + (i + (r < lanes ? r : 0)) * ldx;
            }
            for (unsigned l = 0; l < depth; l++) {
                for (size_t r = 0; r < LANES; r++) {
                    const pnode_t *p = &split[at[r]];
                    float v = row[r][p->feat];
                    at[r] = 2 * at[r] + 1 + (uint32_t)((v > p->thr) | ((v != v) & p->nan_right));
                }
            }
            for (size_t r = 0; r < lanes; r++) {
                add_leaf(t, &t->nodes[leaf[at[r] - first_leaf]], acc + (i + r) * ac);
            }
        }
    }
}

void ch_trees_eval(ch_trees_t *t, const float *x, size_t n, size_t ldx, float *y) {
    size_t ac = t->acc_cols;
    double *acc = t->acc;
    memset(acc, 0, n * ac * sizeof(double));
    const tnode_t *nodes = t->nodes;
    if (t->p_split) {
        eval_perfect(t, x, n, ldx, acc);
    } else {
        for (size_t tr = 0; tr < t->n_trees; tr++) {
            uint32_t root = t->roots[tr];
            for (size_t i = 0; i < n; i++) {
                add_leaf(t, &nodes[leaf_of(nodes, root, x + i * ldx)], acc + i * ac);
            }
        }
    }
    size_t cols = t->cols;
    for (size_t i = 0; i < n; i++) {
        double *a = acc + i * ac;
        float *o = y + i * cols;
        for (size_t j = 0; j < ac; j++) {
            a[j] = (t->average ? a[j] / (double)t->n_trees : a[j]) + t->base[j];
        }
        if (t->binary) {
            double p = t->post == POST_LOGISTIC ? logistic(a[0]) : a[0];
            o[0] = (float)(1 - p);
            o[1] = (float)p;
            continue;
        }
        if (t->post == POST_SOFTMAX || t->post == POST_SOFTMAX_ZERO) {
            double mx = -INFINITY, sum = 0;
            for (size_t j = 0; j < cols; j++) {
                if (t->post == POST_SOFTMAX || a[j] != 0) {
                    mx = a[j] > mx ? a[j] : mx;
                }
            }
            for (size_t j = 0; j < cols; j++) {
                bool zero = t->post == POST_SOFTMAX_ZERO && a[j] == 0;
                a[j] = zero ? 0 : exp(a[j] - mx);
                sum += a[j];
            }
            for (size_t j = 0; j < cols; j++) {
                o[j] = sum > 0 ? (float)(a[j] / sum) : 0.0f;
            }
            continue;
        }
        for (size_t j = 0; j < cols; j++) {
            o[j] = (float)(t->post == POST_LOGISTIC ? logistic(a[j]) : a[j]);
        }
    }
}

/* ---- TreeSHAP ------------------------------------------------------------ */

/* The last column's raw value at a leaf. */
static double leaf_value(const ch_trees_t *t, const tnode_t *lf) {
    double v = 0;
    if (t->acc_cols == 1) {
        v = lf->thr;
    } else {
        for (uint32_t w = lf->kid[0]; w < lf->kid[0] + lf->kid[1]; w++) {
            if (t->w_col[w] == t->cols - 1) {
                v += t->w_val[w];
            }
        }
    }
    return t->average ? v / (double)t->n_trees : v;
}

static void extend_path(path_el_t *p, size_t depth, double zero, double one, int feat) {
    p[depth] = (path_el_t){.feat = feat, .zero = zero, .one = one, .w = depth == 0 ? 1.0 : 0.0};
    for (size_t i = depth; i-- > 0;) {
        p[i + 1].w += one * p[i].w * (double)(i + 1) / (double)(depth + 1);
        p[i].w = zero * p[i].w * (double)(depth - i) / (double)(depth + 1);
    }
}

static void unwind_path(path_el_t *p, size_t depth, size_t at) {
    double one = p[at].one, zero = p[at].zero, next = p[depth].w;
    for (size_t i = depth; i-- > 0;) {
        if (one != 0) {
            double tmp = p[i].w;
            p[i].w = next * (double)(depth + 1) / ((double)(i + 1) * one);
            next = tmp - p[i].w * zero * (double)(depth - i) / (double)(depth + 1);
        } else {
            p[i].w = p[i].w * (double)(depth + 1) / (zero * (double)(depth - i));
        }
    }
    for (size_t i = at; i < depth; i++) {
        p[i].feat = p[i + 1].feat;
        p[i].zero = p[i + 1].zero;
        p[i].one = p[i + 1].one;
    }
}

static double unwound_sum(const path_el_t *p, size_t depth, size_t at) {
    double one = p[at].one, zero = p[at].zero, next = p[depth].w, total = 0;
    for (size_t i = depth; i-- > 0;) {
        if (one != 0) {
            double tmp = next * (double)(depth + 1) / ((double)(i + 1) * one);
            total += tmp;
            next = p[i].w - tmp * zero * (double)(depth - i) / (double)(depth + 1);
        } else {
            total += p[i].w / zero / ((double)(depth - i) / (double)(depth + 1));
        }
    }
    return total;
}

static void shap_rec(const ch_trees_t *t, const float *x, double *phi, uint32_t k,
                     path_el_t *parent, size_t depth, double zero, double one, int feat) {
    path_el_t *p = parent + depth + 1;
    memcpy(p, parent, (depth + 1) * sizeof(*p));
    extend_path(p, depth, zero, one, feat);
    const tnode_t *nd = &t->nodes[k];
    if (nd->leaf) {
        double v = leaf_value(t, nd);
        for (size_t i = 1; i <= depth; i++) {
            phi[p[i].feat] += unwound_sum(p, depth, i) * (p[i].one - p[i].zero) * v;
        }
        return;
    }
    float xv = x[nd->feat];
    int hot_k = xv <= nd->thr ? 0 : (isnan(xv) ? nd->nan_kid : 1);
    uint32_t hot = nd->kid[hot_k], cold = nd->kid[!hot_k];
    double c = t->cover[k];
    double in_zero = 1, in_one = 1;
    size_t at;
    for (at = 0; at <= depth; at++) {
        if (p[at].feat == (int)nd->feat) {
            break;
        }
    }
    if (at <= depth) {
        in_zero = p[at].zero;
        in_one = p[at].one;
        unwind_path(p, depth, at);
        depth--;
    }
    shap_rec(t, x, phi, hot, p, depth + 1, t->cover[hot] / c * in_zero, in_one, nd->feat);
    shap_rec(t, x, phi, cold, p, depth + 1, t->cover[cold] / c * in_zero, 0, nd->feat);
}

int ch_trees_shap(ch_trees_t *t, const float *x, double *phi) {
    if (!t->cover) {
        return -ENOTSUP;
    }
    memset(phi, 0, t->d * sizeof(double));
    for (size_t tr = 0; tr < t->n_trees; tr++) {
        shap_rec(t, x, phi, t->roots[tr], t->path, 0, 1, 1, -1);
    }
    return 0;
}
