#!/usr/bin/python3
"""cohortd's benchmark: throughput, latency, memory and scaling on the embedded broker,
against the Kafka pass-through ceiling and a Python baseline, in one run.

Usage (normally through tools/bench/run, which installs and builds first):
    bench.py --build BUILD_DIR --out OUT_DIR [--quick] [--only PHASES] [--max-users N]

Phases, in order (--only takes a comma list):
  parity      cohortd and the Python baseline on the same small input: the baseline
              must compute the same features and scores (it is the same job)
  throughput  cohortd, then cohort-passthrough (the ceiling), then the Python baseline,
              each on the same pre-loaded input on a fresh broker
  latency     at 50% of cohortd's measured rate: end-to-end p50/p99/p999 for the
              ceiling and for cohortd (cohort-gen --stamp -> cohort-bench-sink)
  memory      one cohortd grown to 100k, 1M (and 10M) users: RSS, state bytes per
              user, events/s and CPU per event on a table of that size
  scaling     events/s with d = 8, 16, 32, 128 features and k = 4, 16, 64 segments
  restore     users/s restored from a local snapshot and from the changelog alone, and
              start-to-ready time, at 100k and 1M users (d = 4)
  eos         events/s with processing.guarantee = exactly_once against at_least_once
  refresh     the segments' population refresh on 1M users (20k with --quick): its wall
              time per million users, and the p99 of batch duration and of end-to-end
              latency under a paced load while it runs against the same load without
  featurize   cohortd featurize (the shipped 16 features, no Kafka) on CSV files of
              cohortd's own fields, to Avro and to CSV rows, against a numpy
              implementation of the same features (tools/bench/featurize_numpy.py) that
              must give the same values; card-like users (about 15 events each) and dense
              ones (about 200)
  trees       a 300-tree depth-6 XGBoost model on d = 16 (50 trees with --quick):
              rows/s of cohortd's evaluator (cohort-bench-trees, one thread) against
              XGBoost's own inplace_predict on one thread and on every core, and of
              cohortd's TreeSHAP reasons against xgboost's pred_contribs, same rows

Writes OUT_DIR/report.md, report.json and *.png. Rates are measured by an outside
observer (the output topics' high watermarks, sampled every 50 ms) between 10% and 90%
of the outputs, so start-up and group joins do not count; CPU is the process's
utime + stime over the same window. Numbers are ratios against the ceiling measured in
the same run, because these machines are shared and noisy.

Run with Debian's /usr/bin/python3 (python3-confluent-kafka, numpy, sklearn, onnx,
matplotlib).
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from confluent_kafka import Consumer, TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = "/usr/bin/python3"
TOPICS = "events,profiles,risk,cohortd-dlq,py-profiles,py-risk,changelog"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Client settings shared by every system under test (cohortd's kafka.* keys, the
# pass-through's and the sink's -X). fetch.wait.max.ms: the embedded broker answers a
# fetch only when its wait expires if the partition was empty when it arrived (a real
# broker answers as soon as data comes), so the default 500 ms would dominate latency.
FETCH_WAIT_MS = 5
SESSION_TIMEOUT_MS = 6000


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, a):
        self.build = os.path.abspath(a.build)
        self.out = os.path.abspath(a.out)
        self.quick = a.quick
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="cohort-bench-")
        self.partitions = 8 if a.quick else 32
        # events per throughput run: each partition keeps only its last 5 MiB (about
        # 55,000 events of ~95 bytes), so a pre-load must stay well under that
        self.n_events = 60_000 if a.quick else 800_000
        self.n_users = 20_000 if a.quick else 100_000
        self.n_baseline = 15_000 if a.quick else 60_000
        self.lat_seconds = 4 if a.quick else 20
        self.max_users = a.max_users
        self.reps = 1 if a.quick else 3
        self.r = {"quick": a.quick, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "machine": machine_info(), "settings": {
                      "partitions": self.partitions, "events_per_run": self.n_events,
                      "users_per_run": self.n_users, "baseline_events": self.n_baseline,
                      "fetch_wait_max_ms": FETCH_WAIT_MS}}
        self.procs = []

    def bin(self, *p):
        path = os.path.join(self.build, *p)
        if not os.access(path, os.X_OK):
            raise SystemExit(f"bench: {path} not found: build first (tools/bench/run does)")
        return path

    # ------------------------------------------------------------ processes

    def start(self, args, name, **kw):
        logf = open(os.path.join(self.work, f"{name}.log"), "ab")
        p = subprocess.Popen(args, stderr=logf, **kw)
        p.name, p.logpath = name, logf.name
        self.procs.append(p)
        return p

    def stop(self, p, timeout=60):
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def cleanup(self):
        for p in reversed(list(self.procs)):
            self.stop(p, timeout=10)

    def tail(self, p, n=20):
        with open(p.logpath, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def broker(self):
        p = self.start([self.bin("stream", "cohort-broker"), "--partitions", str(self.partitions),
                        "--topics", TOPICS], "broker", stdout=subprocess.PIPE, text=True)
        bs = p.stdout.readline().strip()
        if not bs:
            raise RuntimeError("cohort-broker printed no bootstrap servers")
        return p, bs

    def gen(self, bs, events, users, seed=1, *extra, wait=True):
        args = [self.bin("tools", "cohort-gen"), "--brokers", bs, "--events", str(events),
                "--users", str(users), "--seed", str(seed), "--quiet", *map(str, extra)]
        p = self.start(args, "gen")
        if wait:
            rc = p.wait()
            self.procs.remove(p)
            if rc != 0:
                raise RuntimeError(f"cohort-gen exited {rc}:\n{self.tail(p)}")
        return p

    def cohortd(self, bs, conf, group, *sets):
        port = free_port()
        args = [self.bin("daemon", "cohortd"), "--config", conf,
                "--set", f"kafka.bootstrap.servers={bs}", "--set", f"kafka.group.id={group}",
                "--set", f"http.listen=127.0.0.1:{port}", "--set", "log.level=warning",
                "--set", f"kafka.session.timeout.ms={SESSION_TIMEOUT_MS}",
                "--set", f"kafka.consumer.fetch.wait.max.ms={FETCH_WAIT_MS}"]
        for s in sets:
            args += ["--set", s]
        p = self.start(args, "cohortd", stdout=subprocess.DEVNULL)
        p.http = port
        return p

    def passthrough(self, bs, group, sizes, *extra):
        args = [self.bin("tools", "cohort-passthrough"), "--brokers", bs, "--group", group,
                "--profile-bytes", str(sizes[0]), "--risk-bytes", str(sizes[1]),
                "-X", f"session.timeout.ms={SESSION_TIMEOUT_MS}",
                "-X", f"consumer.fetch.wait.max.ms={FETCH_WAIT_MS}", *extra]
        return self.start(args, "passthrough", stdout=subprocess.PIPE, text=True)

    def baseline(self, bs, conf, group, events):
        args = [PY, os.path.join(ROOT, "tools", "bench", "baseline.py"), "--brokers", bs,
                "--config", conf, "--group", group, "--events", str(events),
                "-X", f"session.timeout.ms={SESSION_TIMEOUT_MS}",
                "-X", f"consumer.fetch.wait.max.ms={FETCH_WAIT_MS}"]
        return self.start(args, "baseline", stdout=subprocess.PIPE, text=True)

    # ------------------------------------------------------------ observation

    def follow(self, bs, p, topics, target, timeout):
        """Sample (t, outputs, cpu seconds of p) every 50 ms until the output topics
        hold target records. Returns the samples."""
        obs = Consumer({"bootstrap.servers": bs, "group.id": "bench-observer"})
        tps = [TopicPartition(t, i) for t in topics for i in range(self.partitions)]
        samples, deadline = [], time.time() + timeout
        try:
            while True:
                n = sum(obs.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in tps)
                samples.append((time.monotonic(), n, proc_cpu(p.pid)))
                if n >= target:
                    return samples
                if p.poll() is not None:
                    raise RuntimeError(f"{p.name} exited {p.returncode} after {n} of {target} "
                                       f"outputs:\n{self.tail(p)}")
                if time.time() > deadline:
                    raise RuntimeError(f"{p.name}: {n} of {target} outputs after {timeout}s")
                time.sleep(0.05)
        finally:
            obs.close()

    def throughput(self, name, bs, p, topics, n_events, timeout=600):
        s = self.follow(bs, p, topics, 2 * n_events, timeout)
        r = window(s, 2 * n_events)
        r.update({"system": name, "events": n_events, "seconds_total": round(s[-1][0] - s[0][0], 2)})
        log(f"{name}: {r['events_per_s']:,.0f} events/s, {r['cpu_s_per_m_events']:.2f} CPU s per "
            f"million events")
        return r

    # ------------------------------------------------------------ configs and models

    def config(self, name, d=16, k=16, model=True, **overrides):
        """A cohortd config: the shipped one with absolute paths, d features (the shipped
        16, cut or extended with generated ones) and k segments."""
        lines, feats = [], []
        with open(os.path.join(ROOT, "conf", "cohortd.conf")) as f:
            for line in f:
                s = line.strip()
                if s.startswith("feature."):
                    feats.append(s)
                elif not s.startswith(("schema.dir", "model.path", "segments.k")):
                    lines.append(s)
        lines.append(f"schema.dir = {os.path.join(ROOT, 'conf', 'schemas')}")
        feats = (feats + extra_features(d - len(feats)))[:d]
        names = [f.split("=", 1)[0].strip()[len("feature."):] for f in feats]
        lines.append(f"segments.k = {k}")
        lines.append(f"model.path = {self.model(names) if model else ''}")
        lines.append("model.watch = 0")
        for key, v in overrides.items():
            lines.append(f"{key.replace('__', '.')} = {v}")
        lines += feats
        path = os.path.join(self.work, f"{name}.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def model(self, names):
        """The example MLP for the shipped 16 features; for other feature sets the same
        architecture (scaler, 16 and 8 ReLU units, logistic output) fitted to synthetic
        data and exported the same way (tools/export_onnx.py)."""
        d = len(names)
        if d == 16:
            return os.path.join(ROOT, "conf", "models", "risk_mlp.onnx")
        path = os.path.join(self.work, f"mlp_d{d}.onnx")
        if not os.path.exists(path):
            subprocess.run([PY, "-c", MODEL_SCRIPT, ",".join(names), path,
                            os.path.join(ROOT, "tools")], check=True)
        return path

    # ------------------------------------------------------------ phases

    def cohortd_run(self, tag, conf, n_events, users, metrics=False):
        """cohortd on n_events pre-loaded events on a fresh broker."""
        broker, bs = self.broker()
        try:
            self.gen(bs, n_events, users, 1)
            p = self.cohortd(bs, conf, f"bench-{tag}")
            r = self.throughput(f"cohortd {tag}", bs, p, ["profiles", "risk"], n_events)
            r["rss_bytes"] = proc_rss(p.pid)
            if metrics:
                m = scrape(p.http)
                r["users"] = m.get("cohortd_users")
                r["user_table_bytes"] = m.get("cohortd_user_table_bytes")
                r["sizes"] = record_sizes(bs, ["profiles", "risk"], self.partitions)
            rc = self.stop(p)
            if rc != 0:
                raise RuntimeError(f"cohortd exited {rc}:\n{self.tail(p)}")
            return r
        finally:
            self.stop(broker)

    def ceiling_run(self, tag, n_events, users, sizes):
        """cohort-passthrough on n_events pre-loaded events on a fresh broker."""
        broker, bs = self.broker()
        try:
            self.gen(bs, n_events, users, 1)
            p = self.passthrough(bs, f"bench-{tag}", (sizes["profiles"], sizes["risk"]),
                                 "--events", str(n_events))
            r = self.throughput(f"ceiling {tag}", bs, p, ["profiles", "risk"], n_events)
            out, _ = p.communicate(timeout=60)
            self.procs.remove(p)
            if p.returncode != 0:
                raise RuntimeError(f"cohort-passthrough exited {p.returncode}:\n{self.tail(p)}")
            r["self_report"] = json.loads(out.strip().splitlines()[-1])
            return r
        finally:
            self.stop(broker)

    def phase_throughput(self):
        """cohortd and the ceiling alternately, reps times each (the median counts: a
        shared machine has slow moments), then the Python baseline once."""
        conf = self.config("main")
        runs = {"cohortd": [], "ceiling": []}
        for i in range(self.reps):
            runs["cohortd"].append(self.cohortd_run(f"d16-k16-{i + 1}", conf, self.n_events,
                                                    self.n_users, True))
            sizes = runs["cohortd"][0]["sizes"]
            runs["ceiling"].append(self.ceiling_run(f"{i + 1}", self.n_events, self.n_users,
                                                    sizes))
        res = {k: dict(median_run(v), runs=[round(x["events_per_s"]) for x in v])
               for k, v in runs.items()}
        # the Python baseline: fewer events (it is slow), same kind of input
        broker, bs = self.broker()
        try:
            self.gen(bs, self.n_baseline, self.n_users, 1)
            p = self.baseline(bs, conf, "bench-baseline", self.n_baseline)
            res["baseline"] = self.throughput("python baseline", bs, p, ["profiles", "risk"],
                                              self.n_baseline, timeout=1800)
            p.communicate(timeout=120)
            self.procs.remove(p)
            if p.returncode != 0:
                raise RuntimeError(f"baseline exited {p.returncode}:\n{self.tail(p)}")
        finally:
            self.stop(broker)
        c, ce, b = (res[k]["events_per_s"] for k in ("cohortd", "ceiling", "baseline"))
        res["ratio_to_ceiling"] = c / ce
        res["ratio_to_baseline"] = c / b
        res["cpu_ratio_baseline_to_cohortd"] = (res["baseline"]["cpu_s_per_m_events"] /
                                                res["cohortd"]["cpu_s_per_m_events"])
        self.r["throughput"] = res
        log(f"median of {self.reps}: cohortd {c:,.0f}, ceiling {ce:,.0f} events/s; "
            f"cohortd/ceiling = {c / ce:.2f}, cohortd/baseline = {c / b:.1f}")

    def phase_latency(self):
        base = self.r.get("throughput", {}).get("cohortd", {}).get("events_per_s")
        sizes = self.r.get("throughput", {}).get("cohortd", {}).get("sizes")
        if not base:  # latency alone: measure the rate first
            t = median_run([self.cohortd_run(f"rate-{i}", self.config("main"), self.n_events,
                                             self.n_users, True) for i in range(self.reps)])
            base, sizes = t["events_per_s"], t["sizes"]
        rate = int(base * 0.5)
        res = {"rate": rate, "seconds": self.lat_seconds}
        conf = self.config("main")
        for sut in ("ceiling", "cohortd"):
            broker, bs = self.broker()
            try:
                if sut == "cohortd":
                    p = self.cohortd(bs, conf, "bench-lat")
                    fmt = "risk"
                else:
                    p = self.passthrough(bs, "bench-lat", (sizes["profiles"], sizes["risk"]))
                    fmt = "event"
                # a primer proves the system consumes before the measured load starts
                self.gen(bs, 500, 500, 7)
                self.follow(bs, p, ["profiles", "risk"], 1000, 120)
                sink = self.start([self.bin("tools", "cohort-bench-sink"), "--brokers", bs,
                                   "--topic", "risk", "--format", fmt, "--warmup", "2",
                                   "--duration", str(self.lat_seconds),
                                   "-X", f"fetch.wait.max.ms={FETCH_WAIT_MS}"],
                                  "sink", stdout=subprocess.PIPE, text=True)
                if sink.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"cohort-bench-sink:\n{self.tail(sink)}")
                g = self.gen(bs, int(rate * (self.lat_seconds + 6)), self.n_users, 3, "--stamp",
                             "--rate", rate, wait=False)
                out, _ = sink.communicate(timeout=self.lat_seconds + 120)
                self.procs.remove(sink)
                h = json.loads(out.strip().splitlines()[-1])
                self.stop(g)
                self.stop(p)
                if h["count"] == 0:
                    raise RuntimeError(f"{sut}: no stamped outputs reached the sink")
                res[sut] = h
                log(f"latency {sut} at {rate:,} events/s: p50 {h['p50'] / 1e3:.1f} ms, "
                    f"p99 {h['p99'] / 1e3:.1f} ms, p999 {h['p999'] / 1e3:.1f} ms ({h['count']:,})")
            finally:
                self.stop(broker)
        self.r["latency"] = res

    def phase_memory(self):
        levels = [10_000, 100_000] if self.quick else [100_000, 1_000_000]
        if not self.quick and self.max_users >= 10_000_000:
            levels.append(10_000_000)
        levels = [u for u in levels if u <= self.max_users]
        per_level = 50_000 if self.quick else 500_000
        chunk = 50_000 if self.quick else 1_000_000
        conf = self.config("memory", state__max_users=max(levels) + max(levels) // 4)
        broker, bs = self.broker()
        res = []
        try:
            p = self.cohortd(bs, conf, "bench-mem")
            produced, have = 0, 0
            for users in levels:
                while have < users:  # every user once, in chunks the broker can hold
                    n = min(chunk, users - have)
                    self.gen(bs, n, n, 11, "--cover", "--user-base", have)
                    have += n
                    produced += n
                    self.follow(bs, p, ["profiles", "risk"], 2 * produced, 1800)
                rss_users = proc_rss(p.pid)
                # per-event cost on a table of this size: pause cohortd, pre-load
                # events of random users among all of them, resume, measure
                os.kill(p.pid, signal.SIGSTOP)
                try:
                    self.gen(bs, per_level, users, 20 + len(res))
                finally:
                    os.kill(p.pid, signal.SIGCONT)
                produced += per_level
                s = self.follow(bs, p, ["profiles", "risk"], 2 * produced, 1800)
                w = window(s, 2 * produced, start=2 * (produced - per_level))
                m = scrape(p.http)
                entry = {"users": int(m.get("cohortd_users", 0)),
                         "user_table_bytes": int(m.get("cohortd_user_table_bytes", 0)),
                         "rss_bytes": proc_rss(p.pid), "rss_after_cover_bytes": rss_users,
                         "events_per_s": w["events_per_s"],
                         "cpu_s_per_m_events": w["cpu_s_per_m_events"]}
                entry["state_bytes_per_user"] = entry["user_table_bytes"] / max(1, entry["users"])
                res.append(entry)
                log(f"memory: {entry['users']:,} users, RSS {entry['rss_bytes'] / 2**20:,.0f} MiB, "
                    f"state {entry['state_bytes_per_user']:.0f} B/user, "
                    f"{w['events_per_s']:,.0f} events/s, {w['cpu_s_per_m_events']:.2f} CPU s/M")
            rc = self.stop(p)
            if rc != 0:
                raise RuntimeError(f"cohortd exited {rc}:\n{self.tail(p)}")
        finally:
            self.stop(broker)
        for a, b in zip(res, res[1:]):
            b["rss_delta_bytes_per_user"] = (b["rss_bytes"] - a["rss_bytes"]) / max(
                1, b["users"] - a["users"])
        self.r["memory"] = res

    def phase_scaling(self):
        n = self.n_events // 2 if self.quick else self.n_events
        res = {"features": [], "segments": []}
        main = self.r.get("throughput", {}).get("cohortd")
        for d in (8, 16, 32, 128):
            if d == 16 and main:
                r = dict(main)
            else:
                r = self.cohortd_run(f"d{d}-k16", self.config(f"d{d}", d=d), n, self.n_users)
            r["d"], r["k"] = d, 16
            res["features"].append(r)
        for k in (4, 16, 64):
            if k == 16:
                r = dict(res["features"][1])
            else:
                r = self.cohortd_run(f"d16-k{k}", self.config(f"k{k}", k=k), n, self.n_users)
            r["d"], r["k"] = 16, k
            res["segments"].append(r)
        self.r["scaling"] = res

    def phase_eos(self):
        """Throughput with processing.guarantee = exactly_once against at_least_once, both
        with the state changelog, on the same pre-loaded input, reps times each (median).
        Rates come from cohortd's own events_processed_total (sampled every 50 ms,
        between 10% and 90%): under transactions the output topics' high watermarks
        also count the commit markers."""
        n = self.n_events // 2 if self.quick else self.n_events
        runs = {"at_least_once": [], "exactly_once": [], "exactly_once_1s": []}
        for i in range(self.reps):
            for g in runs:
                extra = {"commit__interval": "1s"} if g.endswith("_1s") else {}
                conf = self.config(f"eos-{g}", state__changelog="changelog",
                                   processing__guarantee=g.replace("_1s", ""), **extra)
                broker, bs = self.broker()
                try:
                    self.gen(bs, n, self.n_users, 1)
                    p = self.cohortd(bs, conf, f"bench-{g}-{i}")
                    samples, deadline = [], time.time() + 1800
                    while not samples or samples[-1][1] < n:
                        if p.poll() is not None or time.time() > deadline:
                            raise RuntimeError(f"cohortd ({g}) stopped:\n{self.tail(p)}")
                        try:
                            m = scrape(p.http)
                            samples.append((time.monotonic(),
                                            m.get("cohortd_events_processed_total", 0),
                                            proc_cpu(p.pid)))
                        except OSError:
                            pass
                        time.sleep(0.05)
                    r = window(samples, n)
                    m = scrape(p.http)
                    r["txn_commit_s"] = m.get("cohortd_transaction_commit_seconds_total")
                    rc = self.stop(p)
                    if rc != 0:
                        raise RuntimeError(f"cohortd exited {rc}:\n{self.tail(p)}")
                    runs[g].append(r)
                    log(f"{g}: {r['events_per_s']:,.0f} events/s")
                finally:
                    self.stop(broker)
        res = {g: dict(median_run(v), runs=[round(x["events_per_s"]) for x in v])
               for g, v in runs.items()}
        res["events"] = n
        res["ratio"] = (res["exactly_once"]["events_per_s"] /
                        res["at_least_once"]["events_per_s"])
        res["ratio_1s"] = (res["exactly_once_1s"]["events_per_s"] /
                           res["at_least_once"]["events_per_s"])
        self.r["eos"] = res
        log(f"exactly_once / at_least_once throughput = {res['ratio']:.2f} (commit.interval "
            f"100ms), {res['ratio_1s']:.2f} (1s)")

    def phase_restore(self):
        """State restore at each user count: cohortd processes one event per user with
        the changelog on and stops (writing its shutdown snapshot); then it is started
        from the snapshot (state.dir) and from the changelog alone, and the time from the
        partitions' assignment to /readyz 200 gives users/s; start to ready includes the
        process start and the group join."""
        levels = [10_000, 50_000] if self.quick else [100_000, 1_000_000]
        parts = 8 if self.quick else 32  # the changelog must fit the broker's 5 MiB/partition
        res = []
        for users in levels:
            broker = self.start([self.bin("stream", "cohort-broker"), "--partitions", str(parts),
                                 "--topics", "events,profiles,risk,cohortd-dlq,changelog"],
                                "broker", stdout=subprocess.PIPE, text=True)
            bs = broker.stdout.readline().strip()
            sdir = os.path.join(self.work, f"state-{users}")
            conf = self.config(f"restore{users}", d=4, k=0, model=False,
                               state__max_users=users + users // 4)
            sets = ("state.changelog=changelog", f"state.dir={sdir}",
                    "state.snapshot_interval=0", "log.level=info")
            try:
                self.gen(bs, users, users, 13, "--cover")
                p = self.cohortd(bs, conf, "bench-restore", *sets)
                wait_metric(p, lambda m: m.get("cohortd_events_processed_total", 0) >= users, 1800)
                rc = self.stop(p, timeout=600)
                if rc != 0:
                    raise RuntimeError(f"cohortd exited {rc}:\n{self.tail(p)}")
                written = re.findall(r"snapshot: (\d+) partition\(s\), (\d+) user\(s\) written "
                                     r"to .* in ([0-9.]+) s", open(p.logpath).read())
                entry = {"users": users, "partitions": parts,
                         "snapshot_write_s": float(written[-1][2]) if written else None}
                for source in ("snapshot", "changelog"):
                    if source == "changelog":
                        shutil.rmtree(sdir)
                    t0 = time.monotonic()
                    p = self.cohortd(bs, conf, "bench-restore", *sets)
                    t_assigned, t_ready, m = None, None, {}
                    deadline = time.time() + 1800
                    while t_ready is None:
                        if p.poll() is not None or time.time() > deadline:
                            raise RuntimeError(f"cohortd ({source}) not ready:\n{self.tail(p)}")
                        try:
                            m = scrape(p.http)
                            if t_assigned is None and m.get("cohortd_assigned_partitions", 0) > 0:
                                t_assigned = time.monotonic()
                            if m.get("cohortd_ready") == 1:
                                t_ready = time.monotonic()
                        except OSError:
                            pass
                        time.sleep(0.02)
                    restored = m.get("cohortd_restore_snapshot_users_total", 0) + m.get(
                        "cohortd_restore_applied_total", 0)
                    if m.get("cohortd_users") != users or restored < users:
                        raise RuntimeError(f"restore from the {source}: {m.get('cohortd_users')} "
                                           f"users held, {restored} restored, of {users}")
                    dt = t_ready - t_assigned
                    entry[source] = {
                        "start_to_ready_s": round(t_ready - t0, 3),
                        "assigned_to_ready_s": round(dt, 3),
                        "users_per_s": round(users / max(dt, 1e-3)),
                        "changelog_records": int(m.get("cohortd_restore_records_total", 0)),
                        "from_snapshot": int(m.get("cohortd_restore_snapshot_users_total", 0))}
                    log(f"restore {users:,} users from the {source}: ready {t_ready - t0:.2f} s "
                        f"after start, {dt:.2f} s after assignment ({users / max(dt, 1e-3):,.0f} "
                        f"users/s)")
                    rc = self.stop(p, timeout=600)
                    if rc != 0:
                        raise RuntimeError(f"cohortd exited {rc}:\n{self.tail(p)}")
                res.append(entry)
            finally:
                self.stop(broker)
        self.r["restore"] = res

    def phase_refresh(self):
        users = 20_000 if self.quick else min(1_000_000, self.max_users)
        chunk = 50_000 if self.quick else 500_000
        rate = 1_000 if self.quick else 5_000
        conf = self.config("refresh", segments__refresh=0,
                           segments__warmup=min(10_000, users // 2),
                           state__max_users=users + users // 4)
        broker, bs = self.broker()
        res = {"users": users, "rate": rate}
        try:
            p = self.cohortd(bs, conf, "bench-refresh")
            have = 0
            while have < users:  # every user once, in chunks the broker can hold
                n = min(chunk, users - have)
                self.gen(bs, n, n, 11, "--cover", "--user-base", have)
                have += n
                wait_metric(p, lambda m: m.get("cohortd_events_processed_total", 0) >= have,
                            1800)
            wait_metric(p, lambda m: m.get("cohortd_segment_passes_total", 0) >= 1 and
                        m.get("cohortd_segment_pass_running", 1) == 0, 1800)
            seconds = None
            for mode in ("during", "without"):
                # a paced load (wall-clock event times), started before the window opens
                g = self.gen(bs, 0, users, 30 if mode == "during" else 31, "--rate", rate,
                             wait=False)
                wait_metric(p, lambda m, base=m_processed(p): m_processed(p) > base + rate, 120)
                before, passes = histograms(p.http), scrape(p.http)["cohortd_segment_passes_total"]
                t0 = time.monotonic()
                if mode == "during":
                    http_post(p.http, "/segments/refresh")
                    wait_metric(p, lambda m: m["cohortd_segment_passes_total"] > passes and
                                m["cohortd_segment_pass_running"] == 0, 3600)
                    seconds = max(time.monotonic() - t0, 2.0)
                else:
                    time.sleep(seconds)  # the same window, nothing else running
                after = histograms(p.http)
                self.stop(g)
                res[mode] = {"window_s": round(time.monotonic() - t0, 2),
                             "batch_p99_s": p99(after, before, "batch"),
                             "e2e_p99_s": p99(after, before, "e2e"),
                             "batches": int(after["batch"][-1][1] - before["batch"][-1][1])}
                log(f"refresh {mode}: {res[mode]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{p.http}/segments", timeout=30) as r:
                last = json.loads(r.read())["last_pass"]
            res["pass"] = last
            res["seconds_per_m_users"] = last["seconds"] / last["users"] * 1e6
            res["fit_seconds_per_m_users"] = last["fit_seconds"] / last["users"] * 1e6
            log(f"refresh: {last['users']:,} users in {last['seconds']:.2f} s "
                f"({res['seconds_per_m_users']:.1f} s per million users), fit "
                f"{last['fit_seconds']:.2f} s, {last['moved']:,} moved")
            rc = self.stop(p)
            if rc != 0:
                raise RuntimeError(f"cohortd exited {rc}:\n{self.tail(p)}")
        finally:
            self.stop(broker)
        self.r["refresh"] = res

    def phase_parity(self):
        """The baseline must be the same job: on one input, its features and scores equal
        cohortd's (features exactly as float32, scores to 1e-5)."""
        n, users = 6_000, 600
        broker, bs = self.broker()
        try:
            self.gen(bs, n, users, 5, "--step-ms", 1000)
            p = self.cohortd(bs, self.config("parity"), "bench-parity")
            self.follow(bs, p, ["profiles", "risk"], 2 * n, 300)
            self.stop(p)
            q = self.baseline(bs, self.config("parity-py", output__profile_topic="py-profiles",
                                              output__risk_topic="py-risk"), "bench-parity-py", n)
            self.follow(bs, q, ["py-profiles", "py-risk"], 2 * n, 600)
            q.communicate(timeout=60)
            self.procs.remove(q)
            res = compare_outputs(bs, n, self.partitions)
        finally:
            self.stop(broker)
        self.r["parity"] = res
        log(f"parity: {res['risk_compared']} risk updates, max |score diff| "
            f"{res['max_score_diff']:.2e}; {res['profiles_compared']} profiles, max feature "
            f"rel diff {res['max_feature_rel_diff']:.2e}")
        if not res["ok"]:
            raise RuntimeError(f"the Python baseline does not compute what cohortd does: {res}")


    def phase_featurize(self):
        """cohortd featurize against numpy on the same events files: events/s, CPU per
        event, and the largest difference between the two (the same features)."""
        import numpy as np
        n = 60_000 if self.quick else 2_000_000
        conf = os.path.join(self.work, "featurize.conf")
        with open(os.path.join(ROOT, "conf", "cohortd.conf")) as f:
            lines = [l for l in f if not l.startswith(("model.path", "schema.dir"))]
        with open(conf, "w") as f:
            f.writelines(lines)
            # the features alone, as the numpy implementation computes them
            f.write(f"schema.dir = {os.path.join(ROOT, 'conf', 'schemas')}\nmodel.path =\n"
                    "segments.k = 0\n")
        names = re.findall(r"^feature\.([\w.-]+)\s*=", "".join(lines), re.M)
        res = {"events": n, "features": len(names), "datasets": []}

        def timed(args):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            out = subprocess.run(args, capture_output=True, text=True, check=True)
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return wall, cpu, out.stdout

        for label, per_user in (("card-like", 15), ("dense", 200)):
            rng = np.random.default_rng(26)
            path = os.path.join(self.work, f"featurize-{label}.csv")
            t = 1569888000000 + np.cumsum(rng.integers(0, 600, n))
            u = 100000 + rng.integers(0, max(1, n // per_user), n)
            ty = rng.choice(np.array(["view", "cart", "purchase", "payment"]), n,
                            p=[0.6, 0.15, 0.1, 0.15])
            amt = np.round(rng.lognormal(3, 1, n), 2)
            with open(path, "w") as f:
                f.write("event_id,user_id,ts,type,amount\n")
                f.writelines(f"{i},{u[i]},{t[i]},{ty[i]},{amt[i]:.2f}\n" for i in range(n))
            fz = [self.bin("daemon", "cohortd"), "featurize", "--config", conf, "--quiet"]
            runs = {}
            for kind, extra in (("avro", ["--order", "file"]), ("csv", [])):
                out = os.path.join(self.work, f"rows-{label}.{kind}")
                best = None
                for _ in range(self.reps):
                    wall, cpu, _ = timed(fz + extra + ["-o", out, path])
                    if best is None or wall < best[0]:
                        best = (wall, cpu)
                runs[kind] = {"seconds": best[0], "cpu_seconds": best[1],
                              "events_per_s": n / best[0], "events_per_cpu_s": n / best[1]}
            npy = os.path.join(self.work, f"featurize-{label}.npy")
            wall, cpu, stdout = timed([PY, os.path.join(ROOT, "tools", "bench",
                                                        "featurize_numpy.py"), conf, path, npy])
            own = json.loads(stdout)
            runs["numpy"] = {"seconds": wall, "cpu_seconds": cpu, "events_per_s": n / wall,
                             "events_per_cpu_s": n / cpu, "compute_seconds": own["seconds"]}
            got = np.loadtxt(os.path.join(self.work, f"rows-{label}.csv"), delimiter=",",
                             skiprows=1, usecols=range(3, 3 + len(names)), dtype=np.float32)
            ref = np.load(npy)
            # the CSV is in time order (stable), the numpy rows in file order: the file is
            # in time order, so they line up
            diff = np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1.0)
            worst = int(diff.max(axis=0).argmax())
            d = {"name": label, "events_per_user": per_user, "users": own["users"], **runs,
                 "max_rel_diff": float(diff.max()), "max_rel_diff_feature": names[worst],
                 "avro_over_numpy": runs["avro"]["events_per_s"] / runs["numpy"]["events_per_s"],
                 "csv_over_numpy": runs["csv"]["events_per_s"] / runs["numpy"]["events_per_s"],
                 "avro_cpu_over_numpy": (runs["avro"]["events_per_cpu_s"] /
                                         runs["numpy"]["events_per_cpu_s"])}
            res["datasets"].append(d)
            log(f"featurize {label}: {n:,} events, {own['users']:,} users: cohortd "
                f"{runs['avro']['events_per_s']:,.0f}/s to Avro, {runs['csv']['events_per_s']:,.0f}"
                f"/s to CSV; numpy {runs['numpy']['events_per_s']:,.0f}/s; "
                f"{d['avro_over_numpy']:.1f}x and {d['csv_over_numpy']:.1f}x; largest difference "
                f"{d['max_rel_diff']:.1e} ({d['max_rel_diff_feature']})")
            if d["max_rel_diff"] > 1e-5:
                raise RuntimeError(f"featurize and numpy disagree: {d}")
        self.r["featurize"] = res

    def phase_trees(self):
        """Tree ensembles: cohortd's evaluator against XGBoost's predict on the same rows
        in the same run (rates are ratios: the machine is shared)."""
        import numpy as np
        import xgboost
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        from export_onnx import export
        trees, depth, d = (50 if self.quick else 300), 6, 16
        n_rows, seconds = (5_000, 0.3) if self.quick else (100_000, 3.0)
        rng = np.random.default_rng(16)
        X = rng.lognormal(size=(20_000, d)).astype(np.float32)
        y = (X[:, :4].sum(1) * X[:, 5] + rng.normal(size=len(X)) > 6).astype(int)
        model = xgboost.XGBClassifier(n_estimators=trees, max_depth=depth, nthread=2,
                                      random_state=0).fit(X, y)
        path = os.path.join(self.work, "trees.onnx")
        export(model, path, [f"f{i}" for i in range(d)], version=f"bench-xgb-{trees}")
        rows = rng.lognormal(size=(n_rows, d)).astype(np.float32)
        rows_path = os.path.join(self.work, "trees.f32")
        rows.tofile(rows_path)
        out = subprocess.run([self.bin("tools", "cohort-bench-trees"), path, rows_path, str(d),
                              str(seconds)], env=dict(os.environ, CH_BENCH_SCORES="1"),
                             capture_output=True, text=True, check=True).stdout.split("\n")
        res = json.loads(out[0])
        got = np.array([float(v) for v in out[1:] if v])
        booster = model.get_booster()

        def rate(fn, nthread):
            booster.set_param({"nthread": nthread})
            fn()  # warm
            done, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                fn()
                done += n_rows
            return done / (time.monotonic() - t0)

        want = booster.inplace_predict(rows)
        res["max_abs_diff_vs_xgboost"] = float(np.abs(got - want).max())
        res["xgboost_rows_per_s_1_thread"] = rate(lambda: booster.inplace_predict(rows), 1)
        res["xgboost_rows_per_s_all_threads"] = rate(lambda: booster.inplace_predict(rows),
                                                     os.cpu_count())
        dm = xgboost.DMatrix(rows[: n_rows // 10])
        booster.set_param({"nthread": 1})
        t0 = time.monotonic()
        booster.predict(dm, pred_contribs=True)
        res["xgboost_shap_rows_per_s_1_thread"] = (n_rows // 10) / (time.monotonic() - t0)
        res.update(trees=trees, depth=depth, xgboost=xgboost.__version__,
                   ratio_1_thread=res["rows_per_s"] / res["xgboost_rows_per_s_1_thread"],
                   ratio_all_threads=res["rows_per_s"] / res["xgboost_rows_per_s_all_threads"],
                   shap_ratio_1_thread=(res["explained_rows_per_s"] /
                                        res["xgboost_shap_rows_per_s_1_thread"]))
        self.r["trees"] = res
        log(f"trees: {trees} trees depth {depth} d={d}: cohortd {res['rows_per_s']:,.0f} rows/s "
            f"({res['ratio_1_thread']:.2f} x xgboost 1 thread, {res['ratio_all_threads']:.2f} x "
            f"{os.cpu_count()} threads); TreeSHAP {res['explained_rows_per_s']:,.0f} rows/s "
            f"({res['shap_ratio_1_thread']:.2f} x pred_contribs); max |diff| "
            f"{res['max_abs_diff_vs_xgboost']:.1e}")
        if res["max_abs_diff_vs_xgboost"] > 1e-5:
            raise RuntimeError(f"cohortd's scores differ from xgboost's: {res}")


# ---------------------------------------------------------------- helpers

MODEL_SCRIPT = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from export_onnx import export
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
names, path = sys.argv[1].split(","), sys.argv[2]
d = len(names)
rng = np.random.default_rng(d)
x = rng.lognormal(size=(4000, d))
y = (x[:, : max(1, d // 4)].sum(1) + rng.normal(size=4000) > np.median(x[:, : max(1, d // 4)].sum(1)))
m = make_pipeline(StandardScaler(), MLPClassifier((16, 8), activation="relu", max_iter=200,
                                                  random_state=0)).fit(x, y.astype(int))
export(m, path, names, version=f"bench-mlp-d{d}")
"""


def extra_features(n):
    """n more distinct feature lines, cycling kinds, filters and half-lives."""
    kinds = ["count", "sum(amount)", "mean(amount)", "std(amount)", "max(amount)", "since_last"]
    types = ["", " type=view", " type=cart", " type=purchase", " type=payment", " type=login",
             " type=refund"]
    hls = ["10m", "1h", "6h", "1d", "7d", "30d"]
    out = []
    for i in range(max(0, n)):
        out.append(f"feature.x{i} = {kinds[i % 6]}{types[(i // 6) % 7]} half_life={hls[(i // 42) % 6]}")
    return out


def median_run(runs):
    """The run with the median rate (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["events_per_s"])[(len(runs) - 1) // 2]


def window(samples, total, lo=0.1, hi=0.9, start=0):
    """Rate and CPU per event between lo and hi of the outputs from start to total."""
    def at(level):
        for (t0, n0, c0), (t1, n1, c1) in zip(samples, samples[1:]):
            if n0 <= level <= n1 and n1 > n0:
                f = (level - n0) / (n1 - n0)
                return t0 + f * (t1 - t0), c0 + f * (c1 - c0)
        return samples[-1][0], samples[-1][2]
    a = start + lo * (total - start)
    b = start + hi * (total - start)
    (ta, ca), (tb, cb) = at(a), at(b)
    events = (b - a) / 2  # two outputs per event
    dt = max(tb - ta, 1e-9)
    return {"events_per_s": events / dt, "cpu_s_per_m_events": (cb - ca) / events * 1e6,
            "cpu_utilisation": (cb - ca) / dt, "window_seconds": round(dt, 3)}


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def proc_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_metric(p, cond, timeout):
    """Poll p's /metrics until cond(metrics) holds."""
    deadline = time.time() + timeout
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"{p.name} exited {p.returncode}")
        try:
            if cond(scrape(p.http)):
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{p.name}: condition not met within {timeout} s")
        time.sleep(0.1)


def scrape(port):
    """Unlabelled samples of cohortd's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+) ([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def m_processed(p):
    return scrape(p.http).get("cohortd_events_processed_total", 0)


def http_post(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 202:
            raise RuntimeError(f"POST {path}: {r.status}")


def histograms(port):
    """Cumulative buckets [(le, count)] of the batch duration and of the end-to-end
    latency from the Kafka timestamp."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"batch": [], "e2e": []}
    for line in text.splitlines():
        m = re.match(r'^cohortd_batch_duration_seconds_bucket\{le="([^"]+)"\} (\d+)$', line)
        if m:
            out["batch"].append((float(m.group(1)), int(m.group(2))))
        m = re.match(r'^cohortd_e2e_latency_seconds_bucket\{from="kafka_timestamp",le="([^"]+)"\} '
                     r'(\d+)$', line)
        if m:
            out["e2e"].append((float(m.group(1)), int(m.group(2))))
    return out


def p99(after, before, name):
    """The upper bound of the bucket holding the 99th percentile of what was observed
    between two histograms() (None if nothing was)."""
    a, b = after[name], before[name]
    total = a[-1][1] - b[-1][1]
    if total <= 0:
        return None
    for (le, ca), (_, cb) in zip(a, b):
        if ca - cb >= 0.99 * total:
            return le
    return a[-1][0]


def read_topic(bs, topic, partitions, limit_per_partition=None, timeout=30):
    c = Consumer({"bootstrap.servers": bs, "group.id": "bench-reader", "enable.auto.commit": False})
    try:
        tps, want = [], 0
        for i in range(partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, i), timeout=10, cached=False)
            start = lo if limit_per_partition is None else max(lo, hi - limit_per_partition)
            if hi > start:
                tps.append(TopicPartition(topic, i, start))
                want += hi - start
        c.assign(tps)
        out, deadline = [], time.time() + timeout
        while len(out) < want and time.time() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if not m.error():
                    out.append(m)
        return out
    finally:
        c.close()


def record_sizes(bs, topics, partitions):
    sizes = {}
    for t in topics:
        msgs = read_topic(bs, t, partitions, limit_per_partition=200)
        sizes[t] = round(sum(len(m.value()) for m in msgs) / max(1, len(msgs)))
    return sizes


def compare_outputs(bs, n, parts):
    import io
    import struct
    import avro.io
    import avro.schema

    def reader(name):
        with open(os.path.join(ROOT, "conf", "schemas", name)) as f:
            text = re.sub(r',\s*"logicalType"\s*:\s*"timestamp-millis"', "", f.read())
        return avro.io.DatumReader(avro.schema.parse(text))

    def decode(rd, v):
        return rd.read(avro.io.BinaryDecoder(io.BytesIO(v[5:])))

    rr, rp = reader("risk_update.avsc"), reader("profile_update.avsc")
    risk = {t: {} for t in ("risk", "py-risk")}
    for t in risk:
        for m in read_topic(bs, t, parts):
            r = decode(rr, m.value())
            risk[t][r["event_id"]] = r["score"]
    prof = {t: {} for t in ("profiles", "py-profiles")}
    for t in prof:
        for m in read_topic(bs, t, parts):
            r = decode(rp, m.value())
            prof[t][(r["user_id"], r["ts"])] = r["features"]
    common = set(risk["risk"]) & set(risk["py-risk"])
    sd = max((abs(risk["risk"][e] - risk["py-risk"][e]) for e in common), default=float("inf"))
    pc = set(prof["profiles"]) & set(prof["py-profiles"])
    fd = 0.0
    for key in pc:
        for a, b in zip(prof["profiles"][key], prof["py-profiles"][key]):
            fd = max(fd, abs(a - b) / max(1.0, abs(a)))
    ok = len(common) == n and len(pc) > 0.9 * len(prof["profiles"]) and sd <= 1e-5 and fd <= 1e-5
    return {"events": n, "risk_compared": len(common), "max_score_diff": sd,
            "profiles_compared": len(pc), "max_feature_rel_diff": fd, "ok": ok}


def machine_info():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    import confluent_kafka
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "librdkafka": confluent_kafka.libversion()[0], "commit": commit,
            "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True, help="a cohortd build directory")
    ap.add_argument("--out", required=True, help="where report.md/json and plots go")
    ap.add_argument("--quick", action="store_true", help="small sizes (the ctest bench label)")
    ap.add_argument("--only",
                    default="parity,throughput,latency,memory,scaling,restore,eos,refresh,"
                            "featurize,trees")
    ap.add_argument("--max-users", type=int, default=None,
                    help="largest user count of the memory phase (default: 10M if the "
                         "machine has the memory, else 1M)")
    a = ap.parse_args()
    if a.max_users is None:
        a.max_users = 10_000_000 if os.sysconf("SC_PAGE_SIZE") * os.sysconf(
            "SC_PHYS_PAGES") >= 16 * 2**30 else 1_000_000
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    b = Bench(a)
    t0 = time.monotonic()
    try:
        for ph in a.only.split(","):
            log(f"--- {ph}")
            getattr(b, f"phase_{ph.strip()}")()
    finally:
        b.cleanup()
        b.r["seconds"] = round(time.monotonic() - t0, 1)
        with open(os.path.join(b.out, "report.json"), "w") as f:
            json.dump(b.r, f, indent=2)
        from report import write_report
        write_report(b.r, b.out)
        if not os.environ.get("CH_BENCH_KEEP"):
            shutil.rmtree(b.work, ignore_errors=True)
        else:
            log(f"work files kept in {b.work}")
    log(f"report: {os.path.join(b.out, 'report.md')} ({b.r['seconds']:.0f} s)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
