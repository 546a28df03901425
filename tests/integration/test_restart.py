"""Stop cohortd mid-stream and restart it with the same consumer group: no event of
the input may be missing from the outputs. Duplicates are allowed (at-least-once,
until exactly-once exists) and are counted and reported.

Run 1: SIGTERM (graceful: flush, commit, exit 0).
Run 2: SIGKILL (crash: nothing flushed; offsets committed only for acknowledged
outputs, so the restart reprocesses the rest)."""
import signal
import subprocess
import sys
import time

from harness import (REPLAY, Broker, Daemon, avro_reader, consume, decode_confluent, log,
                     sparkov_events, DATA)


def one_run(sig, label):
    _, ids = sparkov_events()
    reader = avro_reader("profile_update.avsc")
    group = f"restart-{label}"
    with Broker(partitions=4) as broker:
        with Daemon(broker.bootstrap, group=group) as d1:
            d1.wait_assigned()
            replay = subprocess.Popen([REPLAY, "--brokers", broker.bootstrap, "--dataset",
                                       "sparkov", "--file",
                                       f"{DATA}/sparkov-transactions-sample.csv",
                                       "--rate", "2000", "--quiet"])
            time.sleep(2.5)  # the replay takes ~6.8 s: stop with about a third processed
            rc1 = d1.stop(sig)
            log1 = d1.log_text()
        expected_rc = 0 if sig == signal.SIGTERM else -signal.SIGKILL
        assert rc1 == expected_rc, f"first cohortd exited {rc1}, expected {expected_rc}:\n{log1[-3000:]}"
        first = consume(broker.bootstrap, "profiles", expect=1, idle=2.0)
        assert 0 < len(first) < len(ids), f"stop was not mid-stream ({len(first)} outputs)"
        with Daemon(broker.bootstrap, group=group) as d2:
            d2.wait_assigned()
            assert replay.wait(timeout=120) == 0
            msgs = consume(broker.bootstrap, "profiles", expect=len(ids))
            rc2 = d2.stop()
            assert rc2 == 0, f"second cohortd exited {rc2}"
        broker.stop()

    counts = {}
    for _, _, _, value, _ in msgs:
        eid = decode_confluent(reader, value)[1]["event_id"]
        counts[eid] = counts.get(eid, 0) + 1
    missing = [e for e, _ in ids if e not in counts]
    dups = sum(c - 1 for c in counts.values())
    assert not missing, f"{label}: {len(missing)} events have no output, e.g. {missing[:3]}"
    log(f"restart after {label}: {len(first)} outputs before the stop, {len(msgs)} in total for "
        f"{len(ids)} events: 0 missing, {dups} duplicates")
    return dups


def main():
    one_run(signal.SIGTERM, "SIGTERM")
    one_run(signal.SIGKILL, "SIGKILL")


if __name__ == "__main__":
    sys.exit(main())
