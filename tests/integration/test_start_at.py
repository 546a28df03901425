"""input.start_at: a group without committed offsets begins at a point in time.

- 3,000 events of 60 users, one a second of event time (record timestamps = event
  times), on 3 partitions. cohortd starts with input.start_at at the 1,800th second
  (ISO-8601) and no committed offsets. The embedded broker answers offsetsForTimes with
  -1, so every partition starts at its beginning and skips records stamped earlier,
  until the first that is not: the profile updates are exactly the events stamped at
  or after it (by event id), cohortd_input_before_start_total is exactly the number
  stamped before, and the committed offsets reach the ends of the input (a skipped
  record is consumed, not lost to a later restart).
- After a SIGTERM restart (offsets committed now), 200 late events stamped before
  input.start_at are all processed: start_at only places partitions that have no
  committed offset, and nothing is skipped (the counter stays 0).
- A value that is neither ISO-8601 nor milliseconds stops cohortd at start (exit 2),
  naming the key.
"""
import subprocess
import sys
from datetime import datetime, timezone

from harness import (GEN, Broker, Daemon, avro_reader, committed, consume, decode_confluent,
                     end_offsets, log, metric, run, wait_for)

PARTS = 3
START = 1767225600000  # 2026-01-01T00:00:00Z
EVENTS = 3000
CUT = START + 1800 * 1000
SETS = ("model.path=", "emit.policy=every", "segments.k=0")


def profile_ids(bs, expect):
    reader = avro_reader("profile_update.avsc")
    return [decode_confluent(reader, v)[1]["event_id"]
            for _, _, _, v, _ in consume(bs, "profiles", expect=expect, timeout=300)]


def main():
    iso = datetime.fromtimestamp(CUT / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with Broker(partitions=PARTS) as broker:
        bs = broker.bootstrap
        d = Daemon(bs, *SETS, "input.start_at=yesterday")
        rc = d.proc.wait(timeout=60)
        assert rc == 2 and "input.start_at" in d.log_text(), f"exit {rc}:\n{d.log_text()}"

        run([GEN, "--brokers", bs, "--users", "60", "--events", str(EVENTS), "--step-ms",
             "1000", "--start-ts", str(START), "--seed", "21", "--anomalous", "0", "--quiet"])
        reader = avro_reader("user_event.avsc")
        before, after = set(), set()
        for _, _, _, value, _, ts in consume(bs, "events", expect=EVENTS, timestamps=True):
            (after if ts >= CUT else before).add(decode_confluent(reader, value)[1]["event_id"])
        assert len(before) + len(after) == EVENTS and before and after, \
            f"{len(before)} before, {len(after)} after"

        with Daemon(bs, *SETS, f"input.start_at={iso}") as d:
            d.wait_assigned()
            ends = end_offsets(bs, PARTS)
            wait_for("every input offset committed",
                     lambda: committed(bs, PARTS) == ends, [d])
            m = d.metrics()
            skipped = metric(m, "cohortd_input_before_start_total")
            assert d.stop() == 0
        ids = profile_ids(bs, len(after))
        assert len(ids) == len(set(ids)) == len(after), \
            f"{len(ids)} profile updates ({len(set(ids))} events), {len(after)} stamped after"
        assert set(ids) == after, \
            f"{len(set(ids) - after)} updates of events stamped before {iso}, " \
            f"{len(after - set(ids))} events after it without one"
        assert skipped == len(before), f"{skipped} counted skipped, {len(before)} stamped before"
        log(f"input.start_at={iso}: {len(after)} of {EVENTS} events processed (exactly those "
            f"stamped at or after it), {skipped:.0f} skipped and counted; offsets committed to "
            f"the ends")

        late = 200
        run([GEN, "--brokers", bs, "--users", "20", "--events", str(late), "--step-ms", "1000",
             "--start-ts", str(START), "--seed", "22", "--user-base", "1000", "--anomalous",
             "0", "--quiet"])
        with Daemon(bs, *SETS, f"input.start_at={iso}") as d:
            d.wait_assigned()
            ends = end_offsets(bs, PARTS)
            wait_for("the late events committed", lambda: committed(bs, PARTS) == ends, [d])
            m = d.metrics()
            skipped = metric(m, "cohortd_input_before_start_total")
            assert d.stop() == 0
        ids = profile_ids(bs, len(after) + late)
        assert len(ids) == len(after) + late, \
            f"{len(ids) - len(after)} profile updates for {late} late events"
        assert skipped == 0, f"{skipped} skipped after a restart with committed offsets"
        log(f"restart with committed offsets: all {late} late events stamped before "
            f"input.start_at processed, none skipped")


if __name__ == "__main__":
    sys.exit(main())
