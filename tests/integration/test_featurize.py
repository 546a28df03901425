"""cohortd featurize against the daemon itself, on both shared data sets.

The daemon consumes the data sets as cohort-replay sends them (emit policy "every": one
profile update per event); featurize reads the same events from files, with no broker:
the REES46 clickstream as its own CSV (mapped by input.map.* keys), the sparkov card
transactions as an Avro object container file (deflate) and as JSON Lines, plain,
gzip and on standard input. Every row must equal its profile update's features bit for
bit (float32), for counts with filters and negated filters, sums, means, std, max,
since_last, since_prev, share, distinct (windowed or not) and ratio; and since_prev
(the gap between a user's two latest matching events) equals a direct computation from
the data files at every row.

Then: labels joined by event id (all, a subset with label times, --labeled-only), and
bad records (a cut-short line, a non-number, an empty user, a bad time, an infinite
amount), stopping with FILE:LINE or, with --skip-bad, listed in the reject file and
counted, while a quoted field holding a comma, a quote and a newline (RFC 4180) is
read as one cell.
"""
import csv
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

import avro.datafile
import avro.io
import avro.schema

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tools"))
import train_example  # noqa: E402  (its mapping of the sample: SPARKOV_MAP)

from harness import (COHORTD, CONF, DATA, REPLAY, SCHEMAS, Broker, Daemon, avro_reader, consume,
                     decode_confluent, log, rees46_rows, run, sparkov_rows)

REES_FEATURES = """
features.half_life = 1h
feature.n_1h = count half_life=1h
feature.n_view_1d = count type=view half_life=1d
feature.n_cart_1d = count type=cart|purchase half_life=1d
feature.not_view_7d = count type!=view half_life=7d
feature.price_mean_1h = mean(amount) half_life=1h
feature.price_std_1d = std(amount) half_life=1d
feature.price_max_1d = max(amount) half_life=1d
feature.price_sum = sum(amount) half_life=inf
feature.secs_since_cart = since_last type=cart default=1e7
feature.secs_between_carts = since_prev type=cart default=1e7
feature.cart_share = share type=cart|purchase
feature.n_items_1h = distinct(item) window=1h k=1024
feature.n_cats = distinct(category) k=32
feature.cart_per_view = ratio(n_cart_1d, n_view_1d) default=0
"""

SPARKOV_FEATURES = """
features.half_life = 1d
feature.n_1h = count half_life=1h
feature.n_1d = count half_life=1d
feature.amt_mean_7d = mean(amount) half_life=7d
feature.amt_std_7d = std(amount) half_life=7d
feature.amt_max_1d = max(amount) half_life=1d
feature.lat_mean = mean(attrs.lat) half_life=7d
feature.grocery_share = share category=grocery_pos|grocery_net
feature.n_cats_7d = distinct(category) window=7d k=16
feature.n_merchants = distinct(item) k=128
feature.gas_1d = count category=gas_transport half_life=1d
feature.not_gas_1d = count category!=gas_transport half_life=1d
feature.burst = ratio(n_1h, n_1d) default=0
feature.since_pay = since_last type=payment default=1e7
feature.since_prev_pay = since_prev type=payment default=1e7
"""

REES_MAP = ["input.map.ts=event_time", "input.map.type=event_type", "input.map.amount=price",
            "input.map.item=product_id", "input.map.category=category_code"]
REES = os.path.join(DATA, "rees46-2019-oct-sample.csv")
REES_EVENTS = 17434  # the sample's last line is cut short
SPARKOV = os.path.join(DATA, "sparkov-transactions-sample.csv")


def config(features, tmp, name):
    """The shipped config without its features (paths made absolute), with these."""
    with open(CONF) as f:
        lines = [l for l in f if not re.match(r"\s*(feature\.|features\.|tags\.)", l)]
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.writelines(lines)
        f.write(f"schema.dir = {SCHEMAS}\nmodel.path =\nsegments.k = 0\n")
        f.write(features)
    return path


def f32(v):
    return struct.pack("<f", float(v))


def featurize(conf, inputs, *args, sets=(), stdin=None, expect_rc=0):
    cmd = [COHORTD, "featurize", "--config", conf]
    for s in sets:
        cmd += ["--set", s]
    cmd += list(args) + list(inputs)
    r = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=600)
    assert r.returncode == expect_rc, f"{cmd} exited {r.returncode}: {r.stderr.decode()[-2000:]}"
    return r


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def daemon_profiles(conf, replay_args, n):
    """user -> [(event_id, [float32 bytes...])] in partition order, from the daemon."""
    reader = avro_reader("profile_update.avsc")
    with Broker(partitions=4) as broker, \
            Daemon(broker.bootstrap, "emit.policy=every", "model.path=", "segments.k=0",
                   conf=conf) as d:
        d.wait_assigned()
        run([REPLAY, "--brokers", broker.bootstrap, "--quiet"] + replay_args)
        msgs = consume(broker.bootstrap, "profiles", expect=n)
        assert d.stop() == 0
    assert len(msgs) == n, f"{len(msgs)} profile updates for {n} events"
    users = {}
    for part, off, _, value, _ in sorted(msgs, key=lambda m: (m[0], m[1])):
        _, rec = decode_confluent(reader, value)
        users.setdefault(rec["user_id"], []).append(
            (rec["event_id"], [f32(v) for v in rec["features"]]))
    return users


def compare(what, rows, names, daemon, match_ids):
    """Featurize rows (in output order) against the daemon's updates, per user."""
    mine = {}
    for r in rows:
        mine.setdefault(r["user_id"], []).append(
            (r["event_id"], [f32(r[n]) for n in names]))
    assert set(mine) == set(daemon), f"{what}: users differ"
    n_vals = 0
    for u, seq in daemon.items():
        got = mine[u]
        assert len(got) == len(seq), f"{what}: user {u}: {len(got)} rows, {len(seq)} updates"
        for k, ((eid, ref), (geid, vals)) in enumerate(zip(seq, got)):
            if match_ids:
                assert eid == geid, f"{what}: user {u} row {k}: event {geid}, daemon {eid}"
            for i, (a, b) in enumerate(zip(ref, vals)):
                if a != b:
                    raise AssertionError(
                        f"{what}: user {u} event {k} feature {names[i]}: featurize "
                        f"{struct.unpack('<f', b)[0]!r}, daemon {struct.unpack('<f', a)[0]!r}")
                n_vals += 1
    log(f"{what}: {len(rows)} rows, {len(mine)} users, {n_vals} feature values equal the "
        f"daemon's bit for bit")


def check_since_prev(what, rows, events, name, dflt):
    """A since_prev column against the data itself: events = [(user, ts_ms, matches)] in
    file order; per user in stable time order (featurize's --order time), the value after
    each event is the gap between the two latest matching times so far, in seconds."""
    per_user = {}
    for user, ts, matches in events:
        per_user.setdefault(user, []).append((ts, matches))
    want = {}
    for user, evs in per_user.items():
        top, vals = [], []
        for ts, matches in sorted(evs, key=lambda e: e[0]):
            if matches:
                top = sorted(top + [ts], reverse=True)[:2]
            vals.append(f32((top[0] - top[1]) / 1000.0 if len(top) == 2 else dflt))
        want[user] = vals
    got = {}
    for r in rows:
        got.setdefault(r["user_id"], []).append(f32(r[name]))
    assert got == want, f"{what}: {name} differs from the direct computation for " \
                        f"{sum(got.get(u) != v for u, v in want.items())} users"
    gaps = sum(v != f32(dflt) for vals in want.values() for v in vals)
    log(f"{what}: {name} equals the direct computation at all {len(rows)} rows "
        f"({gaps} with a gap, the rest before a second match)")


def feature_names(conf):
    r = run([COHORTD, "--config", conf, "--set", "kafka.bootstrap.servers=x", "--check-config"])
    return re.findall(r"^feature\.([A-Za-z0-9_.-]+) = ", r.stdout, re.M)


def rees46(tmp):
    conf = config(REES_FEATURES, tmp, "rees.conf")
    names = feature_names(conf)
    daemon = daemon_profiles(conf, ["--dataset", "rees46", "--file", REES,
                                    "--limit", str(REES_EVENTS)], REES_EVENTS)
    out = os.path.join(tmp, "rees.csv")
    r = featurize(conf, [REES], "-o", out, "--skip-bad", sets=REES_MAP)
    rows = read_rows(out)
    with open(out + ".rejects.csv", newline="") as f:
        rej = list(csv.DictReader(f))
    # the real sample's last line is cut short: one reject, named, counted
    assert [(x["where"], x["reason"]) for x in rej] == [(f"{REES}:17436", "decode_error")], rej
    assert "1 bad" in r.stderr.decode(), r.stderr.decode()
    compare("rees46 CSV", rows, names, daemon, match_ids=False)
    check_since_prev("rees46 CSV", rows,
                     [(u, ts, ty == "cart") for ts, ty, _, _, _, u in rees46_rows(REES)],
                     "secs_between_carts", 1e7)
    # gzip and standard input give the same bytes
    gz = os.path.join(tmp, "rees.csv.gz")
    with open(REES, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    out_gz = os.path.join(tmp, "rees_gz.csv")
    featurize(conf, [gz], "-o", out_gz, "--skip-bad", "--quiet", sets=REES_MAP)
    with open(REES, "rb") as f:
        r = featurize(conf, ["-"], "--input-format", "csv", "--skip-bad", "--quiet",
                      "--rejects", os.path.join(tmp, "stdin.rejects.csv"), sets=REES_MAP,
                      stdin=f.read())
    with open(out, "rb") as a, open(out_gz, "rb") as b:
        ref = a.read()
        assert b.read() == ref, "gzip input gave other rows"
    assert r.stdout == ref, "standard input gave other rows"
    # --order file on a file in time order folds the same
    r = featurize(conf, [REES], "--order", "file", "--skip-bad", "--quiet",
                  "--rejects", os.path.join(tmp, "o.rejects.csv"), sets=REES_MAP)
    assert r.stdout == ref, "--order file differs on a file in time order"
    log("rees46: gzip, standard input and --order file give the same bytes")
    bad_records(conf, tmp, names, ref)


def bad_records(conf, tmp, names, ref):
    """Bad lines among good ones: stop at the first, or reject each and keep the rest."""
    with open(REES, newline="") as f:
        lines = f.read().split("\n")
    head, body = lines[0], lines[1:2001]

    def broken(i, col, value):
        c = body[i].split(",")
        c[col] = value
        return ",".join(c)

    bad = {10: (broken(10, 6, "abc"), "decode_error"),  # price not a number
           50: (broken(50, 7, ""), "empty_user_id"),
           120: (broken(120, 0, "2019-13-45 99:00:00 UTC"), "decode_error"),  # no such time
           400: (broken(400, 6, "inf"), "non_finite")}
    # a good row whose brand holds a comma, a quote and a newline (two physical lines)
    quoted = broken(7, 5, '"acme, ""best""\nbrand"')
    records = [(head, None)]
    for i, line in enumerate(body):
        if i in bad:
            records.append(bad[i])
        records.append((line, None))
        if i == 7:
            records.append((quoted, None))
    expect, n = [], 1
    for text, why in records:
        if why:
            expect.append((n, why))
        n += text.count("\n") + 1
    path = os.path.join(tmp, "bad.csv")
    with open(path, "w", newline="") as f:
        f.write("\n".join(t for t, _ in records) + "\n")
    # the reference: the same good rows without the bad ones, the quoted brand plain
    clean = [head] + body[:8] + [body[7]] + body[8:]
    clean_path = os.path.join(tmp, "clean.csv")
    with open(clean_path, "w", newline="") as f:
        f.write("\n".join(clean) + "\n")
    first = min(expect)
    r = featurize(conf, [path], "-o", os.path.join(tmp, "x.csv"), sets=REES_MAP, expect_rc=1)
    err = r.stderr.decode()
    assert f"{path}:{first[0]}: {first[1]}" in err, err
    out = os.path.join(tmp, "bad_out.csv")
    r = featurize(conf, [path], "-o", out, "--skip-bad", sets=REES_MAP)
    with open(out + ".rejects.csv", newline="") as f:
        rej = [(x["where"], x["reason"]) for x in csv.DictReader(f)]
    want = [(f"{path}:{n}", why) for n, why in expect]
    assert rej == want, f"rejects {rej}, expected {want}"
    assert f"{len(want)} bad" in r.stderr.decode(), r.stderr.decode()
    r2 = featurize(conf, [clean_path], "--quiet", sets=REES_MAP)
    with open(out, "rb") as f:
        assert f.read() == r2.stdout, "the good rows among bad ones differ from a clean file's"
    log(f"bad records: stopped at {first[0]} ({first[1]}); with --skip-bad {len(want)} rejected "
        f"({', '.join(w for _, w in want)}), the quoted multi-line cell read as one, the good "
        f"rows equal a clean file's")


def sparkov_files(tmp):
    """The sparkov events as cohort-replay sends them: an Avro container and JSON Lines."""
    events = list(sparkov_rows())
    with open(SPARKOV, newline="") as f:
        raw = {row["trans_num"]: row for row in csv.DictReader(f)}
    recs = []
    for e in events:
        src = raw[e["event_id"]]
        recs.append({"event_id": e["event_id"], "user_id": e["user_id"], "ts": e["ts"],
                     "type": "payment", "amount": e["fields"]["amount"],
                     "item": src["merchant"], "category": src["category"],
                     "attrs": {k[6:]: v for k, v in e["fields"].items()
                               if k.startswith("attrs.")}})
    with open(os.path.join(SCHEMAS, "user_event.avsc")) as f:
        schema_json = re.sub(r',\s*"logicalType"\s*:\s*"timestamp-millis"', "", f.read())
    ocf = os.path.join(tmp, "sparkov.avro")
    with open(ocf, "wb") as f:
        w = avro.datafile.DataFileWriter(f, avro.io.DatumWriter(), avro.schema.parse(schema_json),
                                         codec="deflate")
        for rec in recs:
            w.append(rec)
        w.close()
    jl = os.path.join(tmp, "sparkov.jsonl")
    with open(jl, "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")
    return ocf, jl, events


def sparkov(tmp):
    conf = config(SPARKOV_FEATURES, tmp, "sparkov.conf")
    names = feature_names(conf)
    ocf, jl, events = sparkov_files(tmp)
    daemon = daemon_profiles(conf, ["--dataset", "sparkov", "--file", SPARKOV], len(events))
    out = os.path.join(tmp, "sparkov.csv")
    featurize(conf, [ocf], "-o", out)
    rows = read_rows(out)
    compare("sparkov Avro container", rows, names, daemon, match_ids=True)
    check_since_prev("sparkov Avro container", rows,
                     [(e["user_id"], e["ts"], True) for e in events], "since_prev_pay", 1e7)
    with open(out, "rb") as f:
        ref = f.read()
    r = featurize(conf, [jl], "--quiet")
    assert r.stdout == ref, "JSON Lines gave other rows than the Avro container"
    jgz = jl + ".gz"
    with open(jl, "rb") as f, gzip.open(jgz, "wb") as g:
        g.write(f.read())
    with open(jgz, "rb") as f:
        r = featurize(conf, ["-"], "--input-format", "jsonl", "--quiet", stdin=f.read())
    assert r.stdout == ref, "gzip JSON Lines on standard input gave other rows"
    # two files in one run: the same rows as one file holding both halves
    half = len(events) // 2
    with open(jl) as f:
        lines = f.readlines()
    a, b = os.path.join(tmp, "a.jsonl"), os.path.join(tmp, "b.jsonl")
    with open(a, "w") as f:
        f.writelines(lines[:half])
    with open(b, "w") as f:
        f.writelines(lines[half:])
    r = featurize(conf, [a, b], "--quiet")
    assert r.stdout == ref, "two files gave other rows than one"
    log("sparkov: JSON Lines, gzip on standard input and two files give the Avro container's "
        "bytes")
    labels(conf, tmp, ocf, events, rows)
    return ocf, events


def labels(conf, tmp, ocf, events, rows):
    lab = os.path.join(tmp, "labels.csv")
    with open(lab, "w") as f:
        f.write("trans_num,is_fraud\n")
        for e in events:
            f.write(f"{e['event_id']},{e['label']}\n")
    twice = os.path.join(tmp, "labels_twice.csv")  # a repeated id: the last label wins
    with open(lab) as f, open(twice, "w") as g:
        g.write(f.read() + f"{events[0]['event_id']},{1 - events[0]['label']}\n")
    r = featurize(conf, [ocf], "--labels", twice, "--format", "jsonl")
    first = json.loads(r.stdout.decode().splitlines()[0])
    assert first["event_id"] == events[0]["event_id"] and \
        first["label"] == 1 - events[0]["label"], first
    assert "0 label(s) matched no event" in r.stderr.decode(), r.stderr.decode()
    out = os.path.join(tmp, "labelled.csv")
    featurize(conf, [ocf], "-o", out, "--labels", lab)
    got = read_rows(out)
    want = {e["event_id"]: e["label"] for e in events}
    assert len(got) == len(rows)
    assert all(float(r["label"]) == want[r["event_id"]] for r in got), "labels joined wrongly"
    n_fraud = sum(float(r["label"]) for r in got)
    # a third of the events labelled, with label times; the rest empty or dropped
    sub = os.path.join(tmp, "sub.csv")
    chosen = {e["event_id"]: e for k, e in enumerate(events) if k % 3 == 0}
    with open(sub, "w") as f:
        f.write("event_id,label,label_time\n")
        for eid, e in chosen.items():
            f.write(f"{eid},{e['label']},{e['ts'] + 86400000}\n")
    r = featurize(conf, [ocf], "--labels", sub, "--format", "jsonl")
    js = [json.loads(l) for l in r.stdout.decode().splitlines()]
    assert len(js) == len(events)
    for j in js:
        if j["event_id"] in chosen:
            e = chosen[j["event_id"]]
            assert j["label"] == e["label"] and j["label_time"] == e["ts"] + 86400000, j
        else:
            assert j["label"] is None and j["label_time"] is None, j
    assert f"{len(chosen)} row(s) labelled, {len(events) - len(chosen)} without" in \
        r.stderr.decode(), r.stderr.decode()
    r = featurize(conf, [ocf], "--labels", sub, "--labeled-only", "--quiet")
    kept = list(csv.DictReader(io.StringIO(r.stdout.decode())))
    assert sorted(x["event_id"] for x in kept) == sorted(chosen), "--labeled-only kept others"
    # with segments, the unlabelled events are still segmented (the segmenter sees every
    # event): the labelled rows equal those of the whole run, segment column included
    segs = ["segments.k=4", "segments.warmup=1000"]
    r = featurize(conf, [ocf], "--labels", sub, "--quiet", sets=segs)
    whole = {x["event_id"]: x for x in csv.DictReader(io.StringIO(r.stdout.decode()))}
    r = featurize(conf, [ocf], "--labels", sub, "--labeled-only", "--quiet", sets=segs)
    kept = list(csv.DictReader(io.StringIO(r.stdout.decode())))
    assert len(kept) == len(chosen) and all(x == whole[x["event_id"]] for x in kept), \
        "--labeled-only changed the segments"
    assert sum(x["segment"] != "" for x in kept) > len(kept) // 2, "few rows segmented"
    log(f"labels: {len(got)} rows joined to is_fraud ({n_fraud:.0f} fraud); a third labelled "
        f"with label times: {len(chosen)} labelled, the rest empty (JSON null) or dropped by "
        f"--labeled-only")


def daemon_risk(n):
    """The shipped config and model on the sparkov replay: event id -> (profile features,
    risk score, alert, reasons) as float32 bytes where float."""
    prof_reader, risk_reader = avro_reader("profile_update.avsc"), avro_reader("risk_update.avsc")
    with Broker(partitions=4) as broker, \
            Daemon(broker.bootstrap, "emit.policy=every", "risk.emit=every", "segments.k=0") as d:
        d.wait_assigned()
        run([REPLAY, "--brokers", broker.bootstrap, "--quiet", "--dataset", "sparkov",
             "--file", SPARKOV])
        profs = consume(broker.bootstrap, "profiles", expect=n)
        risks = consume(broker.bootstrap, "risk", expect=n)
        assert d.stop() == 0
    assert len(profs) == n and len(risks) == n, (len(profs), len(risks))
    out = {}
    for m in profs:
        rec = decode_confluent(prof_reader, m[3])[1]
        out[rec["event_id"]] = [[f32(v) for v in rec["features"]]]
    for m in risks:
        rec = decode_confluent(risk_reader, m[3])[1]
        out[rec["event_id"]] += [f32(rec["score"]), rec["alert"],
                                 [(x["feature"], f32(x["contribution"])) for x in rec["reasons"]]]
    return out


def backtest(tmp, ocf, events):
    """Scores as the daemon's risk updates; the report as sklearn computes it."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import (average_precision_score, log_loss, precision_score,
                                 recall_score, roc_auc_score)
    import numpy as np
    names = feature_names(CONF)
    daemon = daemon_risk(len(events))
    lab = os.path.join(tmp, "labels.csv")
    out, rep = os.path.join(tmp, "scored.csv"), os.path.join(tmp, "report.json")
    model = os.path.join(os.path.dirname(CONF), "models", "risk_mlp.onnx")
    r = featurize(CONF, [ocf], "-o", out, "--labels", lab, "--report", "--report-json", rep,
                  sets=[f"model.challenger_path={model}"])
    rows = read_rows(out)
    assert len(rows) == len(events)
    n_alerts, worst_score, worst_reason, n_exact = 0, 0.0, 0.0, 0
    for row in rows:
        feats, score, alert, reasons = daemon[row["event_id"]]
        assert [f32(row[n]) for n in names] == feats, f"event {row['event_id']}: features"
        # the daemon scores a batch at once, and OpenBLAS may sum a row's products in
        # another order for another batch size: the same to float32 rounding, not bit
        mine_s, ref_s = float(row["score"]), struct.unpack("<f", score)[0]
        n_exact += f32(mine_s) == score
        worst_score = max(worst_score, abs(mine_s - ref_s) / max(abs(ref_s), 1e-30))
        assert abs(mine_s - ref_s) <= 1e-5 * max(abs(ref_s), 1e-3), \
            f"event {row['event_id']}: score {mine_s!r}, daemon {ref_s!r}"
        assert (row["alert"] == "1") == alert
        mine = [(x.split("=")[0], float(x.split("=")[1])) for x in row["reasons"].split(";")
                if x]
        ref_r = [(f, struct.unpack("<f", c)[0]) for f, c in reasons]
        assert [f for f, _ in mine] == [f for f, _ in ref_r], \
            f"event {row['event_id']}: reasons {mine}, daemon {ref_r}"
        for (_, a), (_, b) in zip(mine, ref_r):
            worst_reason = max(worst_reason, abs(a - b) / max(abs(b), 1e-30))
            assert abs(a - b) <= 1e-4 * max(abs(b), 1e-3), (row["event_id"], mine, ref_r)
        assert row["challenger_score"] == row["score"] and row["challenger_alert"] == row["alert"]
        n_alerts += alert
    with open(CONF) as f:
        thr = float(re.search(r"^risk\.threshold\s*=\s*(\S+)", f.read(), re.M).group(1))
    y = np.array([int(float(row["label"])) for row in rows])
    sc = np.array([float(row["score"]) for row in rows])
    with open(rep) as f:
        got = json.load(f)
    assert got["challenger"] is not None
    fig = got["champion"]
    pred = (sc >= thr).astype(int)
    ref = {"roc_auc": roc_auc_score(y, sc), "average_precision": average_precision_score(y, sc),
           "precision": precision_score(y, pred, zero_division=0),
           "recall": recall_score(y, pred), "log_loss": log_loss(y, np.clip(sc, 1e-15, 1 - 1e-15))}
    worst = 0.0
    for k, v in ref.items():
        assert abs(fig[k] - v) <= 1e-9, f"{k}: featurize {fig[k]}, sklearn {v}"
        assert got["challenger"][k] == fig[k]
        worst = max(worst, abs(fig[k] - v))
    assert fig["pairs"] == len(rows) and fig["positives"] == int(y.sum())
    assert fig["alerts"] == int(pred.sum()) == n_alerts == got["champion"]["alerts_all"]
    frac_pos, mean_pred = calibration_curve(y, sc, n_bins=10, strategy="quantile")
    cal = [c for c in fig["calibration"] if c["pairs"] > 0]
    assert len(cal) == len(frac_pos), (cal, frac_pos)
    for c, fp, mp in zip(cal, frac_pos, mean_pred):
        assert abs(c["positive_rate"] - fp) <= 1e-9 and abs(c["mean_score"] - mp) <= 1e-6, \
            (c, fp, mp)
        worst = max(worst, abs(c["positive_rate"] - fp))
    days = (max(e["ts"] for e in events) - min(e["ts"] for e in events)) / 86400000
    assert abs(got["days"] - days) < 1e-9 and \
        abs(fig["alerts_per_day"] - n_alerts / days) < 1e-9, got
    assert "ROC AUC" in r.stderr.decode() and "per day" in r.stderr.decode()
    # the same rows as an Avro container: the same values, typed
    avro_out = os.path.join(tmp, "scored.avro")
    featurize(CONF, [ocf], "-o", avro_out, "--labels", lab, "--quiet",
              sets=[f"model.challenger_path={model}"])
    with open(avro_out, "rb") as f:
        recs = list(avro.datafile.DataFileReader(f, avro.io.DatumReader()))
    assert len(recs) == len(rows)
    for a, row in zip(recs, rows):
        assert a["user_id"] == row["user_id"] and a["event_id"] == row["event_id"]
        assert round(a["event_time"].timestamp() * 1000) == int(row["event_time"])
        for k in names + ["score", "challenger_score"]:
            assert f32(a[k]) == f32(row[k]), (k, a[k], row[k])
        assert a["alert"] == (row["alert"] == "1") and a["label"] == float(row["label"])
        assert [(x["feature"], f32(x["contribution"])) for x in a["reasons"]] == \
            [(x.split("=")[0], f32(x.split("=")[1])) for x in row["reasons"].split(";") if x]
    # the sample's own CSV, mapped by input.map.* keys with a literal type, folds the same
    csv_sets = [s for s in train_example.SPARKOV_MAP] + [f"model.challenger_path={model}"]
    r2 = featurize(CONF, [SPARKOV], "--labels", lab, "--quiet", sets=csv_sets)
    with open(out, "rb") as f:
        assert r2.stdout == f.read(), "the sparkov CSV gave other rows than its Avro container"
    log(f"backtest: {len(rows)} rows scored; against the daemon's risk updates: the same "
        f"alerts ({n_alerts}, {n_alerts / days:.1f} per day) and reasons, {n_exact} scores bit "
        f"for bit, the largest relative difference {worst_score:.1e} in a score and "
        f"{worst_reason:.1e} in a reason's contribution; ROC AUC "
        f"{fig['roc_auc']:.4f}, AP {fig['average_precision']:.4f}, precision "
        f"{fig['precision']:.4f}, recall {fig['recall']:.4f}, log loss {fig['log_loss']:.4f} and "
        f"the calibration deciles equal sklearn's (largest difference {worst:.1e}); the Avro "
        f"container output holds the CSV's values")


def training(tmp):
    """tools/train_example.py trains on featurize's rows: no broker."""
    out = os.path.join(tmp, "models")
    r = run(["/usr/bin/python3", os.path.join(os.path.dirname(train_example.__file__),
                                              "train_example.py"),
             "--build", os.path.dirname(os.path.dirname(COHORTD)), "--data", DATA,
             "--out", out])
    assert "featurize" in r.stdout and "13614 rows" in r.stderr, r.stdout + r.stderr
    same = []
    for name in ("risk_lr.onnx", "risk_mlp.onnx"):
        with open(os.path.join(out, name), "rb") as a, \
                open(os.path.join(os.path.dirname(CONF), "models", name), "rb") as b:
            same.append(a.read() == b.read())
    log(f"train_example: trained on featurize's rows; the models equal the shipped ones byte "
        f"for byte: {dict(zip(('risk_lr', 'risk_mlp'), same))}")


def quoted_filters(tmp):
    """Filter values with spaces, commas and quotes, quoted: counts against the sample."""
    kirlin, rippin = "fraud_Kirlin and Sons", "fraud_Rippin, Kub and Mann"
    conf = config('feature.kirlin = count item="fraud_Kirlin and Sons" half_life=inf\n'
                  'feature.two = count item="fraud_Kirlin and Sons"|"fraud_Rippin, Kub and '
                  'Mann" half_life=inf\n'
                  'feature.not_kirlin = count item!="fraud_Kirlin and Sons" half_life=inf\n'
                  'feature.quote = count item="say \\"hi\\""|"\\\\" half_life=inf\n', tmp,
                  "quoted.conf")
    r = run([COHORTD, "--config", conf, "--set", "kafka.bootstrap.servers=x", "--check-config"])
    assert 'item="fraud_Kirlin and Sons"|"fraud_Rippin, Kub and Mann" half_life=inf' in r.stdout \
        and 'item="say \\"hi\\""|"\\\\" half_life=inf' in r.stdout, r.stdout
    out = os.path.join(tmp, "quoted.csv")
    featurize(conf, [SPARKOV], "-o", out, "-q", sets=train_example.SPARKOV_MAP)
    last, want = {}, {}
    for row in read_rows(out):
        last[row["user_id"]] = row
    with open(SPARKOV, newline="") as f:
        sample = list(csv.DictReader(f))
    for r in sample:
        w = want.setdefault(r["cc_num"], [0, 0, 0])
        m = r["merchant"]
        w[0] += m == kirlin
        w[1] += m in (kirlin, rippin)
        w[2] += m != kirlin
    got = {u: [float(row[n]) for n in ("kirlin", "two", "not_kirlin")] for u, row in last.items()}
    assert got == want, "quoted filter values counted wrong"
    assert all(float(row["quote"]) == 0 for row in last.values())
    n_k = sum(w[0] for w in want.values())
    n_2 = sum(w[1] for w in want.values())
    bad = config('feature.x = count item="fraud_Kirlin half_life=inf\n', tmp, "bad.conf")
    r = subprocess.run([COHORTD, "--config", bad, "--set", "kafka.bootstrap.servers=x",
                        "--check-config"], capture_output=True, text=True)
    assert r.returncode == 2 and "unterminated quote" in r.stderr, (r.returncode, r.stderr)
    log(f"quoted filter values: {n_k} events of '{kirlin}' and {n_2} of it or '{rippin}' "
        f"counted for every user as a direct count of the sample does; the canonical spec "
        f"quotes them (and escapes quotes and backslashes); an unterminated quote stops "
        f"--check-config (exit 2)")


def returning_customer(tmp):
    """state.idle_evict = auto keeps a user whose features include since_last/since_prev:
    a customer back after 210 days (past 20 x the 7d half-life) reads the true gaps."""
    conf = config("features.half_life = 7d\n"
                  "feature.n_7d = count half_life=7d\n"
                  "feature.since_buy = since_last type=purchase default=-1\n"
                  "feature.between_buys = since_prev type=purchase default=-1\n", tmp,
                  "returning.conf")
    day = 86400000
    t0 = 1767225600000
    path = os.path.join(tmp, "returning.csv")
    with open(path, "w") as f:
        f.write("user_id,ts,type\n")
        f.write(f"back,{t0},purchase\n")
        # others keep stream time moving for 210 days: idle eviction runs between them
        for i in range(3000):
            f.write(f"other{i % 50},{t0 + 1000 + i * (210 * day // 3000)},view\n")
        f.write(f"back,{t0 + 210 * day},view\n")
        f.write(f"back,{t0 + 211 * day},purchase\n")
    out = os.path.join(tmp, "returning-rows.csv")
    r = featurize(conf, [path], "-o", out, sets=["input.map.ts=ts", "input.map.type=type",
                                                 "input.map.event_id=", "input.map.amount=",
                                                 "input.map.item=", "input.map.category=",
                                                 "input.map.attrs="])
    back = [row for row in read_rows(out) if row["user_id"] == "back"]
    assert [float(row["since_buy"]) for row in back] == [0, 210 * 86400, 0], back
    assert [float(row["between_buys"]) for row in back] == [-1, -1, 211 * 86400], back
    log(f"a customer back after 210 days (auto idle eviction would be 140 days at 7d "
        f"half-lives) reads since_last = 210 d and since_prev = 211 d, not the defaults")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        returning_customer(tmp)
        quoted_filters(tmp)
        rees46(tmp)
        ocf, events = sparkov(tmp)
        backtest(tmp, ocf, events)
        training(tmp)


if __name__ == "__main__":
    sys.exit(main())
