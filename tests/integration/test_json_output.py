"""output.format = json: the same outputs as Avro, readable with kcat.

The same 3,000 generated events (1 in 100 malformed) are processed twice, by a daemon
publishing Avro and by one publishing JSON to other topics. Every JSON profile and risk
update must equal the Avro one for the same event, field for field: features,
thresholds and timestamps bit for bit once parsed back to float32; scores and reason
contributions within 1e-6 (sgemm over differently composed batches may round in
another order); segment fields, which depend on how events fall into batches, are
checked for type only. kcat prints the JSON topic as
one parsable object per line. Dead letters stay the original bytes in both modes.
"""
import json
import shutil
import struct
import subprocess
import sys
import time

from harness import (GEN, Broker, Daemon, avro_reader, consume, decode_confluent, log, metric,
                     run, ts_ms)

N, BAD_EVERY = 3000, 100
SEGMENT_FIELDS = {"segment", "segment_generation", "segment_distance", "previous_segment"}


def f32(x):
    return struct.pack("<f", x)


# Scores and contributions come from sgemm over the whole batch; the two runs batch
# events differently, and BLAS may then sum in another order (last-ulp differences).
BATCH_DEPENDENT = ("score", "contribution")


def same(a, b, path=""):
    """Deep equality; floats compared as float32 bits, except batch-dependent ones."""
    if isinstance(a, float) or isinstance(b, float):
        if path.endswith(BATCH_DEPENDENT):
            assert abs(a - b) <= 1e-6 + 1e-5 * abs(a), f"{path}: {a!r} != {b!r}"
        else:
            assert f32(a) == f32(b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def run_daemon(bootstrap, group, *sets):
    good = N - N // BAD_EVERY
    with Daemon(bootstrap, "segments.k=4", "segments.warmup=200", *sets, group=group) as d:
        d.wait_http()
        end = time.time() + 120
        while time.time() < end:
            m = d.metrics()
            if (metric(m, "cohortd_outputs_acked_total", output="risk") >= good and
                    metric(m, "cohortd_outputs_acked_total", output="profile") >= good):
                break
            time.sleep(0.2)
        assert d.stop() == 0, d.log_text()[-2000:]


def main():
    topics = "events,profiles,risk,cohortd-dlq,profiles-json,risk-json"
    good, bad = N - N // BAD_EVERY, N // BAD_EVERY
    with Broker(topics=topics) as b:
        run([GEN, "--brokers", b.bootstrap, "--users", "200", "--events", str(N), "--seed", "21",
             "--bad-every", str(BAD_EVERY), "--quiet"])
        run_daemon(b.bootstrap, "json-avro")
        run_daemon(b.bootstrap, "json-json", "output.format=json",
                   "output.profile_topic=profiles-json", "output.risk_topic=risk-json")

        compared = {}
        for kind, schema in (("profiles", "profile_update.avsc"), ("risk", "risk_update.avsc")):
            reader = avro_reader(schema)
            avro_out = {}
            for _, _, key, v, _ in consume(b.bootstrap, kind, good, idle=2):
                rec = decode_confluent(reader, v)[1]
                rec["ts"] = ts_ms(rec["ts"])
                avro_out[rec["event_id"]] = (key, rec)
            json_out = {}
            for _, _, key, v, _ in consume(b.bootstrap, kind + "-json", good, idle=2):
                rec = json.loads(v)  # each message is one JSON object
                json_out[rec["event_id"]] = (key, rec)
            assert len(avro_out) == len(json_out) == good, (len(avro_out), len(json_out), good)
            assert set(avro_out) == set(json_out)
            for eid, (key, a) in avro_out.items():
                jkey, j = json_out[eid]
                assert key == jkey == j["user_id"].encode(), (key, jkey)
                assert list(j) == [f.name for f in reader.writers_schema.fields], list(j)
                for f in SEGMENT_FIELDS & set(j):
                    assert j[f] is None or isinstance(j[f], (int, float)), (f, j[f])
                same({k: v for k, v in a.items() if k not in SEGMENT_FIELDS},
                     {k: v for k, v in j.items() if k not in SEGMENT_FIELDS}, f"{kind}[{eid}]")
            compared[kind] = len(avro_out)
            if kind == "profiles":
                segs = sum(1 for _, j in json_out.values() if j["segment"] is not None)
                assert segs > good // 2, segs
        log(f"JSON = Avro for {compared['profiles']} profile and {compared['risk']} risk updates "
            f"(fields in schema order; features, thresholds and timestamps bit-identical, scores "
            f"within 1e-6)")

        dlq = consume(b.bootstrap, "cohortd-dlq", 2 * bad, idle=2)
        assert len(dlq) == 2 * bad, len(dlq)
        assert all(v[0] == 0 and len(v) == 24 for (_, _, _, v, _) in dlq)
        log(f"dead letters: {len(dlq)} (both runs), original bytes in JSON mode too")

        kcat = shutil.which("kcat")
        assert kcat, "kcat is installed by tools/install-deps.sh"
        r = subprocess.run([kcat, "-b", b.bootstrap, "-t", "risk-json", "-C", "-o", "beginning",
                            "-e", "-q", "-c", "50"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        objs = [json.loads(ln) for ln in r.stdout.splitlines()]
        assert len(objs) == 50 and all("score" in o for o in objs)
        log("kcat -t risk-json prints one JSON object per line")
        b.stop()
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
