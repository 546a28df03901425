"""Bootstrap: history up to a time through featurize, the rest through the daemon.

The REES46 sample (17,434 events, every feature kind but tags) is cut at CUT:
- Reference: one daemon consumes all of it from a 4-partition topic, with the state
  changelog; every user's final state record is kept.
- Bootstrap: `cohortd featurize --state-out DIR --partitions 4 --until CUT` folds the
  events stamped before CUT into seed files, one per input partition. A new broker gets
  the events before CUT first; a daemon with state.dir = DIR and input.start_at = CUT
  (no committed offsets) loads the seeds and skips those records. It is killed (kill -9)
  before it has committed anything, so the next start loads the seeds again; then the
  rest of the events stream in at a bounded rate while it is killed twice more once
  its committed offsets pass given points (partitions with a committed offset no longer
  load their seed). A last run catches up and stops.
- Every user's final state (clock and state doubles, from the changelog) equals the
  reference's; the worst relative difference is reported.
- A seed written for another feature layout is refused, counted and logged; the users
  start empty.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

from harness import (COHORTD, REPLAY, Broker, Daemon, committed, compare_states, end_offsets,
                     final_states, log, metric, metric_sum, rees46_rows, run, wait_for)
from test_featurize import REES, REES_EVENTS, REES_FEATURES, REES_MAP, config

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
CUT = "2019-10-01T02:30:00Z"
CUT_MS = int(datetime(2019, 10, 1, 2, 30, tzinfo=timezone.utc).timestamp() * 1000)
SETS = ("state.changelog=changelog", "commit.interval=1s", "emit.policy=every")
# The shipped REES46 features of test_featurize with smaller distinct sketches: the
# embedded broker keeps the last 5 MiB of a partition and never compacts, so a
# changelog's records must fit (a production changelog is compacted).
FEATURES = REES_FEATURES.replace("window=1h k=64", "window=1h k=16").replace("k=32", "k=8")


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
        with Daemon(bs, *SETS, conf=conf) as d:
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


def bootstrapped(conf, tmp, before):
    state = os.path.join(tmp, "state")
    r = subprocess.run([COHORTD, "featurize", "--config", conf, *sum((["--set", s] for s in
                                                                      REES_MAP), []),
                        "--state-out", state, "--partitions", str(PARTS), "--until", CUT,
                        "--skip-bad", "--rejects", os.path.join(tmp, "rejects.csv"), REES],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert f"{REES_EVENTS - before} event(s) stamped at or after {CUT} left out" in err, err
    assert sorted(os.listdir(state)) == [f"events-{i}.seed" for i in range(PARTS)], \
        os.listdir(state)
    n_seeded = int(err.split("seeds: ")[1].split(" ")[0])
    log(f"featurize --state-out: {before} events before {CUT} folded, {n_seeded} users in "
        f"{PARTS} seed files")
    sets = SETS + (f"state.dir={state}", f"input.start_at={CUT}")
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        run(replay(bs, limit=before))
        # 1: seeds loaded, the records before CUT skipped, nothing committed: kill -9
        with Daemon(bs, *sets, conf=conf) as d:
            wait_for("the seeds loaded", lambda: restored(d) and seed_metrics(d)[0] == PARTS,
                     [d])
            used, refused, users = seed_metrics(d)
            assert (refused, users) == (0, n_seeded), (refused, users, n_seeded)
            assert all(o < 0 for o in committed(bs, PARTS).values()), committed(bs, PARTS)
            d.stop(signal.SIGKILL)
        log(f"run 1: {used:.0f} seeds, {users:.0f} users loaded; killed (kill -9) with no "
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
