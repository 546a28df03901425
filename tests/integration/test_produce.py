"""cohort-produce (issue 14, item 6): one's own CSV into the events topic through a mapping.

1. The original 23-column card-fraud layout (written by the test from the sparkov
   sample: the same transactions, the original's extra columns, a quoted job with a
   comma, rows shuffled): every event read back with python-avro equals its row under
   the mapping (user, event id, time from "YYYY-mm-dd HH:MM:SS", amount, merchant,
   category, four coordinates as attrs), and each partition is in event-time order.
2. A retail invoice-line CSV (InvoiceNo, StockCode, Description, Quantity, InvoiceDate
   as m/d/Y H:M, UnitPrice, CustomerID, Country), written by the test: amount is
   Quantity * UnitPrice; then cohortd turns every event into a profile update, end to end.
3. A bad row (a number that is not one) and a bad mapping (a column that does not
   exist): exit 1 with FILE:LINE:COLUMN or MAPPING:LINE messages, and nothing sent.
4. The same invoice lines as JSON Lines with nested objects (customer.id an integer,
   line.quantity, ISO-8601 times), mapped by dotted paths: every event equals its line;
   malformed JSON, a bad number and a missing field give FILE:LINE errors, nothing sent.
"""
import calendar
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from harness import (BUILD, DATA, Broker, Daemon, avro_reader, caught_up, consume,
                     decode_confluent, end_offsets, log, ts_ms, wait_for)

PRODUCE = os.path.join(BUILD, "tools", "cohort-produce")
PARTITIONS = 4
N_FRAUD = 3000
N_RETAIL = 600

FRAUD_HEADER = ["", "trans_date_trans_time", "cc_num", "merchant", "category", "amt", "first",
                "last", "gender", "street", "city", "state", "zip", "lat", "long", "city_pop",
                "job", "dob", "trans_num", "unix_time", "merch_lat", "merch_long", "is_fraud"]
FRAUD_MAP = """# the original card-fraud layout (23 columns)
user_id = cc_num
event_id = trans_num
ts = trans_date_trans_time
ts.format = %Y-%m-%d %H:%M:%S
type = "payment"
amount = amt
item = merchant
category = category
attrs.lat = lat
attrs.long = long
attrs.merch_lat = merch_lat
attrs.merch_long = merch_long
"""
RETAIL_HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                 "UnitPrice", "CustomerID", "Country"]
RETAIL_MAP = """user_id = CustomerID
event_id = InvoiceNo
ts = InvoiceDate
ts.format = %m/%d/%Y %H:%M
type = "purchase"
amount = Quantity * UnitPrice
item = StockCode
category = Country
attrs.quantity = Quantity
"""


def produce(bootstrap, mapping, path, *extra):
    return subprocess.run([PRODUCE, "--brokers", bootstrap, "--mapping", mapping, *extra, path],
                          capture_output=True, text=True, timeout=300)




def read_events(bootstrap, n):
    reader = avro_reader("user_event.avsc")
    rows = consume(bootstrap, "events", expect=n)
    out = []
    for part, off, key, value, _ in rows:
        e = decode_confluent(reader, value)[1]
        out.append((part, off, e))
    return out


def in_time_order(events):
    by_part = {}
    for part, off, e in sorted(events, key=lambda x: (x[0], x[1])):
        by_part.setdefault(part, []).append(ts_ms(e["ts"]))
    return all(t == sorted(t) for t in by_part.values())


def card_fraud(tmp, broker):
    rng = random.Random(7)
    with open(os.path.join(DATA, "sparkov-transactions-sample.csv")) as f:
        sample = list(csv.DictReader(f))[:N_FRAUD]
    path = os.path.join(tmp, "fraudTrain.csv")
    rows = []
    for i, r in enumerate(sample):
        t = int(r["unix_time"])
        rows.append([str(i), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)), r["cc_num"],
                     r["merchant"], r["category"], r["amt"], "Jennifer", "Banks", "F",
                     "561 Perry Cove", "Moravian Falls", "NC", "28654", r["lat"], r["long"],
                     "3495", "Psychologist, counselling", "1988-03-09", r["trans_num"],
                     str(t), r["merch_lat"], r["merch_long"], r["is_fraud"]])
    rng.shuffle(rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FRAUD_HEADER)
        w.writerows(rows)
    mapping = os.path.join(tmp, "fraud.map")
    with open(mapping, "w") as f:
        f.write(FRAUD_MAP)
    r = produce(broker.bootstrap, mapping, path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "100%" in r.stderr or "done:" in r.stderr, r.stderr[-500:]
    events = read_events(broker.bootstrap, N_FRAUD)
    expect = {s["trans_num"]: s for s in sample}
    assert len(events) == N_FRAUD
    for _, _, e in events:
        s = expect[e["event_id"]]
        assert e["user_id"] == s["cc_num"] and e["type"] == "payment", e
        assert ts_ms(e["ts"]) == int(s["unix_time"]) * 1000, (e["ts"], s["unix_time"])
        assert abs(e["amount"] - float(s["amt"])) < 1e-9 and e["item"] == s["merchant"], e
        assert e["category"] == s["category"], e
        assert e["attrs"] == {k: float(s[k]) for k in ("lat", "long", "merch_lat", "merch_long")}
    assert in_time_order(events), "a partition out of event-time order"
    log(f"card-fraud 23-column layout: {N_FRAUD} shuffled rows produced in time order, every "
        "event equal to its row under the mapping")
    return N_FRAUD


def retail(tmp, broker, before):
    rng = random.Random(11)
    path = os.path.join(tmp, "retail.csv")
    start = 1291190400  # 2010-12-01 08:00 UTC
    rows = []
    for i in range(N_RETAIL):
        t = start + 60 * rng.randrange(0, 20000)
        q, price = rng.randrange(1, 48), rng.choice([0.85, 1.25, 2.55, 3.75, 12.5])
        rows.append([f"5{36000 + i}", f"2{rng.randrange(1000, 9999)}", "WHITE MUG, LARGE", str(q),
                     time.strftime("%-m/%-d/%Y %-H:%M", time.gmtime(t)), str(price),
                     str(12000 + rng.randrange(0, 80)), rng.choice(["United Kingdom", "France"])])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RETAIL_HEADER)
        w.writerows(rows)
    mapping = os.path.join(tmp, "retail.map")
    with open(mapping, "w") as f:
        f.write(RETAIL_MAP)
    r = produce(broker.bootstrap, mapping, path, "--rate", "2000")
    assert r.returncode == 0, r.stderr[-2000:]
    events = [e for _, _, e in read_events(broker.bootstrap, before + N_RETAIL)
              if e["type"] == "purchase"]
    assert len(events) == N_RETAIL
    byid = {row[0]: row for row in rows}
    for e in events:
        row = byid[e["event_id"]]
        assert e["user_id"] == row[6] and e["item"] == row[1] and e["category"] == row[7], e
        assert abs(e["amount"] - int(row[3]) * float(row[5])) < 1e-9, (e, row)
        assert e["attrs"] == {"quantity": float(row[3])}, e
    with Daemon(broker.bootstrap, "segments.k=0") as d:
        d.wait_assigned()
        wait_for("cohortd caught up",
                 lambda: caught_up(d, broker.bootstrap, PARTITIONS, before + N_RETAIL), [d])
        profiles = consume(broker.bootstrap, "profiles", expect=before + N_RETAIL)
        assert d.stop() == 0
    assert len(profiles) >= before + N_RETAIL
    log(f"retail invoice lines: {N_RETAIL} rows (amount = Quantity * UnitPrice, dates m/d/Y H:M) "
        f"produced and equal to their rows; cohortd published {len(profiles)} profile updates "
        f"for {before + N_RETAIL} events")
    return path, mapping


def errors(tmp, broker, retail_csv, retail_map):
    sent = sum(end_offsets(broker.bootstrap, PARTITIONS).values())
    with open(retail_csv) as f:
        lines = f.read().splitlines()
    cols = next(csv.reader([lines[5]]))
    cols[3] = "six"
    bad_csv = os.path.join(tmp, "bad.csv")
    with open(bad_csv, "w", newline="") as f:
        f.write("\n".join(lines[:5]) + "\n")
        csv.writer(f).writerow(cols)
        f.write("\n".join(lines[6:]) + "\n")
    r = produce(broker.bootstrap, retail_map, bad_csv)
    assert r.returncode == 1 and f"{bad_csv}:6:4 (Quantity): 'six' is not a number" in r.stderr, \
        r.stderr[-1000:]
    bad_map = os.path.join(tmp, "bad.map")
    with open(bad_map, "w") as f:
        f.write(RETAIL_MAP.replace("category = Country", "category = Land"))
    r = produce(broker.bootstrap, bad_map, retail_csv)
    assert r.returncode == 1 and f"{bad_map}:8: 'Land' is not a column of {retail_csv}" in r.stderr \
        and "columns: InvoiceNo, StockCode" in r.stderr, r.stderr[-1000:]
    after = sum(end_offsets(broker.bootstrap, PARTITIONS).values())
    assert after == sent, "something was sent despite the errors"
    log("a bad row and a bad mapping: exit 1, FILE:LINE:COLUMN and MAPPING:LINE errors, "
        "nothing sent")


JSONL_MAP = """user_id = customer.id
event_id = invoice
ts = at
ts.format = iso8601
type = "purchase"
amount = line.quantity * line.unit_price
item = line.stock_code
category = customer.country
attrs.quantity = line.quantity
"""


def jsonl(tmp, broker, retail_csv, before):
    with open(retail_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    path = os.path.join(tmp, "retail.jsonl")
    objs = []
    for r in rows:
        t = time.strptime(r["InvoiceDate"], "%m/%d/%Y %H:%M")
        objs.append({"invoice": "J" + r["InvoiceNo"], "at": time.strftime("%Y-%m-%dT%H:%M:00Z", t),
                     "customer": {"id": int(r["CustomerID"]), "country": r["Country"]},
                     "line": {"stock_code": r["StockCode"], "quantity": int(r["Quantity"]),
                              "unit_price": float(r["UnitPrice"]), "tags": ["mug"]}})
    with open(path, "w") as f:
        f.write("".join(json.dumps(o) + "\n" for o in objs))
    mapping = os.path.join(tmp, "retail-jsonl.map")
    with open(mapping, "w") as f:
        f.write(JSONL_MAP)
    r = produce(broker.bootstrap, mapping, path)
    assert r.returncode == 0, r.stderr[-2000:]
    events = {e["event_id"]: e for _, _, e in read_events(broker.bootstrap, before + len(objs))
              if e["event_id"].startswith("J")}
    assert len(events) == len(objs), f"{len(events)} of {len(objs)} JSON lines"
    for o in objs:
        e = events[o["invoice"]]
        want_ts = calendar.timegm(time.strptime(o["at"], "%Y-%m-%dT%H:%M:%SZ"))
        assert e["user_id"] == str(o["customer"]["id"]) and e["item"] == o["line"]["stock_code"], e
        assert e["category"] == o["customer"]["country"] and ts_ms(e["ts"]) == want_ts * 1000, e
        assert abs(e["amount"] - o["line"]["quantity"] * o["line"]["unit_price"]) < 1e-9, e
    sent = sum(end_offsets(broker.bootstrap, PARTITIONS).values())
    lines = open(path).read().splitlines()
    six = dict(objs[8], line=dict(objs[8]["line"], quantity="six"))
    cases = [(7, lines[6][:-3], f"{path}:7:"),
             (9, json.dumps(six), f"{path}:9 (field line.quantity): 'six' is not a number"),
             (4, json.dumps(dict(objs[3], customer={"country": "France"})),
              f"{path}:4 (field customer.id): empty user id")]
    for n, text, words in cases:
        bad = lines[:]
        bad[n - 1] = text
        with open(path, "w") as f:
            f.write("\n".join(bad) + "\n")
        r = produce(broker.bootstrap, mapping, path)
        assert r.returncode == 1 and words in r.stderr, (words, r.stderr[-1000:])
    assert sum(end_offsets(broker.bootstrap, PARTITIONS).values()) == sent, "bad files sent"
    log(f"JSON Lines: {len(objs)} nested invoice lines (ISO-8601 times, integer customer ids) "
        f"mapped by dotted paths, every event equal to its line; malformed JSON, a bad number "
        f"and a missing field: exit 1 with FILE:LINE errors, nothing sent")


def main():
    tmp = tempfile.mkdtemp(prefix="cohort-produce-")
    with Broker(partitions=PARTITIONS) as broker:
        n = card_fraud(tmp, broker)
        retail_csv, retail_map = retail(tmp, broker, n)
        errors(tmp, broker, retail_csv, retail_map)
        jsonl(tmp, broker, retail_csv, n + N_RETAIL)
        broker.stop()
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
