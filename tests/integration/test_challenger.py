"""Champion and challenger: a second model scored on the same vectors, side by side.

The sparkov sample is replayed with the example MLP as the champion (model.path) and
the example logistic regression as the challenger (model.challenger_path), then each
event's label is produced a day of event time after it. Checks:
- every risk update is framed with risk_update_v2.avsc (id 6) and carries the
  challenger's score, alert and version; both scores equal cohort-score's on the
  feature vector cohortd published for that event (the daemon's own evaluator,
  offline); a reader of version 1 still reads the records (the field is skipped);
- the champion alone drives alerts and reasons (unchanged by the challenger);
- /metrics has the live figures of both (model="champion" and model="challenger"),
  each equal to sklearn's on its (score, label) pairs, and the metrics topic's last
  record has both.
"""
import io
import json
import os
import subprocess
import sys
import tempfile

import avro.io
import avro.schema
import numpy as np
from confluent_kafka import Producer
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from harness import (BUILD, DATA, REPLAY, SCHEMAS, SRC, Broker, Daemon, avro_reader, caught_up,
                     consume, decode_confluent, log, metric, run, sparkov_rows, wait_for)

PARTS = 4
DAY = 86_400_000
THR = 0.2
CHAMPION = os.path.join(SRC, "conf", "models", "risk_mlp.onnx")
CHALLENGER = os.path.join(SRC, "conf", "models", "risk_lr.onnx")
SCORE = os.path.join(BUILD, "tools", "cohort-score")


def offline_scores(model, V):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        np.savetxt(f, V, delimiter=",", fmt="%.9g")
    r = subprocess.run([SCORE, model, "--input", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    assert r.returncode == 0, r.stderr
    return np.array([float(x) for x in r.stdout.split()])


def figures(m, model):
    return {k: metric(m, f"cohortd_eval_{k}", model=model)
            for k in ("pairs", "roc_auc", "average_precision", "log_loss")}


def main():
    rows = list(sparkov_rows())
    topics = "events,profiles,risk,cohortd-dlq,labels,eval-metrics"
    with Broker(partitions=PARTS, topics=topics) as broker, \
            Daemon(broker.bootstrap, f"model.challenger_path={CHALLENGER}", "risk.emit=every",
                   "emit.policy=every", f"risk.threshold={THR}",
                   "evaluation.labels_topic=labels", "evaluation.metrics_topic=eval-metrics",
                   "evaluation.interval=1s", "evaluation.window=30d",
                   "evaluation.score_ttl=30d") as d:
        d.wait_assigned()
        wait_for("labels partitions read to their end",
                 lambda: metric(d.metrics(), "cohortd_eval_label_partitions_ready") == PARTS,
                 [d])
        run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet",
             "--file", f"{DATA}/sparkov-transactions-sample.csv"])
        wait_for("replay processed", lambda: caught_up(d, broker.bootstrap, PARTS, len(rows)),
                 [d])
        prod = Producer({"bootstrap.servers": broker.bootstrap})
        for r in rows:
            prod.produce("labels", value=json.dumps({"event_id": r["event_id"],
                                                     "label": r["label"],
                                                     "ts": r["ts"] + DAY}))
        prod.flush(30)
        del prod
        wait_for("labels matched", lambda: metric(d.metrics(), "cohortd_eval_labels_total",
                                                  result="matched") == len(rows), [d])
        m = d.metrics()
        champ, chall = figures(m, "champion"), figures(m, "challenger")
        info = [k for k in m if k[0] == "cohortd_challenger_info"]
        risk = consume(broker.bootstrap, "risk", expect=len(rows))
        profiles = consume(broker.bootstrap, "profiles", expect=len(rows))
        wait_for("a record with every label", lambda: any(
            json.loads(x[3])["labels"]["matched"] == len(rows)
            for x in consume(broker.bootstrap, "eval-metrics", expect=1, idle=0.5)), [d],
            timeout=60, step=1.0)
        recs = [json.loads(x[3]) for x in consume(broker.bootstrap, "eval-metrics", expect=1,
                                                  idle=0.5)]
        assert d.stop() == 0
        broker.stop()
    assert len(info) == 1 and dict(info[0][1])["version"] == "risk_lr-sparkov-1", info
    v2 = avro_reader("risk_update_v2.avsc")
    with open(os.path.join(SCHEMAS, "risk_update.avsc")) as f:
        v1_schema = avro.schema.parse(f.read())
    with open(os.path.join(SCHEMAS, "risk_update_v2.avsc")) as f:
        v2_schema = avro.schema.parse(f.read())
    old_reader = avro.io.DatumReader(v2_schema, v1_schema)
    recs_by_event, old_ok = {}, 0
    for x in risk:
        sid, rec = decode_confluent(v2, x[3])
        assert sid == 6, f"risk update framed with schema id {sid}"
        recs_by_event[rec["event_id"]] = rec
        old = old_reader.read(avro.io.BinaryDecoder(io.BytesIO(x[3][5:])))
        old_ok += "challenger" not in old and old["score"] == rec["score"]
    assert old_ok == len(risk), "a version-1 reader cannot read the records"
    pr = avro_reader("profile_update.avsc")
    vec = {}
    for x in profiles:
        p = decode_confluent(pr, x[3])[1]
        vec[p["event_id"]] = p["features"]
    ids = [r["event_id"] for r in rows]
    V = np.array([vec[e] for e in ids], dtype=np.float32)
    s1 = np.array([recs_by_event[e]["score"] for e in ids])
    s2 = np.array([recs_by_event[e]["challenger"]["score"] for e in ids])
    e1 = float(np.abs(s1 - offline_scores(CHAMPION, V)).max())
    e2 = float(np.abs(s2 - offline_scores(CHALLENGER, V)).max())
    assert e1 <= 1e-6 and e2 <= 1e-6, (e1, e2)
    for e in ids:
        r = recs_by_event[e]
        c = r["challenger"]
        assert c["model_version"] == "risk_lr-sparkov-1" and c["alert"] == (c["score"] >= r["threshold"])
        assert r["alert"] == (r["score"] >= r["threshold"])
        assert bool(r["reasons"]) == r["alert"]  # reasons follow the champion's alert
    y = np.array([r["label"] for r in rows])
    worst = 0.0
    for name, got, s in (("champion", champ, s1), ("challenger", chall, s2)):
        s = s.astype(np.float64)
        ref = {"pairs": len(rows), "roc_auc": roc_auc_score(y, s),
               "average_precision": average_precision_score(y, s),
               "log_loss": log_loss(y, s, eps=1e-15)}
        for k, v in ref.items():
            worst = max(worst, abs(got[k] - v))
            assert abs(got[k] - v) <= 1e-3, (name, k, got[k], v)
    last = [r for r in recs if r["labels"]["matched"] == len(rows)][-1]
    assert last["challenger"]["model_version"] == "risk_lr-sparkov-1"
    assert abs(last["challenger"]["roc_auc"] - chall["roc_auc"]) <= 1e-12
    assert abs(last["roc_auc"] - champ["roc_auc"]) <= 1e-12
    alerts1, alerts2 = int((s1 >= np.float32(THR)).sum()), int((s2 >= np.float32(THR)).sum())
    log(f"champion/challenger: {len(ids)} risk updates (schema id 6) with both scores, equal to "
        f"cohort-score offline ({e1:.1e}, {e2:.1e}); live ROC AUC champion "
        f"{champ['roc_auc']:.4f}, challenger {chall['roc_auc']:.4f}; AP {champ['average_precision']:.4f} vs "
        f"{chall['average_precision']:.4f}; alerts at {THR}: {alerts1} vs {alerts2}; figures "
        f"equal to sklearn's to {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
