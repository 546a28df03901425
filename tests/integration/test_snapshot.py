"""Local snapshots (state.dir): a restart loads them and replays only the changelog after
them; a damaged, truncated or foreign snapshot is ignored with a clear log line and the
state comes from the changelog; a restore never applies a changelog record, or uses a
snapshot, that reflects input past the committed offset.

Four inputs (A, B, C, D: every user in each) stream through one broker, with a clean
restart of cohortd between them:
  1. A, with snapshots every second: the shutdown writes one file per partition.
  2. B: every partition starts from its snapshot, and reads nothing of the changelog
     (the shutdown snapshot is complete).
  3. C, after the four snapshots were damaged four ways (a flipped byte, a cut end,
     another partition count, another feature layout, the last two with a valid
     checksum): each is ignored, naming why, and the whole changelog read instead.
  4. D, after 40 changelog records were appended that reflect input past the committed
     offset (with absurd state: an uncommitted crash's leftovers), one snapshot rewritten
     to reflect such input, and one deleted: the 40 records are skipped, the snapshot
     ignored, the missing one read from the changelog.
At the end every user's final state equals that of one uninterrupted run over A+B+C+D
(clocks exactly, state to 1e-9 relative). Without the committed-offset filter, the 40
users would carry the absurd state into D and the comparison fails.
"""
import glob
import hashlib
import os
import shutil
import struct
import sys
import tempfile
import time

from confluent_kafka import Producer

from harness import (GEN, Broker, Daemon, caught_up, committed, compare_states, consume,
                     final_states, log, metric, run, wait_for)

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
USERS = 400
EVENTS = 4000  # per input
SETS = ("state.changelog=changelog", "model.path=", "emit.policy=every", "segments.k=0",
        "state.snapshot_interval=1s")


def gen(bs, i):
    """Input i (0..3): every user once first, then drawn; event time continues."""
    run([GEN, "--brokers", bs, "--users", str(USERS), "--events", str(EVENTS), "--cover",
         "--step-ms", "1000", "--start-ts", str(1767225600000 + i * EVENTS * 1000),
         "--seed", str(20 + i), "--anomalous", "0", "--quiet"])


def settle(d, bs, total):
    """Wait until cohortd has restored, processed and committed all `total` events."""
    wait_for(f"{total} events processed and committed", lambda: caught_up(d, bs, PARTS, total),
             [d])
    return d.metrics()


def stop(d):
    rc = d.stop()
    assert rc == 0, f"cohortd exited {rc}:\n{d.log_text()[-3000:]}"


# ---- the snapshot file (daemon/src/snapfile.h), written independently here

HDR = 160  # the header: version 2 names the cluster, the topics and the epoch record

def snap_read(path):
    with open(path, "rb") as f:
        b = f.read()
    head, trailer = b[:HDR], b[-64:]
    assert head[:8] == b"CHSNAP1\n" and trailer[:8] == b"CHSNEND\n", path
    assert hashlib.sha256(b[:-32]).digest() == trailer[32:], f"{path}: checksum"
    state_len = struct.unpack_from("<I", head, 20)[0]
    rec_len = 64 + 8 * state_len
    entries, pos = [], HDR
    while pos < len(b) - 64:
        kl = struct.unpack_from("<H", b, pos)[0]
        entries.append((b[pos + 2:pos + 2 + kl], b[pos + 2 + kl:pos + 2 + kl + rec_len]))
        pos += 2 + kl + rec_len
    assert pos == len(b) - 64 and len(entries) == struct.unpack_from("<Q", trailer, 8)[0]
    return bytearray(head), entries


def snap_write(path, head, entries):
    body = bytes(head) + b"".join(struct.pack("<H", len(k)) + k + r for k, r in entries)
    hi = max((struct.unpack_from("<q", r, 16)[0] for _, r in entries), default=-1)
    t = b"CHSNEND\n" + struct.pack("<Qq", len(entries), hi) + bytes(8)
    with open(path, "wb") as f:
        f.write(body + t + hashlib.sha256(body + t).digest())


def reference():
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        for i in range(4):
            gen(broker.bootstrap, i)
        with Daemon(broker.bootstrap, *SETS[:-1]) as d:
            settle(d, broker.bootstrap, 4 * EVENTS)
            stop(d)
        return final_states(broker.bootstrap)


def main():
    ref = reference()
    sdir = tempfile.mkdtemp(prefix="cohortd-snap-")
    sets = SETS + (f"state.dir={sdir}",)
    snap = [os.path.join(sdir, f"changelog-{p}.snap") for p in range(PARTS)]
    try:
        with Broker(partitions=PARTS, topics=TOPICS) as broker:
            bs = broker.bootstrap
            # 1. A; periodic snapshots while running, a whole one at shutdown
            gen(bs, 0)
            with Daemon(bs, *sets) as d:
                settle(d, bs, EVENTS)
                deadline = time.time() + 60
                while metric(d.metrics(), "cohortd_snapshot_files_total") < PARTS:
                    assert time.time() < deadline, "no periodic snapshot in 60 s"
                    time.sleep(0.2)
                stop(d)
                line = f"snapshot: {PARTS} partition(s), {USERS} user(s) written to {sdir}"
                assert line in d.log_text(), d.log_text()[-3000:]
            assert sorted(glob.glob(os.path.join(sdir, "*"))) == sorted(snap), os.listdir(sdir)
            assert sum(len(snap_read(s)[1]) for s in snap) == USERS
            log(f"1. {EVENTS} events: {PARTS} snapshot files, {USERS} users, "
                f"written atomically (no .tmp left)")

            # 2. B: every partition from its snapshot, no changelog record needed
            gen(bs, 1)
            with Daemon(bs, *sets) as d:
                m = settle(d, bs, 2 * EVENTS)
                used = metric(m, "cohortd_restore_snapshots_total", result="used")
                users = metric(m, "cohortd_restore_snapshot_users_total")
                records = metric(m, "cohortd_restore_records_total")
                assert (used, users, records) == (PARTS, USERS, 0), (used, users, records)
                stop(d)
            log(f"2. restart: {used:.0f} snapshots loaded ({users:.0f} users), "
                f"{records:.0f} changelog records read")

            # 3. four kinds of damage, each ignored with its reason
            head, entries = snap_read(snap[2])
            struct.pack_into("<i", head, 16, PARTS * 2)
            snap_write(snap[2], head, entries)
            head, entries = snap_read(snap[3])
            struct.pack_into("<Q", head, 24, struct.unpack_from("<Q", head, 24)[0] ^ 1)
            snap_write(snap[3], head, entries)
            with open(snap[0], "r+b") as f:  # a bit of the first user's first double
                f.seek(HDR)
                f.seek(HDR + 2 + struct.unpack("<H", f.read(2))[0] + 64 + 3)
                c = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([c[0] ^ 0x10]))
            with open(snap[1], "r+b") as f:
                f.truncate(os.path.getsize(snap[1]) - 100)
            gen(bs, 2)
            with Daemon(bs, *sets) as d:
                m = settle(d, bs, 3 * EVENTS)
                text = d.log_text()
                for p, why in ((0, "damaged: checksum mismatch"),
                               (1, "truncated or damaged: no trailer"),
                               (2, f"written when the input had {PARTS * 2} partitions; it has "
                                   f"{PARTS} now"),
                               (3, "written for another feature layout")):
                    line = f"restore of partition {p}: snapshot {snap[p]} ignored: {why}"
                    assert line in text, f"no '{line}' in:\n{text[-4000:]}"
                ignored = metric(m, "cohortd_restore_snapshots_total", result="ignored")
                used = metric(m, "cohortd_restore_snapshots_total", result="used")
                records = metric(m, "cohortd_restore_records_total")
                assert (ignored, used) == (PARTS, 0) and records > 0, (ignored, used, records)
                stop(d)
            log(f"3. damaged, truncated, other partition count, other layout: all {PARTS} "
                f"ignored with their reason; {records:.0f} changelog records read instead")

            # 4. leftovers of uncommitted work in the changelog and in a snapshot
            last = {}
            for part, off, key, value, _ in consume(bs, "changelog", expect=1):
                last[key] = (part, value)
            done = committed(bs, PARTS)
            p = Producer({"bootstrap.servers": bs})
            planted = 0
            for q in range(PARTS):
                for key, (part, value) in [kv for kv in last.items() if kv[1][0] == q][:10]:
                    v = bytearray(value)
                    n = struct.unpack_from("<H", v, 2)[0]
                    struct.pack_into("<q", v, 16, done[q] + 3)
                    struct.pack_into(f"<{n}d", v, 64, *([1e6] * n))
                    p.produce("changelog", key=key, value=bytes(v), partition=q)
                    planted += 1
            assert p.flush(30) == 0
            head, entries = snap_read(snap[0]) if os.path.exists(snap[0]) else (None, None)
            assert head is not None, "the shutdown of step 3 wrote no snapshot of partition 0"
            k0, r0 = entries[0]
            r0 = bytearray(r0)
            struct.pack_into("<q", r0, 16, done[0] + 100)
            entries[0] = (k0, bytes(r0))
            snap_write(snap[0], head, entries)
            os.remove(snap[1])
            gen(bs, 3)
            with Daemon(bs, *sets) as d:
                m = settle(d, bs, 4 * EVENTS)
                text = d.log_text()
                line = (f"restore of partition 0: snapshot {snap[0]} ignored: it reflects input "
                        f"offset {done[0] + 100}, past the committed offset {done[0]}")
                assert line in text, f"no '{line}' in:\n{text[-4000:]}"
                assert f"restore of partition 1: no snapshot in {sdir}" in text
                skipped = metric(m, "cohortd_restore_skipped_total", reason="uncommitted")
                used = metric(m, "cohortd_restore_snapshots_total", result="used")
                stop(d)
            # the state first: it must show the planted records' absence by itself
            worst = compare_states(ref, final_states(bs), "after four restarts")
            assert skipped == planted and used == 2, (skipped, planted, used)
            log(f"4. {planted} planted records past the committed offset skipped; a snapshot "
                f"reflecting uncommitted input ignored; a missing one read from the changelog")
            log(f"final state of all {len(ref)} users equals the uninterrupted run over "
                f"{4 * EVENTS} events (worst relative difference {worst:.1e})")
    finally:
        shutil.rmtree(sdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
