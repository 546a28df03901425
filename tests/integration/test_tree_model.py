"""A gradient-boosted tree model in the daemon: the sparkov sample scored by an XGBoost
model exported with tools/export_onnx.py, its reasons Shapley values.

The model is trained offline on the first 70% of the sample's time span (features
computed from the CSV, tests/integration/harness.py), exported, and loaded by cohortd.
The whole sample is replayed with one profile and one risk update per event. For every
event, the score must equal xgboost's predict_proba on the feature vector cohortd
published for it (<= 1e-5). For every alert, the reasons must be the top
risk.reasons features of xgboost's predict(pred_contribs=True) on that vector, with
their values (<= 1e-4).
"""
import os
import sys
import tempfile

import numpy as np

from harness import (DATA, REPLAY, SRC, Broker, Daemon, avro_reader, consume,
                     decode_confluent, log, read_feature_specs, run, sparkov_rows)
from test_sparkov_risk import offline_vectors

sys.path.insert(0, os.path.join(SRC, "tools"))
from export_onnx import export  # noqa: E402

THR = 0.2
K = 3


def main():
    try:
        import xgboost
    except ImportError:
        print("python3-xgboost is not installed (tools/install-deps.sh installs it)")
        return 1
    from sklearn.metrics import roc_auc_score
    specs, default_hl = read_feature_specs()
    names = [s[0] for s in specs]
    ref = offline_vectors(specs, default_hl)
    rows = list(sparkov_rows())
    t_split = rows[0]["ts"] + 0.7 * (rows[-1]["ts"] - rows[0]["ts"])
    train = [r["event_id"] for r in rows if r["ts"] < t_split]
    X = np.array([ref[e][2] for e in train], dtype=np.float32)
    y = np.array([ref[e][0] for e in train])
    model = xgboost.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, nthread=2,
                                  random_state=0).fit(X, y)
    path = os.path.join(tempfile.mkdtemp(prefix="tree-model-"), "risk_xgb.onnx")
    export(model, path, names, version="xgb-sparkov")
    with Broker(partitions=4) as broker, \
            Daemon(broker.bootstrap, f"model.path={path}", "risk.emit=every",
                   "emit.policy=every", f"risk.threshold={THR}", f"risk.reasons={K}") as d:
        d.wait_assigned()
        assert "TreeSHAP" in d.log_text(), "the load log names the reasons method"
        run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet",
             "--file", f"{DATA}/sparkov-transactions-sample.csv"])
        risk = consume(broker.bootstrap, "risk", expect=len(rows))
        profiles = consume(broker.bootstrap, "profiles", expect=len(rows))
        assert d.stop() == 0
        broker.stop()
    rr, pr = avro_reader("risk_update.avsc"), avro_reader("profile_update.avsc")
    scores = {}
    for m in risk:
        rec = decode_confluent(rr, m[3])[1]
        scores[rec["event_id"]] = rec
    vectors = {}
    for m in profiles:
        rec = decode_confluent(pr, m[3])[1]
        vectors[rec["event_id"]] = rec["features"]
    ids = [r["event_id"] for r in rows]
    assert set(scores) == set(ids) and set(vectors) >= set(ids), "an event without updates"
    V = np.array([vectors[e] for e in ids], dtype=np.float32)
    got = np.array([scores[e]["score"] for e in ids])
    want = model.predict_proba(V)[:, 1]
    err = float(np.abs(got - want).max())
    assert err <= 1e-5, f"score differs from xgboost by {err:.2e}"
    assert all(scores[e]["model_version"] == "xgb-sparkov" for e in ids)
    contribs = model.get_booster().predict(xgboost.DMatrix(V), pred_contribs=True)[:, :-1]
    alerts, worst = 0, 0.0
    for i, e in enumerate(ids):
        rec = scores[e]
        assert rec["alert"] == (rec["score"] >= np.float32(THR))
        if not rec["alert"]:
            assert rec["reasons"] == []
            continue
        alerts += 1
        c = contribs[i]
        order = np.argsort(-c, kind="stable")[:K]
        got_r = [(x["feature"], x["contribution"]) for x in rec["reasons"]]
        assert len(got_r) == K, got_r
        for (fname, val), j in zip(got_r, order):
            worst = max(worst, abs(val - c[names.index(fname)]))
            # the same feature, or one whose Shapley value ties with it
            assert fname == names[j] or abs(c[names.index(fname)] - c[j]) <= 1e-4, \
                (e, got_r, [(names[k], float(c[k])) for k in order])
    assert worst <= 1e-4, f"reason values differ from pred_contribs by {worst:.2e}"
    later = [i for i, r in enumerate(rows) if r["ts"] >= t_split]
    labels = np.array([rows[i]["label"] for i in later])
    auc = roc_auc_score(labels, got[later])
    log(f"tree model in cohortd: {len(ids)} events scored as xgboost does (max diff "
        f"{err:.1e}); {alerts} alerts, reasons = top-{K} pred_contribs (max diff "
        f"{worst:.1e}); ROC AUC on the later 30% {auc:.3f} ({int(labels.sum())} frauds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
