#!/usr/bin/python3
"""Export a scikit-learn classifier to an ONNX file that cohortd can load.

Supported: LogisticRegression (binary or multinomial), MLPClassifier (relu, tanh,
logistic, identity hidden layers), and Pipelines of StandardScaler followed by one of
them. The graph uses only standard ONNX ops (Sub, Div, Gemm, Relu, Tanh, Sigmoid,
Softmax), float32, one input [N, d] named "features" and one output "score" whose last
column is the probability of the positive (last) class.

Library use:
    from export_onnx import export
    export(model, "risk.onnx", feature_names, version="risk-2026-11-22")

Command line (a model saved with joblib or pickle):
    export_onnx.py MODEL.pkl OUT.onnx --features a,b,c [--version V]

Run with Debian's /usr/bin/python3 (python3-sklearn, python3-onnx).
"""
import argparse
import pickle
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


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
        else:
            raise ValueError(f"MLP output activation {mlp.out_activation_!r} is not a classifier")
    return x


def to_onnx(model, feature_names, version=None):
    """Build the ONNX ModelProto for a fitted sklearn model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    d = len(feature_names)
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
                             "StandardScaler steps followed by LogisticRegression or MLPClassifier")
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
    m.ir_version = 8
    meta = {"cohortd.features": ",".join(feature_names)}
    if version:
        meta["model_version"] = version
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    return m


def export(model, path, feature_names, version=None):
    """Write a fitted sklearn model to path as ONNX."""
    m = to_onnx(model, list(feature_names), version)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a fitted sklearn model saved with pickle or joblib")
    ap.add_argument("out", help="the .onnx file to write")
    ap.add_argument("--features", required=True,
                    help="comma-separated feature names in cohortd.conf order")
    ap.add_argument("--version", help="model_version string carried in cohortd's outputs")
    a = ap.parse_args()
    try:
        import joblib
        model = joblib.load(a.model)
    except ImportError:
        with open(a.model, "rb") as f:
            model = pickle.load(f)
    try:
        export(model, a.out, a.features.split(","), a.version)
    except ValueError as e:
        print(f"export_onnx: {e}", file=sys.stderr)
        return 1
    print(f"export_onnx: wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
