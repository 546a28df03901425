"""Bounded, truthful shutdown (issue 13, item 2).

1. With the broker down (cohort-broker's `down all`), SIGTERM with shutdown.timeout = 0, 2s
   and 5s: cohortd exits within the timeout plus a generous allowance for its non-blocking
   work (before the fix: 14 s at 2s, 15 s at 5s, and never at 0), exit 0 and "offsets
   committed" because every event was committed before the broker went away.
2. Offsets the broker refuses to commit (every OffsetCommit answered with an error) while
   outputs are acknowledged: the final line says how many partitions and events are NOT
   committed and cohortd exits 1 (before the fix: "offsets committed", exit 0).
"""
import re
import sys
import time

from harness import (GEN, Broker, Daemon, caught_up, committed, consume, log, run, wait_for)

PARTITIONS = 4
EVENTS = 2000
ALLOWANCE_S = 5.0  # non-blocking work after the budget (ASan on a shared machine)


def broker_down(timeout):
    with Broker(partitions=PARTITIONS) as broker:
        total = 0
        walls = {}
        for t in timeout:
            run([GEN, "--brokers", broker.bootstrap, "--events", str(EVENTS), "--users", "500",
                 "--seed", str(len(walls) + 1)])
            total += EVENTS
            with Daemon(broker.bootstrap, f"shutdown.timeout={t}", "model.path=",
                        "segments.k=0") as d:
                d.wait_assigned(timeout=60)
                wait_for("all events committed",
                         lambda: caught_up(d, broker.bootstrap, PARTITIONS, total), [d])
                broker.fault("down all")
                t0 = time.monotonic()
                d.proc.terminate()
                try:
                    rc = d.proc.wait(timeout=120)
                except Exception:
                    raise AssertionError(f"shutdown.timeout={t}: still running 120 s after "
                                         f"SIGTERM:\n{d.log_text()[-3000:]}")
                wall = time.monotonic() - t0
                text = d.log_text()
                broker.fault("up all")
            last = text.strip().splitlines()[-1]
            walls[t] = wall
            log(f"shutdown.timeout={t}: exit {rc} after {wall:.2f} s; last line: {last}")
            budget = float(t.rstrip("s") or 0)
            assert wall <= budget + ALLOWANCE_S, f"{t}: {wall:.2f} s"
            assert rc == 0, f"{t}: exit {rc}\n{text[-3000:]}"
            assert "offsets committed (exit 0)" in last, last
        broker.stop()
    return walls


def commits_refused():
    with Broker(partitions=PARTITIONS) as broker:
        with Daemon(broker.bootstrap, "shutdown.timeout=5s", "model.path=",
                    "segments.k=0") as d:
            d.wait_assigned(timeout=60)
            # every commit from now on is answered with an error the client does not retry
            broker.fault("errors OffsetCommit OFFSET_METADATA_TOO_LARGE*1000")
            run([GEN, "--brokers", broker.bootstrap, "--events", str(EVENTS), "--users", "500"])
            consume(broker.bootstrap, "profiles", expect=EVENTS)  # all acknowledged
            rc = d.stop(timeout=120)
            text = d.log_text()
        broker.fault("clear OffsetCommit")
        left = committed(broker.bootstrap, PARTITIONS)
        broker.stop()
    last = text.strip().splitlines()[-1]
    log(f"commits refused: exit {rc}; committed on the broker {left}; last line: {last}")
    assert rc == 1, f"exit {rc}:\n{text[-3000:]}"
    m = re.search(r"NOT committed: the offsets of (\d+) partition\(s\) \((\d+) event", last)
    assert m, last
    assert int(m.group(1)) == PARTITIONS, last
    assert int(m.group(2)) == EVENTS, last  # the group had no commit before: all of them
    assert all(o < 0 for o in left.values()), left


def main():
    walls = broker_down(["0", "2s", "5s"])
    commits_refused()
    log("PASS " + ", ".join(f"{t}: {w:.2f} s" for t, w in walls.items()))


if __name__ == "__main__":
    sys.exit(main())
