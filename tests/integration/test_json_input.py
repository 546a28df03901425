"""input.format = json (issue 14, item 2, with cohortd's own field names): the sparkov
sample as JSON objects (user_id an integer, ts in milliseconds, the coordinates as
attrs) gives, event for event, the same features as the same events in Avro
(cohort-replay), bit for bit; malformed JSON and mistyped fields are dead letters with
reason decode_error and a detail naming the problem.
"""
import csv
import json
import os
import sys

from confluent_kafka import Producer

from harness import (DATA, REPLAY, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, log, run, wait_for)

PARTITIONS = 4
N = 3000
SETS = ("segments.k=0",)


def profiles_by_event(bootstrap, n):
    reader = avro_reader("profile_update.avsc")
    out = {}
    for row in consume(bootstrap, "profiles", expect=n):
        p = decode_confluent(reader, row[3])[1]
        out[p["event_id"]] = (p["user_id"], p["features"])
    return out


def main():
    with open(os.path.join(DATA, "sparkov-transactions-sample.csv")) as f:
        sample = list(csv.DictReader(f))[:N]
    bad = [(b"not json at all", "malformed JSON at line 1 column"),
           (b'{"event_id": "e1", "ts": 1, "type": "payment"}', "JSON field user_id is missing"),
           (b'{"event_id": "e2", "user_id": "u", "ts": "yesterday", "type": "payment"}',
            "JSON field ts: 'yesterday' is not a number or an ISO-8601 date-time"),
           (b'{"event_id": "e3", "user_id": "u", "user_id": "v", "ts": 1, "type": "p"}',
            "duplicate object key"),
           (b'[1, 2, 3]', "not an object"),
           (b'{"event_id": "e4", "user_id": "u", "ts": 1, "type": "p", "attrs": {"x": "1"}}',
            "attrs[x] is not a number")]
    # finite numbers beyond what float32 vectors hold (1e39 once made every centroid NaN)
    huge = [(b'{"event_id": "h%d", "user_id": "u-huge", "ts": 1000, "type": "payment", '
             b'"amount": %s}' % (i, v), b"is outside") for i, v in
            enumerate((b"1e39", b"1e200", b"1.7e308", b"-1e39"))]
    bad += huge
    with Broker(partitions=PARTITIONS) as broker:
        p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
        for r in sample:
            ev = {"event_id": r["trans_num"], "user_id": int(r["cc_num"]),
                  "ts": int(r["unix_time"]) * 1000, "type": "payment", "amount": float(r["amt"]),
                  "item": r["merchant"], "category": r["category"], "channel": "ignored",
                  "attrs": {k: float(r[k]) for k in ("lat", "long", "merch_lat", "merch_long")}}
            p.produce("events", key=r["cc_num"].encode(), value=json.dumps(ev).encode())
        for i, (value, _) in enumerate(bad):
            p.produce("events", key=b"bad-%d" % i, value=value)
        assert p.flush(30) == 0
        with Daemon(broker.bootstrap, "input.format=json", *SETS) as d:
            d.wait_assigned()
            wait_for("caught up",
                     lambda: caught_up(d, broker.bootstrap, PARTITIONS, N + len(bad)), [d])
            assert d.stop() == 0
        got = profiles_by_event(broker.bootstrap, N)
        dlq = consume(broker.bootstrap, "cohortd-dlq", expect=len(bad))
        broker.stop()
    with Broker(partitions=PARTITIONS) as broker:
        run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "sparkov", "--quiet", "--file",
             f"{DATA}/sparkov-transactions-sample.csv", "--limit", str(N)])
        with Daemon(broker.bootstrap, *SETS) as d:
            d.wait_assigned()
            wait_for("caught up", lambda: caught_up(d, broker.bootstrap, PARTITIONS, N), [d])
            assert d.stop() == 0
        ref = profiles_by_event(broker.bootstrap, N)
        broker.stop()
    assert set(got) == set(ref) and len(got) == N, (len(got), len(ref))
    diff = [e for e in ref if got[e] != ref[e]]
    assert not diff, f"{len(diff)} events differ, e.g. {diff[0]}: {got[diff[0]]} vs {ref[diff[0]]}"
    details = {row[2].decode(): dict(row[4]) for row in dlq}
    for i, (_, words) in enumerate(bad):
        h = details[f"bad-{i}"]
        want = b"out_of_range" if i >= len(bad) - len(huge) else b"decode_error"
        assert h["cohortd.error.reason"] == want, h
        words = words.decode() if isinstance(words, bytes) else words
        assert words in h["cohortd.error.detail"].decode(), (words, h["cohortd.error.detail"])
    assert {row[3] for row in dlq} == {v for v, _ in bad}, "dead letters must keep the bytes"
    log(f"JSON input: {N} events, features equal to the same events in Avro bit for bit; "
        f"{len(bad)} bad messages dead-lettered with their reason ({len(huge)} amounts "
        f"beyond input.max_abs: out_of_range)")
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
