"""Schema Registry (issue 14, item 3), and a retail-style example end to end: invoice
lines in the user's own nested Avro schema, behind a registry with basic
authentication, mapped onto cohortd's roles, with categorical features and tags.

- The writer schemas are not in schema.dir: cohortd fetches each id from the test
  registry (registry_server.py) once, and caches it (one GET per id for 4 partitions
  and thousands of records).
- The output schemas are registered under <topic>-value and the profile updates are
  framed with the id the registry returned.
- The registry goes down; records naming a new writer id (version 2 of the schema,
  an optional field added) arrive: their partitions are held (nothing consumed past
  them, nothing committed past them, /readyz 503 naming the registry, retries counted
  in /metrics) while the first version's records were all processed. The registry
  comes back: every held record is processed, exactly one profile update per event.
- An id the registry does not know (404) becomes a schema_error dead letter naming
  the answer.
- Every customer's last profile equals a direct offline computation of the features
  (worst relative difference printed), and the top-3 items tag a direct decayed count.
- Wrong credentials: registering the outputs at start fails (exit 2, the message
  names HTTP 401 and the settings to check); with register_outputs = off, the fetch
  is refused, /readyz says so, and nothing is consumed or committed.
- TLS: an https registry verified with schema.registry.ca_file; without it, start-up
  fails naming the certificate problem.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

import avro.io
import avro.schema
from confluent_kafka import Producer

from harness import (COHORTD, SCHEMAS, Broker, Daemon, committed_sum, consume,
                     decode_confluent, encode_confluent, free_port, log, metric,
                     offline_features, wait_for)
from registry_server import Registry

REL = 1e-5  # float32 outputs
USER, PASSWORD = "cohortd", "s3cret-pw"
PARTS = 4

LINE_V1 = {
    "type": "record", "name": "InvoiceLine", "namespace": "shop",
    "fields": [
        {"name": "line_id", "type": "string"},
        {"name": "invoice_no", "type": "string"},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "id", "type": "long"},
            {"name": "country", "type": "string"}]}},
        {"name": "stock_code", "type": "string"},
        {"name": "description", "type": ["null", "string"], "default": None},
        {"name": "quantity", "type": "int"},
        {"name": "unit_price", "type": "double"},
        {"name": "invoice_date", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]}
LINE_V2 = json.loads(json.dumps(LINE_V1))
LINE_V2["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})

FEATURES = [
    ("lines_30d", "count half_life=30d"),
    ("qty_30d", "sum(quantity) half_life=30d"),
    ("avg_price_30d", "mean(amount) half_life=30d"),
    ("gift_lines_30d", "count item=GIFT01|GIFT02|GIFT03 half_life=30d"),
    ("not_uk_share", "share category!=United_Kingdom half_life=30d"),
    ("products_7d", "distinct(item) window=7d k=16"),
    # text fields by name, not roles: the channel (version 2 only) and the invoice
    ("web_share", "share channel=web half_life=30d"),
    ("invoices_30d", "distinct(invoice_no) window=30d k=16"),
]
TAG = ("top_products", "top(item, 3) half_life=30d slots=40", 3, 30 * 8.64e7)


def invoice_lines(n_customers=240, n_lines=2400, seed=14):
    """Retail-like invoice lines: customers with a home country, a catalogue with a few
    popular products, invoices of 1-6 lines over 30 days, in time order."""
    rnd = random.Random(seed)
    countries = ["United_Kingdom"] * 6 + ["Germany", "France", "Netherlands", "EIRE"]
    products = [f"GIFT{i:02d}" for i in range(1, 4)] + [f"P{i:03d}" for i in range(1, 61)]
    weights = [8, 6, 5] + [1 + (i % 7 == 0) * 4 for i in range(60)]
    customers = [(12000 + i, rnd.choice(countries)) for i in range(n_customers)]
    t = 1_575_158_400_000  # 2019-12-01
    lines, inv = [], 536000
    while len(lines) < n_lines:
        inv += 1
        t += rnd.randint(1, 18) * 60_000
        cid, country = rnd.choice(customers)
        for k in range(rnd.randint(1, 6)):
            lines.append({
                "line_id": f"{inv}-{k}", "invoice_no": str(inv),
                "customer": {"id": cid, "country": country},
                "stock_code": rnd.choices(products, weights)[0],
                "description": None if rnd.random() < 0.1 else "SOME ITEM",
                "quantity": rnd.choice([1, 1, 2, 3, 6, 12, 24]),
                "unit_price": round(rnd.uniform(0.3, 15.0), 2),
                "invoice_date": t + k * 1000})  # lines a second apart
    return lines[:n_lines]


def produce(bootstrap, lines, schema, sid):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    text = json.dumps(schema)
    for ln in lines:
        p.produce("events", key=str(ln["customer"]["id"]).encode(),
                  value=encode_confluent(text, sid, ln))
    assert p.flush(60) == 0


def write_conf(tmp, reg, password_file, extra="", url=None):
    reader = os.path.join(tmp, "invoice_line.avsc")
    with open(reader, "w") as f:
        json.dump(LINE_V2, f)  # the reader holds the newest version (version 1 lacks channel)
    path = os.path.join(tmp, "retail.conf")
    with open(path, "w") as f:
        f.write(f"""schema.dir = {SCHEMAS}
schema.registry.url = {url or reg.url}
schema.registry.username = {USER}
schema.registry.password_file = {password_file}
input.schema = {reader}
input.map.user_id = customer.id
input.map.ts = invoice_date
input.map.event_id = line_id
input.map.type =
input.map.item = stock_code
input.map.category = customer.country
input.map.amount = unit_price
input.map.attrs =
segments.k = 0
model.path =
features.half_life = 30d
""")
        for n, spec in FEATURES:
            f.write(f"feature.{n} = {spec}\n")
        f.write(f"tags.{TAG[0]} = {TAG[1]}\n{extra}")
    return path


def secret(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def profiles(bootstrap, expect, timeout=300, idle=3.0):
    return consume(bootstrap, "profiles", expect=expect, timeout=timeout, idle=idle)


def check_features(lines, updates):
    """Every customer's last update against the offline computation; the tag against a
    direct decayed count (users with a tie at rank 3 skipped)."""
    by_user = {}
    for ln in lines:
        by_user.setdefault(str(ln["customer"]["id"]), []).append(
            (ln["invoice_date"], None, {"amount": ln["unit_price"], "quantity": ln["quantity"],
                                        "@item": ln["stock_code"],
                                        "@category": ln["customer"]["country"],
                                        "@channel": ln.get("channel"),
                                        "@invoice_no": ln["invoice_no"]}))
    last = {}
    for u in updates:
        last[u["user_id"]] = u  # a user's updates are in its partition's order
    assert set(last) == set(by_user), "every customer has a profile"
    worst, tag_users, tied = 0.0, 0, 0
    for user, evs in by_user.items():
        q, ref = offline_features(evs, FEATURES, "30d")
        got = last[user]
        for (name, _), r, g in zip(FEATURES, ref, got["features"]):
            d = abs(g - r) / max(1.0, abs(r))
            worst = max(worst, d)
            assert d <= REL, f"customer {user} {name}: cohortd {g} offline {r}"
        w = {}
        for t, _, fv in evs:
            w[fv["@item"]] = w.get(fv["@item"], 0.0) + 2.0 ** (-(q - t) / TAG[3])
        ranked = sorted(w.items(), key=lambda kv: -kv[1])
        head = [x[1] for x in ranked[:TAG[2] + 1]]
        if any(abs(a - b) <= 1e-9 * max(a, b) for a, b in zip(head, head[1:])):
            tied += 1
            continue
        assert got["tags"][TAG[0]] == [v for v, _ in ranked[:TAG[2]]], \
            f"customer {user}: tags {got['tags']} vs {ranked[:4]}"
        tag_users += 1
    log(f"retail: {len(by_user)} customers, {len(lines)} lines: {len(FEATURES)} features equal the offline "
        f"computation (worst relative difference {worst:.2g}); top-3 products equal a direct "
        f"decayed count for {tag_users} customers ({tied} with a tie skipped)")


def main():
    broker = Broker(partitions=PARTS, topics="events,profiles,risk,cohortd-dlq")
    tmp = tempfile.mkdtemp(prefix="ch-registry-")
    reg = Registry(free_port(), user=USER, password=PASSWORD).start()
    try:
        run_main(broker, tmp, reg)
        wrong_credentials(broker, tmp, reg)
        tls(broker, tmp)
    finally:
        reg.stop()
        broker.stop()
    log("PASS")


def run_main(broker, tmp, reg):
    lines = invoice_lines()
    half = len(lines) // 2
    sid_v1 = reg.add(json.dumps(LINE_V1))
    conf = write_conf(tmp, reg, secret(tmp, "pw", PASSWORD))
    with open(os.path.join(SCHEMAS, "profile_update_v2.avsc")) as f:
        reader = avro.io.DatumReader(avro.schema.parse(f.read()))

    with Daemon(broker.bootstrap, conf=conf) as d:
        d.wait_assigned()
        assert reg.subjects["profiles-value"], "the profile schema was registered"
        sid_profile = reg.subjects["profiles-value"][0]

        # 1. version 1 of the writer, fetched once for every partition
        produce(broker.bootstrap, lines[:half], LINE_V1, sid_v1)
        got = profiles(broker.bootstrap, half)
        assert len(got) == half, f"{len(got)} profile updates for {half} lines"
        assert reg.count("GET", f"/schemas/ids/{sid_v1}") == 1, reg.requests
        for _, _, _, v, _ in got[:5]:
            sid, _ = decode_confluent(reader, v)
            assert sid == sid_profile, f"profile framed with id {sid}, registered {sid_profile}"
        wait_for("first half committed", lambda: committed_sum(broker.bootstrap, PARTS) == half,
                 [d], timeout=120)

        # 2. the registry goes down; version 2 arrives
        reg.stop()
        sid_v2 = reg.add(json.dumps(LINE_V2))
        rnd = random.Random(7)
        for ln in lines[half:]:
            ln["channel"] = rnd.choice(["web", "web", "store"])
        produce(broker.bootstrap, lines[half:], LINE_V2, sid_v2)

        def held():
            m = d.metrics()
            return metric(m, "cohortd_schema_registry_waiting_partitions") == PARTS and \
                metric(m, "cohortd_schema_registry_requests_total", result="error") >= 2
        wait_for("every partition held, fetch retried", held, [d], timeout=120)
        status, _, body = d.get("/readyz")
        assert status == 503 and "schema registry unreachable" in body, (status, body)
        m = d.metrics()
        assert metric(m, "cohortd_schema_registry_up") == 0
        log(f"registry down: /readyz {status} '{body.strip()}'; "
            f"{metric(m, 'cohortd_schema_registry_requests_total', result='error'):.0f} "
            f"failed fetches so far")
        assert committed_sum(broker.bootstrap, PARTS) == half, "nothing committed past a hold"
        assert len(profiles(broker.bootstrap, half, idle=2.0)) == half, "nothing processed"
        assert "Couldn't connect" in d.log_text() or "refused" in d.log_text()

        # 3. it comes back: everything held is processed, once
        reg.start()
        got = profiles(broker.bootstrap, len(lines))
        wait_for("all committed", lambda: committed_sum(broker.bootstrap, PARTS) == len(lines),
                 [d], timeout=120)
        m = d.metrics()
        assert metric(m, "cohortd_schema_registry_waiting_partitions") == 0
        assert metric(m, "cohortd_schema_registry_up") == 1
        assert metric(m, "cohortd_schema_registry_requests_total", result="ok") == 2
        assert reg.count("GET", f"/schemas/ids/{sid_v2}") == 1, reg.requests
        assert d.get("/readyz")[0] == 200

        # 4. an id the registry does not have
        produce(broker.bootstrap, lines[:1], LINE_V1, 999)
        dlq = consume(broker.bootstrap, "cohortd-dlq", expect=1, timeout=120, idle=2.0)
        assert len(dlq) == 1, dlq
        headers = {k: v.decode() for k, v in dlq[0][4]}
        assert headers.get("cohortd.error.reason") == "schema_error", headers
        assert "404" in headers.get("cohortd.error.detail", ""), headers
        assert reg.count("GET", "/schemas/ids/999") == 1
        assert d.stop() == 0

    updates = [decode_confluent(reader, v)[1] for _, _, _, v, _ in got]
    ids = [u["event_id"] for u in updates]
    assert len(ids) == len(set(ids)) == len(lines), \
        f"{len(ids)} updates, {len(set(ids))} distinct, {len(lines)} lines"
    check_features(lines, updates)
    log(f"registry: ids {sid_v1} and {sid_v2} fetched once each for {PARTS} partitions and "
        f"{len(lines)} records; profile updates framed with registered id {sid_profile}; "
        f"id 999 a schema_error dead letter")


def wrong_credentials(broker, tmp, reg):
    bad = secret(tmp, "badpw", "not-the-password")
    conf = write_conf(tmp, reg, bad)
    d = Daemon(broker.bootstrap, conf=conf, group="cohortd-badpw")
    rc = d.proc.wait(timeout=120)
    text = d.log_text()
    assert rc == 2, f"exit {rc}: {text[-2000:]}"
    assert "HTTP 401" in text and "schema.registry.password_file" in text, text[-2000:]
    assert "not-the-password" not in text
    log("wrong credentials at start: exit 2, '" +
        [ln for ln in text.splitlines() if "401" in ln][0][-160:] + "'")

    # a password in the URL's userinfo is masked wherever the URL shows
    url = reg.url.replace("://", "://someone:url-secret@", 1)
    conf = write_conf(tmp, reg, bad, "schema.registry.register_outputs = off\n", url=url)
    check = subprocess.run([COHORTD, "--config", conf, "--check-config", "--set",
                            f"kafka.bootstrap.servers={broker.bootstrap}"],
                           capture_output=True, text=True, timeout=120)
    shown = check.stdout + check.stderr
    assert "someone:***@" in shown and "url-secret" not in shown, shown[-2000:]
    with Daemon(broker.bootstrap, conf=conf, group="cohortd-badpw2") as d:
        d.wait_assigned()
        body = ""

        def refused():
            nonlocal body
            status, _, body = d.get("/readyz")
            return status == 503 and "HTTP 401" in body
        wait_for("fetch refused in /readyz", refused, [d], timeout=120)
        assert "someone:***@" in body and "url-secret" not in body, body
        assert "url-secret" not in d.log_text(), d.log_text()[-2000:]
        m = d.metrics()
        assert metric(m, "cohortd_events_consumed_total") == 0, "nothing consumed"
        assert committed_sum(broker.bootstrap, PARTS, group="cohortd-badpw2") == 0
        assert "refused the credentials" in d.log_text()
        assert "not-the-password" not in d.log_text()
        assert d.stop() == 0
    log("wrong credentials at run time: /readyz 503 naming HTTP 401, nothing consumed")


def tls(broker, tmp):
    cert, key = os.path.join(tmp, "reg.crt"), os.path.join(tmp, "reg.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    reg = Registry(free_port(), user=USER, password=PASSWORD, certfile=cert, keyfile=key).start()
    try:
        pw = secret(tmp, "pw", PASSWORD)
        conf = write_conf(tmp, reg, pw, f"schema.registry.ca_file = {cert}\n")
        with Daemon(broker.bootstrap, conf=conf, group="cohortd-tls") as d:
            d.wait_assigned()
            assert reg.subjects["profiles-value"], "registered over TLS"
            assert d.stop() == 0
        conf = write_conf(tmp, reg, pw)
        d = Daemon(broker.bootstrap, conf=conf, group="cohortd-tls2")
        rc = d.proc.wait(timeout=120)
        text = d.log_text()
        assert rc != 0 and "certificate" in text.lower(), f"exit {rc}: {text[-2000:]}"
        log("TLS: registered over https with schema.registry.ca_file; without it, exit "
            f"{rc}: '" + [ln for ln in text.splitlines() if "ertificate" in ln][0][-120:] + "'")
    finally:
        reg.stop()


if __name__ == "__main__":
    sys.exit(main())
