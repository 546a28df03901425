"""One set of segments across instances (issue 15, item 5), on the REES46 sample.

Three instances of one consumer group share 6 input partitions, with
segments.sync_topic set, segments.k = 8, segments.sync_sample = 2000 (under half of the
4,504 users, so the coordinator fits k-means++ candidates on a drawn sample and Lloyd
steps on every instance's users finish the fit), the state changelog on. The
clickstream is replayed into the input; the owner of input partition 0 coordinates: it
seeds once its warm-up is over (version 1), every instance applies each version and
reassigns its users. Then:
- a refresh asked of a member (POST /segments/refresh on an instance that does not
  coordinate) is run by the coordinator with every instance's statistics: every
  instance ends on the same version with the same centroids and generations (GET
  /segments, compared exactly), every user of the union of the three exports is in
  exactly one of them, has a segment, and is in the nearest of the shared centroids;
  and the quality bound holds on the union: inertia <= 1.02 x sklearn KMeans(8,
  n_init=10) on the same vectors (best of 5 seeds), silhouette >= sklearn's lowest of
  those 5 - 0.02.
- the coordinator is killed (kill -9) mid-refresh: a member is stopped (SIGSTOP) so the
  round cannot complete, a refresh is asked, and once the coordinator's round is open
  it is killed and the member continued. No version comes out of that round; the
  survivors take the dead instance's partitions (restored from the changelog), one of
  them, now owning partition 0, coordinates and runs the refresh again: both end on
  the same new version, the union of their exports holds every user, each in the
  nearest shared centroid, and the quality bound still holds.
"""
import json
import os
import signal
import sys
import tempfile
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from harness import DATA, REPLAY, Broker, Daemon, log, metric, rees46_rows, run, wait_for

PARTS = 6
K = 8
REF_RUNS = 5
SAMPLE = 2000  # users in the coordinator's sample: under half of them, so it is drawn
TOPICS = "events,profiles,risk,cohortd-dlq,changelog,segsync"


def segments(d):
    status, _, body = d.get("/segments", timeout=30)
    assert status == 200, status
    return json.loads(body)


def export(d):
    status, ctype, body = d.get("/segments/export", timeout=60)
    assert status == 200 and ctype == "application/x-ndjson", (status, ctype)
    lines = body.splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def shared_of(heads):
    """The version, centroids and generations every instance shows (they must agree)."""
    views = [(h["shared"]["version"], [(s["id"], s["generation"], s["centroid"])
                                       for s in h["segments"]]) for h in heads]
    for v in views[1:]:
        assert v == views[0], f"instances disagree: {views[0][0]} vs {v[0]}"
    return views[0][0], np.array([c for _, _, c in views[0][1]], dtype=np.float64)


def settled(ds, version):
    """Every instance on `version` (at least), no round open, its reassignment done and
    no partition restoring."""
    for d in ds:
        m = d.metrics()
        if metric(m, "cohortd_segments_version") < version or \
                metric(m, "cohortd_segment_pass_running") != 0 or \
                metric(m, "cohortd_restoring_partitions") != 0:
            return False
    return len({segments(d)["shared"]["version"] for d in ds}) == 1


def check(ds, n_users, what):
    """Same centroids everywhere, every user once, in its nearest centroid; the quality
    bound against sklearn on the union. Returns (version, ratio, silhouette, reference)."""
    exports = [export(d) for d in ds]
    version, C = shared_of([h for h, _ in exports])
    users = [u for _, us in exports for u in us]
    ids = [u["user_id"] for u in users]
    assert len(ids) == len(set(ids)), f"{what}: {len(ids) - len(set(ids))} users twice"
    assert len(ids) == n_users, f"{what}: {len(ids)} users in the exports, {n_users} expected"
    nulls = sum(u["segment"] is None for u in users)
    assert nulls == 0, f"{what}: {nulls} users without a segment"
    Z = np.array([u["z"] for u in users], dtype=np.float64)
    ours = np.array([u["segment"] for u in users])
    d2 = ((Z[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    bad = int((d2[np.arange(len(ours)), ours] > d2.min(axis=1) + 1e-4 * (1 + d2.min(axis=1)))
              .sum())
    assert bad == 0, f"{what}: {bad} users are not in their nearest shared centroid"
    inertia = float(d2[np.arange(len(ours)), ours].sum())
    refs = [KMeans(n_clusters=K, init="k-means++", n_init=10, random_state=s).fit(Z)
            for s in range(REF_RUNS)]
    best = min(float(r.inertia_) for r in refs)
    sils = [silhouette_score(Z, r.labels_) for r in refs]
    sil = silhouette_score(Z, ours)
    ratio = inertia / best
    per = [len(us) for _, us in exports]
    log(f"{what}: version {version} on all {len(ds)} instances (users {per}); inertia "
        f"{inertia:.1f} vs sklearn's best of {REF_RUNS} seeds {best:.1f} (ratio {ratio:.4f}); "
        f"silhouette {sil:.4f} vs sklearn's {min(sils):.4f}-{max(sils):.4f}")
    assert ratio <= 1.02, f"{what}: inertia ratio {ratio:.4f} > 1.02"
    assert sil >= min(sils) - 0.02, f"{what}: silhouette {sil:.4f} vs {min(sils):.4f}"
    return version, ratio, sil, min(sils)


def main():
    rows = list(rees46_rows())
    n = len(rows)
    n_users = len({r[5] for r in rows})
    dirs = [tempfile.mkdtemp(prefix=f"cohortd-shared{i}-") for i in range(3)]
    sets = ("emit.policy=every", f"segments.k={K}", f"segments.warmup={n // 6}",
            "segments.refresh=0", "segments.sync_topic=segsync", "state.changelog=changelog",
            "state.snapshot_interval=2s", f"segments.sync_sample={SAMPLE}")
    with Broker(partitions=PARTS, topics=TOPICS) as broker:
        bs = broker.bootstrap
        # a sync topic that does not exist is refused at start, saying how to create it
        bad = Daemon(bs, *sets, "segments.sync_topic=no-such-topic")
        assert bad.proc.wait(timeout=120) != 0, "cohortd started without its sync topic"
        assert "topic no-such-topic does not exist" in bad.log_text(), bad.log_text()[-2000:]
        ds = [Daemon(bs, *sets, f"state.dir={dirs[i]}") for i in range(3)]
        try:
            def assigned(d):
                return metric(d.metrics(), "cohortd_assigned_partitions")

            wait_for("three instances sharing the partitions",
                     lambda: all(assigned(d) > 0 for d in ds) and
                     sum(assigned(d) for d in ds) == PARTS, ds)
            run([REPLAY, "--brokers", bs, "--dataset", "rees46", "--quiet", "--file",
                 os.path.join(DATA, "rees46-2019-oct-sample.csv"), "--limit", str(n)])
            wait_for("every event processed and the seeding applied everywhere",
                     lambda: sum(metric(d.metrics(), "cohortd_events_processed_total")
                                 for d in ds) >= n and settled(ds, 1), ds)
            coord = [d for d in ds if metric(d.metrics(), "cohortd_segments_coordinator") == 1]
            assert len(coord) == 1, f"{len(coord)} coordinators"
            coord = coord[0]
            members = [d for d in ds if d is not coord]
            v1 = segments(coord)["shared"]["version"]

            # a refresh asked of a member
            assert members[0].get("/segments/refresh", method="POST")[0] == 202
            wait_for("the refresh applied everywhere", lambda: settled(ds, v1 + 1), ds)
            v2, ratio2, sil2, ref2 = check(ds, n_users, "refresh asked of a member")
            stats = [metric(d.metrics(), "cohortd_segment_round_stats_total") for d in ds]
            assert all(s > 0 for s in stats), f"an instance sent no statistics: {stats}"

            # the coordinator killed mid-refresh
            frozen = members[0]
            frozen.proc.send_signal(signal.SIGSTOP)
            try:
                assert coord.get("/segments/refresh", method="POST")[0] == 202
                wait_for("the coordinator's round open",
                         lambda: segments(coord)["shared"]["round_open"], [coord], timeout=60,
                         step=0.05)
                coord.proc.kill()
                coord.proc.wait()
            finally:
                frozen.proc.send_signal(signal.SIGCONT)
            t_kill = time.time()
            live = members
            wait_for("the survivors owning every partition, one coordinating, a new version",
                     lambda: sum(assigned(d) for d in live) == PARTS and
                     sum(metric(d.metrics(), "cohortd_segments_coordinator") for d in live) == 1
                     and settled(live, v2 + 1), live)
            v3, ratio3, sil3, ref3 = check(live, n_users, "after the coordinator was killed")
            published = sum(metric(d.metrics(), "cohortd_segment_rounds_total",
                                   result="published") for d in live)
            log(f"killed the coordinator (kill -9) with its round open; version {v3} from the "
                f"new coordinator {time.time() - t_kill:.1f} s later ({published:.0f} round(s) "
                f"published by the survivors)")
            assert v3 == v2 + 1, f"version {v3}: the killed coordinator's round published one"
            samples = [int(line.split(" fitting a sample of ")[1].split()[0])
                       for d in ds for line in d.log_text().splitlines()
                       if " fitting a sample of " in line]
            assert len(samples) >= 3 and all(0 < s < n_users for s in samples), samples
            log(f"the coordinators' samples: {samples} of {n_users} users")
            for d in live:
                assert d.stop() == 0
        finally:
            for d in ds:
                if d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait()
    log(f"PASS: {n} events, {n_users} users, k={K}: refresh ratio {ratio2:.4f} silhouette "
        f"{sil2:.4f} (sklearn's lowest {ref2:.4f}); after the coordinator's death "
        f"{ratio3:.4f} {sil3:.4f} ({ref3:.4f})")


if __name__ == "__main__":
    sys.exit(main())
