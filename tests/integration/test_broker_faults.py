"""Broker faults while events stream (issue 13, item 5), injected with cohort-broker's
fault commands on a cluster of 3 brokers:

1. every broker down for 10 s mid-stream;
2. produce requests failing with NOT_ENOUGH_REPLICAS and REQUEST_TIMED_OUT;
3. the group coordinator moved to another broker while offsets are being committed;
4. partition leaders moved (input and outputs) mid-stream.

One cohortd runs through all four. In each, cohort-gen streams events at a fixed rate,
the fault is injected once cohortd has committed part of them (an observed event, not a
delay), and the test then waits for cohortd to have processed and committed everything
the input topic holds, by itself, within RECOVERY_S of the fault's end (the bound this
test states). The generator is a client of the same faulty cluster, so the truth is the
topic, not what it meant to write (a produce error once cost it an event). At the end
every event in the topic has its profile update (duplicates allowed: at-least-once),
nothing failed delivery, cohortd never stopped and it exits 0.
"""
import subprocess
import sys
import time

from harness import (GEN, Broker, Daemon, avro_reader, caught_up, committed_sum, consume,
                     decode_confluent, end_offsets, log, metric, wait_for)

PARTITIONS = 4
EVENTS = 4000
RATE = 1000
RECOVERY_S = 180




def phase(broker, d, seed, total_before, name, inject, heal=None):
    """Stream EVENTS more events, inject the fault once some of them are committed,
    heal it (if heal), and wait for cohortd to catch up with what the input topic holds
    (the generator is a client of the same faulty cluster: a produce error can cost it
    an event, which is then not cohortd's to process). Returns seconds to recover."""
    gen = subprocess.Popen([GEN, "--brokers", broker.bootstrap, "--events", str(EVENTS),
                            "--rate", str(RATE), "--users", "1000", "--seed", str(seed)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(f"{name}: part of the events committed",
             lambda: committed_sum(broker.bootstrap, PARTITIONS) >= total_before + EVENTS // 4,
             [d], step=0.05)
    inject()
    if heal:
        heal()
    t0 = time.monotonic()
    _, gen_err = gen.communicate(timeout=RECOVERY_S)
    total = sum(end_offsets(broker.bootstrap, PARTITIONS).values())
    if gen.returncode != 0 or total != total_before + EVENTS:
        log(f"{name}: the generator wrote {total - total_before} of {EVENTS} events (exit "
            f"{gen.returncode}): {gen_err.strip()[-300:]}")
    wait_for(f"{name}: recovered", lambda: caught_up(d, broker.bootstrap, PARTITIONS, total),
             [d], timeout=RECOVERY_S)
    took = time.monotonic() - t0
    log(f"{name}: all {total} events in the topic processed and committed {took:.1f} s after "
        f"the fault ended (bound {RECOVERY_S} s)")
    return total, took


def main():
    reader = avro_reader("profile_update.avsc")
    took = {}
    with Broker(partitions=PARTITIONS, brokers=3) as broker:
        with Daemon(broker.bootstrap, "model.path=") as d:
            d.wait_assigned(timeout=60)
            total = 0

            def down():
                broker.fault("down all")
                time.sleep(10)  # the fault's length, not a wait for an outcome

            total, took["broker down 10 s"] = phase(
                broker, d, 1, total, "broker down 10 s", down, lambda: broker.fault("up all"))
            total, took["produce errors"] = phase(
                broker, d, 2, total, "produce errors",
                lambda: broker.fault("errors Produce NOT_ENOUGH_REPLICAS*4 "
                                     "REQUEST_TIMED_OUT*4 NOT_ENOUGH_REPLICAS*4"))

            def move_coordinator():
                for b in (2, 3, 1):
                    broker.fault(f"coordinator group cohortd-it {b}")
                    base = committed_sum(broker.bootstrap, PARTITIONS)
                    wait_for("a commit after the coordinator moved",
                             lambda: committed_sum(broker.bootstrap, PARTITIONS) > base, [d],
                             timeout=RECOVERY_S, step=0.05)

            total, took["coordinator moves"] = phase(broker, d, 3, total, "coordinator moves",
                                                     move_coordinator)

            def move_leaders():
                for p in range(PARTITIONS):
                    broker.fault(f"leader events {p} {2 + p % 2}")
                    broker.fault(f"leader profiles {p} {3 - p % 2}")
                    broker.fault(f"leader cohortd-dlq {p} 2")

            total, took["leader changes"] = phase(broker, d, 4, total, "leader changes",
                                                  move_leaders)
            m = d.metrics()
            failures = metric(m, "cohortd_delivery_failures_total")
            profiles = consume(broker.bootstrap, "profiles", expect=total)
            events = avro_reader("user_event.avsc")
            written = [decode_confluent(events, row[3])[1]["event_id"]
                       for row in consume(broker.bootstrap, "events", expect=total)]
            assert len(written) == total, (len(written), total)
            assert d.proc.poll() is None, "cohortd stopped"
            rc = d.stop()
        broker.stop()
    counts = {}
    for row in profiles:
        eid = decode_confluent(reader, row[3])[1]["event_id"]
        counts[eid] = counts.get(eid, 0) + 1
    expected = set(written)
    missing = expected - set(counts)
    dups = sum(c - 1 for c in counts.values())
    log(f"broker faults: {len(expected)} events, {len(profiles)} profile updates, "
        f"{len(missing)} missing, {dups} duplicates, {failures:.0f} delivery failures; "
        + ", ".join(f"{k}: recovered in {v:.1f} s" for k, v in took.items()))
    assert not missing, f"events without their profile: {sorted(missing)[:5]}"
    assert failures == 0, failures
    assert rc == 0, rc
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
