"""Malformed and invalid records interleaved with good events: every bad record lands
in the dead-letter topic, unchanged, with the right reason header; every good event
(including events written with a later writer schema) still yields a profile update;
the daemon keeps going and exits 0."""
import json
import math
import os
import struct
import sys
import time

from confluent_kafka import Producer

from harness import (REPLAY, SRC, Broker, Daemon, avro_reader, consume, decode_confluent,
                     encode_confluent, log, metric, metric_sum, run, DATA)

TEST_SCHEMAS = os.path.join(SRC, "tests", "data", "schemas")


def event(uid, eid, ts, **kw):
    rec = {"event_id": eid, "user_id": uid, "ts": ts, "type": "payment", "amount": 10.0,
           "item": None, "category": None, "attrs": {}}
    rec.update(kw)
    return rec


def main():
    with open(os.path.join(TEST_SCHEMAS, "user_event.avsc")) as f:
        v1 = f.read()
    with open(os.path.join(TEST_SCHEMAS, "user_event_v2.avsc")) as f:
        v2 = f.read()
    now = int(time.time() * 1000)
    good_v1 = encode_confluent(v1, 1, event("bad-test-user", "good-1", now - 1000))
    bad = []  # (value, expected reason)
    bad.append((b"\x00\x00\x00\x00\x01" + os.urandom(40), "decode_error"))
    bad.append((good_v1[:-3], "decode_error"))                       # truncated
    bad.append((good_v1 + b"\x00", "decode_error"))                  # trailing byte
    bad.append((b"plain text, not avro", "decode_error"))            # no framing
    bad.append((b"", "decode_error"))                                # empty value
    bad.append((b"\x00\x00\x00\x30\x39" + good_v1[5:], "schema_error"))   # unknown id 12345
    bad.append((b"\x00\x00\x00\x00\x09" + good_v1[5:], "schema_error"))   # id 9 lacks user_id
    bad.append((encode_confluent(v1, 1, event("u-nan", "bad-nan", now, amount=math.nan)),
                "non_finite"))
    bad.append((encode_confluent(v1, 1, event("u-inf", "bad-inf", now, attrs={"x": math.inf})),
                "non_finite"))
    bad.append((encode_confluent(v1, 1, event("", "bad-empty", now)), "empty_user_id"))
    bad.append((encode_confluent(v1, 1, event("x" * 65, "bad-long", now)), "user_id_too_long"))
    bad.append((encode_confluent(v1, 1, event("u-future", "bad-future", now + 3 * 86400000)),
                "ts_in_future"))
    bad.append((encode_confluent(v1, 1, event("u-neg", "bad-neg", -5)), "ts_negative"))
    bad.append((encode_confluent(v1, 1, event("u-1970", "bad-1970", 0)), "ts_too_old"))
    # finite doubles beyond what float32 vectors hold: 1e39 once made every centroid NaN
    for i, v in enumerate((1e39, 1e200, 1.7e308, -1e39)):
        bad.append((encode_confluent(v1, 1, event(f"u-huge-{i}", f"bad-huge-{i}", now,
                                                  amount=v)), "out_of_range"))

    # good events in a later writer schema (id 7): extra fields, float amount, int attrs
    good_v2 = []
    for i in range(50):
        rec = {"user_id": f"v2-user-{i % 5}", "event_id": f"v2-{i}", "channel": "web",
               "ts": now - 60000 + i, "type": "payment", "amount": float(i),
               "device": {"os": "IOS", "tags": ["a"], "fp": b"abcd"},
               "item": None, "category": "books", "attrs": {"tries": i}}
        good_v2.append(encode_confluent(v2, 7, rec))

    reader = avro_reader("profile_update.avsc")
    with Broker(partitions=4) as broker, Daemon(broker.bootstrap, f"schema.dir={TEST_SCHEMAS}",
                                                "log.bad_input_per_min=5",
                                                "input.max_age=20000d", "segments.warmup=500") as d:
        d.wait_assigned()
        p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
        for i, (value, _) in enumerate(bad):
            p.produce("events", key=f"bad-{i}".encode(), value=value if value else None)
        for i, value in enumerate(good_v2):
            p.produce("events", key=f"v2-user-{i % 5}".encode(), value=value)
        assert p.flush(30) == 0
        run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet",
             "--file", f"{DATA}/sparkov-transactions-sample.csv", "--limit", "3000"])
        n_good = 3000 + len(good_v2)
        dlq = consume(broker.bootstrap, "cohortd-dlq", expect=len(bad))
        profiles = consume(broker.bootstrap, "profiles", expect=n_good)
        assert d.proc.poll() is None, "cohortd died on bad input"
        refused = metric(d.metrics(), "cohortd_segment_vectors_refused_total")
        rc = d.stop()
        text = d.log_text()
        broker.stop()
    assert rc == 0, f"cohortd exited {rc}"

    assert len(dlq) == len(bad), f"{len(dlq)} dead letters for {len(bad)} bad records"
    by_value = {}
    for _, _, key, value, headers in dlq:
        h = {k: v.decode() for k, v in headers}
        by_value[value or b""] = (key, h)
    for i, (value, reason) in enumerate(bad):
        assert value in by_value, f"bad record {i} ({reason}) missing from the DLQ or altered"
        key, h = by_value[value]
        assert key == f"bad-{i}".encode(), f"bad record {i}: key not preserved"
        assert h["cohortd.error.reason"] == reason, f"record {i}: {h} (expected {reason})"
        assert h["cohortd.source.topic"] == "events" and h["cohortd.error.detail"]
        assert int(h["cohortd.source.offset"]) >= 0
    assert len(profiles) == n_good, f"{len(profiles)} profiles for {n_good} good events"
    v2_profiles = [decode_confluent(reader, v)[1] for _, _, _, v, _ in profiles
                   if decode_confluent(reader, v)[1]["event_id"].startswith("v2-")]
    assert len(v2_profiles) == 50, f"{len(v2_profiles)} profiles for 50 v2 events"
    # the segments stayed healthy: the last sparkov events spread over several segments
    # (with a non-finite centroid every user fell into segment 0)
    segs = [decode_confluent(reader, v)[1]["segment"] for _, _, _, v, _ in profiles[-1000:]]
    assert len({s for s in segs if s is not None}) > 1, f"segments of the last 1000: {set(segs)}"
    assert refused == 0, f"{refused} vectors refused by the segments"
    assert "bad input" in text, "bad input was not logged"
    assert text.count("bad input") <= 6, "bad-input logging is not rate-limited"
    log(f"bad input: {len(bad)} malformed/invalid records -> {len(dlq)} dead letters with "
        f"correct reasons; {n_good} good events (50 in writer schema v2) -> {len(profiles)} "
        f"profiles; {text.count('bad input')} bad-input log lines (limit 5/min)")


def max_future_off():
    """input.max_future = 0 is no limit (it once rejected every event stamped after the
    current time): an event three days ahead is processed, nothing is dead-lettered."""
    with open(os.path.join(TEST_SCHEMAS, "user_event.avsc")) as f:
        v1 = f.read()
    later = int(time.time() * 1000) + 3 * 86400000
    with Broker(partitions=4) as broker, Daemon(broker.bootstrap, f"schema.dir={TEST_SCHEMAS}",
                                                "input.max_future=0") as d:
        d.wait_assigned()
        d.wait_http()
        p = Producer({"bootstrap.servers": broker.bootstrap})
        p.produce("events", key=b"u-later",
                  value=encode_confluent(v1, 1, event("u-later", "later-1", later)))
        assert p.flush(30) == 0
        deadline = time.time() + 60
        while metric(d.metrics(), "cohortd_events_consumed_total") < 1:
            assert time.time() < deadline, "the event was not consumed within 60 s"
            time.sleep(0.1)
        m = d.metrics()
        processed = metric(m, "cohortd_events_processed_total")
        bad = metric_sum(m, "cohortd_events_bad_total")
        assert (processed, bad) == (1, 0), f"processed {processed}, bad input {bad}"
        profiles = consume(broker.bootstrap, "profiles", expect=1)
        assert d.stop() == 0
    assert len(profiles) == 1, f"{len(profiles)} profiles"
    log("input.max_future = 0: an event 3 days ahead is processed (no limit)")


if __name__ == "__main__":
    main()
    max_future_off()
