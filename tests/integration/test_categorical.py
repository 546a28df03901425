"""Categorical features (issue 14, item 4) on both shared datasets, replayed through
cohortd, against a direct offline computation (harness offline_features: filters by
set membership, share as a ratio of decayed sums, distinct as the exact set of values
in the window):

- filters on type, item and category, with = and != (a missing category passes !=);
- share of the filtered events in all events (decayed);
- distinct(item|category) window=W k=K: equal to the exact count for every user whose
  window holds fewer than 3K values (all are kept), which at these K is every user of
  both samples, many with more than K values (reported); beyond 3K, within 4 standard
  errors of the sketch (1 / sqrt(K - 2)). The estimate itself is measured by the unit
  test (10,000 values, K = 256): at K <= 8 its tail is too wide to bound usefully.
"""
import csv
import math
import os
import re
import sys
import tempfile

from harness import (DATA, REPLAY, SCHEMAS, Broker, Daemon, avro_reader, consume,
                     decode_confluent, log, offline_features, rees46_rows, run)

REL = 1e-5  # float32 outputs
REES46 = [
    ("views_1h", "count type=view half_life=1h"),
    ("not_views_1h", "count type!=view half_life=1h"),
    ("phones_1h", "count category=electronics.smartphone half_life=1h"),
    ("not_phones_1h", "count category!=electronics.smartphone half_life=1h"),
    ("cart_share", "share type=cart|purchase half_life=30m default=-1"),
    ("phone_share", "share category=electronics.smartphone|electronics.audio.headphone "
                    "half_life=1h"),
    ("items_30m", "distinct(item) window=30m k=32"),
    ("cats_1h", "distinct(category) window=1h k=4"),
    ("phone_items", "distinct(item) type=view category=electronics.smartphone window=1h k=16"),
]
SPARKOV = [
    ("groc_1d", "count category=grocery_pos|gas_transport half_life=1d"),
    ("spend_other_1d", "sum(amount) category!=grocery_pos|gas_transport half_life=1d"),
    ("groc_share_7d", "share category=grocery_pos|gas_transport half_life=7d"),
    ("merchants_1d", "distinct(item) window=1d k=16"),
    ("cats_7d", "distinct(category) window=7d k=8"),
    ("net_merchants", "distinct(item) category=shopping_net|misc_net window=7d k=8"),
]


def write_conf(tmp, name, features):
    path = os.path.join(tmp, f"{name}.conf")
    with open(path, "w") as f:
        f.write(f"schema.dir = {SCHEMAS}\nsegments.k = 0\nmodel.path =\n"
                "features.half_life = 1h\n")
        for n, spec in features:
            f.write(f"feature.{n} = {spec}\n")
    return path


def rees46_users():
    users = {}
    for ts, ty, item, cat, price, user in rees46_rows():
        fields = {"amount": price, "@item": item}
        if cat:
            fields["@category"] = cat
        users.setdefault(user, []).append((ts, ty, fields))
    return users


def sparkov_users():
    users = {}
    with open(os.path.join(DATA, "sparkov-transactions-sample.csv"), newline="") as f:
        for r in csv.DictReader(f):
            users.setdefault(r["cc_num"], []).append(
                (int(r["unix_time"]) * 1000, "payment",
                 {"amount": float(r["amt"]), "@item": r["merchant"], "@category": r["category"]}))
    return users


FILES = {"rees46": "rees46-2019-oct-sample.csv", "sparkov": "sparkov-transactions-sample.csv"}


def replay(dataset, conf, n):
    reader = avro_reader("profile_update.avsc")
    with Broker(partitions=4) as broker, Daemon(broker.bootstrap, conf=conf) as d:
        d.wait_assigned()
        run([REPLAY, "--brokers", broker.bootstrap, "--dataset", dataset, "--quiet", "--file",
             os.path.join(DATA, FILES[dataset]), "--limit", str(n)])
        msgs = consume(broker.bootstrap, "profiles", expect=n)
        assert d.stop() == 0
    assert len(msgs) == n, f"{len(msgs)} profile updates for {n} events"
    last = {}
    for part, off, _, value, _ in sorted(msgs, key=lambda m: (m[0], m[1])):
        rec = decode_confluent(reader, value)[1]
        last[rec["user_id"]] = rec["features"]
    return last


def compare(what, features, users, got):
    assert set(got) == set(users), f"{what}: {len(got)} users vs {len(users)}"
    beyond_k = {n: 0 for n, s in features if s.startswith("distinct")}
    errors = []
    worst = 0.0
    for u, evs in users.items():
        _, ref = offline_features(evs, features, "1h")
        for (name, spec), a, b in zip(features, got[u], ref):
            if spec.startswith("distinct"):
                k = int(re.search(r"k=(\d+)", spec).group(1))
                if b < 3 * k:
                    assert a == b, f"{what}: user {u} {name} = {a}, exactly {b}"
                else:
                    errors.append(abs(a / b - 1))
                    assert abs(a / b - 1) <= 4 / math.sqrt(k - 2), \
                        f"{what}: user {u} {name} = {a}, exactly {b} (k = {k})"
                beyond_k[name] += b >= k
                continue
            err = abs(a - b) / max(1.0, abs(b))
            assert err < REL, f"{what}: user {u} {name} = {a}, offline {b}"
            worst = max(worst, err)
    nonzero = {name: sum(1 for u in users if got[u][i] not in (0, -1))
               for i, (name, _) in enumerate(features)}
    assert all(nonzero.values()), f"{what}: a feature never fires: {nonzero}"
    log(f"{what}: {len(users)} users, {len(features)} categorical features equal the offline "
        f"computation (worst relative {worst:.1e}); distinct() exact for every user whose "
        f"window held fewer than 3k values, including those with more than k "
        f"({beyond_k}); {len(errors)} answers beyond 3k within 4 standard errors (mean "
        f"relative error {sum(errors) / max(1, len(errors)):.1%})")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        users = rees46_users()
        n = sum(len(v) for v in users.values())
        got = replay("rees46", write_conf(tmp, "rees46", REES46), n)
        compare("REES46 clickstream", REES46, users, got)
        users = sparkov_users()
        n = sum(len(v) for v in users.values())
        got = replay("sparkov", write_conf(tmp, "sparkov", SPARKOV), n)
        compare("sparkov card transactions", SPARKOV, users, got)
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
