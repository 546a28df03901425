#!/usr/bin/python3
"""cohortd's job written the way a user would without cohortd: Python, confluent-kafka
and numpy. tools/bench runs it on the same input as cohortd to put a number on what
cohortd buys.

Same job: it reads the same cohortd config file (features, half-lives, defaults, model
path, risk threshold and reasons, segments), consumes Confluent-framed Avro events
(python3-avro), keeps the same exact time-decayed aggregates per user (README
"Features"), scores each batch with the same ONNX model's weights in numpy (gradient x
input reasons for alerts), runs the same mini-batch K-Means (signed log1p + decayed
z-score, k-means++ warm-up with Lloyd passes, decayed Sculley updates, dead-centroid
re-seeding, hysteresis), and produces one profile_update and one risk_update per event
(Avro, Confluent framing), committing offsets only after the outputs are acknowledged
(flush per batch, then store offsets: the usual way to get at-least-once in Python).

Usage: baseline.py --brokers HOST:PORT --config conf/cohortd.conf [--events N]
Prints one JSON line at exit: events, outputs, cpu_seconds.
"""
import argparse
import io
import json
import math
import os
import re
import resource
import signal
import struct
import sys

import avro.io
import avro.schema
import numpy as np
import onnx
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from specs import duration_ms  # noqa: E402


def read_config(path):
    """The cohortd config keys this job needs (key = value lines), paths made absolute."""
    conf, feats = {}, []
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" not in line:
                continue
            k, v = (x.strip() for x in line.split("=", 1))
            if k.startswith("feature."):
                feats.append((k[len("feature."):], v))
            else:
                conf[k] = v
    for k in ("schema.dir", "model.path"):
        if k in conf and not os.path.isabs(conf[k]):
            conf[k] = os.path.join(base, conf[k])
    return conf, feats


# ---------------------------------------------------------------- features

class Features:
    """Per-user state: one flat list per user; each aggregate owns a few slots."""

    def __init__(self, feats, default_hl):
        self.names = [n for n, _ in feats]
        self.aggs = []  # (kind, field, types, inv_hl, default, slot)
        self.ratios = []  # (index, a_index, b_index, default)
        slots = 0
        for i, (name, spec) in enumerate(feats):
            m = re.match(r"(\w+)(?:\(([^)]*)\))?\s*(.*)$", spec)
            kind, args, rest = m.group(1), m.group(2), m.group(3)
            opts = dict(kv.split("=", 1) for kv in rest.split())
            types = frozenset(re.split(r"[|,]", opts["type"])) if "type" in opts else None
            hl = duration_ms(opts.get("half_life", default_hl))
            dflt = float(opts.get("default", 0))
            if kind == "ratio":
                a, b = (x.strip() for x in args.split(","))
                self.ratios.append((i, self.names.index(a), self.names.index(b), dflt))
                continue
            field = args.strip() if args else None
            width = {"count": 1, "sum": 1, "mean": 2, "std": 3, "max": 1, "since_last": 1}[kind]
            self.aggs.append((i, kind, field, types, 0.0 if math.isinf(hl) else 1.0 / hl,
                              dflt, slots))
            slots += width
        self.slots = slots

    def new_state(self):
        st = [0.0] * self.slots
        for (_, kind, _, _, _, _, s) in self.aggs:
            if kind == "since_last":
                st[s] = -math.inf
        return st

    def update(self, st, t_ref, ts, etype, amount):
        """Fold one event into st; returns the new t_ref (the user's stream time)."""
        if t_ref is None:
            t_ref = ts
        late = ts < t_ref
        for (_, kind, field, types, inv_hl, _, s) in self.aggs:
            # decay the aggregate to max(t_ref, ts)
            if not late and ts > t_ref and inv_hl and kind != "since_last":
                f = 2.0 ** (-(ts - t_ref) * inv_hl)
                st[s] *= f
                if kind == "mean":
                    st[s + 1] *= f
                elif kind == "std":
                    st[s + 1] *= f
                    st[s + 2] *= f
            if types is not None and etype not in types:
                continue
            if field is not None and amount is None:
                continue
            w = 2.0 ** (-(t_ref - ts) * inv_hl) if late and inv_hl else 1.0
            v = amount if field is not None else 1.0
            if kind in ("count", "sum"):
                st[s] += w * v
            elif kind == "mean":
                st[s] += w * v
                st[s + 1] += w
            elif kind == "std":
                st[s] += w * v
                st[s + 1] += w * v * v
                st[s + 2] += w
            elif kind == "max":
                st[s] = max(st[s], w * v)
            elif kind == "since_last":
                st[s] = max(st[s], ts)
        return ts if ts > t_ref else t_ref

    def read(self, st, t_ref):
        out = [0.0] * len(self.names)
        for (i, kind, _, _, _, dflt, s) in self.aggs:
            if kind in ("count", "sum", "max"):
                out[i] = st[s]
            elif kind == "mean":
                out[i] = st[s] / st[s + 1] if st[s + 1] > 0 else dflt
            elif kind == "std":
                c = st[s + 2]
                if c > 0:
                    mean = st[s] / c
                    out[i] = math.sqrt(max(0.0, st[s + 1] / c - mean * mean))
                else:
                    out[i] = dflt
            elif kind == "since_last":
                out[i] = (t_ref - st[s]) / 1000.0 if st[s] > -math.inf else dflt
        for (i, a, b, dflt) in self.ratios:
            out[i] = out[a] / out[b] if out[b] != 0 else dflt
        return out


# ---------------------------------------------------------------- model

class Model:
    """The exported graph (Sub, Div, Gemm, MatMul, Add, Relu, Tanh, Sigmoid, Softmax,
    Identity) evaluated with numpy, with gradient x input for reasons."""

    def __init__(self, path):
        m = onnx.load(path)
        self.init = {t.name: numpy_helper.to_array(t).astype(np.float32)
                     for t in m.graph.initializer}
        self.nodes = list(m.graph.node)
        self.input = m.graph.input[0].name
        self.output = m.graph.output[0].name
        meta = {p.key: p.value for p in m.metadata_props}
        self.version = meta.get("model_version", os.path.basename(path))

    def forward(self, x):
        vals = {self.input: x}
        tape = []
        for nd in self.nodes:
            a = [vals[i] if i in vals else self.init[i] for i in nd.input]
            op = nd.op_type
            if op == "Sub":
                y = a[0] - a[1]
            elif op == "Div":
                y = a[0] / a[1]
            elif op == "Add":
                y = a[0] + a[1]
            elif op == "Mul":
                y = a[0] * a[1]
            elif op in ("Gemm", "MatMul"):
                at = {x.name: x for x in nd.attribute}
                w = a[1].T if op == "Gemm" and at.get("transB") and at["transB"].i else a[1]
                y = a[0] @ w
                if len(a) > 2:
                    y = y + a[2]
            elif op == "Relu":
                y = np.maximum(a[0], 0)
            elif op == "Tanh":
                y = np.tanh(a[0])
            elif op == "Sigmoid":
                y = 1.0 / (1.0 + np.exp(-a[0]))
            elif op == "Softmax":
                e = np.exp(a[0] - a[0].max(axis=1, keepdims=True))
                y = e / e.sum(axis=1, keepdims=True)
            elif op in ("Identity", "Flatten"):
                y = a[0]
            else:
                raise ValueError(f"unsupported op {op}")
            tape.append((nd, a, y))
            vals[nd.output[0]] = y
        return vals[self.output], tape

    def input_gradient(self, tape, rows):
        """d score / d input for the given rows (score = last column of the output)."""
        out = tape[-1][2][rows]
        g = np.zeros_like(out)
        g[:, -1] = 1.0
        grads = {self.nodes[-1].output[0]: g}
        for nd, a, y in reversed(tape):
            gy = grads.pop(nd.output[0], None)
            if gy is None:
                continue
            y = y[rows]
            x0 = a[0][rows] if a[0].ndim == 2 and a[0].shape[0] == tape[0][1][0].shape[0] else a[0]
            op = nd.op_type
            if op in ("Sub", "Add", "Identity", "Flatten"):
                gx = gy
            elif op == "Div":
                gx = gy / a[1]
            elif op == "Mul":
                gx = gy * a[1]
            elif op in ("Gemm", "MatMul"):
                at = {x.name: x for x in nd.attribute}
                w = a[1].T if op == "Gemm" and at.get("transB") and at["transB"].i else a[1]
                gx = gy @ w.T
            elif op == "Relu":
                gx = gy * (x0 > 0)
            elif op == "Tanh":
                gx = gy * (1 - y * y)
            elif op == "Sigmoid":
                gx = gy * y * (1 - y)
            elif op == "Softmax":
                gx = y * (gy - (gy * y).sum(axis=1, keepdims=True))
            grads[nd.input[0]] = gx
        return grads[self.input]


# ---------------------------------------------------------------- segments

class KMeans:
    def __init__(self, k, d, warmup, half_life, stats_half_life, dead_ratio, hysteresis, seed):
        self.k, self.d, self.warmup = k, d, warmup
        self.hl, self.shl = half_life, stats_half_life
        self.dead, self.hyst = dead_ratio, hysteresis
        self.rng = np.random.default_rng(seed)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)
        self.sw = 0.0
        self.stats_ms = None
        self.t_ms = None
        self.buf = []
        self.c = None
        self.w = np.zeros(k)
        self.gen = np.zeros(k, dtype=np.int64)

    @staticmethod
    def _decay(last, now, hl):
        if last is None or now <= last:
            return 1.0
        return 2.0 ** (-(now - last) / hl)

    def _stats(self, ll, now):
        f = self._decay(self.stats_ms, now, self.shl)
        self.stats_ms = now if self.stats_ms is None else max(self.stats_ms, now)
        self.sw *= f
        self.m2 *= f
        # one batch merged into the running moments (Chan et al.): the same result as
        # cohortd's row-by-row West update with unit weights
        n = len(ll)
        mean_b = ll.mean(0)
        m2_b = ((ll - mean_b) ** 2).sum(0)
        sw = self.sw + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / sw)
        self.m2 = self.m2 + m2_b + delta * delta * (self.sw * n / sw)
        self.sw = sw
        sd = np.sqrt(np.maximum(self.m2 / self.sw, 0)) if self.sw > 0 else np.zeros(self.d)
        self.inv_std = np.where(sd > 1e-6, 1.0 / np.where(sd > 0, sd, 1), 1.0)

    def _z(self, ll):
        return ((ll - self.mean) * self.inv_std).astype(np.float32)

    def _dist2(self, z):
        d = (z * z).sum(1)[:, None] - 2 * z @ self.c.T + (self.c * self.c).sum(1)[None, :]
        return np.maximum(d, 0)

    def _warm(self, z):
        best, best_c, best_w = math.inf, None, None
        for _ in range(3):
            c = [z[self.rng.integers(len(z))]]
            d2 = ((z - c[0]) ** 2).sum(1)
            for _ in range(1, self.k):
                p = d2 / d2.sum() if d2.sum() > 0 else None
                c.append(z[self.rng.choice(len(z), p=p)])
                d2 = np.minimum(d2, ((z - c[-1]) ** 2).sum(1))
            self.c = np.array(c, dtype=np.float32)
            for _ in range(10):
                near = self._dist2(z).argmin(1)
                for j in range(self.k):
                    sel = near == j
                    if sel.any():
                        self.c[j] = z[sel].mean(0)
            dist = self._dist2(z)
            near = dist.argmin(1)
            inertia = dist[np.arange(len(z)), near].sum()
            if inertia < best:
                best, best_c = inertia, self.c.copy()
                best_w = np.bincount(near, minlength=self.k).astype(float)
        self.c, self.w = best_c, best_w

    def update(self, x, now, prev, prev_gen):
        ll = np.sign(x) * np.log1p(np.abs(x))
        self._stats(ll.astype(np.float64), now)
        n = len(x)
        if self.c is None:
            self.buf.append(ll)
            if sum(len(b) for b in self.buf) < self.warmup:
                return [-1] * n, [0] * n, [0.0] * n
            self._warm(self._z(np.concatenate(self.buf)))
            self.buf = []
            self.t_ms = now
            z = self._z(ll)
        else:
            z = self._z(ll)
            self.w *= self._decay(self.t_ms, now, self.hl)
            self.t_ms = max(self.t_ms, now)
            dist = self._dist2(z)
            near = dist.argmin(1)
            for j in np.unique(near):
                pts = z[near == j]
                self.w[j] += len(pts)
                eta = len(pts) / self.w[j]
                self.c[j] = (1 - eta) * self.c[j] + eta * pts.mean(0)
            wmax = self.w.max()
            d2 = dist[np.arange(n), near]
            for j in np.nonzero(self.w < self.dead * wmax)[0]:
                p = d2 / d2.sum() if d2.sum() > 0 else None
                self.c[j] = z[self.rng.choice(n, p=p)]
                self.w[j] = 2 * self.dead * wmax
                self.gen[j] += 1
        dist = self._dist2(z)
        best = dist.argmin(1)
        rows = np.arange(n)
        prev, prev_gen = np.asarray(prev), np.asarray(prev_gen)
        pc = np.maximum(prev, 0)
        same = (prev >= 0) & (prev != best) & (prev_gen == self.gen[pc])
        keep = same & ~(np.sqrt(dist[rows, best]) < (1 - self.hyst) * np.sqrt(dist[rows, pc]))
        seg = np.where(keep, prev, best)
        return seg.tolist(), self.gen[seg].tolist(), np.sqrt(dist[rows, seg]).tolist()


# ---------------------------------------------------------------- the job

def schema(conf, name):
    with open(os.path.join(conf["schema.dir"], name)) as f:
        text = f.read()
    # timestamp-millis is a long on the wire; python-avro would demand datetimes
    return avro.schema.parse(re.sub(r',\s*"logicalType"\s*:\s*"timestamp-millis"', "", text))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--config", required=True, help="a cohortd config file")
    ap.add_argument("--group", default="cohort-baseline")
    ap.add_argument("--events", type=int, default=0, help="exit after N events (0: on signal)")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                    help="librdkafka setting for both clients (consumer.KEY / producer.KEY)")
    a = ap.parse_args()
    conf, feats = read_config(a.config)
    fs = Features(feats, conf.get("features.half_life", "1h"))
    model = Model(conf["model.path"])
    threshold = float(conf.get("risk.threshold", 0.5))
    n_reasons = int(conf.get("risk.reasons", 3))
    k = int(conf.get("segments.k", 16))
    km = KMeans(k, len(fs.names), int(conf.get("segments.warmup", 10000)),
                duration_ms(conf.get("segments.half_life", "1d")),
                duration_ms(conf.get("segments.stats_half_life", "7d")),
                float(conf.get("segments.dead_ratio", 0.01)),
                float(conf.get("segments.hysteresis", 0.05)),
                int(conf.get("segments.seed", 1)))
    reader = avro.io.DatumReader(schema(conf, "user_event.avsc"))
    w_profile = avro.io.DatumWriter(schema(conf, "profile_update.avsc"))
    w_risk = avro.io.DatumWriter(schema(conf, "risk_update.avsc"))
    hdr_profile, hdr_risk = struct.pack(">bI", 0, 2), struct.pack(">bI", 0, 3)
    t_profile = conf.get("output.profile_topic", "profiles")
    t_risk = conf.get("output.risk_topic", "risk")

    cc = {"bootstrap.servers": a.brokers, "group.id": a.group, "auto.offset.reset": "earliest",
          "enable.auto.commit": True, "enable.auto.offset.store": False,
          "partition.assignment.strategy": "cooperative-sticky"}
    pc = {"bootstrap.servers": a.brokers, "enable.idempotence": True,
          "partitioner": "murmur2_random", "linger.ms": 5}
    for kv in a.X:
        key, val = kv.split("=", 1)
        if key.startswith("consumer."):
            cc[key[9:]] = val
        elif key.startswith("producer."):
            pc[key[9:]] = val
        else:
            cc[key] = pc[key] = val
    consumer, producer = Consumer(cc), Producer(pc)
    consumer.subscribe([conf.get("input.topic", "events")])
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    users = {}  # user_id -> [state, t_ref, segment, generation]
    done = outputs = 0
    while not stop and (a.events == 0 or done < a.events):
        msgs = consumer.consume(a.batch, timeout=0.1)
        if not msgs:
            continue
        rows, meta = [], []
        for m in msgs:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    print(f"baseline: kafka: {m.error()}", file=sys.stderr)
                continue
            v = m.value()
            try:
                ev = reader.read(avro.io.BinaryDecoder(io.BytesIO(v[5:])))
            except Exception as e:  # bad input goes to the dead-letter topic
                producer.produce(conf.get("output.dlq_topic", "cohortd-dlq"), v, m.key(),
                                 headers={"cohortd.error.reason": "decode", "why": str(e)},
                                 on_delivery=on_delivery)
                continue
            u = users.get(ev["user_id"])
            if u is None:
                u = users[ev["user_id"]] = [fs.new_state(), None, -1, 0]
            u[1] = fs.update(u[0], u[1], ev["ts"], ev["type"], ev["amount"])
            rows.append(fs.read(u[0], u[1]))
            meta.append((ev, u, u[1]))  # features read at the user's stream time
        done += len(msgs)
        if rows:
            x = np.array(rows, dtype=np.float32)
            out, tape = model.forward(x)
            scores = out[:, -1]
            alerts = np.nonzero(scores >= threshold)[0]
            contrib = {}
            if len(alerts) and n_reasons:
                g = model.input_gradient(tape, alerts) * x[alerts]
                for r, i in enumerate(alerts):
                    top = np.argsort(-g[r], kind="stable")[:n_reasons]
                    contrib[i] = [{"feature": fs.names[j], "contribution": float(g[r, j])}
                                  for j in top]
            stream_ms = max(ev["ts"] for ev, _, _ in meta)
            seg, gen, dist = km.update(x, stream_ms, [u[2] for _, u, _ in meta],
                                       [u[3] for _, u, _ in meta])
            for i, (ev, u, t_read) in enumerate(meta):
                prev = u[2]
                if seg[i] >= 0:
                    u[2], u[3] = seg[i], gen[i]
                buf = io.BytesIO()
                buf.write(hdr_profile)
                w_profile.write({"user_id": ev["user_id"], "ts": t_read,
                                 "segment": seg[i], "segment_generation": gen[i],
                                 "segment_distance": dist[i],
                                 "previous_segment": prev if prev != seg[i] and prev >= 0 else None,
                                 "features": rows[i], "model_version": model.version},
                                avro.io.BinaryEncoder(buf))
                producer.produce(t_profile, buf.getvalue(), ev["user_id"], on_delivery=on_delivery)
                buf = io.BytesIO()
                buf.write(hdr_risk)
                w_risk.write({"user_id": ev["user_id"], "event_id": ev["event_id"], "ts": t_read,
                              "score": float(scores[i]), "alert": bool(scores[i] >= threshold),
                              "threshold": threshold, "reasons": contrib.get(i, []),
                              "model_version": model.version}, avro.io.BinaryEncoder(buf))
                producer.produce(t_risk, buf.getvalue(), ev["user_id"], on_delivery=on_delivery)
                outputs += 2
                producer.poll(0)
        producer.flush()
        if failed:
            print(f"baseline: delivery failed: {failed[0]}", file=sys.stderr)
            return 1
        last = {}
        for m in msgs:
            if not m.error():
                last[(m.topic(), m.partition())] = m.offset() + 1
        consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in last.items()])
    consumer.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"events": done, "outputs": outputs, "users": len(users),
                      "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
