"""Interest tags (issue 14, item 5): tags.<name> = top(field, N) on the REES46
clickstream sample, replayed through cohortd.

- Every user's last profile update carries, per tag, the user's N heaviest values
  under time decay, equal to a direct decayed count per user and value (filters
  applied) for every user whose top N is not tied (adjacent weights within 1e-9
  relative are ties: their order is not defined by the data); the tied users are
  counted and reported.
- Profile updates with tags use schema id 4 (profile_update_v2.avsc, the field added
  with a default); a reader holding only version 1 (profile_update.avsc) reads them
  unchanged (Avro schema resolution skips the new field).
- A user with more values than slots (the sample's viewers of up to 37 products, with
  the default 4N = 8 slots) gets Space-Saving's bound instead: the value at rank k
  weighs at least the k-th true weight minus the user's total weight / slots.
- /users/<id> shows the same tags.
- cohortd featurize over the sample's CSV gives every row the tags as of its event (one
  column per tag in CSV, a JSON array; a map in JSON Lines and Avro): each user's last
  row equals its last profile update, and every row equals the direct decayed count
  over the user's events up to it (untied, within the slots).
"""
import csv
import io
import json
import os
import subprocess
import sys
import tempfile

import avro.datafile
import avro.io
import avro.schema

from harness import (COHORTD, DATA, REPLAY, SCHEMAS, Broker, Daemon, consume, log, rees46_rows,
                     run)

REES_MAP = ["input.map.ts=event_time", "input.map.type=event_type", "input.map.amount=price",
            "input.map.item=product_id", "input.map.category=category_code"]

# (name, spec, field, type filter, N, half-life ms, slots)
TAGS = [("categories", "top(category, 3) half_life=1h", "category", None, 3, 3.6e6, 12),
        ("viewed", "top(item, 2) type=view half_life=30m slots=40", "item", "view", 2, 1.8e6,
         40),
        ("viewed_small", "top(item, 2) type=view half_life=30m", "item", "view", 2, 1.8e6, 8)]
TIE = 1e-9


def events():
    users, n = {}, 0
    for ts, ty, item, cat, _, user in rees46_rows():
        users.setdefault(user, []).append((ts, ty, item, cat))
        n += 1
    return users, n


def reference(evs, field, type_filter, n, h):
    """(top n values heaviest first, tied?, {value: weight}) by a direct decayed count."""
    q = max(e[0] for e in evs)
    w = {}
    for t, ty, item, cat in evs:
        v = item if field == "item" else cat
        if v and (type_filter is None or ty == type_filter):
            w[v] = w.get(v, 0.0) + 2.0 ** (-(q - t) / h)
    ranked = sorted(w.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    head = [x[1] for x in ranked[:n + 1]]
    tied = any(abs(a - b) <= TIE * max(a, b) for a, b in zip(head, head[1:]))
    return [v for v, _ in ranked[:n]], tied, w


def featurize_rows(rows, users, last):
    """featurize's rows: the tags as of each event, against the daemon and a direct count."""
    assert len(rows) == sum(len(v) for v in users.values()), len(rows)
    seen, last_row = {}, {}
    checked = tied = bounded = 0
    for r in rows:  # in event-time order, ties in file order: each user's events in order
        u = r["user_id"]
        k = seen.get(u, 0) + 1
        seen[u] = k
        evs = users[u][:k]
        assert int(r["event_time"]) == evs[-1][0], (u, k)
        got = {name: json.loads(r[f"tags.{name}"]) for name, *_ in TAGS}
        last_row[u] = got
        for name, _, field, ty, topn, h, slots in TAGS:
            want, is_tied, w = reference(evs, field, ty, topn, h)
            if len(w) > slots:
                bounded += 1
            elif is_tied:
                tied += 1
            else:
                assert got[name] == want, f"row {k} of {u}, tag {name}: {got[name]}, direct {want}"
                checked += 1
    for u, rec in last.items():
        assert last_row[u] == {name: rec["tags"].get(name, []) for name, *_ in TAGS}, \
            f"{u}: featurize's last row {last_row[u]}, the last profile update {rec['tags']}"
    log(f"featurize: {len(rows)} rows carry the tags as of their event: {checked} (row, tag) "
        f"pairs equal a direct decayed count ({tied} tied, {bounded} beyond the slots); every "
        f"user's last row equals its last profile update's tags ({len(last)} users)")


def main():
    users, n = events()
    with open(os.path.join(SCHEMAS, "profile_update_v2.avsc")) as f:
        v2 = avro.schema.parse(f.read())
    with open(os.path.join(SCHEMAS, "profile_update.avsc")) as f:
        v1 = avro.schema.parse(f.read())
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "tags.conf")
        with open(conf, "w") as f:
            f.write(f"schema.dir = {SCHEMAS}\nsegments.k = 0\nmodel.path =\n"
                    "feature.n = count half_life=1h\n")
            for name, spec, *_ in TAGS:
                f.write(f"tags.{name} = {spec}\n")
        with Broker(partitions=4) as broker, Daemon(broker.bootstrap, conf=conf) as d:
            d.wait_assigned()
            run([REPLAY, "--brokers", broker.bootstrap, "--dataset", "rees46", "--quiet",
                 "--file", os.path.join(DATA, "rees46-2019-oct-sample.csv"), "--limit", str(n)])
            msgs = consume(broker.bootstrap, "profiles", expect=n)
            probe = next(iter(users))
            status, _, body = d.get(f"/users/{probe}")
            assert d.stop() == 0
        rows_path = os.path.join(tmp, "rows.csv")
        cmd = [COHORTD, "featurize", "--config", conf, "--skip-bad", "-q", "-o", rows_path,
               "--rejects", os.path.join(tmp, "rejects.csv")]
        for s in REES_MAP:
            cmd += ["--set", s]
        sample = os.path.join(DATA, "rees46-2019-oct-sample.csv")
        subprocess.run(cmd + [sample], check=True, timeout=600)
        with open(rows_path, newline="") as f:
            rows = list(csv.DictReader(f))
        others = {}
        for fmt in ("jsonl", "avro"):  # the same tags as a map
            path = os.path.join(tmp, f"rows.{fmt}")
            subprocess.run([c if c != rows_path else path for c in cmd] + [sample], check=True,
                           timeout=600)
            if fmt == "jsonl":
                others[fmt] = [json.loads(line)["tags"] for line in open(path)]
            else:
                with open(path, "rb") as f:
                    others[fmt] = [r["tags"] for r in avro.datafile.DataFileReader(
                        f, avro.io.DatumReader())]
        for fmt, tags in others.items():
            assert tags == [{name: json.loads(r[f"tags.{name}"]) for name, *_ in TAGS}
                            for r in rows], f"{fmt} rows' tags differ from the CSV's"
    assert len(msgs) == n, f"{len(msgs)} profile updates for {n} events"
    last, old = {}, {}
    for part, off, _, value, _ in sorted(msgs, key=lambda m: (m[0], m[1])):
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") == 4, "not schema id 4"
        rec = avro.io.DatumReader(v2).read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))
        last[rec["user_id"]] = rec
        old[rec["user_id"]] = avro.io.DatumReader(v2, v1).read(
            avro.io.BinaryDecoder(io.BytesIO(value[5:])))
    assert set(last) == set(users)
    checked, tied = {t[0]: 0 for t in TAGS}, {t[0]: 0 for t in TAGS}
    bounded = {t[0]: 0 for t in TAGS}
    for u, evs in users.items():
        rec = last[u]
        assert "tags" not in old[u] and all(old[u][k] == rec[k] for k in old[u]), \
            f"a version-1 reader reads {old[u]}"
        for name, _, field, ty, topn, h, slots in TAGS:
            want, is_tied, w = reference(evs, field, ty, topn, h)
            got = rec["tags"].get(name, [])
            if len(w) > slots:  # beyond the slots: Space-Saving's bound
                ranked = sorted(w.values(), reverse=True)
                slack = sum(ranked) / slots * (1 + 1e-9)
                assert len(got) == min(topn, len(w)) and all(
                    w.get(v, 0.0) >= ranked[k] - slack for k, v in enumerate(got)), \
                    f"user {u} tag {name}: {got} breaks the bound ({sorted(w.items())})"
                bounded[name] += 1
                continue
            if is_tied:
                tied[name] += 1
                continue
            assert got == want, f"user {u} tag {name}: {got}, direct count {want}"
            checked[name] += 1
    assert status == 200 and json.loads(body)["tags"] == last[probe]["tags"], body
    assert all(checked.values())
    featurize_rows(rows, users, last)
    log(f"REES46: tags equal a direct decayed count for {checked} users with an untied "
        f"top N ({tied} tied users skipped); users with more values than slots within "
        f"Space-Saving's bound: {bounded}; schema id 4, readable by a version-1 reader; "
        f"/users/<id> shows the same tags")
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
