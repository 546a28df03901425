#!/usr/bin/python3
"""Does the embedded broker (cohort-broker, librdkafka's mock cluster) support what
exactly-once processing needs? Prints what it observes and exits 0 only if both hold:

1. offsets sent in a committed transaction (send_offsets_to_transaction, KIP-447) become
   the group's committed offsets;
2. a second producer with the same transactional.id fences the first (its next
   transaction fails).

Usage: /usr/bin/python3 tools/probe_mock_txn.py [BUILD_DIR]   (default build-rel)
With librdkafka 2.0.2 both fail: the mock's TxnOffsetCommit answers without storing the
offsets, and InitProducerId hands a second producer a new id without bumping the first's
epoch. cohortd's exactly-once processing waits for a test broker that does both.
"""
import os
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build-rel")
    broker = subprocess.Popen([os.path.join(build, "stream", "cohort-broker"), "--partitions",
                               "1", "--topics", "in,out"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    bs = broker.stdout.readline().strip()
    try:
        p = Producer({"bootstrap.servers": bs})
        for _ in range(10):
            p.produce("in", value=b"x")
        p.flush(10)
        c = Consumer({"bootstrap.servers": bs, "group.id": "probe",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe(["in"])
        got, deadline = 0, time.time() + 30
        while got < 10 and time.time() < deadline:
            m = c.poll(0.5)
            got += 1 if m is not None and not m.error() else 0
        t1 = Producer({"bootstrap.servers": bs, "transactional.id": "probe-txn"})
        t1.init_transactions(10)
        t1.begin_transaction()
        t1.produce("out", value=b"y")
        t1.send_offsets_to_transaction([TopicPartition("in", 0, 7)],
                                       c.consumer_group_metadata(), 10)
        t1.commit_transaction(10)
        committed = c.committed([TopicPartition("in", 0)], timeout=10)[0].offset
        offsets_ok = committed == 7
        print(f"offsets committed in a transaction: group's committed offset is {committed} "
              f"(want 7): {'yes' if offsets_ok else 'NO'}")
        t2 = Producer({"bootstrap.servers": bs, "transactional.id": "probe-txn"})
        t2.init_transactions(10)
        try:
            t1.begin_transaction()
            t1.produce("out", value=b"z")
            t1.commit_transaction(10)
            fenced = False
        except KafkaException:
            fenced = True
        print(f"a second producer with the same transactional.id fences the first: "
              f"{'yes' if fenced else 'NO'}")
        c.close()
        return 0 if offsets_ok and fenced else 1
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    sys.exit(main())
