"""Field mapping (issue 14, item 1): events in a user's own schema, not cohortd's.

- Avro: the sparkov sample in a foreign, nested schema (Confluent framing): the card
  number a long inside a nullable record, the time in epoch seconds, the type an enum,
  the amount under another name, numeric fields read by dotted path (geo.lat). Mapped
  with input.map.*, every user's last profile update equals a direct offline
  computation of the declared features over the user's events (harness
  offline_features), its event_id is the mapped id, and a record whose card is null is
  a dead letter naming the field.
- JSON: the same events as nested JSON objects with ISO-8601 times give the same
  features; a missing user id and a time that is not ISO-8601 are dead letters naming
  the field and its input.map key.
- A mapped field that the reader schema lacks stops cohortd at start (exit 2) naming it.
"""
import csv
import json
import math
import os
import sys
import tempfile
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer

from harness import (DATA, SCHEMAS, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, encode_confluent, log, offline_features, wait_for)

PARTITIONS = 4
N = 3000
SCHEMA = {
    "type": "record", "name": "CardTxn", "namespace": "bank",
    "fields": [
        {"name": "txn", "type": {"type": "record", "name": "Txn", "fields": [
            {"name": "id", "type": "string"}, {"name": "channel", "type": "string"}]}},
        {"name": "card", "type": ["null", {"type": "record", "name": "Card", "fields": [
            {"name": "number", "type": "long"}, {"name": "holder", "type": "string"}]}]},
        {"name": "when", "type": "long"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind",
                                  "symbols": ["PURCHASE", "REFUND"]}},
        {"name": "amt", "type": "double"},
        {"name": "merchant", "type": {"type": "record", "name": "Merchant", "fields": [
            {"name": "name", "type": "string"}, {"name": "category", "type": "string"}]}},
        {"name": "geo", "type": {"type": "record", "name": "Geo", "fields": [
            {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}},
    ]}
FEATURES = [("n", "count"), ("spend", "sum(amt)"), ("avg", "mean(amount)"),
            ("refunds", "count type=REFUND"), ("lat", "mean(geo.lat)"),
            ("lon_max", "max(geo.lon) half_life=inf"), ("gap", "since_last default=-1")]
MAP = {"event_id": "txn.id", "user_id": "card.number", "ts": "when", "type": "kind",
       "amount": "amt", "item": "merchant.name", "category": "merchant.category",
       "attrs": ""}


def sample():
    with open(os.path.join(DATA, "sparkov-transactions-sample.csv")) as f:
        rows = list(csv.DictReader(f))[:N]
    out = []
    for i, r in enumerate(rows):
        out.append({"txn": {"id": r["trans_num"], "channel": "pos"},
                    "card": {"number": int(r["cc_num"]), "holder": r["merchant"][-4:]},
                    "when": int(r["unix_time"]),
                    "kind": "REFUND" if i % 7 == 3 else "PURCHASE",
                    "amt": float(r["amt"]),
                    "merchant": {"name": r["merchant"], "category": r["category"]},
                    "geo": {"lat": float(r["lat"]), "lon": float(r["long"])}})
    return out


def reference(events):
    """user id -> (last event id, features) by a direct offline computation."""
    users = {}
    for e in events:
        fields = {"amt": e["amt"], "amount": e["amt"], "geo.lat": e["geo"]["lat"],
                  "geo.lon": e["geo"]["lon"]}
        users.setdefault(str(e["card"]["number"]), []).append(
            (e["when"] * 1000, e["kind"], fields, e["txn"]["id"]))
    out = {}
    for u, evs in users.items():
        _, feats = offline_features([x[:3] for x in evs], FEATURES, "1d")
        out[u] = (evs[-1][3], feats)  # a user's events keep their order on its partition
    return out


def write_conf(d, fmt, ts_unit):
    with open(os.path.join(d, "txn.avsc"), "w") as f:
        json.dump(SCHEMA, f)
    with open(os.path.join(d, "ids"), "w") as f:
        f.write("1 txn.avsc\n2 profile_update.avsc\n3 risk_update.avsc\n")
    for name in ("profile_update.avsc", "risk_update.avsc"):
        with open(os.path.join(SCHEMAS, name)) as src, open(os.path.join(d, name), "w") as dst:
            dst.write(src.read())
    conf = os.path.join(d, f"{fmt}.conf")
    with open(conf, "w") as f:
        f.write(f"schema.dir = {d}\ninput.schema = {d}/txn.avsc\ninput.format = {fmt}\n"
                f"input.map.ts_unit = {ts_unit}\nsegments.k = 0\nmodel.path =\n"
                "features.half_life = 1d\n")
        for role, path in MAP.items():
            f.write(f"input.map.{role} = {path}\n")
        for name, spec in FEATURES:
            f.write(f"feature.{name} = {spec}\n")
    return conf


def last_profiles(bootstrap, n):
    reader = avro_reader("profile_update.avsc")
    last = {}
    for part, off, _, value, _ in sorted(consume(bootstrap, "profiles", expect=n),
                                         key=lambda r: (r[0], r[1])):
        p = decode_confluent(reader, value)[1]
        last[p["user_id"]] = (p["event_id"], p["features"])
    return last


def check(got, ref, what):
    assert set(got) == set(ref), f"{what}: users {len(got)} vs {len(ref)}"
    worst = 0.0
    for u, (eid, feats) in ref.items():
        geid, gfeats = got[u]
        assert geid == eid, f"{what}: user {u} last event {geid}, expected {eid}"
        for (name, _), a, b in zip(FEATURES, gfeats, feats):
            err = abs(a - b) / max(1.0, abs(b))
            assert err < 1e-5, f"{what}: user {u} {name} = {a}, offline {b}"
            worst = max(worst, err)
    return worst


def run_daemon(broker, conf, n_total):
    with Daemon(broker.bootstrap, conf=conf) as d:
        d.wait_assigned()
        wait_for("caught up", lambda: caught_up(d, broker.bootstrap, PARTITIONS, n_total), [d])
        assert d.stop() == 0


def dead_letters(bootstrap, n):
    return {row[2].decode(): dict(row[4]) for row in consume(bootstrap, "cohortd-dlq", expect=n)}


def avro_run(tmp, events, ref):
    conf = write_conf(tmp, "avro", "s")
    schema_json = json.dumps(SCHEMA)
    with Broker(partitions=PARTITIONS) as broker:
        p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
        for e in events:
            p.produce("events", key=str(e["card"]["number"]).encode(),
                      value=encode_confluent(schema_json, 1, e))
        bad = dict(events[0], card=None)
        p.produce("events", key=b"bad-null-card", value=encode_confluent(schema_json, 1, bad))
        assert p.flush(30) == 0
        run_daemon(broker, conf, len(events) + 1)
        worst = check(last_profiles(broker.bootstrap, len(events)), ref, "avro")
        h = dead_letters(broker.bootstrap, 1)["bad-null-card"]
        assert h["cohortd.error.reason"] == b"decode_error", h
        assert b"card.number (user_id) is null or absent" in h["cohortd.error.detail"], h
    log(f"Avro in a foreign nested schema (ts in seconds, enum type, fields by path): "
        f"{len(ref)} users' features equal the offline computation (worst relative "
        f"difference {worst:.1e}); a null card is a dead letter naming card.number")


def iso(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_run(tmp, events, ref):
    conf = write_conf(tmp, "json", "auto")
    bad = [(b"no-user", dict(events[1], card={"holder": "x"}),
            "JSON field card.number is missing (input.map.user_id)"),
           (b"bad-time", dict(events[2], when="last tuesday"),
            "JSON field when: 'last tuesday' is not a number or an ISO-8601 date-time")]
    with Broker(partitions=PARTITIONS) as broker:
        p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
        for i, e in enumerate(events):
            # half the times with a zone offset: the same instant
            when = iso(e["when"]) if i % 2 else datetime.fromtimestamp(
                e["when"], timezone(timedelta(hours=2))).isoformat()
            p.produce("events", key=str(e["card"]["number"]).encode(),
                      value=json.dumps(dict(e, when=when)).encode())
        for key, e, _ in bad:
            p.produce("events", key=key, value=json.dumps(e).encode())
        assert p.flush(30) == 0
        run_daemon(broker, conf, len(events) + len(bad))
        worst = check(last_profiles(broker.bootstrap, len(events)), ref, "json")
        got = dead_letters(broker.bootstrap, len(bad))
        for key, _, words in bad:
            h = got[key.decode()]
            assert words.encode() in h["cohortd.error.detail"], (words, h)
    log(f"JSON with the same mapping (ISO-8601 times, half with a +02:00 offset): features "
        f"equal the offline computation (worst {worst:.1e}); {len(bad)} bad events "
        f"dead-lettered naming the field")


def start_refused(tmp):
    conf = write_conf(tmp, "avro", "s")
    with Broker(partitions=PARTITIONS) as broker:
        d = Daemon(broker.bootstrap, "input.map.item=merchant.title", conf=conf)
        rc = d.proc.wait(timeout=60)
        text = d.log_text()
        assert rc == 2, f"exit {rc}:\n{text}"
        assert "has no field 'merchant.title' (input.map.item)" in text, text
    log("a mapped field missing from the reader schema: refused at start, exit 2, named")


def main():
    events = sample()
    ref = reference(events)
    assert not math.isnan(sum(f for _, fs in ref.values() for f in fs))
    with tempfile.TemporaryDirectory() as tmp:
        start_refused(tmp)
        avro_run(tmp, events, ref)
        json_run(tmp, events, ref)
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
