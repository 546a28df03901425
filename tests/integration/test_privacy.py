"""privacy.pseudonymize (issue 14, item 7, pseudonyms): user ids are replaced in state,
changelog and outputs by HMAC-SHA-256(key, user id) in base64url, checked against
Python's hmac module as the independent reference.

1. Key A: every profile and risk update is keyed by, and names, the pseudonym of its
   event's user id; no raw user id appears in any output or changelog record;
   /users/<pseudonym> answers; /users/<raw id> is 404 and does not name the pseudonym.
2. A restart with key A (same group, the changelog restores the users): the same users
   get the same pseudonyms, and their restored state continues.
3. Key B (another group, other output topics): every pseudonym differs from key A's
   and equals the reference under key B. cohort-pseudonym prints the same mapping.
4. A key file readable by others, or too short: cohortd refuses to start (exit 2) with a
   message naming the file, and never prints the key.
5. privacy.drop_fields = user_id, attrs: the dead letter of a decoded bad event is its
   JSON without them (and without the Kafka key); an undecodable record keeps none of
   its bytes; the dropped values appear nowhere in either, headers included.
"""
import base64
import hashlib
import hmac
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer

from harness import (BUILD, GEN, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, encode_confluent, log, run, wait_for, COHORTD, CONF,
                     SCHEMAS)

PARTITIONS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog,profiles_b,risk_b"
PSEUDONYM = os.path.join(BUILD, "tools", "cohort-pseudonym")


def pseudonym(key, uid):
    return base64.urlsafe_b64encode(hmac.new(key, uid.encode(), hashlib.sha256).digest()) \
        .rstrip(b"=").decode()


def key_file(d, name, data, mode=0o600):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def events_users(bootstrap, n):
    reader = avro_reader("user_event.avsc")
    return [decode_confluent(reader, row[3])[1]["user_id"]
            for row in consume(bootstrap, "events", expect=n)]


def outputs(bootstrap, topic, n):
    reader = avro_reader("profile_update.avsc" if "profiles" in topic else "risk_update.avsc")
    return [(row[2].decode(), decode_confluent(reader, row[3])[1], row[3])
            for row in consume(bootstrap, topic, expect=n)]


def main():
    tmp = tempfile.mkdtemp(prefix="cohortd-privacy-")
    key_a, key_b = os.urandom(32), os.urandom(48)
    file_a, file_b = key_file(tmp, "a.key", key_a), key_file(tmp, "b.key", key_b)
    with Broker(partitions=PARTITIONS, topics=TOPICS) as broker:
        run([GEN, "--brokers", broker.bootstrap, "--events", "3000", "--users", "300"])
        raw = events_users(broker.bootstrap, 3000)
        users = set(raw)
        ref_a = {u: pseudonym(key_a, u) for u in users}
        sets_a = ("privacy.pseudonymize=on", f"privacy.key_file={file_a}",
                  "state.changelog=changelog")
        with Daemon(broker.bootstrap, *sets_a) as d:
            d.wait_assigned()
            wait_for("caught up", lambda: caught_up(d, broker.bootstrap, PARTITIONS, 3000), [d])
            some = sorted(users)[0]
            # a raw id is not accepted: whoever reaches the port could re-identify outputs
            status, _, body = d.get(f"/users/{some}")
            assert status == 404 and ref_a[some] not in body, (status, body)
            status, _, body = d.get(f"/users/{ref_a[some]}")
            assert status == 200 and json.loads(body)["user_id"] == ref_a[some], (status, body)
            assert d.stop() == 0
            text = d.log_text()
        assert key_a.hex() not in text and base64.b64encode(key_a).decode() not in text
        profiles = outputs(broker.bootstrap, "profiles", 3000)
        risk = outputs(broker.bootstrap, "risk", 3000)
        changelog = consume(broker.bootstrap, "changelog", expect=1)
        # outputs in event order per user: the i-th output of a partition is its i-th event
        got = {(k, rec["user_id"]) for k, rec, _ in profiles + risk}
        assert all(k == v for k, v in got), "key and user_id differ"
        assert {k for k, _ in got} == set(ref_a.values()), "pseudonyms differ from the reference"
        raw_keys = {row[2] for row in changelog}
        assert raw_keys <= {p.encode() for p in ref_a.values()}, "changelog keyed by raw ids"
        log(f"key A: {len(profiles)} profile and {len(risk)} risk updates, {len(users)} users, "
            f"every key and user_id the reference pseudonym; changelog keyed by pseudonyms")

        # 2. restart with the same key: stable pseudonyms, restored state continues
        run([GEN, "--brokers", broker.bootstrap, "--events", "1000", "--users", "300",
             "--seed", "2"])
        with Daemon(broker.bootstrap, *sets_a) as d:
            d.wait_assigned()
            wait_for("caught up", lambda: caught_up(d, broker.bootstrap, PARTITIONS, 4000), [d])
            assert d.stop() == 0
            text = d.log_text()
        restored = sum(int(x) for x in re.findall(r"(\d+) applied", text))
        every = outputs(broker.bootstrap, "profiles", 4000)
        raw2 = set(events_users(broker.bootstrap, 4000))
        ref_a.update({u: pseudonym(key_a, u) for u in raw2})
        # the first run's users keep their pseudonyms: nothing but the reference appears
        assert {k for k, _, _ in every} == {ref_a[u] for u in raw2}, "pseudonyms changed"
        assert restored > 0, "no user restored from the changelog"
        log(f"restart with key A: {len(every)} updates in all, every one under the reference "
            f"pseudonym of its user; {restored} users restored from the changelog")

        # 3. another key: unrelated pseudonyms
        with Daemon(broker.bootstrap, "privacy.pseudonymize=on", f"privacy.key_file={file_b}",
                    "output.profile_topic=profiles_b", "output.risk_topic=risk_b",
                    group="privacy-b") as d:
            d.wait_assigned()
            consume(broker.bootstrap, "profiles_b", expect=4000)
            assert d.stop() == 0
        under_b = {k for k, _, _ in outputs(broker.bootstrap, "profiles_b", 4000)}
        all_users = users | set(raw2)
        assert under_b == {pseudonym(key_b, u) for u in all_users}
        assert not under_b & set(ref_a.values()), "the same pseudonym under two keys"
        cli = subprocess.run([PSEUDONYM, "--key-file", file_b], input="\n".join(sorted(all_users)),
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert cli == [f"{u}\t{pseudonym(key_b, u)}" for u in sorted(all_users)]
        log(f"key B: {len(under_b)} pseudonyms, none shared with key A; cohort-pseudonym agrees")
        broker.stop()

    # 5. privacy.drop_fields: dead letters without the dropped fields
    with open(os.path.join(SCHEMAS, "user_event.avsc")) as f:
        schema = f.read()
    now = int(time.time() * 1000)
    bad_event = {"event_id": "e-bad", "user_id": "secret-user-1", "ts": now, "type": "payment",
                 "amount": math.nan, "item": "i-1", "category": "c-1",
                 "attrs": {"secret-attr": 1.0}}
    bad_value = encode_confluent(schema, 1, bad_event)
    garbage = b"\x00\x00\x00\x00\x01" + b"secret-user-2 and then garbage \xff\xff"
    with Broker(partitions=1) as broker:
        p = Producer({"bootstrap.servers": broker.bootstrap})
        p.produce("events", key=b"secret-user-1", value=bad_value)
        p.produce("events", key=b"secret-user-2", value=garbage)
        assert p.flush(30) == 0
        with Daemon(broker.bootstrap, "privacy.drop_fields=user_id, attrs", "model.path=") as d:
            d.wait_assigned()
            dlq = consume(broker.bootstrap, "cohortd-dlq", expect=2)
            assert d.stop() == 0
        broker.stop()
    assert len(dlq) == 2, dlq
    for row, original in zip(sorted(dlq, key=lambda r: r[1]), (bad_value, garbage)):
        h = dict(row[4])
        everything = (row[2] or b"") + (row[3] or b"") + b"".join(k.encode() + v for k, v in row[4])
        assert b"secret-user" not in everything and b"secret-attr" not in everything, row
        assert h["cohortd.redacted"] == b"user_id, attrs" and not row[2], h
        assert h["cohortd.original.sha256"].decode() == hashlib.sha256(original).hexdigest()
    kept = json.loads(sorted(dlq, key=lambda r: r[1])[0][3])
    assert kept == {"event_id": "e-bad", "ts": now, "type": "payment", "amount": None,
                    "item": "i-1", "category": "c-1"}, kept
    assert not sorted(dlq, key=lambda r: r[1])[1][3], "an undecodable record kept its bytes"
    log(f"drop_fields: the decoded bad event dead-lettered as {kept}; the undecodable one "
        "as headers only; no dropped value anywhere in either")

    # 4. keys refused
    loose = key_file(tmp, "loose.key", os.urandom(32), 0o644)
    short = key_file(tmp, "short.key", b"0123456789")
    for path, words in ((loose, "accessible by group or others"), (short, "holds 10 bytes")):
        r = subprocess.run([COHORTD, "--config", CONF, "--set", "kafka.bootstrap.servers=127.0.0.1:1",
                            "--set", "privacy.pseudonymize=on", "--set", f"privacy.key_file={path}",
                            "--set", "http.listen=off"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr and path in r.stderr, (r.returncode,
                                                                            r.stderr[-500:])
    log("key files readable by others or shorter than 32 bytes: refused, exit 2")
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
