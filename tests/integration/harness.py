"""Integration-test harness: runs cohort-broker and cohortd as a user would, and
reads outputs back with independent tools (confluent-kafka, python-avro).

Run with Debian's /usr/bin/python3 (python3-confluent-kafka, python3-avro).
Environment: CH_BUILD_DIR (binaries), CH_SOURCE_DIR (repo), CH_DATA_DIR (../shared/data).
"""
import csv
import datetime
import http.client
import io
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import avro.io
import avro.schema
from confluent_kafka import Consumer, Producer, TopicPartition

SRC = os.environ.get("CH_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.environ.get("CH_BUILD_DIR", os.path.join(SRC, "build"))
DATA = os.environ.get("CH_DATA_DIR", os.path.join(SRC, "..", "shared", "data"))
CONF = os.path.join(SRC, "conf", "cohortd.conf")
SCHEMAS = os.path.join(SRC, "conf", "schemas")

BROKER = os.path.join(BUILD, "stream", "cohort-broker")
COHORTD = os.path.join(BUILD, "daemon", "cohortd")
REPLAY = os.path.join(BUILD, "tools", "cohort-replay")
GEN = os.path.join(BUILD, "tools", "cohort-gen")


def log(*a):
    print(*a, flush=True)


class Broker:
    """cohort-broker on 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, partitions=4, topics="events,profiles,risk,cohortd-dlq", brokers=1):
        """brokers > 1: a cluster whose leaders and coordinators can be moved. Faults are
        injected with fault() (cohort-broker --control)."""
        self.proc = subprocess.Popen([BROKER, "--partitions", str(partitions), "--topics", topics,
                                      "--brokers", str(brokers), "--control"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("cohort-broker printed no bootstrap servers")
        self.bootstrap = line

    def fault(self, command):
        """Run one fault command (cohort-broker --help lists them); fails unless ok."""
        log(f"broker fault: {command}")
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == "ok", f"cohort-broker: {command}: {answer}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(timeout=30)
            assert rc == 0, f"cohort-broker exited {rc}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port():
    """A TCP port free on 127.0.0.1 right now (bound to 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """cohortd with the shipped config plus overrides; stderr kept in a file. Its HTTP
    endpoint listens on a free loopback port (self.http_port), so daemons never collide."""

    def __init__(self, bootstrap, *sets, group="cohortd-it", env=None, journal=False, conf=CONF):
        self.logf = tempfile.NamedTemporaryFile(prefix="cohortd-", suffix=".log", delete=False)
        env = dict(env or {})
        if journal:  # what systemd sets when stderr is connected to the journal
            st = os.fstat(self.logf.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        self.http_port = free_port()
        args = [COHORTD, "--config", conf, "--set", f"kafka.bootstrap.servers={bootstrap}",
                "--set", f"kafka.group.id={group}", "--set", "log.stats_interval=1s",
                "--set", f"http.listen=127.0.0.1:{self.http_port}",
                # The mock coordinator waits session.timeout.ms - 1 s after a member leaves
                # before it elects a leader again (a mock-only delay); a short session
                # timeout (standard Kafka semantics) keeps restarts quick.
                "--set", "kafka.session.timeout.ms=6000"]
        for s in sets:
            args += ["--set", s]
        full_env = dict(os.environ)
        full_env.pop("JOURNAL_STREAM", None)
        full_env.update(env)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.logf,
                                     env=full_env)

    def get(self, path, method="GET", timeout=10):
        """(status, content-type, body text) of an HTTP request to the daemon."""
        c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, r.getheader("Content-Type"), r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def wait_http(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"cohortd died:\n{self.log_text()}"
            try:
                return self.get("/healthz")
            except OSError:
                time.sleep(0.05)
        raise AssertionError("cohortd's HTTP endpoint did not come up")

    def metrics(self):
        status, ctype, body = self.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
        return parse_prometheus(body)

    def wait_assigned(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "assigned" in self.log_text():
                return
            assert self.proc.poll() is None, f"cohortd died:\n{self.log_text()}"
            time.sleep(0.1)
        raise AssertionError(f"cohortd got no partitions in {timeout}s:\n{self.log_text()}")

    def log_text(self):
        with open(self.logf.name, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if exc[0] is not None:
            sys.stderr.write(f"--- cohortd log ---\n{self.log_text()[-6000:]}\n")


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Prometheus text format -> {(name, ((label, value), ...)): float}. Checks that every
    sample belongs to a family declared by # TYPE, as a scraper would."""
    out, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"{name} has no # TYPE"
        pairs = [(k, re.sub(r'\\(.)', lambda e: "\n" if e.group(1) == "n" else e.group(1), v))
                 for k, v in _LABEL.findall(labels)]
        key = (name, tuple(sorted(pairs)))
        assert key not in out, f"duplicate sample {key}"
        out[key] = float(value)
    return out


def metric(m, name, **labels):
    """One sample of a parsed scrape (0 if absent); labels must match exactly."""
    return m.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def metric_sum(m, name, **labels):
    """Sum over every sample of a family whose labels include the given ones."""
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


def probe(port, path="/healthz"):
    """(status, seconds) of one probe with a fresh connection, as a kubelet sends it
    (status 0: no answer)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        status = 0
    return status, time.monotonic() - t0


def run(cmd, timeout=300):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}: {r.stderr[-2000:]}"
    return r


def consume(bootstrap, topic, expect, timeout=120, idle=5.0, timestamps=False, refreshes=False,
            epochs=False):
    """Reads a topic from the start until `expect` messages (or `idle` s without any once
    `expect` is reached or exceeded). Returns [(partition, offset, key, value, headers)],
    with the record timestamp (ms) appended to each if `timestamps`. Profile updates a
    segment refresh published (header cohortd-cause) are left out unless `refreshes`:
    they answer no event. A changelog partition's epoch record (header cohortd-epoch,
    written with state.dir) is left out unless `epochs`: it is no user's state."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    deadline = time.time() + timeout
    last = time.time()
    try:
        while time.time() < deadline:
            m = c.poll(0.2)
            if m is None:
                if len(out) >= expect and time.time() - last > idle:
                    break
                continue
            if m.error():
                continue
            last = time.time()
            if not refreshes and any(h[0] == "cohortd-cause" for h in m.headers() or []):
                continue
            if not epochs and any(h[0] == "cohortd-epoch" for h in m.headers() or []):
                continue
            row = (m.partition(), m.offset(), m.key(), m.value(), m.headers() or [])
            out.append(row + (m.timestamp()[1],) if timestamps else row)
    finally:
        c.close()
    return out


def avro_reader(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        return avro.io.DatumReader(avro.schema.parse(f.read()))


def decode_confluent(reader, value):
    magic, sid = struct.unpack(">bI", value[:5])
    assert magic == 0, "not Confluent framing"
    return sid, reader.read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))


def ts_ms(v):
    """A timestamp-millis field as python-avro returns it (datetime) -> int ms."""
    if hasattr(v, "timestamp"):
        return round(v.timestamp() * 1000)
    return int(v)


def encode_confluent(schema_json, sid, record):
    # timestamp-millis is a long on the wire; python-avro would demand datetimes
    schema_json = re.sub(r',\s*"logicalType"\s*:\s*"timestamp-millis"', "", schema_json)
    w = avro.io.DatumWriter(avro.schema.parse(schema_json))
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid))
    w.write(record, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


# ---------------------------------------------------------------- offline features

def read_feature_specs(conf_path=CONF):
    """[(name, spec)] in declared order, and the default half-life, from the config file."""
    specs, default_hl = [], "1h"
    with open(conf_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("features.half_life"):
                default_hl = line.split("=", 1)[1].strip()
            m = re.match(r"feature\.([\w.-]+)\s*=\s*(.+)$", line)
            if m:
                specs.append((m.group(1), m.group(2).strip()))
    return specs, default_hl


def duration_ms(s):
    if s in ("inf", "infinite"):
        return math.inf
    m = re.fullmatch(r"([0-9.eE+-]+)(ms|s|m|h|d|w)?", s)
    mult = {None: 1, "ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6, "d": 8.64e7, "w": 6.048e8}
    return float(m.group(1)) * mult[m.group(2)]


def offline_features(events, specs, default_hl):
    """Direct (non-incremental) evaluation of README "Features" for one user.
    events: [(ts_ms, type, {field: value})], the event's item, category and other text
    fields (if any) as fields "@item", "@category", "@<name>"; read at q = the latest event time. distinct() is
    the exact count of the values seen in (q - window, q]."""
    q = max(e[0] for e in events)
    values = {}
    out = []
    for name, spec in specs:
        m = re.match(r"(\w+)(?:\(([^)]*)\))?\s*(.*)$", spec)
        kind, args, rest = m.group(1), m.group(2), m.group(3)
        opts = dict(kv.split("=", 1) for kv in rest.split())
        filters = []  # type, item, category, or any other field by name ("@" + name)
        for k, val in opts.items():
            if k not in ("half_life", "default", "window", "k"):
                negate = k.endswith("!")
                filters.append((k.rstrip("!"), negate, set(re.split(r"[|,]", val))))

        def passes(ty, fv):
            for key, negate, vals in filters:
                v = ty if key == "type" else fv.get("@" + key)
                if (v in vals) == negate:
                    return False
            return True

        h = duration_ms(opts.get("half_life", default_hl))
        dflt = float(opts.get("default", 0))

        def weight(t):
            return 1.0 if math.isinf(h) else 2.0 ** (-(q - t) / h)

        if kind == "ratio":
            a, b = [x.strip() for x in args.split(",")]
            v = values[a] / values[b] if values[b] != 0 else dflt
        elif kind == "share":
            den = sum(weight(t) for (t, _, _) in events)
            num = sum(weight(t) for (t, ty, fv) in events if passes(ty, fv))
            v = num / den if den > 0 else dflt
        elif kind == "distinct":
            field = "@" + args.strip()
            window = duration_ms(opts.get("window", default_hl))
            v = len({fv[field] for (t, ty, fv) in events
                     if passes(ty, fv) and fv.get(field) is not None and q - t < window})
        else:
            field = args.strip() if args else None
            sel = [(t, fv.get(field) if field else None) for (t, ty, fv) in events
                   if passes(ty, fv) and (field is None or fv.get(field) is not None)]
            w = [weight(t) for (t, _) in sel]
            if kind == "count":
                v = sum(w)
            elif kind == "sum":
                v = sum(wi * x for wi, (_, x) in zip(w, sel))
            elif kind == "mean":
                sw = sum(w)
                v = sum(wi * x for wi, (_, x) in zip(w, sel)) / sw if sw > 0 else dflt
            elif kind == "std":
                sw = sum(w)
                if sw > 0:
                    mean = sum(wi * x for wi, (_, x) in zip(w, sel)) / sw
                    v = math.sqrt(sum(wi * (x - mean) ** 2 for wi, (_, x) in zip(w, sel)) / sw)
                else:
                    v = dflt
            elif kind == "max":
                v = max(wi * x for wi, (_, x) in zip(w, sel)) if sel else dflt
            elif kind == "since_last":
                v = (q - max(t for (t, _) in sel)) / 1000.0 if sel else dflt
            elif kind == "since_prev":
                ts = sorted((t for (t, _) in sel), reverse=True)
                v = (ts[0] - ts[1]) / 1000.0 if len(ts) >= 2 else dflt
            else:
                raise ValueError(kind)
        values[name] = v
        out.append(v)
    return q, out


def rees46_rows(path=None):
    """The REES46 sample's events in file order as (ts_ms, event_type, product_id,
    category_code or "", price, user_id); stops at the sample's last line, which is cut
    short (cohort-replay stops there too)."""
    path = path or os.path.join(DATA, "rees46-2019-oct-sample.csv")
    with open(path) as f:
        next(f)
        for line in f:
            c = line.rstrip("\n").split(",")
            if len(c) != 9:
                return
            t = datetime.datetime.strptime(c[0], "%Y-%m-%d %H:%M:%S UTC").replace(
                tzinfo=datetime.timezone.utc)
            yield int(t.timestamp() * 1000), c[1], c[2], c[4], float(c[6]), c[7]


def sparkov_rows(path=None):
    """The sparkov sample in file order, with the data README's mapping: dicts of
    event_id, user_id, ts (ms), fields ({"amount", "attrs.lat", ...}) and label."""
    path = path or os.path.join(DATA, "sparkov-transactions-sample.csv")
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            fields = {"amount": float(r["amt"])}
            for k in ("lat", "long", "merch_lat", "merch_long"):
                fields["attrs." + k] = float(r[k])
            yield {"event_id": r["trans_num"], "user_id": r["cc_num"],
                   "ts": int(r["unix_time"]) * 1000, "fields": fields,
                   "label": int(r["is_fraud"])}


def sparkov_events(path=None):
    """user_id -> [(ts_ms, type, fields)] with the README mapping; also [(event_id, user_id)]."""
    users, ids = {}, []
    for r in sparkov_rows(path):
        users.setdefault(r["user_id"], []).append((r["ts"], "payment", r["fields"]))
        ids.append((r["event_id"], r["user_id"]))
    return users, ids


def final_states(bootstrap, topic="changelog"):
    """user -> (offset reflected, t_ref, state doubles) of its last state record in the
    changelog topic (staterec.h's layout)."""
    last = {}
    for part, off, key, value, _ in sorted(consume(bootstrap, topic, expect=1,
                                                   timeout=120), key=lambda m: (m[0], m[1])):
        if value is None:  # a tombstone: the user was evicted
            last.pop(key.decode(), None)
            continue
        n = struct.unpack_from("<H", value, 2)[0]
        offset, t_ref = struct.unpack_from("<qq", value, 16)
        last[key.decode()] = (offset, t_ref, struct.unpack_from(f"<{n}d", value, 64))
    return last


def compare_states(ref, got, what):
    """Assert two final_states() are equal (clocks exactly, state to 1e-9 relative);
    returns the worst relative difference."""
    assert set(ref) == set(got), f"{what}: users differ ({len(ref)} vs {len(got)})"
    worst = 0.0
    for u, (off, t_ref, s) in ref.items():
        off2, t_ref2, s2 = got[u]
        assert t_ref == t_ref2, f"{what}: {u} clock {t_ref2} vs {t_ref}"
        for a, b in zip(s, s2):
            if a == b:  # also infinities (a max over nothing yet is -inf)
                continue
            rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
            worst = max(worst, rel)
            assert rel <= 1e-9, f"{what}: {u} state {b!r} vs {a!r} (relative {rel:.2e})"
    return worst


def committed(bootstrap, partitions, topic="events", group="cohortd-it"):
    """partition -> the group's committed offset of topic (negative: none)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def end_offsets(bootstrap, partitions, topic="events"):
    """{partition: end offset} of a topic (what it holds, from the broker's watermarks)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watermarks-{time.time_ns()}"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
    finally:
        c.close()


def committed_sum(bootstrap, partitions, topic="events", group="cohortd-it"):
    """Events of topic the group has committed, over all partitions."""
    return sum(max(o, 0) for o in committed(bootstrap, partitions, topic, group).values())


def reference_states(partitions, topics, gen_args, sets, events):
    """final_states() of one uninterrupted cohortd over cohort-gen's gen_args input."""
    with Broker(partitions=partitions, topics=topics) as broker:
        run([GEN, "--brokers", broker.bootstrap, *gen_args])
        with Daemon(broker.bootstrap, *sets) as d:
            d.wait_assigned()
            consume(broker.bootstrap, "profiles", expect=events, timeout=300)
            assert d.stop() == 0
        return final_states(broker.bootstrap)


def wait_for(what, cond, daemons, timeout=300, step=0.2):
    """Poll cond() until it holds; fails when a daemon dies or timeout s pass. An OSError
    from cond (an HTTP endpoint not up yet) counts as not yet."""
    deadline = time.time() + timeout
    while True:
        for d in daemons:
            assert d.proc.poll() is None, f"cohortd died:\n{d.log_text()[-3000:]}"
        try:
            if cond():
                return
        except OSError:
            pass
        assert time.time() < deadline, f"{what}: not within {timeout} s"
        time.sleep(step)


def caught_up(d, bootstrap, partitions, events, gen=None):
    """Whether gen (if any) is done and cohortd has restored, processed and committed all
    `events` of the input."""
    if gen is not None and gen.poll() is None:
        return False
    m = d.metrics()
    return metric(m, "cohortd_restoring_partitions") == 0 and \
        metric_sum(m, "cohortd_consumer_lag") == 0 and metric(m, "cohortd_ready") == 1 and \
        committed_sum(bootstrap, partitions) >= events
