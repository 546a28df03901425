"""processing.guarantee = exactly_once on the embedded broker.

What the embedded broker can show (tools/probe_mock_txn.py: it drops transactional
offset commits and does not fence, and it shows aborted and open transactions' records
to read_committed readers, which a production broker hides):
  1. An uninterrupted run: every event has exactly one profile and one risk update.
  2. The same input streaming while cohortd is killed with kill -9 eight times at
     random moments (by committed events) and restarted: every event has its outputs;
     outputs that appear more than once for one event (those of transactions that never
     committed, visible only here) have identical features and scores within 1e-6; they
     are counted and reported. Every user's final state equals the uninterrupted run's
     (1e-9 relative).
  3. A second instance started with the same transactional.id while the first runs
     would fence the first on Kafka; the embedded broker does not fence, so that is not
     tested here (the probe says so, and fails once a broker does).
"""
import random
import subprocess
import sys
from collections import defaultdict

from harness import (GEN, Broker, Daemon, avro_reader, caught_up, committed_sum, compare_states,
                     consume, decode_confluent, final_states, log, metric, run, wait_for)

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
EVENTS = 12_000
USERS = 300
GEN_ARGS = ["--users", str(USERS), "--events", str(EVENTS), "--step-ms", "1000", "--seed", "17",
            "--quiet"]
SETS = ("state.changelog=changelog", "processing.guarantee=exactly_once", "segments.k=0",
        "emit.policy=every", "risk.emit=every", "kafka.producer.transactional.id=cohortd-eos-it")
KILLS = 8


def outputs(bs):
    """event_id -> [features], event_id -> [score] over every copy on the topics."""
    prof, risk = defaultdict(list), defaultdict(list)
    pr, rr = avro_reader("profile_update.avsc"), avro_reader("risk_update.avsc")
    for _, _, _, value, _ in consume(bs, "profiles", expect=EVENTS, timeout=300):
        r = decode_confluent(pr, value)[1]
        prof[r["event_id"]].append(r["features"])
    for _, _, _, value, _ in consume(bs, "risk", expect=EVENTS, timeout=300):
        r = decode_confluent(rr, value)[1]
        risk[r["event_id"]].append(r["score"])
    return prof, risk


def main():
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        run([GEN, "--brokers", bs, *GEN_ARGS])
        with Daemon(bs, *SETS) as d:
            wait_for("the input committed", lambda: committed_sum(bs, PARTS) >= EVENTS, [d])
            m = d.metrics()
            assert d.stop() == 0
        commits = metric(m, "cohortd_transactions_total", result="committed")
        prof, risk = outputs(bs)
        assert len(prof) == EVENTS and len(risk) == EVENTS, (len(prof), len(risk))
        twice = [e for e in prof if len(prof[e]) > 1] + [e for e in risk if len(risk[e]) > 1]
        assert not twice, f"{len(twice)} events with outputs twice in an uninterrupted run"
        ref = final_states(bs)
    log(f"1. uninterrupted: {EVENTS} events, one profile and one risk update each, "
        f"{commits:.0f} transactions")

    rng = random.Random(5)
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        gen = subprocess.Popen([GEN, "--brokers", bs, "--rate", "1000", *GEN_ARGS])
        try:
            for i in range(KILLS):
                d = Daemon(bs, *SETS)
                try:
                    d.wait_http()
                    start = committed_sum(bs, PARTS)
                    k = rng.randint(1, 2000)
                    wait_for(f"kill {i}: {k} more events committed",
                             lambda: committed_sum(bs, PARTS) - start >= k or
                             caught_up(d, bs, PARTS, EVENTS, gen), [d], step=0.05)
                    d.proc.kill()
                    d.proc.wait()
                finally:
                    if d.proc.poll() is None:
                        d.proc.kill()
                        d.proc.wait()
            assert gen.wait(timeout=600) == 0, "cohort-gen failed"
        finally:
            if gen.poll() is None:
                gen.kill()
        with Daemon(bs, *SETS) as d:
            wait_for("the last run catching up", lambda: caught_up(d, bs, PARTS, EVENTS), [d])
            assert d.stop() == 0
        prof, risk = outputs(bs)
        missing = EVENTS - len(prof), EVENTS - len(risk)
        assert missing == (0, 0), f"events without profile/risk updates: {missing}"
        dup_p = dup_r = 0
        worst = 0.0
        for e, copies in prof.items():
            if len(copies) > 1:
                dup_p += 1
                assert all(c == copies[0] for c in copies), f"{e}: features differ: {copies}"
        for e, scores in risk.items():
            if len(scores) > 1:
                dup_r += 1
                spread = max(scores) - min(scores)
                worst = max(worst, spread)
                assert spread <= 1e-6, f"{e}: scores {scores}"
        diff = compare_states(ref, final_states(bs), "after kill -9")
    log(f"2. kill -9 x {KILLS} while streaming: every event has its outputs; {dup_p} events "
        f"with their profile update more than once and {dup_r} with their risk update more "
        f"than once (transactions that never committed, shown by the embedded broker), all "
        f"copies identical (scores within {worst:.1e}); final state equals the uninterrupted "
        f"run (worst relative difference {diff:.1e})")


if __name__ == "__main__":
    sys.exit(main())
