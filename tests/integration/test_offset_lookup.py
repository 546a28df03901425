"""A committed-offset lookup that fails never starts users empty (issue: state that can
never come back wrong).

On assignment cohortd looks up where each partition resumes, to restore its users from
the changelog up to there. When that lookup fails (a coordinator moving, a lookup slower
than its timeout, offsets pending in an open transaction: KIP-447's "unstable offset"),
the partition is held, /readyz says so, and the lookup is retried with backoff; it is
restored only once the offset is known.

Here 2,000 events of 100 users are processed and committed by a first cohortd. Then
2,000 more events arrive, and the broker answers the next 60 OffsetFetch requests with
UNSTABLE_OFFSET_COMMIT while a second cohortd starts. It must hold both partitions
(/readyz 503 naming the hold, cohortd_offset_lookups_held = 2), then restore them and
process the rest: every user's final changelog state equals one uninterrupted run's over
the same 4,000 events. (Before, the lookup gave up after 2 s, the users started empty
and consumption resumed from the committed offset anyway: every user of the first 2,000
events ended wrong.)
"""
import sys

from harness import (GEN, Broker, Daemon, caught_up, compare_states, final_states, log,
                     metric, reference_states, run, wait_for)

PARTS = 2
TOPICS = "events,profiles,risk,cohortd-dlq,changelog"
SETS = ("state.changelog=changelog", "model.path=", "segments.k=0", "emit.policy=every")
GEN_A = ["--users", "100", "--events", "2000", "--step-ms", "1000", "--seed", "41",
         "--anomalous", "0", "--quiet"]
GEN_B = ["--users", "100", "--events", "2000", "--step-ms", "1000", "--seed", "42",
         "--anomalous", "0", "--quiet"]


def reference():
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        run([GEN, "--brokers", broker.bootstrap, *GEN_A])
        run([GEN, "--brokers", broker.bootstrap, *GEN_B])
        with Daemon(broker.bootstrap, *SETS) as d:
            wait_for("reference caught up", lambda: caught_up(d, broker.bootstrap, PARTS, 4000),
                     [d])
            assert d.stop() == 0
        return final_states(broker.bootstrap)


def main():
    ref = reference()
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        run([GEN, "--brokers", bs, *GEN_A])
        with Daemon(bs, *SETS) as d:
            wait_for("first 2,000 committed", lambda: caught_up(d, bs, PARTS, 2000), [d])
            assert d.stop() == 0
        run([GEN, "--brokers", bs, *GEN_B])
        broker.fault("errors OffsetFetch " + " ".join(["UNSTABLE_OFFSET_COMMIT*60"]))
        with Daemon(bs, *SETS) as d:
            held = {}

            def holding():
                status, _, body = d.get("/readyz")
                m = d.metrics()
                if status == 503 and "until their committed offset is known" in body:
                    held["body"] = body.strip()
                    held["n"] = max(held.get("n", 0), metric(m, "cohortd_offset_lookups_held"))
                return "body" in held
            wait_for("partitions held for their committed offset", holding, [d], timeout=60,
                     step=0.05)
            wait_for("caught up after the lookups succeed",
                     lambda: caught_up(d, bs, PARTS, 4000), [d], timeout=300)
            m = d.metrics()
            failures = metric(m, "cohortd_offset_lookup_failures_total")
            assert metric(m, "cohortd_offset_lookups_held") == 0
            assert failures >= 1, "no lookup failed: the fault did not reach cohortd"
            assert "users start empty" not in d.log_text()
            assert d.stop() == 0
        got = final_states(bs)
    worst = compare_states(ref, got, "after held lookups")
    log(f"offset lookup: /readyz '{held['body']}'; {failures:.0f} lookups failed, then every "
        f"one of {len(ref)} users' final state equals an uninterrupted run's (worst relative "
        f"difference {worst:.1e})")


if __name__ == "__main__":
    main()
    sys.exit(0)
