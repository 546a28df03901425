"""Live evaluation on the card-fraud sample: labels delayed by a day of event time.

The sparkov sample is replayed one day of event time at a time; after each day, once
cohortd has caught up, the labels of every event at least a day older than the end of
that day are produced to the labels topic (label time = event time + 1 day). After
each day the figures in /metrics (ROC AUC, average precision, precision and recall at
risk.threshold, log loss, calibration by decile) must equal sklearn's on the same
(score, label) pairs: the scores cohortd published for those events (the risk topic)
with their labels, over the window (evaluation.window = 3d of label time), to 1e-3.
The last record on the metrics topic carries the same figures. Malformed labels go to
the dead-letter topic with their reason; a label for an event never scored is counted
as unknown.
"""
import json
import sys
import time

import numpy as np
from confluent_kafka import Producer
from sklearn.calibration import calibration_curve
from sklearn.metrics import (average_precision_score, log_loss, precision_score, recall_score,
                             roc_auc_score)

from harness import (DATA, REPLAY, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, log, metric, run, sparkov_rows, wait_for)

PARTS = 4
DAY = 86_400_000
WINDOW = 3 * DAY
TOL = 1e-3
THR = 0.2  # conf/cohortd.conf's risk.threshold, set again below


def figures_from_metrics(m):
    f = {k: metric(m, f"cohortd_eval_{k}", model="champion")
         for k in ("pairs", "positives", "roc_auc", "average_precision", "precision", "recall",
                   "log_loss")}
    f["bins"] = [(metric(m, "cohortd_eval_calibration_pairs", model="champion", decile=d),
                  metric(m, "cohortd_eval_calibration_score", model="champion", decile=d),
                  metric(m, "cohortd_eval_calibration_positive_rate", model="champion",
                         decile=d)) for d in range(1, 11)]
    return f


def reference(pairs):
    s = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs])
    ref = {"pairs": len(pairs), "positives": int(y.sum()),
           "precision": precision_score(y, s >= THR, zero_division=0),
           "recall": recall_score(y, s >= THR, zero_division=0),
           "log_loss": log_loss(y, s, eps=1e-15, labels=[0, 1])}
    if 0 < y.sum() < len(y):
        ref["roc_auc"] = roc_auc_score(y, s)
        ref["average_precision"] = average_precision_score(y, s)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="quantile")
    ref["calibration"] = (prob_true, prob_pred)
    return ref


def compare(got, ref, what):
    worst = 0.0
    assert got["pairs"] == ref["pairs"] and got["positives"] == ref["positives"], \
        (what, got["pairs"], ref["pairs"], got["positives"], ref["positives"])
    for k in ("roc_auc", "average_precision", "precision", "recall", "log_loss"):
        if k not in ref:
            assert np.isnan(got[k]), (what, k, got[k])
            continue
        d = abs(got[k] - ref[k])
        worst = max(worst, d)
        assert d <= TOL, f"{what}: {k} cohortd {got[k]:.6f} sklearn {ref[k]:.6f}"
    bins = [b for b in got["bins"] if b[0] > 0]
    prob_true, prob_pred = ref["calibration"]
    assert len(bins) == len(prob_true), (what, bins, prob_true)
    for (n, score, pos), pt, pp in zip(bins, prob_true, prob_pred):
        worst = max(worst, abs(pos - pt), abs(score - pp))
        assert abs(pos - pt) <= TOL and abs(score - pp) <= TOL, (what, n, score, pos, pt, pp)
    return worst


def main():
    rows = list(sparkov_rows())
    t0 = rows[0]["ts"]
    topics = "events,profiles,risk,cohortd-dlq,labels,eval-metrics"
    with Broker(partitions=PARTS, topics=topics) as broker, \
            Daemon(broker.bootstrap, "risk.emit=every", f"risk.threshold={THR}",
                   "evaluation.labels_topic=labels", "evaluation.metrics_topic=eval-metrics",
                   "evaluation.interval=1s", "evaluation.window=3d",
                   "evaluation.score_ttl=30d") as d:
        d.wait_assigned()
        wait_for("labels partitions read to their end",
                 lambda: metric(d.metrics(), "cohortd_eval_label_partitions_ready") == PARTS,
                 [d])
        prod = Producer({"bootstrap.servers": broker.bootstrap})
        reader = avro_reader("risk_update.avsc")
        scores, labelled = {}, []  # labelled: (event_id, label, label time)
        start, worst = 0, 0.0
        days = int((rows[-1]["ts"] - t0) // DAY) + 1
        for day in range(1, days + 2):
            end = t0 + day * DAY
            n = sum(1 for r in rows[start:] if r["ts"] < end)
            if n:
                run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet",
                     "--file", f"{DATA}/sparkov-transactions-sample.csv", "--skip", str(start),
                     "--limit", str(n)])
                start += n
                wait_for(f"day {day} processed", lambda: caught_up(d, broker.bootstrap, PARTS,
                                                                   start), [d])
            # labels known by the end of this day: events at least a day older
            new = [r for r in rows[:start] if r["ts"] + DAY < end and
                   r["ts"] + DAY >= end - DAY]
            for r in new:
                lt = r["ts"] + DAY
                prod.produce("labels", key=r["user_id"], value=json.dumps(
                    {"event_id": r["event_id"], "label": r["label"], "ts": lt}))
                labelled.append((r["event_id"], r["label"], lt))
            prod.flush(30)
            if not labelled:
                continue
            want = len(labelled)
            wait_for(f"day {day}: {want} labels matched",
                     lambda: metric(d.metrics(), "cohortd_eval_labels_total",
                                    result="matched") == want, [d], timeout=120)
            if len(scores) < start:
                for m in consume(broker.bootstrap, "risk", expect=start, idle=1):
                    rec = decode_confluent(reader, m[3])[1]
                    scores[rec["event_id"]] = rec["score"]
            newest = max(lt for _, _, lt in labelled)
            window = [(scores[e], y) for e, y, lt in labelled if lt >= newest - WINDOW]
            got = figures_from_metrics(d.metrics())
            ref = reference(window)
            worst = max(worst, compare(got, ref, f"day {day}"))
            log(f"day {day}: {len(window)} pairs in the window ({ref['positives']} frauds): "
                f"AUC {got['roc_auc']:.4f} (sklearn {ref.get('roc_auc', float('nan')):.4f}), "
                f"AP {got['average_precision']:.4f}, precision {got['precision']:.3f}, recall "
                f"{got['recall']:.3f}, log loss {got['log_loss']:.4f}")
        assert len(labelled) == len(rows), (len(labelled), len(rows))
        # the metrics topic: a record after the last label carries the same figures
        final = figures_from_metrics(d.metrics())
        wait_for("a record with every label", lambda: any(
            json.loads(m[3])["labels"]["matched"] == len(rows)
            for m in consume(broker.bootstrap, "eval-metrics", expect=1, idle=0.5)), [d],
            timeout=60, step=1.0)
        recs = [json.loads(m[3]) for m in consume(broker.bootstrap, "eval-metrics", expect=1,
                                                  idle=0.5)]
        last = [r for r in recs if r["labels"]["matched"] == len(rows)][-1]
        for k in ("roc_auc", "average_precision", "precision", "recall", "log_loss"):
            assert abs(last[k] - final[k]) <= 1e-12, (k, last[k], final[k])
        assert last["pairs"] == final["pairs"] and last["threshold"] == THR
        assert [c["pairs"] for c in last["calibration"]] == [b[0] for b in final["bins"]]
        # bad labels: dead letters with the reason; an unknown event: counted
        for bad in (b"not json", b'{"event_id": "x", "label": 2, "ts": 1}',
                    b'{"label": 1, "ts": 1}'):
            prod.produce("labels", value=bad)
        prod.produce("labels", value=json.dumps({"event_id": "never-scored", "label": 1,
                                                 "ts": rows[-1]["ts"]}))
        prod.flush(30)
        del prod
        wait_for("bad and unknown labels counted", lambda: (
            metric(d.metrics(), "cohortd_eval_labels_total", result="bad") == 3 and
            metric(d.metrics(), "cohortd_eval_labels_total", result="unknown") == 1), [d],
            timeout=60)
        dlq = consume(broker.bootstrap, "cohortd-dlq", expect=3, idle=1)
        reasons = [dict(m[4]).get("cohortd.error.reason") for m in dlq]
        assert reasons.count(b"bad_label") == 3, reasons
        assert d.stop() == 0
        broker.stop()
    log(f"evaluation: {len(rows)} labels delayed a day, all matched; figures over a 3-day "
        f"window equal sklearn's after each of {days + 1} days (largest difference "
        f"{worst:.1e}); {len(recs)} records on the metrics topic; 3 bad labels sent to the "
        f"DLQ, 1 unknown counted")
    return 0


if __name__ == "__main__":
    t = time.time()
    rc = main()
    log(f"test_evaluation: {time.time() - t:.0f} s")
    sys.exit(rc)
