"""No record can stall a partition (issue 13, item 1).

1. Oversize input: a 999,900-byte record (the issue's reproduction: Confluent header then
   0xff bytes) and an event whose event_id is 1 MiB. Before the fix, the dead letter
   (original bytes plus headers) exceeded the producer's message.max.bytes and cohortd
   exited 1 on every restart. Now each lands as a dead letter cut to fit, whose headers
   give the original size, its SHA-256 and the source; a 129-byte event_id is
   event_id_too_long (whole); the events around them are processed and the partition's
   committed offset reaches its end (lag 0).
2. Records the broker refuses: the embedded broker answers cohortd's first produce
   request with MSG_SIZE_TOO_LARGE. Those outputs are
   replaced by reduced dead letters naming the refused topic; every event still has its
   profile or its reduced dead letter; offsets reach the end; cohortd keeps running.
"""
import hashlib
import sys
import time

from confluent_kafka import Producer

from harness import (Broker, Daemon, avro_reader, committed, consume, decode_confluent,
                     encode_confluent, end_offsets, log, metric, wait_for, SCHEMAS)

N_GOOD = 200
N_REFUSED = 5000


def event(uid, eid, ts):
    return {"event_id": eid, "user_id": uid, "ts": ts, "type": "payment", "amount": 10.0,
            "item": None, "category": None, "attrs": {}}


def produce_event(producer, schema, uid, eid, ts):
    producer.produce("events", key=uid.encode(), value=encode_confluent(schema, 1, event(uid, eid, ts)))


def headers(row):
    return {k: (v.decode() if k != "cohortd.error.detail" else v.decode(errors="replace"))
            for k, v in row[4]}




def oversize():
    with open(f"{SCHEMAS}/user_event.avsc") as f:
        schema = f.read()
    now = int(time.time() * 1000)
    pill = b"\x00\x00\x00\x00\x01" + b"\xff" * 999_895
    huge_eid = encode_confluent(schema, 1, event("u-huge", "e" * (1 << 20), now))
    long_eid = encode_confluent(schema, 1, event("u-long", "e" * 129, now))
    with Broker(partitions=1) as broker:
        p = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 2_000_000})
        for i in range(N_GOOD // 2):
            produce_event(p, schema, f"u-{i % 7}", f"g-{i}", now - 5000 + i)
        p.produce("events", key=b"pill", value=pill)
        p.produce("events", key=b"u-huge", value=huge_eid)
        p.produce("events", key=b"u-long", value=long_eid)
        for i in range(N_GOOD // 2, N_GOOD):
            produce_event(p, schema, f"u-{i % 7}", f"g-{i}", now - 5000 + i)
        assert p.flush(30) == 0
        end = end_offsets(broker.bootstrap, 1)[0]
        assert end == N_GOOD + 3, end
        with Daemon(broker.bootstrap) as d:
            d.wait_assigned()
            wait_for("the partition's committed offset at its end",
                     lambda: committed(broker.bootstrap, 1).get(0, -1) == end, [d], timeout=180)
            m = d.metrics()
            lag = metric(m, "cohortd_consumer_lag", partition="0")
            truncated = metric(m, "cohortd_dead_letters_truncated_total")
            dlq = consume(broker.bootstrap, "cohortd-dlq", expect=3)
            profiles = consume(broker.bootstrap, "profiles", expect=N_GOOD)
            assert d.proc.poll() is None, "cohortd died"
            rc = d.stop()
        broker.stop()
    assert rc == 0, f"cohortd exited {rc}"
    log(f"oversize: committed offset {end} = end of partition, lag {lag}; "
        f"{truncated:.0f} dead letters truncated")
    assert lag == 0, lag
    assert truncated == 2, truncated
    reader = avro_reader("profile_update.avsc")
    eids = {decode_confluent(reader, row[3])[1]["event_id"] for row in profiles}
    assert eids == {f"g-{i}" for i in range(N_GOOD)}, "good events around the pills lost"
    by_key = {row[2]: row for row in dlq}
    assert set(by_key) == {b"pill", b"u-huge", b"u-long"}, set(by_key)
    for key, original, reason in ((b"pill", pill, "decode_error"),
                                  (b"u-huge", huge_eid, "event_id_too_long")):
        row = by_key[key]
        h = headers(row)
        size = len(row[2]) + len(row[3]) + sum(len(k) + len(v) for k, v in row[4])
        log(f"{key.decode()}: {len(original)} bytes in, dead letter of {size} bytes, "
            f"reason {h['cohortd.error.reason']}")
        assert h["cohortd.error.reason"] == reason, h
        assert h["cohortd.truncated"] == "true", h
        assert int(h["cohortd.original.size"]) == len(original), h
        assert h["cohortd.original.sha256"] == hashlib.sha256(original).hexdigest(), h
        assert h["cohortd.source.topic"] == "events" and h["cohortd.source.partition"] == "0", h
        assert original.startswith(row[3]) and size < 1_000_000, size
    h = headers(by_key[b"u-long"])
    assert h["cohortd.error.reason"] == "event_id_too_long" and "cohortd.truncated" not in h, h
    assert by_key[b"u-long"][3] == long_eid


def refused():
    with open(f"{SCHEMAS}/user_event.avsc") as f:
        schema = f.read()
    now = int(time.time() * 1000)
    with Broker(partitions=2) as broker:
        p = Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(N_REFUSED):
            produce_event(p, schema, f"r-{i % 11}", f"r-{i}", now - 5000 + i)
        assert p.flush(30) == 0
        ends = end_offsets(broker.bootstrap, 2)
        # the next produce request (cohortd's first: the input is written) is refused
        broker.fault("errors Produce MSG_SIZE_TOO_LARGE")
        with Daemon(broker.bootstrap, "model.path=") as d:
            d.wait_assigned()
            wait_for("committed offsets at the end",
                     lambda: committed(broker.bootstrap, 2) == ends, [d], timeout=180)
            m = d.metrics()
            n_refused = metric(m, "cohortd_outputs_refused_total")
            failures = metric(m, "cohortd_delivery_failures_total")
            dlq = consume(broker.bootstrap, "cohortd-dlq", expect=1)
            profiles = consume(broker.bootstrap, "profiles", expect=N_REFUSED - len(dlq))
            assert d.proc.poll() is None, "cohortd died"
            rc = d.stop()
            text = d.log_text()
        broker.stop()
    assert rc == 0, f"cohortd exited {rc}:\n{text[-3000:]}"
    reader = avro_reader("profile_update.avsc")
    got = {decode_confluent(reader, row[3])[1]["event_id"] for row in profiles}
    reduced = set()
    for row in dlq:
        h = headers(row)
        assert h["cohortd.error.reason"] == "record_refused", h
        assert h["cohortd.original.topic"] == "profiles", h
        assert "Broker:" in h["cohortd.error.detail"], h
        assert int(h["cohortd.original.size"]) == len(row[3]), h  # small: kept whole
        assert h["cohortd.original.sha256"] == hashlib.sha256(row[3]).hexdigest(), h
        reduced.add(decode_confluent(reader, row[3])[1]["event_id"])
    log(f"refused: {len(reduced)} profile updates refused by the broker and dead-lettered "
        f"({n_refused:.0f} counted), {len(got)} delivered, {failures:.0f} delivery failures; "
        f"committed {ends} (the end)")
    assert reduced and n_refused == len(dlq) and failures == 0, (len(reduced), n_refused)
    assert got | reduced == {f"r-{i}" for i in range(N_REFUSED)}, "an event without its output"
    assert "reduced dead letter" in text


def main():
    oversize()
    refused()
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
