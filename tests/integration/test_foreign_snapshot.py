"""A snapshot from another cluster is never loaded (issue: state that can never come back
wrong).

Cluster A (one embedded broker) processes 3,000 events of users u0..u99 with
state.dir = D and writes its snapshots at shutdown. Cluster B (another broker, the same
topic names, as after a rebuild) processes 6,000 events of users u50..u149 with the same
state.dir and is killed (-9) before it writes a snapshot of its own, its offsets
committed. The next start on B finds A's snapshots: each names A's cluster, so each is
ignored with that reason, and the whole changelog is read instead. B's users are then
exactly B's: u0..u49 (only on A) are unknown, and every user's state equals an
uninterrupted run over B's events. (Before, A's snapshot reflected input below B's
committed offsets and continued from a changelog offset B's changelog also held, so it
was applied: A-only users were served, and B's users mixed with A's state.)
"""
import json
import shutil
import sys
import tempfile

from harness import (GEN, Broker, Daemon, caught_up, compare_states, final_states, log,
                     metric, run, wait_for)

PARTS = 2
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
SETS = ("state.changelog=changelog", "model.path=", "segments.k=0", "emit.policy=every",
        "state.snapshot_interval=0")
GEN_A = ["--users", "100", "--events", "3000", "--step-ms", "1000", "--seed", "51",
         "--anomalous", "0", "--quiet"]
GEN_B = ["--users", "100", "--user-base", "50", "--events", "6000", "--step-ms", "1000",
         "--seed", "52", "--anomalous", "0", "--quiet"]


def main():
    sdir = tempfile.mkdtemp(prefix="ch-foreign-")
    try:
        with Broker(partitions=PARTS, topics=TOPICS) as b:  # the reference: B alone
            run([GEN, "--brokers", b.bootstrap, *GEN_B])
            with Daemon(b.bootstrap, *SETS) as d:
                wait_for("reference", lambda: caught_up(d, b.bootstrap, PARTS, 6000), [d])
                assert d.stop() == 0
            ref = final_states(b.bootstrap)
        with Broker(partitions=PARTS, topics=TOPICS) as a:
            run([GEN, "--brokers", a.bootstrap, *GEN_A])
            with Daemon(a.bootstrap, *SETS, f"state.dir={sdir}") as d:
                wait_for("cluster A", lambda: caught_up(d, a.bootstrap, PARTS, 3000), [d])
                assert d.stop() == 0
        with Broker(partitions=PARTS, topics=TOPICS) as b:
            bs = b.bootstrap
            run([GEN, "--brokers", bs, *GEN_B])
            with Daemon(bs, *SETS, f"state.dir={sdir}") as d:
                wait_for("cluster B", lambda: caught_up(d, bs, PARTS, 6000), [d])
                d.proc.kill()  # no snapshot of B's: A's stay in state.dir
                d.proc.wait()
            with Daemon(bs, *SETS, f"state.dir={sdir}") as d:
                wait_for("restarted on B", lambda: caught_up(d, bs, PARTS, 6000), [d])
                m = d.metrics()
                ignored = metric(m, "cohortd_restore_snapshots_total", result="ignored")
                used = metric(m, "cohortd_restore_snapshots_total", result="used")
                users = metric(m, "cohortd_users")
                text = d.log_text()
                status, _, body = d.get("/users/u0")
                served = [u for u in ("u0", "u10", "u49") if d.get(f"/users/{u}")[0] == 200]
                assert d.stop() == 0
            got = final_states(bs)
    finally:
        shutil.rmtree(sdir, ignore_errors=True)
    assert (ignored, used) == (PARTS, 0), f"snapshots ignored {ignored}, used {used}"
    assert "written for another cluster" in text, text[-3000:]
    assert not served, f"users that exist only on cluster A are served: {served}"
    assert users == len(ref), f"{users} users held, {len(ref)} on cluster B"
    worst = compare_states(ref, got, "after A's snapshots were offered")
    why = [ln for ln in text.splitlines() if "written for another cluster" in ln][0]
    log(f"foreign snapshot: both of A's snapshots ignored ('{why[why.index('ignored'):][:160]}"
        f"...'); {int(users)} users, none of A's only; states equal B alone (worst {worst:.1e})")


if __name__ == "__main__":
    main()
    sys.exit(0)
