#!/usr/bin/python3
"""Train the example risk models on cohortd's own features and export them to ONNX.

1. Runs `cohortd featurize` (the shipped conf/cohortd.conf, no broker) over the sparkov
   card-transaction sample, mapped by input.map.* keys, with the is_fraud labels joined
   by trans_num: one row per transaction, the feature vector cohortd computes right
   after it, bit for bit.
2. Splits by time (the first 70% of the sample's time span trains, the rest tests).
3. Fits StandardScaler + LogisticRegression and StandardScaler + MLPClassifier, prints
   ROC AUC and average precision on the later part, and exports both with
   tools/export_onnx.py to conf/models/ (risk_lr.onnx, risk_mlp.onnx).

Usage: /usr/bin/python3 tools/train_example.py [--build DIR] [--data DIR] [--out DIR]
Deterministic: the same sample and code give the same files.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)

# Where the sample's columns go: the daemon's own mapping keys.
SPARKOV_MAP = ["input.map.user_id=cc_num", "input.map.ts=unix_time", "input.map.ts_unit=s",
               "input.map.event_id=trans_num", 'input.map.type="payment"',
               "input.map.amount=amt", "input.map.item=merchant",
               "input.map.category=category"]


def collect(build, data):
    """Feature rows, labels and event times of the sample, in event-time order."""
    import numpy as np

    path = os.path.join(data, "sparkov-transactions-sample.csv")
    conf = os.path.join(SRC, "conf", "cohortd.conf")
    with tempfile.TemporaryDirectory() as tmp:
        labels = os.path.join(tmp, "labels.csv")
        with open(path, newline="") as f, open(labels, "w", newline="") as out:
            w = csv.writer(out)
            w.writerow(["trans_num", "is_fraud"])
            for r in csv.DictReader(f):
                w.writerow([r["trans_num"], r["is_fraud"]])
        rows = os.path.join(tmp, "rows.csv")
        cmd = [os.path.join(build, "daemon", "cohortd"), "featurize", "--config", conf,
               "--set", "model.path=", "--set", "segments.k=0",  # features and label only
               "--labels", labels, "--labeled-only", "-o", rows]
        for s in SPARKOV_MAP:
            cmd += ["--set", s]
        print(f"train_example: {' '.join(cmd + [path])}", flush=True)
        subprocess.run(cmd + [path], check=True)
        with open(rows, newline="") as f:
            rd = csv.reader(f)
            head = next(rd)
            data_rows = list(rd)
    names = head[3:-1]  # user_id, event_id, event_time, features..., label
    X = np.array([[float(v) for v in r[3:-1]] for r in data_rows], dtype=np.float32)
    Y = np.array([int(float(r[-1])) for r in data_rows])
    T = np.array([int(r[2]) for r in data_rows])
    order = np.lexsort((np.array([r[1] for r in data_rows]), T))  # by (ts, event id)
    return X[order], Y[order], T[order], names


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

    for binary in ("daemon/cohortd",):
        if not os.path.exists(os.path.join(a.build, binary)):
            ap.error(f"{os.path.join(a.build, binary)} not found: build first (tools/demo.sh "
                     f"builds build/; tools/test.sh builds build-asan/, use --build build-asan)")
    X, Y, T, names = collect(os.path.abspath(a.build), os.path.abspath(a.data))
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
