"""Anomaly scores without labels: model.kind = autoencoder on cohort-gen's planted
anomalous minority.

1. Training, without labels: cohortd without a model turns a cohort-gen stream (seed
   21) into feature vectors (its profile updates); an autoencoder (StandardScaler +
   MLPRegressor(8, tanh) trained X -> X) learns the last 10,000 of them, and
   tools/export_onnx.py writes it with those rows' reconstruction errors (error_data).
2. Scoring: a fresh cohortd with model.kind = autoencoder on an independent stream
   (seed 22, whose --labels file says which users are anomalous, used only here).
   Each user's score is the risk update of its last event. ROC AUC of those scores
   against the planted labels must be >= 0.9.
3. Every score equals the percentile computed here from sklearn's reconstruction of
   the vector cohortd published for that event (<= 1e-4), and every alert's reasons
   are the features with the largest terms of its error.
4. The same file with model.kind = classifier is refused by --check-config, saying why.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harness import (COHORTD, CONF, GEN, SRC, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, log, read_feature_specs, run, wait_for)

sys.path.insert(0, os.path.join(SRC, "tools"))
from export_onnx import export  # noqa: E402

USERS, EVENTS, STEP, TRAIN = 1000, 20_000, 10_000, 10_000
THR, K = 0.99, 3


def stream(bootstrap, seed, labels=None):
    args = [GEN, "--brokers", bootstrap, "--users", str(USERS), "--events", str(EVENTS),
            "--step-ms", str(STEP), "--seed", str(seed), "--quiet"]
    run(args + (["--labels", labels] if labels else []))


def by_offset(bootstrap, topic, reader, n):
    msgs = sorted(consume(bootstrap, topic, expect=n, idle=1), key=lambda m: m[1])
    return [decode_confluent(reader, m[3])[1] for m in msgs]


def main():
    specs, _ = read_feature_specs()
    names = [s[0] for s in specs]
    tmp = tempfile.mkdtemp(prefix="autoencoder-")
    pr, rr = avro_reader("profile_update.avsc"), avro_reader("risk_update.avsc")
    sets = ["segments.k=0", "emit.policy=every", "risk.emit=every"]
    with Broker(partitions=1) as broker, Daemon(broker.bootstrap, "model.path=", *sets) as d:
        d.wait_assigned()
        stream(broker.bootstrap, 21)
        wait_for("training stream", lambda: caught_up(d, broker.bootstrap, 1, EVENTS), [d])
        X = np.array([p["features"] for p in by_offset(broker.bootstrap, "profiles", pr,
                                                        EVENTS)[-TRAIN:]], dtype=np.float32)
        assert d.stop() == 0
        broker.stop()
    sc = StandardScaler().fit(X)
    ae = MLPRegressor((8,), activation="tanh", max_iter=500, random_state=0)
    ae.fit(sc.transform(X), sc.transform(X))
    path = os.path.join(tmp, "autoencoder.onnx")
    export(make_pipeline(sc, ae), path, names, version="ae-test", error_data=X)

    labels = os.path.join(tmp, "groups.csv")
    with Broker(partitions=1) as broker, \
            Daemon(broker.bootstrap, f"model.path={path}", "model.kind=autoencoder",
                   f"risk.threshold={THR}", f"risk.reasons={K}", *sets) as d:
        d.wait_assigned()
        stream(broker.bootstrap, 22, labels)
        wait_for("scored stream", lambda: caught_up(d, broker.bootstrap, 1, EVENTS), [d])
        risk = by_offset(broker.bootstrap, "risk", rr, EVENTS)
        prof = {p["event_id"]: p["features"] for p in by_offset(broker.bootstrap, "profiles",
                                                                pr, EVENTS)}
        assert d.stop() == 0
        broker.stop()
    with open(labels) as f:
        anomalous = {u for u, g in (ln.strip().split(",") for ln in f
                                    if ln.strip() and not ln.startswith("user_id")) if g == "-1"}
    # 3. parity with sklearn on the published vectors
    V = np.array([prof[r["event_id"]] for r in risk], dtype=np.float32)
    got = np.array([r["score"] for r in risk])
    Zt = sc.transform(X.astype(np.float64))
    q = np.quantile(((Zt - ae.predict(Zt)) ** 2).mean(axis=1), np.linspace(0, 1, 1001))
    Z = sc.transform(V.astype(np.float64))
    terms = (Z - ae.predict(Z)) ** 2 / len(names)
    want = np.interp(terms.sum(axis=1), q, np.linspace(0, 1, 1001))
    err = float(np.abs(got - want).max())
    assert err <= 1e-4, f"scores differ from sklearn's percentile by {err:.2e}"
    alerts = 0
    for i, r in enumerate(risk):
        if not r["alert"]:
            continue
        alerts += 1
        top = [names[j] for j in np.argsort(-terms[i], kind="stable")[:K]]
        gotr = [x["feature"] for x in r["reasons"]]
        assert gotr[0] == top[0] or abs(terms[i][names.index(gotr[0])] -
                                        terms[i][names.index(top[0])]) <= 1e-4, (gotr, top)
    # 2. each user's last score against the planted labels
    last = {}
    for r in risk:
        last[r["user_id"]] = r["score"]
    users = sorted(last)
    y = np.array([u in anomalous for u in users])
    auc = roc_auc_score(y, [last[u] for u in users])
    assert auc >= 0.9, f"ROC AUC {auc:.3f} < 0.9"
    # 4. the wrong kind is refused
    r = subprocess.run([COHORTD, "--config", CONF, "--set", f"model.path={path}",
                        "--check-config", "--quiet"], capture_output=True, text=True)
    assert r.returncode != 0 and "model.kind is classifier" in r.stderr, r.stderr
    log(f"autoencoder: ROC AUC {auc:.3f} over {len(users)} users ({int(y.sum())} planted "
        f"anomalous) without labels; {len(risk)} scores equal sklearn's percentile (max diff "
        f"{err:.1e}); {alerts} alerts at {THR}; model.kind = classifier refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
