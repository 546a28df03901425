"""The state changelog (state.changelog): one record of a user's whole state per commit
interval, on the user's input partition, tagged with the input offset it reflects; no
input offset committed before the changelog records of its events are durable.

- start: a changelog topic that is missing, or has another partition count than the
  input, stops cohortd at start (exit 2) with the command that creates it, before
  anything is processed.
- clean run (20,000 events of 300 users, SIGTERM at the end): every record decodes
  (version 1, 64 + 8 x state_len bytes, one layout fingerprint), lies on its user's
  input partition, and a user's records reflect non-decreasing offsets; each user's
  last record reflects exactly the user's last event (its offset and time) and the
  segment and emit time of its last profile update; fewer records than events
  (write-combining); the committed offsets are the ends of the input.
- kill -9 mid-stream with commit.interval = 2s (the consumer commits every 1 s): for
  every input partition, every user with an event below the committed offset has a
  changelog record reflecting exactly its last event below that offset. A record
  reflecting a later event would not do: a restore skips it (its input is not
  committed) and takes an older one, and reprocessing from the committed offset never
  folds the events in between. That needs every committed offset to be where a flush
  ended; the sanitizer build checks each offset stored for commit against the flushes'
  ends (changelog.c), which every integration run with a changelog exercises: with each
  batch of a flush releasing its own offsets, the clean run above stopped at once.
"""
import math
import struct
import subprocess
import sys
import time
from collections import defaultdict

from harness import (GEN, Broker, Daemon, avro_reader, committed, consume, decode_confluent,
                     end_offsets, log, metric, run, ts_ms)

PARTS = 4
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
INT64_MIN = -(1 << 63)


def start_refused(topics, expect):
    with Broker(partitions=PARTS, topics=topics) as broker:
        d = Daemon(broker.bootstrap, "state.changelog=changelog", "model.path=")
        rc = d.proc.wait(timeout=60)
        text = d.log_text()
        assert rc == 2, f"cohortd exited {rc} with {expect}:\n{text}"
        assert expect in text and f"--partitions {PARTS}" in text, text
        assert not consume(broker.bootstrap, "profiles", expect=0, timeout=5, idle=2), \
            "profile updates from a daemon that refused to start"


def decode_record(key, value):
    assert len(value) >= 64, f"record of {len(value)} bytes"
    version, state_len = value[0], struct.unpack_from("<H", value, 2)[0]
    assert version == 1, f"version {version}"
    assert len(value) == 64 + 8 * state_len, f"{len(value)} bytes for state_len {state_len}"
    layout, off, t_ref, seg, gen, emit, risk, score = struct.unpack_from("<QqqhxxIqqf", value, 8)
    return {"user": key.decode(), "layout": layout, "offset": off, "t_ref": t_ref,
            "segment": seg, "gen": gen, "emit": emit, "risk": risk, "score": score}


def read_changelog(bootstrap, expect):
    out = []
    for part, off, key, value, _ in consume(bootstrap, "changelog", expect=expect, timeout=120):
        r = decode_record(key, value)
        r["partition"], r["at"] = part, off
        out.append(r)
    out.sort(key=lambda r: (r["partition"], r["at"]))
    return out


def read_events(bootstrap, n):
    reader = avro_reader("user_event.avsc")
    events = []
    for part, off, _, value, _ in consume(bootstrap, "events", expect=n, timeout=120):
        _, e = decode_confluent(reader, value)
        events.append((part, off, e["user_id"], ts_ms(e["ts"])))
    return events


def clean_run():
    n = 20_000
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        with Daemon(broker.bootstrap, "state.changelog=changelog", "model.path=",
                    "emit.policy=every") as d:
            d.wait_assigned()
            run([GEN, "--brokers", broker.bootstrap, "--users", "300", "--events", str(n),
                 "--step-ms", "1000", "--seed", "5", "--quiet"])
            consume(broker.bootstrap, "profiles", expect=n, timeout=300)
            m = d.metrics()
            assert d.stop() == 0, "cohortd exited non-zero"
        events = read_events(broker.bootstrap, n)
        records = read_changelog(broker.bootstrap, 1)
        reader = avro_reader("profile_update.avsc")
        last_profile, refreshed = {}, defaultdict(int)
        # the latest profile update of each user, also one a segment pass published
        # (the pass changes the user's segment, and the changelog carries it)
        for part, off, _, value, headers in sorted(
                consume(broker.bootstrap, "profiles", expect=n, timeout=120, refreshes=True),
                key=lambda x: (x[0], x[1])):
            _, r = decode_confluent(reader, value)
            last_profile[r["user_id"]] = r
            refreshed[r["user_id"]] += r["event_id"] is None
        ends = committed(broker.bootstrap, PARTS)
    last_event, home, count = {}, {}, defaultdict(int)
    for part, off, user, ts in events:
        count[user] += 1
        home[user] = part
        if user not in last_event or off > last_event[user][0]:
            last_event[user] = (off, ts)
    per_user = defaultdict(list)
    for r in records:
        per_user[r["user"]].append(r)
    layouts = {r["layout"] for r in records}
    assert len(layouts) == 1, f"{len(layouts)} layout fingerprints"
    assert set(per_user) == set(last_event), \
        f"{len(per_user)} users in the changelog, {len(last_event)} in the input"
    for user, rs in per_user.items():
        assert all(r["partition"] == home[user] for r in rs), f"{user}: wrong partition"
        offs = [r["offset"] for r in rs]
        assert offs == sorted(offs), f"{user}: reflected offsets go back: {offs}"
        assert len(rs) <= count[user] + refreshed[user], \
            f"{user}: {len(rs)} records for {count[user]} events and {refreshed[user]} moves"
        last, prof = rs[-1], last_profile[user]
        assert (last["offset"], last["t_ref"]) == last_event[user], \
            f"{user}: last record reflects {last['offset']}@{last['t_ref']}, last event " \
            f"{last_event[user]}"
        seg = prof["segment"] if prof["segment"] is not None else -1
        assert last["segment"] == seg, f"{user}: segment {last['segment']} vs profile {seg}"
        if prof["segment"] is not None:
            assert last["gen"] == prof["segment_generation"], f"{user}: generation"
        assert last["emit"] == ts_ms(prof["ts"]), f"{user}: last emit {last['emit']}"
        assert last["risk"] == INT64_MIN and math.isnan(last["score"]), f"{user}: risk fields"
    assert len(records) < n, f"{len(records)} records for {n} events: no write-combining"
    acked = metric(m, "cohortd_outputs_acked_total", output="changelog")
    assert 0 < acked <= len(records), f"{acked} acknowledged before the stop, {len(records)} read"
    end = defaultdict(int)
    for part, off, _, _ in events:
        end[part] = max(end[part], off + 1)
    assert ends == dict(end), f"committed {ends}, input ends {dict(end)}"
    log(f"clean run: {n} events of {len(per_user)} users -> {len(records)} changelog records "
        f"({metric(m, 'cohortd_changelog_flushes_total'):.0f} flushes before the stop); every "
        f"user's last record reflects its last event; committed = input ends")


def crash_run():
    n = 60_000
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        d = Daemon(broker.bootstrap, "state.changelog=changelog", "model.path=",
                   "commit.interval=2s")
        gen = None
        try:
            d.wait_assigned()
            gen = subprocess.Popen([GEN, "--brokers", broker.bootstrap, "--users", "2000",
                                    "--events", str(n), "--rate", "5000", "--step-ms", "1000",
                                    "--seed", "6", "--quiet"])
            deadline = time.time() + 120
            while sum(max(o, 0) for o in committed(broker.bootstrap, PARTS).values()) < 15_000:
                assert time.time() < deadline, "no commits of 15,000 events within 120 s"
                assert d.proc.poll() is None, f"cohortd died:\n{d.log_text()}"
                time.sleep(0.2)
            d.proc.kill()
            d.proc.wait(timeout=30)
            gen.wait(timeout=120)
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
            if gen and gen.poll() is None:
                gen.kill()
        at = committed(broker.bootstrap, PARTS)
        events = read_events(broker.bootstrap, n)
        records = read_changelog(broker.bootstrap, 1)
    reflected = defaultdict(set)
    for r in records:
        reflected[r["user"]].add(r["offset"])
    need = {}
    for part, off, user, _ in events:
        if off < at.get(part, -1):
            need[user] = max(need.get(user, -1), off)
    missing = [(u, o, max(reflected[u], default=-1)) for u, o in need.items()
               if o not in reflected[u]]
    assert not missing, f"{len(missing)} of {len(need)} users without a changelog record of " \
                        f"their last committed event (user, event offset, newest record's " \
                        f"offset): {missing[:5]}"
    log(f"kill -9 after {sum(at.values())} committed events: {len(records)} changelog records; "
        f"each of {len(need)} users has one reflecting exactly its last committed event")


def evict_run():
    """Users evicted for idleness are tombstoned (tagged with the offset of the user's last
    event, after any state record of the user: a user evicted before its state was flushed
    gets the tombstone alone), and a restart does not bring them back."""
    first, later = 200, 100
    sets = ("state.changelog=changelog", "model.path=", "state.idle_evict=1h")
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        common = ["--brokers", bs, "--cover", "--step-ms", "1000", "--anomalous", "0", "--quiet"]
        run([GEN, *common, "--users", str(first), "--events", str(first), "--seed", "3"])
        # three hours of event time later, other users: the first ones are idle past 1h
        run([GEN, *common, "--users", str(later), "--events", str(later), "--seed", "4",
             "--user-base", str(first), "--start-ts", str(1767225600000 + 3 * 3600 * 1000)])
        with Daemon(bs, *sets) as d:
            d.wait_http()
            deadline = time.time() + 120
            while True:
                m = d.metrics()
                if metric(m, "cohortd_changelog_tombstones_total") >= first and \
                        metric(m, "cohortd_outputs_acked_total", output="changelog") == \
                        metric(m, "cohortd_outputs_sent_total", output="changelog"):
                    break
                assert time.time() < deadline, \
                    f"tombstones: {[(k, v) for k, v in m.items() if 'changelog' in k[0]]}"
                time.sleep(0.2)
            evicted = metric(m, "cohortd_users_evicted_total", reason="idle")
            assert d.stop() == 0
        written = sum(end_offsets(bs, PARTS, "changelog").values())
        assert evicted == first, f"{evicted} idle evictions, expected {first}"
        # whether a first user's state was flushed before its eviction depends on how the
        # two streams fell into commit intervals; the tombstone is there either way
        assert first + later <= written <= first + later + first, f"{written} records"
        last_event = {}
        for part, off, user, _ in read_events(bs, first + later):
            last_event[user] = max(last_event.get(user, -1), off)
        last_state, tombs = {}, {}
        for part, off, key, value, headers in sorted(
                consume(bs, "changelog", expect=written), key=lambda x: x[:2]):
            user = key.decode()
            if value is None:
                h = dict(headers)
                assert user not in tombs, f"{user}: two tombstones"
                tombs[user] = struct.unpack("<q", h["cohortd-offset"])[0]
                assert tombs[user] == last_event[user], \
                    f"{user}: tombstone reflects {tombs[user]}, last event {last_event[user]}"
                assert last_state.get(user, tombs[user]) == tombs[user], \
                    f"{user}: tombstone reflects {tombs[user]}, last state {last_state[user]}"
            else:
                assert user not in tombs, f"{user}: a state after its tombstone"
                last_state[user] = decode_record(key, value)["offset"]
        want = {f"u{i}" for i in range(first)}
        assert set(tombs) == want, f"tombstones for {len(tombs)} users, not the first {first}"
        with Daemon(bs, *sets) as d:
            d.wait_http()
            deadline = time.time() + 120
            while True:
                m = d.metrics()
                if metric(m, "cohortd_restored_partitions_total") == PARTS:
                    break
                assert time.time() < deadline, f"restore: {d.log_text()[-2000:]}"
                time.sleep(0.2)
            held = metric(m, "cohortd_users")
            assert d.stop() == 0
        assert held == later, f"{held} users after the restore, expected {later}"
    log(f"idle eviction: {first} users tombstoned ({len(set(last_state) & set(tombs))} after a "
        f"state record), each tagged with its last event's offset; a restart restores the "
        f"{later} others only")


def main():
    start_refused("events,profiles,risk,cohortd-dlq", "topic changelog does not exist")
    start_refused(f"{TOPICS}:3", "topic changelog has 3 partitions; it needs 4")
    clean_run()
    crash_run()
    evict_run()


if __name__ == "__main__":
    sys.exit(main())
