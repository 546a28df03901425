"""Scale-out: instances of one consumer group split the partitions; when one dies or one
joins, the partitions it loses or gains are restored from the changelog (and the
gaining instance's own snapshots) before they are processed.

An input of 24,000 events of 600 users streams at 800 events/s into 6 partitions.
Three instances (each with its own state.dir) share them; once each owns partitions
and has processed events, one is killed with kill -9 (the others take its partitions
after its session times out and restore them); later a fourth joins (cooperative
rebalance: partitions move to it after their owners flush and commit them). When the
input is done and committed, every event has its profile update and every user's
final state (its last changelog record, from whichever instance owned it last) equals
that of one uninterrupted instance over the same input (clocks exactly, state to 1e-9
relative).
"""
import shutil
import subprocess
import sys
import tempfile

from harness import (GEN, Broker, Daemon, avro_reader, committed_sum, compare_states, consume,
                     decode_confluent, final_states, log, metric, metric_sum, reference_states,
                     wait_for)

PARTS = 6
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
EVENTS = 24_000
USERS = 600
GEN_ARGS = ["--users", str(USERS), "--events", str(EVENTS), "--step-ms", "1000", "--seed", "31",
            "--anomalous", "0", "--quiet"]
SETS = ("state.changelog=changelog", "model.path=", "emit.policy=every", "segments.k=0",
        "state.snapshot_interval=2s")


def main():
    ref = reference_states(PARTS, TOPICS, GEN_ARGS, SETS, EVENTS)
    dirs = [tempfile.mkdtemp(prefix=f"cohortd-scale{i}-") for i in range(4)]
    ds = []
    try:
        with Broker(partitions=PARTS, topics=TOPICS) as broker:
            bs = broker.bootstrap
            gen = subprocess.Popen([GEN, "--brokers", bs, "--rate", "800", *GEN_ARGS])
            try:
                ds = [Daemon(bs, *SETS, f"state.dir={dirs[i]}") for i in range(3)]

                def assigned(d):
                    return metric(d.metrics(), "cohortd_assigned_partitions")

                def consumed(d):
                    return metric(d.metrics(), "cohortd_events_processed_total")

                wait_for("three instances sharing the partitions",
                     lambda: all(assigned(d) > 0 for d in ds) and
                     sum(assigned(d) for d in ds) == PARTS, ds)
                wait_for("every instance processing", lambda: all(consumed(d) > 0 for d in ds), ds)
                victim = ds[1]
                lost = assigned(victim)
                victim.proc.kill()
                victim.proc.wait()
                live = [ds[0], ds[2]]
                wait_for("the survivors owning every partition",
                     lambda: sum(assigned(d) for d in live) == PARTS, live)
                log(f"killed one of three instances (kill -9) owning {lost:.0f} partitions; "
                    f"the other two took them over at {committed_sum(bs, PARTS)} committed events")
                joiner = Daemon(bs, *SETS, f"state.dir={dirs[3]}")
                ds.append(joiner)
                live.append(joiner)
                wait_for("the fourth instance owning partitions",
                     lambda: assigned(joiner) > 0 and
                     sum(assigned(d) for d in live) == PARTS, live)
                log(f"a fourth joined and took {assigned(joiner):.0f} partitions at "
                    f"{committed_sum(bs, PARTS)} committed events")
                assert gen.wait(timeout=600) == 0, "cohort-gen failed"

                def caught_up():
                    ms = [d.metrics() for d in live]
                    return all(metric(m, "cohortd_restoring_partitions") == 0 and
                               metric_sum(m, "cohortd_consumer_lag") == 0 for m in ms) and \
                        committed_sum(bs, PARTS) >= EVENTS

                wait_for("the input processed and committed", caught_up, live)
                restored = sum(metric(d.metrics(), "cohortd_restored_partitions_total")
                               for d in live)
                for d in live:
                    rc = d.stop()
                    assert rc == 0, f"an instance exited {rc}:\n{d.log_text()[-3000:]}"
            finally:
                if gen.poll() is None:
                    gen.kill()
                for d in ds:
                    if d.proc.poll() is None:
                        d.proc.kill()
                        d.proc.wait()
            reader = avro_reader("profile_update.avsc")
            ids = set()
            for _, _, _, value, _ in consume(bs, "profiles", expect=EVENTS, timeout=300):
                ids.add(decode_confluent(reader, value)[1]["event_id"])
            assert len(ids) == EVENTS, f"{EVENTS - len(ids)} events without a profile update"
            worst = compare_states(ref, final_states(bs), "scale-out")
            log(f"{EVENTS} events, 3 instances, one killed, a fourth joined: every event has "
                f"its profile update, {restored:.0f} partition restores in the survivors, and "
                f"all {len(ref)} users' final state equals one uninterrupted instance's "
                f"(worst relative difference {worst:.1e})")
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
