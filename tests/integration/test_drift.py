"""Feature drift: PSI of live vectors against the training bins stored in the model.

1. Training: cohortd without a model turns a cohort-gen stream (seed 11) into feature
   vectors (its profile updates); a logistic regression learns the planted anomalous
   users from the last drift.window of them, and tools/export_onnx.py stores those
   vectors' per-feature bins in the model (drift_data).
2. Before the drift: a fresh cohortd with that model on an independent stream of the
   same generator (seed 12): at its end every feature's PSI is below 0.1. (While the
   window still holds the first vectors, of users with little history, PSI is high and
   warnings are logged: a fresh start does look different from the training data.)
3. After it: the same cohortd on a continuation with --drift-at 0 (every group's event
   mix moves halfway to the next group's, amounts scale by e or 1/e): PSI rises above
   0.25 and the crossings are logged as new warnings.
Each PSI in /metrics equals one computed here from the last drift.window profile
updates (the vectors scored, in order: one partition) and the model's bins (1e-9).
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harness import (GEN, SRC, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, log, metric, read_feature_specs, run, wait_for)

sys.path.insert(0, os.path.join(SRC, "tools"))
from export_onnx import export  # noqa: E402

USERS, EVENTS, STEP, W = 1000, 20_000, 10_000, 5000
START = 1767225600000
FLOOR = 1e-4


def gen(bootstrap, seed, *extra, labels=None):
    args = [GEN, "--brokers", bootstrap, "--users", str(USERS), "--events", str(EVENTS),
            "--step-ms", str(STEP), "--seed", str(seed), "--quiet", *extra]
    if labels:
        args += ["--labels", labels]
    run(args)


def vectors(bootstrap, n):
    """The feature vectors of the profile updates, in topic order (one partition)."""
    reader = avro_reader("profile_update.avsc")
    out = []
    for m in sorted(consume(bootstrap, "profiles", expect=n, idle=1), key=lambda m: m[1]):
        rec = decode_confluent(reader, m[3])[1]
        out.append((rec["user_id"], rec["features"]))
    assert len(out) == n, f"{len(out)} profile updates for {n} events"
    return out


def psi_reference(meta, X):
    out = []
    for j, f in enumerate(meta["features"]):
        edges = np.array(f["edges"], dtype=np.float32)
        a = np.bincount(np.searchsorted(edges, X[:, j], side="left"),
                        minlength=len(edges) + 1) / len(X)
        e = np.array(f["expected"])
        a, e = np.maximum(a, FLOOR), np.maximum(e, FLOOR)
        out.append(float(np.sum((a - e) * np.log(a / e))))
    return out


def psi_metrics(d, names):
    m = d.metrics()
    return [metric(m, "cohortd_drift_psi", feature=n) for n in names], \
        metric(m, "cohortd_drift_vectors")


def main():
    specs, _ = read_feature_specs()
    names = [s[0] for s in specs]
    tmp = tempfile.mkdtemp(prefix="drift-")
    labels_path = os.path.join(tmp, "groups.csv")
    sets = ["segments.k=0", "emit.policy=every", "risk.emit=every"]
    # 1. training vectors and a model carrying their bins
    with Broker(partitions=1) as broker, Daemon(broker.bootstrap, "model.path=", *sets) as d:
        d.wait_assigned()
        gen(broker.bootstrap, 11, labels=labels_path)
        wait_for("training stream processed",
                 lambda: caught_up(d, broker.bootstrap, 1, EVENTS), [d])
        train = vectors(broker.bootstrap, EVENTS)[-W:]
        assert d.stop() == 0
        broker.stop()
    with open(labels_path) as f:
        group = dict(line.strip().split(",") for line in f if line.strip())
    X = np.array([v for _, v in train], dtype=np.float32)
    y = np.array([group[u] == "-1" for u, _ in train], dtype=int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    path = os.path.join(tmp, "drift.onnx")
    export(model, path, names, version="drift-test", drift_data=X)
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["cohortd.drift"])

    with Broker(partitions=1) as broker, \
            Daemon(broker.bootstrap, f"model.path={path}", f"drift.window={W}", *sets) as d:
        d.wait_assigned()
        # 2. before the drift
        gen(broker.bootstrap, 12)
        wait_for("stream before the drift processed",
                 lambda: caught_up(d, broker.bootstrap, 1, EVENTS), [d])
        before, n = psi_metrics(d, names)
        assert n == W, n
        vs = vectors(broker.bootstrap, EVENTS)
        want = psi_reference(meta, np.array([v for _, v in vs[-W:]], dtype=np.float32))
        err = max(abs(a - b) for a, b in zip(before, want))
        assert err <= 1e-9, f"PSI differs from the reference by {err:.1e}"
        assert max(before) < 0.1, dict(zip(names, before))
        # (the window's first vectors come from users with little history yet, unlike the
        # training ones: those warnings are real, and the notices say when they end)
        warned_before = metric(d.metrics(), "cohortd_drift_warnings_total")
        log_before = len(d.log_text())
        # 3. after it
        gen(broker.bootstrap, 13, "--drift-at", "0", "--start-ts", str(START + EVENTS * STEP))
        wait_for("stream after the drift processed",
                 lambda: caught_up(d, broker.bootstrap, 1, 2 * EVENTS), [d])
        after, n = psi_metrics(d, names)
        vs = vectors(broker.bootstrap, 2 * EVENTS)
        want = psi_reference(meta, np.array([v for _, v in vs[-W:]], dtype=np.float32))
        err = max(err, max(abs(a - b) for a, b in zip(after, want)))
        assert err <= 1e-9, f"PSI differs from the reference by {err:.1e}"
        assert max(after) > 0.25, dict(zip(names, after))
        drifted = [nm for nm, v in zip(names, after) if v > 0.25]
        wait_for("drift warning logged", lambda: "drift: feature" in d.log_text()[log_before:],
                 [d], timeout=30)
        warned = metric(d.metrics(), "cohortd_drift_warnings_total") - warned_before
        assert warned >= 1, warned
        assert d.stop() == 0
        broker.stop()
    log("drift: PSI before the drift " + ", ".join(f"{n} {v:.3f}" for n, v in
                                                    sorted(zip(names, before), key=lambda t: -t[1])[:3])
        + f" (max {max(before):.3f} < 0.1); after it max {max(after):.3f}, above 0.25: "
        + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, after) if v > 0.25)
        + f"; {len(drifted)} of {len(names)} features warned ({int(warned)} warnings); "
        f"equal to the reference to {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
