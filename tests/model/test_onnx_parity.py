#!/usr/bin/python3
"""cohortd's ONNX evaluator against scikit-learn, and the loader against broken files.

Parity: models exported by tools/export_onnx.py are scored by cohort-score (the
daemon's own evaluator) on 10,000 vectors and compared with sklearn's predict_proba
on the same float32 inputs. Robustness: truncated, mis-shaped and unsupported models
must fail to load with a message that names the problem; never crash.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SRC = os.environ.get("CH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("CH_BUILD_DIR", os.path.join(SRC, "build"))
SCORE = os.path.join(BUILD, "tools", "cohort-score")
sys.path.insert(0, os.path.join(SRC, "tools"))
from export_onnx import export, to_onnx  # noqa: E402

D = 16
N = 10_000
TOL = 1e-5
NAMES = [f"f{i}" for i in range(D)]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def data(rng, n):
    """Feature-like data: counts, heavy-tailed amounts, ratios, of very different scales."""
    X = np.empty((n, D))
    X[:, :6] = rng.poisson(rng.uniform(0.5, 20, 6), (n, 6))
    X[:, 6:11] = rng.lognormal(3.5, 1.0, (n, 5))
    X[:, 11] = rng.uniform(0, 1e6, n)
    X[:, 12:] = rng.uniform(0, 2, (n, 4))
    logit = 0.2 * X[:, 0] - 0.15 * X[:, 3] + 0.02 * X[:, 6] - 2e-6 * X[:, 11] + X[:, 13] - 2
    y = (logit + rng.logistic(size=n) > 0).astype(int)
    return X.astype(np.float32), y


def score(path, X, contributions=False):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        np.savetxt(f, X, delimiter=",", fmt="%.9g")
    args = [SCORE, path, "--input", f.name, "--features", ",".join(NAMES)]
    if contributions:
        args.append("--contributions")
    r = subprocess.run(args, capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        raise RuntimeError(f"cohort-score failed: {r.stderr}")
    rows = np.array([[float(v) for v in line.split(",")] for line in r.stdout.split()])
    return rows[:, 0], rows[:, 1:]


def load_error(path, d=D):
    r = subprocess.run([SCORE, path, "--check", "--inputs", str(d)], capture_output=True,
                       text=True)
    return r.returncode, r.stderr.strip()


def parity(tmp, rng):
    Xtr, ytr = data(rng, 20_000)
    Xte, _ = data(rng, N)
    models = {
        "logistic_regression": LogisticRegression(max_iter=5000),
        "mlp_relu": make_pipeline(StandardScaler(), MLPClassifier((32, 16), activation="relu",
                                                                  max_iter=200, random_state=1)),
        "mlp_tanh": make_pipeline(StandardScaler(), MLPClassifier((32,), activation="tanh",
                                                                  max_iter=200, random_state=2)),
        "scaler_logistic_regression": make_pipeline(StandardScaler(),
                                                    LogisticRegression(max_iter=1000)),
        "mlp_logistic": make_pipeline(StandardScaler(), MLPClassifier(
            (8,), activation="logistic", max_iter=300, random_state=3)),
    }
    worst = 0.0
    for name, m in models.items():
        m.fit(Xtr, ytr)
        path = os.path.join(tmp, name + ".onnx")
        export(m, path, NAMES, version=name)
        got, contrib = score(path, Xte, contributions=True)
        want = m.predict_proba(Xte)[:, 1]
        err = float(np.abs(got - want).max())
        worst = max(worst, err)
        check(len(got) == N and err <= TOL,
              f"{name}: {len(got)} scores, max |cohortd - sklearn| = {err:.2e} (<= {TOL:g})")
        if name == "logistic_regression":
            want_c = m.coef_[0] * Xte.astype(np.float64)
            cerr = float(np.abs(contrib - want_c).max() / np.abs(want_c).max())
            check(cerr <= 1e-5, f"{name}: contributions equal w_i * x_i (max rel err {cerr:.1e})")
        if name == "scaler_logistic_regression":
            sc, lr = m.steps[0][1], m.steps[1][1]
            want_c = lr.coef_[0] / sc.scale_ * Xte.astype(np.float64)
            cerr = float(np.abs(contrib - want_c).max() / np.abs(want_c).max())
            check(cerr <= 1e-5, f"{name}: contributions equal (w_i / s_i) * x_i "
                                f"(max rel err {cerr:.1e})")
        if name == "mlp_tanh":
            # gradient x input of the logit, against central differences in float64
            est = m.steps[1][1]
            sc = m.steps[0][1]

            def logit(x):
                h = (x - sc.mean_) / sc.scale_
                for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_)):
                    h = h @ w + b
                    if i < len(est.coefs_) - 1:
                        h = np.tanh(h)
                return h[:, 0]

            x = Xte[:50].astype(np.float64)
            g = np.zeros_like(x)
            for j in range(D):
                e = np.zeros(D)
                e[j] = 1e-4 * max(1.0, float(np.abs(x[:, j]).max()))
                g[:, j] = (logit(x + e) - logit(x - e)) / (2 * e[j])
            want_c = g * x
            cerr = float(np.abs(contrib[:50] - want_c).max() / np.abs(want_c).max())
            check(cerr <= 1e-3, f"{name}: contributions = gradient x input (max rel err "
                                f"{cerr:.1e} vs finite differences)")
    print(f"parity: max abs error over all models {worst:.2e}")


def node_model(nodes, inits, d=D, out_cols=1, opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", out_cols])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def robustness(tmp, rng):
    X, y = data(rng, 2000)
    lr = LogisticRegression(max_iter=2000).fit(X, y)
    good = os.path.join(tmp, "good.onnx")
    export(lr, good, NAMES)
    blob = open(good, "rb").read()

    def write(name, content):
        p = os.path.join(tmp, name)
        with open(p, "wb") as f:
            f.write(content)
        return p

    rc, msg = load_error(good)
    check(rc == 0 and "ok" in subprocess.run([SCORE, good, "--check", "--inputs", str(D)],
                                             capture_output=True, text=True).stdout,
          "a valid model loads")
    # Truncation at every length must fail cleanly (or, if it cuts between optional
    # trailing metadata, still load the same weights).
    crashes, loaded = 0, 0
    for cut in range(0, len(blob)):
        p = write("cut.onnx", blob[:cut])
        rc, msg = load_error(p)
        if rc not in (0, 1) or (rc == 1 and not msg):
            crashes += 1
        loaded += rc == 0
    check(crashes == 0, f"{len(blob)} truncations: 0 crashes or silent failures ({crashes}); "
                        f"{loaded} cuts inside trailing metadata still load")
    rc, msg = load_error(write("half.onnx", blob[: len(blob) // 2]))
    check(rc == 1 and "not a valid ONNX model" in msg, f"truncated file: {msg}")
    rc, msg = load_error(write("empty.onnx", b""))
    check(rc == 1 and "model has no graph" in msg, f"empty file: {msg}")
    rc, msg = load_error(os.path.join(tmp, "missing.onnx"))
    check(rc == 1 and "No such file" in msg, f"missing file: {msg}")
    rc, msg = load_error(write("text.onnx", b"this is not a model\n" * 10))
    check(rc == 1 and "not a valid ONNX model" in msg, f"text file: {msg}")
    rc, msg = load_error(good, d=12)
    check(rc == 1 and "16 features" in msg and "12" in msg, f"wrong input width: {msg}")
    r = subprocess.run([SCORE, good, "--check", "--features", ",".join(reversed(NAMES))],
                       capture_output=True, text=True)
    check(r.returncode == 1 and "feature 'f0'" in r.stderr,
          f"features in another order: {r.stderr.strip()}")

    W = numpy_helper.from_array(rng.normal(size=(D, 1)).astype(np.float32), "W")
    m = node_model([helper.make_node("MatMul", ["features", "W"], ["z"], name="mm"),
                    helper.make_node("Exp", ["z"], ["score"], name="exp_node")], [W])
    rc, msg = load_error(write("exp.onnx", m.SerializeToString()))
    check(rc == 1 and "exp_node" in msg and "unsupported operator" in msg,
          f"unsupported op: {msg}")
    W2 = numpy_helper.from_array(rng.normal(size=(D + 3, 1)).astype(np.float32), "W")
    m = node_model([helper.make_node("MatMul", ["features", "W"], ["score"], name="mm_bad")],
                   [W2], d="N2")
    rc, msg = load_error(write("dims.onnx", m.SerializeToString()))
    check(rc == 1 and "mm_bad" in msg and "19 rows" in msg, f"wrong weight dims: {msg}")
    B = numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "B")
    m = node_model([helper.make_node("MatMul", ["features", "W"], ["z"], name="mm"),
                    helper.make_node("Add", ["z", "B"], ["score"], name="add_bad")], [W, B])
    rc, msg = load_error(write("bcast.onnx", m.SerializeToString()))
    check(rc == 1 and "add_bad" in msg, f"non-broadcastable constant: {msg}")
    m = node_model([helper.make_node("Relu", ["nowhere"], ["score"], name="dangling")], [])
    rc, msg = load_error(write("dangling.onnx", m.SerializeToString()))
    check(rc == 1 and "dangling" in msg and "nowhere" in msg, f"unknown input: {msg}")
    m = node_model([helper.make_node("Conv", ["features", "W"], ["score"], name="c1",
                                     domain="com.microsoft")], [W])
    rc, msg = load_error(write("domain.onnx", m.SerializeToString()))
    check(rc == 1 and "com.microsoft" in msg, f"foreign operator domain: {msg}")
    # A model that only works for its constants: output not computed from the input.
    C = numpy_helper.from_array(np.ones((1, 1), np.float32), "C")
    m = node_model([helper.make_node("Relu", ["C"], ["score"], name="const_out")], [C])
    rc, msg = load_error(write("const.onnx", m.SerializeToString()))
    check(rc == 1 and "not computed from the input" in msg, f"constant output: {msg}")
    autoencoder(tmp, rng, write)


def autoencoder(tmp, rng, write):
    """An autoencoder's score against sklearn, and its metadata errors."""
    from sklearn.neural_network import MLPRegressor
    X, _ = data(rng, 3000)
    sc = StandardScaler().fit(X)
    ae = MLPRegressor((6,), activation="tanh", max_iter=300, random_state=4)
    ae.fit(sc.transform(X), sc.transform(X))
    path = os.path.join(tmp, "ae.onnx")
    m = to_onnx(make_pipeline(sc, ae), NAMES, error_data=X)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    Xt, _ = data(rng, N)
    got, contrib = score(path, Xt, contributions=True)

    def errors(Z):
        T = sc.transform(Z.astype(np.float64))
        return ((T - ae.predict(T)) ** 2).mean(axis=1)

    q = np.quantile(errors(X), np.linspace(0, 1, 1001))
    err = errors(Xt)
    worst = float(np.abs(got - np.interp(err, q, np.linspace(0, 1, 1001))).max())
    check(worst <= TOL, f"autoencoder: percentile of the reconstruction error equals sklearn's "
                        f"(max diff {worst:.2e})")
    cerr = float(np.abs(contrib.sum(axis=1) - err).max() / err.max())
    check(cerr <= 1e-5, f"autoencoder: contributions add up to the error (rel {cerr:.1e})")
    meta = {p.key: p.value for p in m.metadata_props}
    for name, key, value, want in (
            ("no quantiles", "cohortd.autoencoder.error_quantiles", None, "needs both"),
            ("bad scale", "cohortd.autoencoder.scale", "1,2", "scale"),
            ("zero scale", "cohortd.autoencoder.scale", ",".join(["0"] * D), "positive"),
            ("decreasing", "cohortd.autoencoder.error_quantiles", "3,2,1", "non-decreasing")):
        bad = onnx.ModelProto()
        bad.CopyFrom(m)
        del bad.metadata_props[:]
        for k, v in meta.items():
            if k == key and value is None:
                continue
            e = bad.metadata_props.add()
            e.key, e.value = k, value if k == key else v
        rc, msg = load_error(write(f"ae_{name.replace(' ', '_')}.onnx", bad.SerializeToString()))
        check(rc == 1 and want in msg, f"autoencoder metadata ({name}) refused: {msg}")


def torch_export(tmp, rng):
    try:
        import torch
    except ImportError:
        print("SKIP torch: python3-torch is not installed")
        return 77
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
                              torch.nn.Tanh(), torch.nn.Linear(8, 1), torch.nn.Sigmoid())
    path = os.path.join(tmp, "torch.onnx")
    torch.onnx.export(net, torch.zeros(1, D), path, input_names=["features"],
                      output_names=["score"], dynamic_axes={"features": {0: "N"}},
                      opset_version=13)
    X, _ = data(rng, N)
    X = (X - X.mean(0)) / X.std(0)
    got, _ = score(path, X.astype(np.float32))
    with torch.no_grad():
        want = net(torch.from_numpy(X.astype(np.float32))).numpy()[:, 0]
    err = float(np.abs(got - want).max())
    check(err <= TOL, f"torch.onnx.export MLP: max |cohortd - torch| = {err:.2e}")
    return 0


def main():
    rng = np.random.default_rng(20261122)
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1 and sys.argv[1] == "torch":
            rc = torch_export(tmp, rng)
            if rc:
                return rc
        else:
            parity(tmp, rng)
            robustness(tmp, rng)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
