"""Input the broker deletes before cohortd consumes it is never skipped silently (issue:
state that can never come back wrong, "Also").

cohortd processes and commits 1,000 events of one partition and stops. While it is down
more events arrive until the embedded broker, which keeps the last 5 MiB of a partition,
has deleted the first records after the committed offset (a real broker's retention does
the same). The restart resumes past them: cohortd_input_offset_jumps_total is 1,
cohortd_input_skipped_total is exactly the number of records between the committed
offset and the new log start, and the log has an error naming those offsets. (Before,
only librdkafka's warning said so.)
"""
import sys

from confluent_kafka import Consumer, TopicPartition

from harness import GEN, Broker, Daemon, caught_up, committed, log, metric, run, wait_for

TOPICS = "events,profiles,risk,cohortd-dlq"


def log_start(bs):
    c = Consumer({"bootstrap.servers": bs, "group.id": "watermarks"})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition("events", 0), timeout=10)
    finally:
        c.close()
    return lo, hi


def main():
    with Broker(partitions=1, topics=TOPICS) as broker:
        bs = broker.bootstrap
        gen = [GEN, "--brokers", bs, "--users", "500", "--step-ms", "1000", "--anomalous", "0",
               "--quiet"]
        run(gen + ["--events", "1000", "--seed", "71"])
        sets = ("model.path=", "segments.k=0")
        with Daemon(bs, *sets) as d:
            wait_for("1,000 committed", lambda: caught_up(d, bs, 1, 1000), [d])
            assert d.stop() == 0
        done = committed(bs, 1)[0]
        assert done == 1000, done
        for seed in range(72, 92):  # until the broker has deleted past the committed offset
            run(gen + ["--events", "30000", "--seed", str(seed)])
            lo, hi = log_start(bs)
            if lo > done:
                break
        assert lo > done, f"the log still starts at {lo}"
        with Daemon(bs, *sets) as d:
            wait_for("caught up", lambda: caught_up(d, bs, 1, hi), [d], timeout=600)
            m = d.metrics()
            jumps = metric(m, "cohortd_input_offset_jumps_total")
            skipped = metric(m, "cohortd_input_skipped_total")
            text = d.log_text()
            assert d.stop() == 0
    assert (jumps, skipped) == (1, lo - done), (jumps, skipped, lo, done)
    line = f"{lo - done} record(s), offsets {done} to {lo - 1}, were deleted by the broker"
    assert line in text, f"no '{line}' in the log:\n{text[-3000:]}"
    log(f"dropped records: the log start moved to {lo} past the committed {done}; "
        f"{skipped:.0f} records counted skipped in one jump, and logged as an error")


if __name__ == "__main__":
    main()
    sys.exit(0)
