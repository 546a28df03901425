"""Bootstrap: history up to a time through featurize, the rest through the daemon.

The REES46 sample (17,434 events, every feature kind but tags) is cut at CUT:
- Reference: one daemon consumes all of it from a 4-partition topic, with the state
  changelog; every user's final state record is kept.
- Bootstrap: `cohortd featurize --state-out DIR --partitions 4 --until CUT` folds the
  events stamped before CUT into seed files, one per input partition. A daemon with
  state.dir = DIR and input.start_at = CUT (no committed offsets) loads the seeds on an
  empty input and is killed (kill -9), so the next start loads them again; the events
  before CUT arrive (skipped), then the rest stream in at a bounded rate while it is
  killed twice more once its committed offsets pass given points (partitions with a
  committed offset no longer load their seed). A last run catches up and stops.
- Every user's final state (clock and state doubles, from the changelog) equals the
  reference's; the worst relative difference is reported.
- Segments (k = 8, one instance's): featurize's pass over every user at the cut fits
  within 1.02 x sklearn KMeans(n_init=10)'s inertia on the same transformed vectors
  (its --segments-export), every user is in its nearest centroid, and each seed carries
  its users' segments. The daemon started on the seeds and the model
  (segments.state_file) shows those centroids and users per segment before any event,
  and at the end every user has a segment. (The segments are not compared with the
  reference daemon's: online mini-batch K-Means depends on how events fall into
  batches, so two daemons fed the same events differ too.)
- A seed written for another feature layout is refused, counted and logged; the users
  start empty.
"""
import csv
import json
import os
import shutil
import struct
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

import numpy as np
from sklearn.cluster import KMeans

from harness import (COHORTD, REPLAY, Broker, Daemon, committed, compare_states, end_offsets,
                     final_states, log, metric, metric_sum, rees46_rows, run, wait_for)
from test_featurize import REES, REES_EVENTS, REES_FEATURES, REES_MAP, config
from test_segments_population import nearest_ok

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
CUT = "2019-10-01T02:30:00Z"
CUT_MS = int(datetime(2019, 10, 1, 2, 30, tzinfo=timezone.utc).timestamp() * 1000)
SETS = ("state.changelog=changelog", "commit.interval=1s", "emit.policy=every")
SEGMENTS = ("segments.k=8", "segments.warmup=2000")
# The shipped REES46 features of test_featurize with smaller distinct sketches: the
# embedded broker keeps the last 5 MiB of a partition and never compacts, so a
# changelog's records must fit (a production changelog is compacted).
FEATURES = REES_FEATURES.replace("window=1h k=1024", "window=1h k=16").replace("k=32", "k=8")


def replay(bs, skip=0, limit=0, rate=0):
    cmd = [REPLAY, "--brokers", bs, "--dataset", "rees46", "--file", REES, "--quiet",
           "--skip", str(skip), "--limit", str(limit)]
    if rate:
        cmd += ["--rate", str(rate)]
    return cmd


def reference(conf):
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        run(replay(bs, limit=REES_EVENTS))
        with Daemon(bs, *SETS, *SEGMENTS, "segments.state_file=", conf=conf) as d:
            d.wait_assigned()
            ends = end_offsets(bs, PARTS)
            wait_for("the reference consumed everything", lambda: committed(bs, PARTS) == ends,
                     [d])
            assert d.stop() == 0
        return final_states(bs)


def seed_metrics(d):
    m = d.metrics()
    return (metric_sum(m, "cohortd_restore_seeds_total", result="used"),
            metric_sum(m, "cohortd_restore_seeds_total", result="refused"),
            metric(m, "cohortd_restore_seed_users_total"))


def restored(d):
    """Ready: every partition assigned and restored (seeds and changelog read)."""
    return metric(d.metrics(), "cohortd_ready") == 1


def read_seed(path):
    """{user: segment (-1 none)} of a seed file (snapfile.h: a 160-byte header, entries of
    u16 key length, key, state record; a 64-byte trailer)."""
    with open(path, "rb") as f:
        data = f.read()
    state_len = struct.unpack_from("<I", data, 20)[0]
    rec = 64 + 8 * state_len
    out, pos = {}, 160
    while pos < len(data) - 64:
        n = struct.unpack_from("<H", data, pos)[0]
        key = data[pos + 2:pos + 2 + n].decode()
        out[key] = struct.unpack_from("<h", data, pos + 2 + n + 32)[0]
        pos += 2 + n + rec
    assert pos == len(data) - 64, f"{path}: entries end at {pos} of {len(data)}"
    return out


def model_centroids(path):
    """The centroids (transformed space) of a segments.state_file."""
    cs = {}
    with open(path) as f:
        for line in f:
            if line.startswith("centroid "):
                v = line.split()
                cs[int(v[1])] = [float(t) for t in v[4:]]
    return np.array([cs[j] for j in sorted(cs)], dtype=np.float32)


def check_history_segments(state, export):
    """featurize's pass at the cut against sklearn on the same vectors; the seeds' segments."""
    users = [json.loads(line) for line in open(export)]
    C = model_centroids(os.path.join(state, "segments.state"))
    k = len(C)
    assert k == 8 and all(u["segment"] is not None for u in users), "users without a segment"
    Z = np.array([u["z"] for u in users], dtype=np.float64)
    inertia = sum(((np.array(u["z"]) - C[u["segment"]]) ** 2).sum() for u in users)
    best = min(KMeans(n_clusters=k, n_init=10, random_state=s).fit(Z).inertia_
               for s in range(3))
    assert inertia <= 1.02 * best, f"inertia {inertia:.4f} vs sklearn's {best:.4f}"
    bad = nearest_ok(users, C)
    assert bad == 0, f"{bad} users not in their nearest segment"
    seeded = {}
    for i in range(PARTS):
        seeded.update(read_seed(os.path.join(state, f"events-{i}.seed")))
    assert seeded == {u["user_id"]: u["segment"] for u in users}, "the seeds' segments differ"
    counts = np.bincount([u["segment"] for u in users], minlength=k)
    log(f"featurize's segments at the cut: {len(users)} users, inertia {inertia / best:.4f} x "
        f"sklearn KMeans(n_init=10)'s best of 3 seeds, every user in its nearest centroid, the "
        f"seeds carry them")
    return C, counts


def bootstrapped(conf, tmp, before):
    state = os.path.join(tmp, "state")
    export = os.path.join(tmp, "segments.jsonl")
    r = subprocess.run([COHORTD, "featurize", "--config", conf,
                        *sum((["--set", s] for s in REES_MAP + list(SEGMENTS)), []),
                        "--state-out", state, "--partitions", str(PARTS), "--until", CUT,
                        "--segments-export", export, "-o", os.path.join(tmp, "rows.csv"),
                        "--skip-bad", "--rejects", os.path.join(tmp, "rejects.csv"), REES],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert f"{REES_EVENTS - before} event(s) stamped at or after {CUT} left out" in err, err
    assert sorted(os.listdir(state)) == [f"events-{i}.seed" for i in range(PARTS)] + \
        ["segments.state"], os.listdir(state)
    n_seeded = int(err.split("seeds: ")[1].split(" ")[0])
    log(f"featurize --state-out: {before} events before {CUT} folded, {n_seeded} users in "
        f"{PARTS} seed files")
    C, counts = check_history_segments(state, export)
    with open(os.path.join(tmp, "rows.csv"), newline="") as f:
        segs = [r["segment"] for r in csv.DictReader(f)]
    first = next(i for i, v in enumerate(segs) if v != "")
    assert len(segs) == before and 0 < first <= 2000 and \
        all(v in "01234567" and v for v in segs[first:]), (len(segs), first)
    log(f"featurize's rows: a segment column, empty for the first {first} rows (the warm-up's "
        f"batches), then one of the 8 segments on each of the other {before - first}")
    sets = SETS + SEGMENTS + (f"state.dir={state}", f"input.start_at={CUT}",
                              f"segments.state_file={state}/segments.state")
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        # 1: seeds loaded on an empty input (nothing can be committed): kill -9
        with Daemon(bs, *sets, conf=conf) as d:
            wait_for("the seeds loaded", lambda: restored(d) and seed_metrics(d)[0] == PARTS,
                     [d])
            used, refused, users = seed_metrics(d)
            assert (refused, users) == (0, n_seeded), (refused, users, n_seeded)
            assert all(o < 0 for o in committed(bs, PARTS).values()), committed(bs, PARTS)
            head = json.loads(d.get("/segments")[2])
            assert head["ready"], head
            got = np.array([s["centroid"] for s in head["segments"]], dtype=np.float32)
            assert np.array_equal(got, C), "the daemon's centroids are not the seed model's"
            assert [s["users"] for s in head["segments"]] == counts.tolist(), \
                (head["segments"], counts)
            d.stop(signal.SIGKILL)
        run(replay(bs, limit=before))
        log(f"run 1: {used:.0f} seeds, {users:.0f} users loaded, with their segments and the "
            f"model's centroids (users per segment {counts.tolist()}); killed (kill -9) with no "
            f"offset committed")
        # 2 and 3: the seeds again; the rest streams in (from once run 2 is restored, at
        # a bounded rate); kill -9 once the committed offsets pass each point
        gen = None
        kills = []
        try:
            for point in (before + 2000, before + 6000):
                unseeded = sum(1 for o in committed(bs, PARTS).values() if o < 0)
                with Daemon(bs, *sets, conf=conf) as d:
                    wait_for("restored", lambda: restored(d), [d])
                    used, refused, users = seed_metrics(d)
                    assert (used, refused) == (unseeded, 0), \
                        f"{used} seeds used, {refused} refused; {unseeded} partitions without " \
                        f"a committed offset"
                    if gen is None:
                        gen = subprocess.Popen(replay(bs, skip=before, limit=REES_EVENTS - before,
                                                      rate=500))
                    wait_for(f"committed offsets past {point}",
                             lambda: sum(max(o, 0) for o in committed(bs, PARTS).values()) >=
                             point, [d], timeout=600)
                    d.stop(signal.SIGKILL)
                kills.append((unseeded, sum(max(o, 0) for o in committed(bs, PARTS).values())))
            assert gen.wait(timeout=600) == 0
        finally:
            if gen is not None and gen.poll() is None:
                gen.kill()
        log("runs 2-3: " + "; ".join(f"{u} partition(s) seeded again, killed (kill -9) at "
                                     f"{c} committed" for u, c in kills))
        # 4: catch up, stop
        with Daemon(bs, *sets, conf=conf) as d:
            ends = end_offsets(bs, PARTS)
            wait_for("everything committed", lambda: committed(bs, PARTS) == ends, [d],
                     timeout=600)
            lines = d.get("/segments/export", timeout=60)[2].splitlines()[1:]
            none = sum(1 for ln in lines if json.loads(ln)["segment"] is None)
            assert lines and none == 0, f"{none} of {len(lines)} users without a segment"
            assert d.stop() == 0
        return final_states(bs), n_seeded


def refused(conf, tmp):
    """A seed of another feature layout: refused, counted, logged; users start empty."""
    other = config("feature.n = count half_life=1h\n", tmp, "other.conf")
    state = os.path.join(tmp, "other-state")
    run([COHORTD, "featurize", "--config", other, *sum((["--set", s] for s in REES_MAP), []),
         "--state-out", state, "--partitions", str(PARTS), "--until", CUT, "--skip-bad",
         "--rejects", os.path.join(tmp, "rejects2.csv"), "-q", REES])
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        with Daemon(broker.bootstrap, *SETS, f"state.dir={state}", f"input.start_at={CUT}",
                    conf=conf) as d:
            wait_for("restored", lambda: restored(d), [d])
            used, n_refused, users = seed_metrics(d)
            text = d.log_text()
            assert d.stop() == 0
    assert (used, n_refused, users) == (0, PARTS, 0), (used, n_refused, users)
    assert "seed" in text and "refused" in text and "feature layout" in text, text[-3000:]
    log(f"a seed of another feature layout: {n_refused:.0f} of {PARTS} refused, counted and "
        f"logged; no user loaded")


def main():
    rows = list(rees46_rows(REES))
    assert len(rows) == REES_EVENTS
    assert all(a[0] <= b[0] for a, b in zip(rows, rows[1:])), "the sample is not in time order"
    before = sum(1 for r in rows if r[0] < CUT_MS)
    tmp = tempfile.mkdtemp(prefix="ch-bootstrap-")
    try:
        assert FEATURES != REES_FEATURES
        conf = config(FEATURES, tmp, "rees.conf")
        ref = reference(conf)
        got, n_seeded = bootstrapped(conf, tmp, before)
        worst = compare_states(ref, got, "bootstrap")
        log(f"bootstrap: all {len(ref)} users' final state equals a daemon fed everything "
            f"(worst relative difference {worst:.1e}); {before} of {REES_EVENTS} events through "
            f"featurize, the rest through the daemon, 3 kill -9s")
        refused(conf, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
