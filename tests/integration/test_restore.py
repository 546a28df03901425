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
partition, dropped the first runs' profile updates.) Each restart restores the partitions' users from the changelog up to
the committed input offset and reprocesses the rest. At the end, each user's final
changelog record (its whole state: decayed sums and clock) equals the reference run's
to 1e-9 relative, and no event of the input lacks its profile update.
"""
import random
import signal
import struct
import subprocess
import sys
import time

from confluent_kafka import Consumer, TopicPartition

from harness import (GEN, Broker, Daemon, consume, decode_confluent, avro_reader, log, metric,
                     metric_sum, run)

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
EVENTS = 30_000
USERS = 500
GEN_ARGS = ["--users", str(USERS), "--events", str(EVENTS), "--step-ms", "1000", "--seed", "8",
            "--anomalous", "0", "--quiet"]
SETS = ("state.changelog=changelog", "model.path=", "emit.policy=every", "segments.k=0")
RESTARTS = 20


def final_states(bootstrap):
    """user -> (offset reflected, t_ref, state doubles) of its last changelog record."""
    last = {}
    for part, off, key, value, _ in sorted(consume(bootstrap, "changelog", expect=1,
                                                   timeout=120), key=lambda m: (m[0], m[1])):
        n = struct.unpack_from("<H", value, 2)[0]
        offset, t_ref = struct.unpack_from("<qq", value, 16)
        last[key.decode()] = (offset, t_ref, struct.unpack_from(f"<{n}d", value, 64))
    return last


def committed_sum(bootstrap):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cohortd-it"})
    try:
        tps = c.committed([TopicPartition("events", p) for p in range(PARTS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        c.close()


def reference():
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        run([GEN, "--brokers", broker.bootstrap, *GEN_ARGS])
        with Daemon(broker.bootstrap, *SETS) as d:
            d.wait_assigned()
            consume(broker.bootstrap, "profiles", expect=EVENTS, timeout=300)
            assert d.stop() == 0
        return final_states(broker.bootstrap)


def wait_http(d):
    deadline = time.time() + 60
    while True:
        try:
            d.get("/healthz", timeout=2)
            return
        except OSError:
            assert d.proc.poll() is None, f"cohortd died:\n{d.log_text()}"
            assert time.time() < deadline, "cohortd did not serve /healthz within 60 s"
            time.sleep(0.05)


def caught_up(d, gen, bs):
    """The generator is done and cohortd has processed and committed all of it."""
    if gen.poll() is None:
        return False
    try:
        m = d.metrics()
    except OSError:
        return False
    return metric(m, "cohortd_restoring_partitions") == 0 and \
        metric_sum(m, "cohortd_consumer_lag") == 0 and metric(m, "cohortd_ready") == 1 and \
        committed_sum(bs) >= EVENTS


def interrupted(sig, rng):
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        gen = subprocess.Popen([GEN, "--brokers", bs, "--rate", "600", *GEN_ARGS])
        skipped, restored = 0, 0
        try:
            for i in range(RESTARTS):
                d = Daemon(bs, *SETS)
                try:
                    if sig == signal.SIGTERM:  # a TERM before main() runs kills any program
                        wait_http(d)
                    start = committed_sum(bs)
                    k = 0 if rng.random() < 0.2 else rng.randint(1, 3000)
                    deadline = time.time() + 300
                    while committed_sum(bs) - start < k and not caught_up(d, gen, bs):
                        assert d.proc.poll() is None, f"cohortd died:\n{d.log_text()}"
                        assert time.time() < deadline, f"restart {i}: no progress in 300 s"
                        time.sleep(0.1)
                    try:
                        m = d.metrics()
                        skipped += metric(m, "cohortd_restore_skipped_total", reason="uncommitted")
                        restored += metric(m, "cohortd_restore_applied_total")
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
        with Daemon(bs, *SETS) as d:
            deadline = time.time() + 300
            while not caught_up(d, gen, bs):
                assert d.proc.poll() is None, f"cohortd died:\n{d.log_text()}"
                assert time.time() < deadline, "the last run did not catch up in 300 s"
                time.sleep(0.2)
            assert d.stop() == 0
        reader = avro_reader("profile_update.avsc")
        ids = set()
        for _, _, _, value, _ in consume(bs, "profiles", expect=EVENTS, timeout=300):
            ids.add(decode_confluent(reader, value)[1]["event_id"])
        assert len(ids) == EVENTS, f"{EVENTS - len(ids)} events without a profile update"
        return final_states(bs), skipped, restored


def compare(ref, got, what):
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


def main():
    ref = reference()
    rng = random.Random(12)
    for sig, name in ((signal.SIGKILL, "kill -9"), (signal.SIGTERM, "SIGTERM")):
        got, skipped, restored = interrupted(sig, rng)
        worst = compare(ref, got, name)
        log(f"{name} x {RESTARTS} while {EVENTS} events streamed: all {len(ref)} users' final "
            f"state equals the uninterrupted run (worst relative difference {worst:.1e}); "
            f"restores applied {restored:.0f} records and skipped {skipped:.0f} that reflected "
            f"uncommitted input; every event has its profile update")


if __name__ == "__main__":
    sys.exit(main())
