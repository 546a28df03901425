"""Replay the sparkov sample through cohortd with the example model (conf/models/
risk_mlp.onnx, risk.threshold from conf/cohortd.conf): every event yields exactly one
risk update, and scores, alert counts and top reasons match an offline computation in
Python (features computed directly from the CSV, the ONNX graph evaluated with numpy in
float64, reasons by finite differences).

A second replay uses the "change" emit policies (risk: alert flip, score move > delta,
heartbeat; profiles: first event, heartbeat); the set of events that produced an
update equals a simulation of those rules over the first run's scores."""
import os
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper

from harness import (CONF, DATA, REPLAY, SRC, Broker, Daemon, avro_reader, consume,
                     decode_confluent, log, offline_features, read_feature_specs, run,
                     sparkov_rows, ts_ms)

MODEL = os.path.join(SRC, "conf", "models", "risk_mlp.onnx")
SCORE_TOL = 1e-4  # float32 features and arithmetic in cohortd vs float64 here


def conf_value(key):
    with open(CONF) as f:
        for line in f:
            m = re.match(rf"{re.escape(key)}\s*=\s*(\S+)", line.strip())
            if m:
                return m.group(1)
    raise KeyError(key)


class NumpyModel:
    """An independent float64 evaluator for the ops tools/export_onnx.py writes."""

    def __init__(self, path):
        m = onnx.load(path)
        self.version = {p.key: p.value for p in m.metadata_props}["model_version"]
        self.init = {t.name: numpy_helper.to_array(t).astype(np.float64)
                     for t in m.graph.initializer}
        self.nodes = list(m.graph.node)
        self.input = m.graph.input[0].name
        self.output = m.graph.output[0].name

    def run(self, X, logit=False):
        v = dict(self.init)
        v[self.input] = np.asarray(X, dtype=np.float64)
        for n in self.nodes:
            a = [v[i] for i in n.input]
            at = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            if n.op_type == "Gemm":
                b = a[1].T if at.get("transB", 0) else a[1]
                y = a[0] @ b + (a[2] if len(a) > 2 else 0)
            elif n.op_type == "Sub":
                y = a[0] - a[1]
            elif n.op_type == "Div":
                y = a[0] / a[1]
            elif n.op_type == "Relu":
                y = np.maximum(a[0], 0)
            elif n.op_type == "Tanh":
                y = np.tanh(a[0])
            elif n.op_type == "Sigmoid":
                if logit and n.output[0] == self.output:
                    return a[0][:, -1]
                y = 1 / (1 + np.exp(-a[0]))
            else:
                raise ValueError(f"op {n.op_type} not in this reference")
            v[n.output[0]] = y
        return v[self.output][:, -1]


def offline_vectors(specs, default_hl):
    """trans_num -> (label, user's stream time, feature vector right after it)."""
    per_user, out = {}, {}
    for r in sparkov_rows():
        evs = per_user.setdefault(r["user_id"], [])
        evs.append((r["ts"], "payment", r["fields"]))
        q, vec = offline_features(evs, specs, default_hl)
        out[r["event_id"]] = (r["label"], q, vec)
    return out


def replay(*sets, expect_risk, expect_profiles=None):
    with Broker(partitions=4) as broker, Daemon(broker.bootstrap, *sets) as d:
        d.wait_assigned()
        run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet",
             "--file", f"{DATA}/sparkov-transactions-sample.csv"])
        risk = consume(broker.bootstrap, "risk", expect=expect_risk)
        profiles = None
        if expect_profiles is not None:
            profiles = consume(broker.bootstrap, "profiles", expect=expect_profiles, idle=2)
        rc = d.stop()
        assert rc == 0, f"cohortd exited {rc}"
        broker.stop()
    return risk, profiles


def simulate_change_policy(got, thr, delta, hb_ms):
    """Event ids that the change policies publish, replaying cohortd's rules over the
    scores of the 'every' run (float32 arithmetic, as cohortd compares)."""
    risk_ids, profile_ids, state = set(), set(), {}
    for r in sparkov_rows():
        u, e, ts = r["user_id"], r["event_id"], r["ts"]
        st = state.setdefault(u, {"t": ts, "risk": None, "score": None, "prof": None})
        st["t"] = max(st["t"], ts)  # the user's stream time
        score = np.float32(got[e]["score"])
        if (st["risk"] is None or (score >= thr) != (st["score"] >= thr)
                or abs(np.float32(score - st["score"])) > delta
                or st["t"] - st["risk"] >= hb_ms):
            risk_ids.add(e)
            st["risk"], st["score"] = st["t"], score
        if st["prof"] is None or st["t"] - st["prof"] >= hb_ms:
            profile_ids.add(e)
            st["prof"] = st["t"]
    return risk_ids, profile_ids


def main():
    specs, default_hl = read_feature_specs()
    names = [s[0] for s in specs]
    thr = float(conf_value("risk.threshold"))
    k_reasons = int(conf_value("risk.reasons"))
    ref = offline_vectors(specs, default_hl)
    model = NumpyModel(MODEL)
    msgs, _ = replay("emit.policy=every", "risk.emit=every", expect_risk=len(ref))
    assert len(msgs) == len(ref), f"{len(msgs)} risk updates for {len(ref)} events"
    reader = avro_reader("risk_update.avsc")
    got = {}
    for _, _, key, value, _ in msgs:
        sid, rec = decode_confluent(reader, value)
        assert sid == 3, f"risk update framed with schema id {sid}"
        assert key.decode() == rec["user_id"]
        assert rec["event_id"] not in got, f"two risk updates for {rec['event_id']}"
        got[rec["event_id"]] = rec
    assert set(got) == set(ref), "events without a risk update"

    ids = sorted(ref)
    X = np.array([ref[e][2] for e in ids])
    want = model.run(X)
    scores = np.array([got[e]["score"] for e in ids])
    err = np.abs(scores - want)
    worst = float(err.max())
    assert worst <= SCORE_TOL, f"score differs by {worst:.2e} at {ids[int(err.argmax())]}"
    alerts = sum(got[e]["alert"] for e in ids)
    want_alerts = int((want >= thr).sum())
    borderline = int((np.abs(want - thr) <= SCORE_TOL).sum())
    assert abs(alerts - want_alerts) <= borderline, \
        f"{alerts} alerts, offline {want_alerts} ({borderline} within {SCORE_TOL} of threshold)"
    for e in ids:
        r = got[e]
        assert r["model_version"] == model.version, r["model_version"]
        assert r["threshold"] == np.float32(thr) and r["alert"] == (r["score"] >= r["threshold"])
        assert ts_ms(r["ts"]) == ref[e][1]
        if not r["alert"]:
            assert r["reasons"] == [], f"reasons on a non-alert {e}"
    # reasons: gradient x input of the logit, checked by central differences in float64
    alert_ids = [e for e in ids if got[e]["alert"]]
    agree, checked = 0, 0
    for e in alert_ids:
        reasons = got[e]["reasons"]
        assert len(reasons) == min(k_reasons, len(names)), reasons
        c = [x["contribution"] for x in reasons]
        assert c == sorted(c, reverse=True) and all(x["feature"] in names for x in reasons)
        x = np.array(ref[e][2])
        h = 1e-6 * np.maximum(np.abs(x), 1.0)
        E = np.diag(h)
        g = (model.run(x + E, logit=True) - model.run(x - E, logit=True)) / (2 * h)
        contrib = g * x
        order = np.argsort(-contrib)
        if contrib[order[0]] - contrib[order[1]] > 1e-3 * max(1.0, abs(contrib[order[0]])):
            checked += 1
            agree += reasons[0]["feature"] == names[order[0]]
            assert abs(reasons[0]["contribution"] - contrib[order[0]]) <= \
                1e-3 * max(1.0, abs(contrib[order[0]])), (e, reasons[0], contrib[order[0]])
    assert agree == checked, f"top reason differs from finite differences in " \
                             f"{checked - agree} of {checked} alerts"
    # the change policies, against a simulation over this run's scores
    delta, hb = 0.02, 86_400_000
    want_risk, want_prof = simulate_change_policy(got, np.float32(thr), delta, hb)
    risk2, prof2 = replay("emit.policy=change", "risk.emit=change", f"risk.delta={delta}",
                          "emit.heartbeat=1d", "segments.k=0", expect_risk=len(want_risk),
                          expect_profiles=len(want_prof))
    got_risk = {decode_confluent(reader, m[3])[1]["event_id"] for m in risk2}
    preader = avro_reader("profile_update.avsc")
    got_prof = {decode_confluent(preader, m[3])[1]["event_id"] for m in prof2}
    assert len(risk2) == len(got_risk) and got_risk == want_risk, \
        f"risk.emit=change: {len(got_risk)} updates, simulation {len(want_risk)}, " \
        f"{len(got_risk ^ want_risk)} differ"
    assert len(prof2) == len(got_prof) and got_prof == want_prof, \
        f"emit.policy=change: {len(got_prof)} profiles, simulation {len(want_prof)}"
    log(f"change policies (delta {delta}, heartbeat 1d): {len(got_risk)} risk updates and "
        f"{len(got_prof)} profile updates for {len(ids)} events, the same events as the "
        f"simulation")
    labels = np.array([ref[e][0] for e in ids])
    flagged = scores >= thr
    log(f"sparkov risk: {len(ids)} events -> {len(got)} risk updates; max |cohortd - numpy "
        f"float64| {worst:.2e}; alerts {alerts} (offline {want_alerts}, {borderline} "
        f"borderline); {int((flagged & (labels == 1)).sum())} of {int(labels.sum())} frauds "
        f"flagged; top reason equals finite differences in {agree}/{checked} alerts")


if __name__ == "__main__":
    sys.exit(main())
