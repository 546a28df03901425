#!/usr/bin/python3
"""cohortd's tree-ensemble evaluator and TreeSHAP against sklearn and XGBoost.

Parity: RandomForest, ExtraTrees, GradientBoosting, HistGradientBoosting and XGBoost
classifiers exported by tools/export_onnx.py are scored by cohort-score (the daemon's
own evaluator) on 10,000 vectors and compared with predict_proba (<= 1e-5); a
TreeEnsembleRegressor written here with BRANCH_GT/BRANCH_GTE splits, double thresholds
and AVERAGE against the sklearn forest it encodes.

Reasons: cohortd's Shapley values against xgboost's predict(pred_contribs=True)
(<= 1e-4), and for sklearn trees against a brute-force Shapley computation over all
feature subsets (d = 6), written here from the definition (the path-dependent value
function: features in S follow x, the others split by the training covers).

Loader: malformed tree attributes are load errors that name the attribute.
"""
import itertools
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                              HistGradientBoostingClassifier, RandomForestClassifier,
                              RandomForestRegressor)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_onnx_parity import (D, NAMES, SCORE, SRC, check, data, failures,  # noqa: E402
                              load_error, score)

sys.path.insert(0, os.path.join(SRC, "tools"))
from export_onnx import export, to_onnx  # noqa: E402

N = 10_000
TOL = 1e-5
SHAP_TOL = 1e-4


def xgboost_or_none():
    try:
        import xgboost
        return xgboost
    except ImportError:
        return None


def parity(tmp, rng):
    Xtr, ytr = data(rng, 20_000)
    Xte, _ = data(rng, N)
    models = {
        "random_forest": RandomForestClassifier(100, max_depth=10, random_state=1, n_jobs=2),
        # grown without a depth limit: too deep for the complete-tree layout (the walk)
        "random_forest_deep": RandomForestClassifier(20, random_state=11, n_jobs=2),
        "extra_trees": ExtraTreesClassifier(100, max_depth=10, random_state=2, n_jobs=2),
        "gradient_boosting": GradientBoostingClassifier(n_estimators=150, max_depth=4,
                                                        random_state=3),
        "hist_gradient_boosting": HistGradientBoostingClassifier(max_iter=150, random_state=4),
    }
    xgb = xgboost_or_none()
    if xgb is not None:
        models["xgboost"] = xgb.XGBClassifier(n_estimators=300, max_depth=6, nthread=2,
                                              random_state=5)
    else:
        check(False, "python3-xgboost is installed (tools/install-deps.sh)")
    fitted = {}
    for name, m in models.items():
        m.fit(Xtr, ytr)
        fitted[name] = m
        if name == "random_forest_deep":
            deepest = max(e.tree_.max_depth for e in m.estimators_)
            check(deepest > 14, f"{name}: deepest tree has {deepest} levels (> 14: walked)")
        path = os.path.join(tmp, name + ".onnx")
        export(m, path, NAMES, version=name)
        got, _ = score(path, Xte)
        want = m.predict_proba(Xte)[:, 1]
        err = float(np.abs(got - want).max())
        check(len(got) == N and err <= TOL,
              f"{name}: {len(got)} scores, max |cohortd - predict_proba| = {err:.2e} "
              f"(<= {TOL:g})")
    # three classes: the last column (SOFTMAX over per-class trees)
    y3 = np.digitize(Xtr[:, 13], [0.7, 1.4])
    m3 = HistGradientBoostingClassifier(max_iter=60, random_state=6).fit(Xtr, y3)
    path = os.path.join(tmp, "hgb3.onnx")
    export(m3, path, NAMES)
    got, _ = score(path, Xte)
    err = float(np.abs(got - m3.predict_proba(Xte)[:, 2]).max())
    check(err <= TOL, f"hist_gradient_boosting, 3 classes: last column max error {err:.2e}")
    if xgb is not None:
        # missing values go where XGBoost's default_left says
        Xn = Xte[:2000].copy()
        Xn[rng.random(Xn.shape) < 0.15] = np.nan
        got, _ = score(os.path.join(tmp, "xgboost.onnx"), Xn)
        err = float(np.abs(got - fitted["xgboost"].predict_proba(Xn)[:, 1]).max())
        check(err <= TOL, f"xgboost with 15% NaN inputs: max error {err:.2e}")
        # reasons: Shapley values against xgboost's own TreeSHAP, in margin (log-odds) units
        _, contrib = score(os.path.join(tmp, "xgboost.onnx"), Xte[:2000], contributions=True)
        want = fitted["xgboost"].get_booster().predict(xgb.DMatrix(Xte[:2000]),
                                                       pred_contribs=True)[:, :-1]
        err = float(np.abs(contrib - want).max())
        check(err <= SHAP_TOL, f"xgboost TreeSHAP: max |cohortd - pred_contribs| = {err:.2e} "
                               f"over 2,000 rows (<= {SHAP_TOL:g})")
    regressor(tmp, rng, Xtr, Xte)
    deep_chains(tmp, rng, Xte)


def deep_forest(depth, rng, full=0, full_depth=10):
    """A TreeEnsembleRegressor (SUM) of one tree that is a single long path (node i
    splits feature i % D, its true child a leaf, its false child the next split) and
    `full` complete trees of full_depth levels; and its prediction, walked here."""
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes",
                         "nodes_values", "nodes_truenodeids", "nodes_falsenodeids",
                         "target_treeids", "target_nodeids", "target_ids", "target_weights")}

    def add(t, i, feat, thr, true, false, weight=None):
        leaf = weight is not None
        for k, v in (("nodes_treeids", t), ("nodes_nodeids", i),
                     ("nodes_featureids", 0 if leaf else feat),
                     ("nodes_modes", "LEAF" if leaf else "BRANCH_LEQ"),
                     ("nodes_values", 0.0 if leaf else float(thr)),
                     ("nodes_truenodeids", 0 if leaf else true),
                     ("nodes_falsenodeids", 0 if leaf else false)):
            a[k].append(v)
        if leaf:
            for k, v in (("target_treeids", t), ("target_nodeids", i), ("target_ids", 0),
                         ("target_weights", float(weight))):
                a[k].append(v)

    feats = [i % D for i in range(depth)]
    thr = rng.uniform(-0.5, 0.02, depth).astype(np.float32)  # most rows go far down
    for i in range(depth):
        add(0, 2 * i, feats[i], thr[i], 2 * i + 1, 2 * i + 2)
        add(0, 2 * i + 1, 0, 0, 0, 0, weight=2 * i + 1)
    add(0, 2 * depth, 0, 0, 0, 0, weight=2 * depth)
    inner = 2 ** full_depth - 1
    fulls = []
    for t in range(1, full + 1):
        f = rng.integers(0, D, inner)
        th = rng.choice(np.concatenate([[0.0], np.linspace(0.5, 30, 50)]), inner).astype(np.float32)
        w = rng.normal(size=inner + 1).astype(np.float32)
        for i in range(inner):
            add(t, i, f[i], th[i], 2 * i + 1, 2 * i + 2)
        for i in range(inner + 1):
            add(t, inner + i, 0, 0, 0, 0, weight=w[i])
        fulls.append((f, th, w))
    node = helper.make_node("TreeEnsembleRegressor", ["features"], ["value"],
                            domain="ai.onnx.ml", n_targets=1, **a)

    def predict(X):
        out = np.full(len(X), float(2 * depth))
        done = np.zeros(len(X), bool)
        for i in range(depth):
            hit = ~done & (X[:, feats[i]] <= thr[i])
            out[hit] = 2 * i + 1
            done |= hit
        for f, th, w in fulls:
            at = np.zeros(len(X), dtype=np.int64)
            for _ in range(full_depth):
                at = 2 * at + 1 + (X[np.arange(len(X)), f[at]] > th[at])
            out += w[at - inner].astype(np.float64)
        return out
    return node, predict


def deep_chains(tmp, rng, Xte):
    """A tree deeper than 255 levels (past a byte) among dense ones is walked, not laid
    out as a complete tree; deeper than 512 it is refused."""
    node, predict = deep_forest(270, rng, full=3)
    path = os.path.join(tmp, "deep270.onnx")
    save(path, node, out_name="value")
    X = Xte[:3000]
    got, _ = score(path, X)
    want = predict(X)
    err = float(np.abs(got - want).max())
    check(err <= TOL * max(1.0, float(np.abs(want).max())),
          f"a 270-level path next to 3 complete 10-level trees scores as walked by hand "
          f"(max diff {err:.1e})")
    node, _ = deep_forest(600, rng)
    path = os.path.join(tmp, "deep600.onnx")
    save(path, node, out_name="value")
    rc, err = load_error(path)
    check(rc == 1 and "deeper than 512" in err, f"a tree 600 levels deep is refused: {err[-80:]}")


# ---- a TreeEnsembleRegressor written here ----------------------------------

def regressor(tmp, rng, Xtr, Xte):
    """RandomForestRegressor as TreeEnsembleRegressor(AVERAGE): splits written as
    BRANCH_GT (children swapped) or BRANCH_GTE with the threshold nudged, double
    thresholds in nodes_values_as_tensor."""
    yr = Xtr[:, 0] * 0.3 + np.sin(Xtr[:, 13] * 3) + rng.normal(0, 0.1, len(Xtr))
    rf = RandomForestRegressor(30, max_depth=8, random_state=7, n_jobs=2).fit(Xtr, yr)
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes",
                         "nodes_truenodeids", "nodes_falsenodeids", "target_treeids",
                         "target_nodeids", "target_ids", "target_weights")}
    values = []
    for t, e in enumerate(rf.estimators_):
        tr = e.tree_
        for i in range(tr.node_count):
            leaf = tr.children_left[i] < 0
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(i)
            a["nodes_featureids"].append(0 if leaf else int(tr.feature[i]))
            if leaf:
                a["nodes_modes"].append("LEAF")
                a["nodes_truenodeids"].append(0)
                a["nodes_falsenodeids"].append(0)
                values.append(0.0)
                a["target_treeids"].append(t)
                a["target_nodeids"].append(i)
                a["target_ids"].append(0)
                a["target_weights"].append(float(tr.value[i, 0, 0]))
            elif i % 2:  # x > t goes right: the true child is the right one
                a["nodes_modes"].append("BRANCH_GT")
                a["nodes_truenodeids"].append(int(tr.children_right[i]))
                a["nodes_falsenodeids"].append(int(tr.children_left[i]))
                values.append(float(tr.threshold[i]))
            else:  # x >= nextafter(t, +inf) in double: the same split
                a["nodes_modes"].append("BRANCH_GTE")
                a["nodes_truenodeids"].append(int(tr.children_right[i]))
                a["nodes_falsenodeids"].append(int(tr.children_left[i]))
                values.append(float(np.nextafter(tr.threshold[i], np.inf)))
    node = helper.make_node(
        "TreeEnsembleRegressor", ["features"], ["value"], domain="ai.onnx.ml", n_targets=1,
        aggregate_function="AVERAGE",
        nodes_values_as_tensor=numpy_helper.from_array(np.array(values, dtype=np.float64)), **a)
    path = os.path.join(tmp, "regressor.onnx")
    save(path, node, out_name="value")
    got, _ = score(path, Xte)
    err = float(np.abs(got - rf.predict(Xte)).max())
    check(err <= TOL, f"TreeEnsembleRegressor (AVERAGE, BRANCH_GT/GTE, double thresholds) "
                      f"against RandomForestRegressor: max error {err:.2e}")


def save(path, node, d=D, out_name="score", label=False):
    outs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", None])]
    if label:
        outs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    g = helper.make_graph([node], "t",
                          [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                         ["N", d])], outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                            helper.make_opsetid("ai.onnx.ml", 3)])
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


# ---- Shapley values by brute force ------------------------------------------

def expect(tree, leaf_value, X, S):
    """E[f(x) | x_S] for one sklearn tree_, path-dependent: features in S follow x,
    the others take both children weighted by their share of the node's cover."""
    cover = tree.weighted_n_node_samples

    def rec(i, rows_w):
        if tree.children_left[i] < 0:
            return rows_w * leaf_value(i)
        lft, rgt, f = tree.children_left[i], tree.children_right[i], tree.feature[i]
        if f in S:
            go_left = X[:, f] <= tree.threshold[i]
            return rec(lft, rows_w * go_left) + rec(rgt, rows_w * ~go_left)
        return (rec(lft, rows_w * (cover[lft] / cover[i])) +
                rec(rgt, rows_w * (cover[rgt] / cover[i])))

    return rec(0, np.ones(len(X)))


def brute_shap(trees, X, d):
    """trees: list of (tree_, leaf_value). Shapley values of sum of the trees."""
    v = {}
    for k in range(d + 1):
        for S in itertools.combinations(range(d), k):
            v[S] = sum(expect(t, lv, X, set(S)) for t, lv in trees)
    phi = np.zeros((len(X), d))
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for k in range(d):
            wgt = math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
            for S in itertools.combinations(others, k):
                Si = tuple(sorted(S + (i,)))
                phi[:, i] += wgt * (v[Si] - v[S])
    return phi


def shapley_sklearn(tmp, rng):
    d = 6
    names = [f"f{i}" for i in range(d)]
    X, y = data(rng, 6000)
    X = X[:, [0, 3, 6, 11, 13, 14]]
    y = (0.3 * X[:, 0] - 0.2 * X[:, 1] + X[:, 4] + rng.logistic(size=len(X)) > 3).astype(int)
    Xq = X[:150]
    cases = []
    rf = RandomForestClassifier(12, max_depth=5, random_state=8).fit(X, y)
    trees = []
    for e in rf.estimators_:
        val = e.tree_.value[:, 0, :]
        p1 = val[:, 1] / val.sum(axis=1)
        trees.append((e.tree_, lambda i, p1=p1, n=len(rf.estimators_): p1[i] / n))
    cases.append(("random_forest", rf, trees))
    gb = GradientBoostingClassifier(n_estimators=25, max_depth=3, random_state=9).fit(X, y)
    trees = [(e[0].tree_, lambda i, v=e[0].tree_.value[:, 0, 0]: gb.learning_rate * v[i])
             for e in gb.estimators_]
    cases.append(("gradient_boosting", gb, trees))
    for name, model, trees in cases:
        path = os.path.join(tmp, f"shap_{name}.onnx")
        export(model, path, names)
        r = subprocess.run([SCORE, path, "--features", ",".join(names), "--contributions"],
                           input="\n".join(",".join(f"{v:.9g}" for v in row) for row in Xq),
                           capture_output=True, text=True)
        if r.returncode:
            check(False, f"{name}: cohort-score --contributions: {r.stderr.strip()}")
            continue
        got = np.array([[float(v) for v in ln.split(",")] for ln in r.stdout.split()])[:, 1:]
        want = brute_shap(trees, Xq.astype(np.float64), d)
        err = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        check(err <= SHAP_TOL, f"{name} TreeSHAP: max |cohortd - brute-force Shapley over all "
                               f"{2 ** d} subsets| = {err:.2e} (values up to {scale:.3f}; "
                               f"<= {SHAP_TOL:g})")


# ---- loader robustness -------------------------------------------------------

def robustness(tmp, rng):
    X, y = data(rng, 3000)
    base = to_onnx(GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0)
                   .fit(X, y), NAMES)

    def mutate(name, fn):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        node = m.graph.node[0]
        fn(node, {a.name: a for a in node.attribute})
        path = os.path.join(tmp, f"bad_{name}.onnx")
        with open(path, "wb") as f:
            f.write(m.SerializeToString())
        return path

    def drop(node, name):
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep)

    cases = [
        ("feature_out_of_range", lambda n, a: a["nodes_featureids"].ints.__setitem__(0, D + 3),
         "nodes_featureids[0]"),
        ("true_child_missing", lambda n, a: a["nodes_truenodeids"].ints.__setitem__(0, 999),
         "nodes_truenodeids"),
        ("false_child_missing", lambda n, a: a["nodes_falsenodeids"].ints.__setitem__(0, 999),
         "nodes_falsenodeids"),
        ("cycle", lambda n, a: a["nodes_falsenodeids"].ints.__setitem__(1, 0),
         "nodes_truenodeids/nodes_falsenodeids"),
        ("mode_unknown", lambda n, a: a["nodes_modes"].strings.__setitem__(0, b"BRANCH_XX"),
         "nodes_modes[0]"),
        ("mode_eq", lambda n, a: a["nodes_modes"].strings.__setitem__(0, b"BRANCH_EQ"),
         "nodes_modes[0]"),
        ("values_short", lambda n, a: a["nodes_values"].floats.pop(), "nodes_values"),
        ("value_nan", lambda n, a: a["nodes_values"].floats.__setitem__(0, float("nan")),
         "nodes_values[0]"),
        ("duplicate_node", lambda n, a: a["nodes_nodeids"].ints.__setitem__(1, 0),
         "nodes_nodeids"),
        ("class_id_out_of_range", lambda n, a: a["class_ids"].ints.__setitem__(0, 7),
         "class_ids[0]"),
        ("class_node_missing", lambda n, a: a["class_nodeids"].ints.__setitem__(0, 999),
         "class_nodeids[0]"),
        ("weight_on_branch", lambda n, a: a["class_nodeids"].ints.__setitem__(0, 0),
         "class_nodeids"),
        ("weights_short", lambda n, a: a["class_weights"].floats.pop(), "class_weights"),
        ("hitrate_negative", lambda n, a: a["nodes_hitrates"].floats.__setitem__(0, -1.0),
         "nodes_hitrates[0]"),
        ("post_probit", lambda n, a: setattr(a["post_transform"], "s", b"PROBIT"),
         "post_transform"),
        ("base_values_length", lambda n, a: a["base_values"].floats.extend([1.0, 2.0]),
         "base_values"),
        ("no_labels", lambda n, a: drop(n, "classlabels_int64s"), "classlabels"),
        ("modes_wrong_type", lambda n, a: (a["nodes_modes"].ClearField("strings"),
                                           setattr(a["nodes_modes"], "type",
                                                   onnx.AttributeProto.INTS),
                                           a["nodes_modes"].ints.extend([1])), "nodes_modes"),
    ]
    for name, fn, want in cases:
        rc, err = load_error(mutate(name, fn))
        check(rc == 1 and want in err and "TreeEnsembleClassifier" in err,
              f"malformed tree ({name}) refused naming {want}: {err[:150]}")
    # no covers: the model scores, and says why it has no reasons
    path = mutate("no_hitrates", lambda n, a: drop(n, "nodes_hitrates"))
    r = subprocess.run([SCORE, path, "--check", "--inputs", str(D)],
                       capture_output=True, text=True)
    check(r.returncode == 0 and "no reasons" in r.stdout and "nodes_hitrates" in r.stdout,
          f"a tree model without covers loads and says it has no reasons: {r.stdout.strip()}")
    got, _ = score(path, X[:100])
    check(len(got) == 100, "... and scores")


def main():
    rng = np.random.default_rng(20261206)
    with tempfile.TemporaryDirectory() as tmp:
        parity(tmp, rng)
        shapley_sklearn(tmp, rng)
        robustness(tmp, rng)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
