#!/usr/bin/python3
"""Train the example risk models on cohortd's own features and export them to ONNX.

1. Starts cohort-broker and cohortd (the shipped conf/cohortd.conf, without a model),
   replays the sparkov card-transaction sample through it and reads back one profile
   update per transaction: the feature vector cohortd computed right after it.
2. Joins the vectors with the is_fraud labels (by trans_num = event_id), splits by
   time (the first 70% of the sample's time span trains, the rest tests).
3. Fits StandardScaler + LogisticRegression and StandardScaler + MLPClassifier, prints
   ROC AUC and average precision on the later part, and exports both with
   tools/export_onnx.py to conf/models/ (risk_lr.onnx, risk_mlp.onnx).

Usage: /usr/bin/python3 tools/train_example.py [--build DIR] [--data DIR] [--out DIR]
Deterministic: the same sample and code give the same files.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)


def collect(build, data):
    os.environ.setdefault("CH_BUILD_DIR", build)
    os.environ.setdefault("CH_DATA_DIR", data)
    sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
    import harness as h

    path = os.path.join(data, "sparkov-transactions-sample.csv")
    labels = {r["event_id"]: r["label"] for r in h.sparkov_rows(path)}
    reader = h.avro_reader("profile_update.avsc")
    print(f"train_example: replaying {len(labels)} transactions through cohortd ...",
          flush=True)
    with h.Broker(partitions=4) as broker, \
            h.Daemon(broker.bootstrap, "emit.policy=every", "model.path=", "segments.k=0",
                     group="cohortd-train") as d:
        d.wait_assigned()
        h.run([h.REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet",
               "--file", path])
        msgs = h.consume(broker.bootstrap, "profiles", expect=len(labels))
        rc = d.stop()
        if rc != 0:
            raise SystemExit(f"train_example: cohortd exited {rc}:\n{d.log_text()[-3000:]}")
        broker.stop()
    feats, ts, y = {}, {}, {}
    for _, _, _, value, _ in msgs:
        _, rec = h.decode_confluent(reader, value)
        eid = rec["event_id"]
        feats[eid] = rec["features"]
        ts[eid] = h.ts_ms(rec["ts"])
        y[eid] = labels[eid]
    if len(feats) != len(labels):
        raise SystemExit(f"train_example: {len(feats)} profile updates for {len(labels)} events")
    ids = sorted(feats, key=lambda e: (ts[e], e))
    X = np.array([feats[e] for e in ids], dtype=np.float32)
    Y = np.array([y[e] for e in ids])
    T = np.array([ts[e] for e in ids])
    return X, Y, T, h.read_feature_specs()[0]


def main():
    ap = argparse.ArgumentParser(description="Train and export cohortd's example risk models.")
    ap.add_argument("--build", default=os.path.join(SRC, "build"), help="cmake build directory")
    ap.add_argument("--data", default=os.path.join(SRC, "..", "shared", "data"),
                    help="directory with sparkov-transactions-sample.csv")
    ap.add_argument("--out", default=os.path.join(SRC, "conf", "models"),
                    help="where to write the .onnx files")
    a = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sys.path.insert(0, HERE)
    from export_onnx import export

    for binary in ("daemon/cohortd", "stream/cohort-broker", "tools/cohort-replay"):
        if not os.path.exists(os.path.join(a.build, binary)):
            ap.error(f"{os.path.join(a.build, binary)} not found: build first (tools/demo.sh "
                     f"builds build/; tools/test.sh builds build-asan/, use --build build-asan)")
    X, Y, T, specs = collect(os.path.abspath(a.build), os.path.abspath(a.data))
    names = [s[0] for s in specs]
    split = T.min() + 0.7 * (T.max() - T.min())
    tr, te = T < split, T >= split
    print(f"train_example: {tr.sum()} training events ({Y[tr].sum()} fraud), "
          f"{te.sum()} test events ({Y[te].sum()} fraud); split at ts {int(split)}")
    models = {
        "risk_lr": make_pipeline(StandardScaler(),
                                 LogisticRegression(C=0.1, class_weight="balanced",
                                                    max_iter=5000)),
        "risk_mlp": make_pipeline(StandardScaler(),
                                  MLPClassifier((16, 8), activation="relu", alpha=1.0,
                                                max_iter=400, early_stopping=False,
                                                random_state=0)),
    }
    os.makedirs(a.out, exist_ok=True)
    for name, m in models.items():
        m.fit(X[tr], Y[tr])
        p = m.predict_proba(X[te])[:, 1]
        auc = roc_auc_score(Y[te], p)
        ap_ = average_precision_score(Y[te], p)
        path = os.path.join(a.out, name + ".onnx")
        export(m, path, names, version=f"{name}-sparkov-1")
        print(f"train_example: {name}: ROC AUC {auc:.4f}, average precision {ap_:.4f} on the "
              f"later {te.sum()} events; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
