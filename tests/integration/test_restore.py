"""Restore from the state changelog: state survives kill -9 and SIGTERM restarts exactly.

A reference run processes the whole input once, uninterrupted. Then the same input
streams (cohort-gen at a fixed rate, so the kills land mid-stream) through cohortd
while it is stopped and restarted 20 times at random moments: kill -9 in one run,
SIGTERM in another. A moment is chosen by events, not time: right after the start
(one restart in five: before or during the restore; for SIGTERM, once /healthz
answers), else once a random number
(1-3,000) of further input events is committed, or once the generator is done and
cohortd has processed and committed all of it. (Killing on output counts instead
had most runs die before their first commit, every run reprocessed the input from
the same old commit, and the embedded broker, which keeps the last 5 MiB of a
partition, dropped the first runs' profile updates.) Each restart restores the
partitions' users from their local snapshots (state.dir, published every second once
their input is committed, and at shutdown) and the changelog after them, or from the
whole changelog where there is no snapshot yet, up to the committed input offset, and
reprocesses the rest. At the end, each user's final
changelog record (its whole state: decayed sums and clock) equals the reference run's
to 1e-9 relative, and no event of the input lacks its profile update.
"""
import random
import shutil
import signal
import subprocess
import sys
import tempfile

from harness import (GEN, Broker, Daemon, avro_reader, caught_up, committed_sum, compare_states,
                     consume, decode_confluent, final_states, log, metric, reference_states,
                     wait_for)

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
EVENTS = 30_000
USERS = 500
GEN_ARGS = ["--users", str(USERS), "--events", str(EVENTS), "--step-ms", "1000", "--seed", "8",
            "--anomalous", "0", "--quiet"]
SETS = ("state.changelog=changelog", "model.path=", "emit.policy=every", "segments.k=0")
RESTARTS = 20


def reference():
    return reference_states(PARTS, TOPICS, GEN_ARGS, SETS, EVENTS)


def interrupted(sig, rng, sdir):
    sets = SETS + (f"state.dir={sdir}", "state.snapshot_interval=1s")
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        gen = subprocess.Popen([GEN, "--brokers", bs, "--rate", "600", *GEN_ARGS])
        skipped, restored, snaps = 0, 0, 0
        try:
            for i in range(RESTARTS):
                d = Daemon(bs, *sets)
                try:
                    if sig == signal.SIGTERM:  # a TERM before main() runs kills any program
                        d.wait_http(timeout=60)
                    start = committed_sum(bs, PARTS)
                    k = 0 if rng.random() < 0.2 else rng.randint(1, 3000)
                    wait_for(f"restart {i}: {k} more events committed",
                             lambda: committed_sum(bs, PARTS) - start >= k or
                             caught_up(d, bs, PARTS, EVENTS, gen), [d], step=0.1)
                    try:
                        m = d.metrics()
                        skipped += metric(m, "cohortd_restore_skipped_total", reason="uncommitted")
                        restored += metric(m, "cohortd_restore_applied_total")
                        snaps += metric(m, "cohortd_restore_snapshots_total", result="used")
                    except OSError:
                        pass
                    d.proc.send_signal(sig)
                    rc = d.proc.wait(timeout=120)
                    assert sig == signal.SIGKILL or rc == 0, f"cohortd exited {rc} on SIGTERM"
                finally:
                    if d.proc.poll() is None:
                        d.proc.kill()
                        d.proc.wait()
            assert gen.wait(timeout=600) == 0, "cohort-gen failed"
        finally:
            if gen.poll() is None:
                gen.kill()
        # the last run: restore, process the rest, stop cleanly
        with Daemon(bs, *sets) as d:
            wait_for("the last run catching up", lambda: caught_up(d, bs, PARTS, EVENTS), [d])
            assert d.stop() == 0
        reader = avro_reader("profile_update.avsc")
        ids = set()
        for _, _, _, value, _ in consume(bs, "profiles", expect=EVENTS, timeout=300):
            ids.add(decode_confluent(reader, value)[1]["event_id"])
        assert len(ids) == EVENTS, f"{EVENTS - len(ids)} events without a profile update"
        return final_states(bs), skipped, restored, snaps


def main():
    ref = reference()
    rng = random.Random(12)
    for sig, name in ((signal.SIGKILL, "kill -9"), (signal.SIGTERM, "SIGTERM")):
        sdir = tempfile.mkdtemp(prefix="cohortd-restore-")
        try:
            got, skipped, restored, snaps = interrupted(sig, rng, sdir)
        finally:
            shutil.rmtree(sdir, ignore_errors=True)
        worst = compare_states(ref, got, name)
        assert sig != signal.SIGTERM or snaps > 0, "no restore started from a snapshot"
        log(f"{name} x {RESTARTS} while {EVENTS} events streamed: all {len(ref)} users' final "
            f"state equals the uninterrupted run (worst relative difference {worst:.1e}); "
            f"{snaps:.0f} partition restores started from a snapshot; restores applied "
            f"{restored:.0f} changelog records and skipped {skipped:.0f} that reflected "
            f"uncommitted input; every event has its profile update")


if __name__ == "__main__":
    sys.exit(main())
