"""Writes the committed seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/).

Run with Debian's /usr/bin/python3 from the repository, CH_BUILD_DIR naming a build
(the state seeds are a real snapshot and changelog records written by cohortd against
the embedded broker, with the shipped configuration and 4 partitions, as fuzz_state
expects):

    CH_BUILD_DIR=build-rel /usr/bin/python3 tests/fuzz/make_seeds.py

The seeds only give the fuzzers a start from valid inputs; the fuzzers find the rest.
"""
import glob
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import (GEN, SRC, Broker, Daemon, caught_up, consume, encode_confluent,  # noqa: E402
                     run, wait_for)

CORPUS = os.path.join(HERE, "corpus")
TEST_SCHEMAS = os.path.join(SRC, "tests", "data", "schemas")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def avro():
    with open(os.path.join(TEST_SCHEMAS, "user_event.avsc")) as f:
        v1 = f.read()
    with open(os.path.join(TEST_SCHEMAS, "user_event_v2.avsc")) as f:
        v2 = f.read()
    e = {"event_id": "e-1", "user_id": "u-1", "ts": 1767225600000, "type": "payment",
         "amount": 12.5, "item": "i-9", "category": "books", "attrs": {"tries": 2.0, "x": -1.0}}
    write("avro", "v1", encode_confluent(v1, 1, e))
    write("avro", "v1_nulls", encode_confluent(v1, 1, dict(e, amount=None, item=None,
                                                              category=None, attrs={})))
    write("avro", "plain", encode_confluent(v1, 1, e)[5:])
    rec = {"user_id": "u-2", "event_id": "e-2", "channel": "web", "ts": 1767225600001,
           "type": "view", "amount": 3.0, "device": {"os": "IOS", "tags": ["a", "b"],
                                                      "fp": b"abcd"},
           "item": None, "category": "toys", "attrs": {"tries": 4}}
    write("avro", "v2", encode_confluent(v2, 7, rec))
    write("avro", "unknown_id", b"\x00\x00\x00\x30\x39" + encode_confluent(v1, 1, e)[5:])
    with open(os.path.join(SRC, "tests", "data", "foreign", "order.avsc")) as f:
        order = f.read().replace(', "logicalType": "timestamp-micros"', "")
    o = {"no": "o-1", "customer": {"id": 4242, "country": "FR"}, "at": 1767225600000123,
         "kind": "REFUND", "line": {"sku": 77, "qty": 3, "price": 2.5}, "extra": {"k": [1, 2]}}
    write("avro", "foreign", encode_confluent(order, 0, o)[5:])  # fuzz_avro's mapped decoder
    write("avro", "foreign_iso", encode_confluent(order, 0, dict(
        o, customer=None, at="2026-01-01T00:00:00.5+01:00", line=dict(o["line"], sku="s"))
    )[5:])


def json_seeds():
    write("json", "ascii", b"user-123 \"quoted\" \\ back")
    write("json", "controls", bytes(range(0, 32)) + b"\x7f")
    write("json", "utf8", "caf\u00e9 \u20ac \U0001f600".encode())
    write("json", "bad_utf8", b"\xc3\x28 \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf \xff")
    write("json", "floats", struct.pack("<fd", 3.14159, -2.5e-310))
    write("json", "event", b'{"event_id": "e-1", "user_id": 4242, "ts": 1767225600000, '
          b'"type": "payment", "amount": 12.5, "item": null, "category": "books", '
          b'"attrs": {"lat": 40.7, "tries": 2}, "extra": [1, {"a": null}]}')
    write("json", "event_bad", b'{"event_id": "e-2", "user_id": "u\\u00e9", "ts": "now", '
          b'"type": 7, "attrs": {"x": "1"}, "event_id": "dup"}')
    # fuzz_json's mapped decoder
    write("json", "event_nested", b'{"a": {"u": 7, "q": 2.5, '
          b'"b": {"t": "2026-01-01 00:00:00 UTC"}}, "i": 12}')


def http():
    write("http", "get", b"\x07GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    write("http", "head", b"\x01HEAD /metrics HTTP/1.0\n\n")
    write("http", "user", b"\x10GET /users/a%20b%2Fc?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    write("http", "bad", b"\x02POST / HTTP/1.1\r\n\r\nGET /%zz HTTP/1.1\r\n\r\n")


def config():
    with open(os.path.join(SRC, "conf", "cohortd.conf"), "rb") as f:
        write("config", "shipped", f.read())
    write("config", "small", b"input.topic = ev\nfeature.n = count(1h)\n"
          b"feature.s = sum(amount, 30m) where type in (payment, refund)\n"
          b"feature.r = ratio(count(10m, type=view), count(1h))\nshutdown.timeout = 0\n"
          b"kafka.consumer.fetch.wait.max.ms=10\nsegments.k = 4\n")
    write("config", "errors", b"[section]\nunknown.key = 1\nfeature.x = sum(\n"
          b"batch.max_events = -3\ninput.max_future = 5 parsecs\n")


def onnx():
    for path in glob.glob(os.path.join(SRC, "conf", "models", "*.onnx")):
        with open(path, "rb") as f:
            write("onnx", os.path.basename(path), f.read())
    onnx_trees()


def onnx_trees():
    """Small tree ensembles (ai.onnx.ml TreeEnsembleClassifier) and an autoencoder for
    16 features."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    sys.path.insert(0, os.path.join(SRC, "tools"))
    from export_onnx import to_onnx
    rng = np.random.default_rng(7)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    y = (X[:, 0] + X[:, 3] * X[:, 5] > 0).astype(int)
    names = [f"f{i}" for i in range(16)]
    for name, m in (("trees_gb.onnx", GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0)),
                    ("trees_rf.onnx", RandomForestClassifier(3, max_depth=3, random_state=0))):
        write("onnx", name, to_onnx(m.fit(X, y), names).SerializeToString())
    from sklearn.neural_network import MLPRegressor
    ae = MLPRegressor((4,), max_iter=50, random_state=0).fit(X, X)
    write("onnx", "autoencoder.onnx", to_onnx(ae, names, error_data=X).SerializeToString())


def state():
    partitions = 4
    topics = "events,profiles,risk,cohortd-dlq,changelog"
    with Broker(partitions=partitions, topics=topics) as broker:
        run([GEN, "--brokers", broker.bootstrap, "--events", "40", "--users", "12"])
        sdir = tempfile.mkdtemp(prefix="fuzz-seed-state-")
        with Daemon(broker.bootstrap, "state.changelog=changelog", f"state.dir={sdir}") as d:
            d.wait_assigned()
            wait_for("caught up", lambda: caught_up(d, broker.bootstrap, partitions, 40), [d])
            assert d.stop() == 0
        records = consume(broker.bootstrap, "changelog", expect=1)
        broker.stop()
    snap = os.path.join(sdir, "changelog-0.snap")
    with open(snap, "rb") as f:
        write("state", "snapshot", f.read())
    shutil.rmtree(sdir)
    for row in records[:3]:
        if row[3]:
            write("state", f"record-{row[0]}-{row[1]}", row[3])


def files():
    """cohortd featurize's inputs: the first byte picks the format (0 CSV, 1 JSON Lines,
    2 an Avro container), the rest is the file."""
    import avro.datafile
    import avro.io
    import avro.schema
    import io
    import re
    write("files", "csv", b"\x00user_id,ts,type,amount,item,attrs.lat\nu1,1000,view,2.5,i1,48.5\n"
          b'"u,2",2019-10-01 00:00:00 UTC,"a ""b""\nc",,,\n')
    write("files", "jsonl", b'\x01{"user_id":"u","ts":1}\n\n{"user_id":"v","ts":2,"attrs":{"a":1}}\n')
    with open(os.path.join(HERE, "..", "..", "conf", "schemas", "user_event.avsc")) as f:
        schema = re.sub(r',\s*"logicalType"\s*:\s*"timestamp-millis"', "", f.read())
    for codec in ("null", "deflate"):
        b = io.BytesIO()
        w = avro.datafile.DataFileWriter(b, avro.io.DatumWriter(), avro.schema.parse(schema),
                                         codec=codec)
        for i in range(5):
            w.append({"event_id": f"e{i}", "user_id": f"u{i % 2}", "ts": 1000 * i,
                      "type": "view", "amount": 1.5 * i, "item": None, "category": "c",
                      "attrs": {"lat": 1.0}})
        w.flush()
        write("files", f"avro_{codec}", b"\x02" + b.getvalue())


def main():
    files()
    avro()
    json_seeds()
    http()
    config()
    onnx()
    state()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))), "seeds")


if __name__ == "__main__":
    main()
