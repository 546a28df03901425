#!/usr/bin/python3
"""Export a scikit-learn or XGBoost classifier to an ONNX file that cohortd can load.

Supported: LogisticRegression (binary or multinomial), MLPClassifier (relu, tanh,
logistic, identity hidden layers), and Pipelines of StandardScaler followed by one of
them, written with standard ONNX ops (Sub, Div, Gemm, Relu, Tanh, Sigmoid, Softmax);
and the tree ensembles RandomForestClassifier, ExtraTreesClassifier,
GradientBoostingClassifier, HistGradientBoostingClassifier and XGBoost's XGBClassifier
or Booster (gbtree; read from its JSON model), written as one ai.onnx.ml
TreeEnsembleClassifier node. Every graph is float32 with one input [N, d] named
"features"; its first output "score" has the probability of the positive (last) class
in its last column.

Autoencoders (cohortd's model.kind = autoencoder, anomaly scores without labels): an
MLPRegressor trained X -> X, after an optional StandardScaler, with error_data (the
training rows). The graph outputs the reconstruction in feature units; the metadata
holds the scaler's scale and 1,001 quantiles of error_data's reconstruction errors
(mean over features of the squared scaled difference); cohortd scores a row by its
error's percentile among them.

Trees: a split keeps the estimator's own rule (sklearn: x <= t on float32 x with a
double t, written as the largest float32 <= t, so every float32 input goes the same
way; XGBoost: x < t, BRANCH_LT). Each node's training cover (sklearn: weighted sample
count; HistGradientBoosting: sample count; XGBoost: hessian sum) goes to
nodes_hitrates, from which cohortd computes exact Shapley values (TreeSHAP).

Library use:
    from export_onnx import export
    export(model, "risk.onnx", feature_names, version="risk-2026-11-22",
           drift_data=X_train)   # optional: per-feature training bins for drift (PSI)

Command line (a model saved with joblib or pickle; an XGBoost model also as its
.json/.ubj file):
    export_onnx.py MODEL.pkl OUT.onnx --features a,b,c [--version V]

Run with Debian's /usr/bin/python3 (python3-sklearn, python3-onnx; python3-xgboost
for XGBoost models).
"""
import argparse
import json
import pickle
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
ML_OPSET = 3


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.n += 1
        out = f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.n}",
                                           **attrs))
        return out


def _scaler(g, x, sc):
    if getattr(sc, "with_mean", True) and sc.mean_ is not None:
        x = g.op("Sub", [x, g.const(f"scaler_mean_{g.n}", sc.mean_)])
    if getattr(sc, "with_std", True) and sc.scale_ is not None:
        x = g.op("Div", [x, g.const(f"scaler_scale_{g.n}", sc.scale_)])
    return x


def _logistic(g, x, lr):
    coef = np.asarray(lr.coef_, dtype=np.float64)
    inter = np.asarray(lr.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: one logit for the positive class
        z = g.op("Gemm", [x, g.const("lr_coef", coef), g.const("lr_intercept", inter)], transB=1)
        return g.op("Sigmoid", [z])
    z = g.op("Gemm", [x, g.const("lr_coef", coef), g.const("lr_intercept", inter)], transB=1)
    return g.op("Softmax", [z], axis=-1)


_ACT = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid", "identity": None}


def _mlp(g, x, mlp):
    if mlp.activation not in _ACT:
        raise ValueError(f"MLP activation {mlp.activation!r} is not supported")
    last = len(mlp.coefs_) - 1
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        x = g.op("Gemm", [x, g.const(f"mlp_w{i}", w), g.const(f"mlp_b{i}", b)])
        if i < last:
            if _ACT[mlp.activation]:
                x = g.op(_ACT[mlp.activation], [x])
        elif mlp.out_activation_ == "logistic":
            x = g.op("Sigmoid", [x])
        elif mlp.out_activation_ == "softmax":
            x = g.op("Softmax", [x], axis=-1)
        elif mlp.out_activation_ == "identity" and not hasattr(mlp, "classes_"):
            pass  # a regressor (an autoencoder's reconstruction)
        else:
            raise ValueError(f"MLP output activation {mlp.out_activation_!r} is not a classifier")
    return x


class _Trees:
    """The attribute lists of one TreeEnsembleClassifier node."""

    def __init__(self, d):
        self.d = d
        self.a = {k: [] for k in (
            "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
            "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
            "nodes_hitrates", "class_treeids", "class_nodeids", "class_ids", "class_weights")}
        self.n_trees = 0

    def add(self, left, right, feature, threshold, cover, missing_left, leaf_weights,
            mode="BRANCH_LEQ"):
        """One tree in array form: left/right children (-1 at leaves), per-node feature,
        float32 threshold, cover, NaN-goes-left flag, and leaf_weights(node) -> a list of
        (class id, weight)."""
        a, t = self.a, self.n_trees
        self.n_trees += 1
        for i in range(len(left)):
            leaf = left[i] < 0
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(i)
            a["nodes_featureids"].append(0 if leaf else int(feature[i]))
            a["nodes_modes"].append("LEAF" if leaf else mode)
            a["nodes_values"].append(0.0 if leaf else float(threshold[i]))
            a["nodes_truenodeids"].append(0 if leaf else int(left[i]))
            a["nodes_falsenodeids"].append(0 if leaf else int(right[i]))
            a["nodes_missing_value_tracks_true"].append(0 if leaf else int(bool(missing_left[i])))
            a["nodes_hitrates"].append(float(cover[i]))
            if leaf:
                for c, w in leaf_weights(i):
                    a["class_treeids"].append(t)
                    a["class_nodeids"].append(i)
                    a["class_ids"].append(int(c))
                    a["class_weights"].append(float(w))

    def node(self, n_classes, post, base):
        extra = {"base_values": [float(b) for b in base]} if len(base) else {}
        return helper.make_node(
            "TreeEnsembleClassifier", ["features"], ["label", "score"], name="trees",
            domain="ai.onnx.ml", classlabels_int64s=list(range(n_classes)),
            post_transform=post, **extra, **self.a)


def _f32_below(t):
    """The largest float32 <= t, elementwise: x <= t and x <= it agree on float32 x."""
    t = np.asarray(t, dtype=np.float64)
    f = t.astype(np.float32)
    up = f.astype(np.float64) > t
    f[up] = np.nextafter(f[up], np.float32(-np.inf))
    return f


def _sk_tree(tr, tree, weights, missing_left=None):
    """Add an sklearn tree_ (sklearn.tree._tree.Tree)."""
    tr.add(tree.children_left, tree.children_right, tree.feature, _f32_below(tree.threshold),
           tree.weighted_n_node_samples,
           missing_left if missing_left is not None else np.zeros(tree.node_count, bool),
           weights)


def _forest(est, d):
    """RandomForest/ExtraTrees: the mean of the trees' leaf class frequencies."""
    tr, k, n = _Trees(d), len(est.classes_), len(est.estimators_)
    for e in est.estimators_:
        v = e.tree_.value[:, 0, :]
        p = v / v.sum(axis=1, keepdims=True)
        _sk_tree(tr, e.tree_, lambda i, p=p: [(c, p[i, c] / n) for c in range(k)])
    return tr.node(k, "NONE", [])


def _raw_init(est, d):
    """A boosted model's constant raw score per tree column (its init estimator)."""
    raw = est._raw_predict_init(np.zeros((1, d), dtype=np.float32))
    return np.asarray(raw, dtype=np.float64).ravel()


def _gradient_boosting(est, d):
    if est.init_ == "zero":
        base = np.zeros(est.estimators_.shape[1])
    else:
        base = _raw_init(est, d)
    tr, lr = _Trees(d), est.learning_rate
    k = est.estimators_.shape[1]
    for stage in est.estimators_:
        for c, e in enumerate(stage):
            v = e.tree_.value[:, 0, 0]
            _sk_tree(tr, e.tree_, lambda i, v=v, c=c: [(c, lr * v[i])])
    if k == 1:
        return tr.node(2, "LOGISTIC", base)
    return tr.node(k, "SOFTMAX", base)


def _hist_gradient_boosting(est, d):
    if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
        raise ValueError("HistGradientBoostingClassifier with categorical features is not "
                         "supported (cohortd's features are numeric)")
    tr = _Trees(d)
    k = est.n_trees_per_iteration_
    for it in est._predictors:
        for c, pred in enumerate(it):
            nd = pred.nodes
            left = np.where(nd["is_leaf"], -1, nd["left"]).astype(np.int64)
            right = np.where(nd["is_leaf"], -1, nd["right"]).astype(np.int64)
            tr.add(left, right, nd["feature_idx"], _f32_below(nd["num_threshold"]), nd["count"],
                   nd["missing_go_to_left"],
                   lambda i, nd=nd, c=c: [(c, float(nd["value"][i]))])
    base = np.asarray(est._baseline_prediction, dtype=np.float64).ravel()
    if k == 1:
        return tr.node(2, "LOGISTIC", base)
    return tr.node(k, "SOFTMAX", base)


def _xgboost(booster, d):
    """An XGBoost gbtree booster, read from its JSON model (exact float32 values)."""
    js = json.loads(bytes(booster.save_raw("json")))["learner"]
    gb = js["gradient_booster"]
    if gb.get("name") != "gbtree":
        raise ValueError(f"XGBoost booster {gb.get('name')!r} is not supported (gbtree only)")
    obj = js["objective"]["name"]
    base = float(js["learner_model_param"]["base_score"])
    k = max(1, int(js["learner_model_param"].get("num_class", "0")))
    trees = gb["model"]["trees"]
    info = gb["model"]["tree_info"]
    tr = _Trees(d)
    for t, c in zip(trees, info):
        left = np.asarray(t["left_children"], dtype=np.int64)
        right = np.asarray(t["right_children"], dtype=np.int64)
        cond = np.asarray(t["split_conditions"], dtype=np.float32)
        feat = np.asarray(t["split_indices"], dtype=np.int64)
        if np.any(feat[left >= 0] >= d):
            raise ValueError(f"XGBoost model splits on feature {feat.max()}, {d} names given")
        tr.add(left, right, feat, cond, t["sum_hessian"], t["default_left"],
               lambda i, cond=cond, c=c: [(c, float(cond[i]))], mode="BRANCH_LT")
    if obj == "binary:logistic":
        margin = float(np.log(base / (1 - base)))
        return tr.node(2, "LOGISTIC", [margin])
    if obj == "multi:softprob" or obj == "multi:softmax":
        return tr.node(k, "SOFTMAX", [base] * k)
    raise ValueError(f"XGBoost objective {obj!r} is not supported (binary:logistic, "
                     "multi:softprob)")


def _tree_model(model, d):
    """The TreeEnsembleClassifier node for a tree model, or None for other models."""
    try:
        import xgboost
        if isinstance(model, xgboost.XGBClassifier):
            return _xgboost(model.get_booster(), d)
        if isinstance(model, xgboost.Booster):
            return _xgboost(model, d)
    except ImportError:
        pass
    from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                                  HistGradientBoostingClassifier, RandomForestClassifier)
    if isinstance(model, (RandomForestClassifier, ExtraTreesClassifier)):
        return _forest(model, d)
    if isinstance(model, GradientBoostingClassifier):
        return _gradient_boosting(model, d)
    if isinstance(model, HistGradientBoostingClassifier):
        return _hist_gradient_boosting(model, d)
    return None


DRIFT_BINS = 10


def drift_bins(X, bins=DRIFT_BINS):
    """Each feature's training distribution for cohortd's drift check (PSI): the inner
    quantile edges of its values (ties merged, so a feature with many equal values has
    fewer bins) and the share of the training rows in each bin. A value equal to an
    edge belongs to the lower bin (numpy.searchsorted side="left")."""
    X = np.asarray(X, dtype=np.float32)
    out = []
    for j in range(X.shape[1]):
        x = X[:, j]
        edges = np.unique(np.quantile(x, np.arange(1, bins) / bins).astype(np.float32))
        counts = np.bincount(np.searchsorted(edges, x, side="left"),
                             minlength=len(edges) + 1)
        out.append({"edges": [float(e) for e in edges],
                    "expected": [float(c) / len(x) for c in counts]})
    return {"bins": bins, "rows": int(X.shape[0]), "features": out}


def _autoencoder(steps, feature_names, version, drift_data, error_data):
    """Pipeline(StandardScaler, MLPRegressor) or MLPRegressor trained X -> X: the graph
    outputs the reconstruction in feature units; the metadata holds the error's scale
    per feature and the quantiles of error_data's reconstruction errors."""
    from sklearn.preprocessing import StandardScaler
    d = len(feature_names)
    sc = steps[0] if len(steps) == 2 and isinstance(steps[0], StandardScaler) else None
    ae = steps[-1]
    if len(steps) != (2 if sc else 1) or ae.n_outputs_ != d or ae.n_features_in_ != d:
        raise ValueError(f"an autoencoder is an MLPRegressor (after an optional StandardScaler) "
                         f"trained X -> X on the {d} features")
    if error_data is None:
        raise ValueError("an autoencoder needs error_data: the training rows, whose "
                         "reconstruction errors make the scale of its score")
    mean = sc.mean_ if sc is not None and sc.with_mean else np.zeros(d)
    scale = sc.scale_ if sc is not None and sc.with_std else np.ones(d)
    g = _Graph()
    x = _scaler(g, "features", sc) if sc is not None else "features"
    x = _mlp(g, x, ae)
    x = g.op("Mul", [x, g.const("ae_scale", scale)])
    g.op("Add", [x, g.const("ae_mean", mean)])
    g.nodes[-1].output[0] = "score"
    Z = np.asarray(error_data, dtype=np.float32).astype(np.float64)
    T = (Z - mean) / scale
    err = ((T - ae.predict(T)) ** 2).mean(axis=1)
    quantiles = np.quantile(err, np.linspace(0, 1, 1001))
    graph = helper.make_graph(
        g.nodes, "cohortd_autoencoder",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", d])], g.inits)
    m = helper.make_model(graph, producer_name="cohortd export_onnx.py",
                          opset_imports=[helper.make_opsetid("", OPSET)])
    extra = {"cohortd.autoencoder.scale": ",".join(repr(float(v)) for v in scale),
             "cohortd.autoencoder.error_quantiles": ",".join(repr(float(v)) for v in quantiles)}
    return _finish(m, feature_names, version, drift_data, extra)


def _finish(m, feature_names, version, drift_data=None, extra=None):
    m.ir_version = 8
    meta = {"cohortd.features": ",".join(feature_names)}
    meta.update(extra or {})
    if version:
        meta["model_version"] = version
    if drift_data is not None:
        if np.asarray(drift_data).shape[1:] != (len(feature_names),):
            raise ValueError(f"drift data has shape {np.asarray(drift_data).shape}; expected "
                             f"[rows, {len(feature_names)}]")
        meta["cohortd.drift"] = json.dumps(drift_bins(drift_data), separators=(",", ":"))
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    return m


def to_onnx(model, feature_names, version=None, drift_data=None, error_data=None):
    """Build the ONNX ModelProto for a fitted sklearn or XGBoost model."""
    d = len(feature_names)
    trees = _tree_model(model, d)
    if trees is not None:
        n_in = getattr(model, "n_features_in_", None)
        if n_in is None and hasattr(model, "num_features"):
            n_in = model.num_features()
        if n_in is not None and n_in != d:
            raise ValueError(f"model was fitted on {n_in} features, {d} names given")
        n_out = len([a for a in trees.attribute if a.name == "classlabels_int64s"][0].ints)
        graph = helper.make_graph(
            [trees], "cohortd_risk",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", n_out]),
             helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])])
        m = helper.make_model(graph, producer_name="cohortd export_onnx.py",
                              opset_imports=[helper.make_opsetid("", OPSET),
                                             helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
        return _finish(m, feature_names, version, drift_data)
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    if isinstance(steps[-1], MLPRegressor):
        return _autoencoder(steps, feature_names, version, drift_data, error_data)
    g = _Graph()
    x = "features"
    for i, s in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(s, StandardScaler) and not last:
            x = _scaler(g, x, s)
        elif isinstance(s, LogisticRegression) and last:
            x = _logistic(g, x, s)
        elif isinstance(s, MLPClassifier) and last:
            x = _mlp(g, x, s)
        else:
            raise ValueError(f"cannot export {type(s).__name__} at step {i}: supported are "
                             "StandardScaler steps followed by LogisticRegression or "
                             "MLPClassifier, and the tree ensembles RandomForestClassifier, "
                             "ExtraTreesClassifier, GradientBoostingClassifier, "
                             "HistGradientBoostingClassifier, XGBClassifier")
    n_in = getattr(steps[-1], "n_features_in_", d)
    if n_in != d:
        raise ValueError(f"model was fitted on {n_in} features, {d} names given")
    g.nodes[-1].output[0] = "score"
    est = steps[-1]
    n_out = est.coef_.shape[0] if hasattr(est, "coef_") else est.coefs_[-1].shape[1]
    graph = helper.make_graph(
        g.nodes, "cohortd_risk",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", n_out])],
        g.inits)
    m = helper.make_model(graph, producer_name="cohortd export_onnx.py",
                          opset_imports=[helper.make_opsetid("", OPSET)])
    return _finish(m, feature_names, version, drift_data)


def export(model, path, feature_names, version=None, drift_data=None, error_data=None):
    """Write a fitted sklearn or XGBoost model to path as ONNX. drift_data: training
    feature vectors [rows, d]; each feature's distribution over them goes to the
    metadata ("cohortd.drift"), and cohortd compares live vectors with it (PSI).
    error_data: for an autoencoder (an MLPRegressor trained X -> X, after an optional
    StandardScaler; cohortd's model.kind = autoencoder), the training rows whose
    reconstruction errors' quantiles map a live error to its percentile."""
    m = to_onnx(model, list(feature_names), version, drift_data, error_data)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a fitted sklearn model saved with pickle or joblib, or an "
                                  "XGBoost model saved as .json or .ubj")
    ap.add_argument("out", help="the .onnx file to write")
    ap.add_argument("--features", required=True,
                    help="comma-separated feature names in cohortd.conf order")
    ap.add_argument("--version", help="model_version string carried in cohortd's outputs")
    ap.add_argument("--drift-data", metavar="CSV",
                    help="training feature vectors (comma-separated rows, d columns): their "
                         "per-feature distribution goes into the model for cohortd's drift "
                         "check")
    ap.add_argument("--error-data", metavar="CSV",
                    help="an autoencoder's training rows: their reconstruction errors make the "
                         "percentile scale of its score")
    a = ap.parse_args()
    if a.model.endswith((".json", ".ubj")):
        import xgboost
        model = xgboost.Booster()
        model.load_model(a.model)
    else:
        try:
            import joblib
            model = joblib.load(a.model)
        except ImportError:
            with open(a.model, "rb") as f:
                model = pickle.load(f)
    try:
        drift = np.loadtxt(a.drift_data, delimiter=",", ndmin=2) if a.drift_data else None
        errs = np.loadtxt(a.error_data, delimiter=",", ndmin=2) if a.error_data else None
        export(model, a.out, a.features.split(","), a.version, drift, errs)
    except ValueError as e:
        print(f"export_onnx: {e}", file=sys.stderr)
        return 1
    print(f"export_onnx: wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
