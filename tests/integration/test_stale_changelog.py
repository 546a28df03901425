"""A late changelog record never wins (issue: state that can never come back wrong).

An instance paused past its session timeout delivers its in-flight changelog records
after the new owner's newer ones. Here such records are made by hand: each of 8 users'
first state record (reflecting an early input offset) is sent to the changelog again,
by a writer that is not cohortd, after cohortd wrote the users' newest state.

- watch: the running cohortd reads the record back, counts it stale and writes the user
  again, so after it stops the changelog's last record of every user reflects the
  user's newest input offset (what compaction keeps). Without the watch, the 8 stale
  records would be the last of their users.
- restore: the same 8 records are sent again while cohortd is down; the next start
  restores every user to the state it had (its /users/<id> answer equal to the first
  instance's), counts 16 stale records (both rounds), and writes those users again. Without the rule
  "newest input offset wins", the 8 users would come back at their first event.
- compaction: the changelog is rewritten as compaction would leave it (the last record
  of each key, in order) into another topic, and a third start restores from that one
  alone: every user again equals the first instance's answer.
"""
import json
import sys

from confluent_kafka import Producer

from harness import (GEN, Broker, Daemon, caught_up, consume, log, metric, run, wait_for)

PARTS = 2
TOPICS = "events,profiles,risk,cohortd-dlq,changelog,compacted"
EVENTS = 3000
USERS = 120
SETS = ("state.changelog=changelog", "model.path=", "segments.k=0", "emit.policy=every")
VICTIMS = 8


def records(bs, topic):
    """[(partition, position, key, value, reflected input offset or None)] in log order."""
    out = []
    for part, at, key, value, headers in consume(bs, topic, expect=1, timeout=120, idle=3):
        off = int.from_bytes(value[16:24], "little", signed=True) if value else None
        out.append((part, at, key, value, off))
    out.sort(key=lambda r: (r[0], r[1]))
    return out


def resend(bs, topic, recs):
    p = Producer({"bootstrap.servers": bs})
    for part, _, key, value, _ in recs:
        p.produce(topic, key=key, value=value, partition=part)
    assert p.flush(30) == 0, "records not delivered"


def users_view(d, keys):
    out = {}
    for k in keys:
        status, _, body = d.get(f"/users/{k.decode()}")
        assert status == 200, f"/users/{k.decode()}: {status} {body}"
        j = json.loads(body)
        out[k] = (j["features"], j.get("stream_time", j.get("ts")))
    return out


def last_is_newest(recs, what):
    newest, last = {}, {}
    for part, at, key, value, off in recs:
        if off is None:
            continue
        newest[key] = max(newest.get(key, -1), off)
        last[key] = off
    wrong = [k for k in newest if last[k] != newest[k]]
    assert not wrong, f"{what}: {len(wrong)} user(s) whose last record is not their newest " \
                      f"state, e.g. {wrong[0]!r}: last {last[wrong[0]]}, newest {newest[wrong[0]]}"
    return len(newest)


def main():
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        run([GEN, "--brokers", bs, "--users", str(USERS), "--events", str(EVENTS),
             "--step-ms", "1000", "--seed", "31", "--anomalous", "0", "--quiet"])
        with Daemon(bs, *SETS) as d:
            wait_for("all events processed", lambda: caught_up(d, bs, PARTS, EVENTS), [d])
            recs = records(bs, "changelog")
            first, newest = {}, {}
            for r in recs:
                first.setdefault(r[2], r)
                newest[r[2]] = max(newest.get(r[2], -1), r[4])
            victims = [first[k] for k in sorted(first) if first[k][4] < newest[k]][:VICTIMS]
            assert len(victims) == VICTIMS, f"only {len(victims)} users with two states"
            keys = sorted(first)
            before = users_view(d, keys)
            resend(bs, "changelog", victims)
            wait_for("the watch rewrote the stale users",
                     lambda: metric(d.metrics(), "cohortd_changelog_repaired_total") >= VICTIMS,
                     [d], timeout=120)
            m = d.metrics()
            stale = metric(m, "cohortd_changelog_stale_total", found="watch")
            assert stale == VICTIMS, f"the watch found {stale} stale records, {VICTIMS} re-sent"
            assert d.stop() == 0
        n = last_is_newest(records(bs, "changelog"), "after the watch")
        log(f"watch: {VICTIMS} stale records re-sent to a running cohortd were counted and "
            f"their users written again; the last record of all {n} users is their newest")

        resend(bs, "changelog", victims)  # late, while no cohortd runs
        with Daemon(bs, *SETS) as d:
            wait_for("restored", lambda: caught_up(d, bs, PARTS, EVENTS), [d])
            m = d.metrics()
            # both rounds of re-sent records are in the log, each after a newer state
            stale = metric(m, "cohortd_changelog_stale_total", found="restore")
            assert stale == 2 * VICTIMS, f"{stale} stale records found, {2 * VICTIMS} re-sent"
            after = users_view(d, keys)
            wrong = [k for k in keys if after[k] != before[k]]
            assert not wrong, f"restore: {len(wrong)} user(s) differ, e.g. {wrong[0]!r}: " \
                              f"{after[wrong[0]]} vs {before[wrong[0]]}"
            wait_for("the restore's rewrites acknowledged",
                     lambda: metric(d.metrics(), "cohortd_changelog_repaired_total") >= VICTIMS,
                     [d], timeout=60)
            assert d.stop() == 0
        recs = records(bs, "changelog")
        last_is_newest(recs, "after the restore")
        log(f"restore: {VICTIMS} stale records at the log's end were not applied; all "
            f"{len(keys)} users equal the first instance's, and their last records are newest")

        kept = {}
        for r in recs:  # compaction keeps the last record of each key, in log order
            kept[(r[0], r[2])] = r
        compacted = sorted(kept.values(), key=lambda r: (r[0], r[1]))
        resend(bs, "compacted", compacted)
        with Daemon(bs, *SETS[1:], "state.changelog=compacted") as d:
            wait_for("restored from the compacted copy",
                     lambda: caught_up(d, bs, PARTS, EVENTS), [d])
            after = users_view(d, keys)
            wrong = [k for k in keys if after[k] != before[k]]
            assert not wrong, f"compacted: {len(wrong)} user(s) differ, e.g. {wrong[0]!r}"
            assert d.stop() == 0
        log(f"compaction: {len(compacted)} records kept of {len(recs)}; restoring from them "
            f"alone gives all {len(keys)} users the first instance's state")


if __name__ == "__main__":
    main()
    sys.exit(0)
