"""Segments refreshed on the whole population, on real data (issue 15, items 1-3).

Both shared samples (REES46 clickstream, sparkov card transactions) are replayed through
cohortd with the shipped configuration's 16 features, at k = 8 and k = 16, with
segments.refresh = 0 (passes only when asked). For each:
- seeding: once the warm-up is over, the pass over the population seeds the segments
  and gives every user in the table a segment; after the replay no user in
  GET /segments/export is without one.
- stale segments: before the refresh, users who stopped (an hour before the end of the
  clickstream, a day before the end of the card sample) keep the segment of
  their last event while their vectors (read at the current stream time) have decayed;
  POST /segments/refresh reassigns them: after it every user's segment is the nearest
  centroid of their current vector, and each move was published as a profile update
  marked `cohortd-cause: segment-refresh` with a null event_id (the last update of
  every user names the segment the export shows).
- quality: on the exported transformed vectors, the inertia of cohortd's segments is
  <= 1.02 x that of sklearn KMeans(k, n_init=10) fitted on the same vectors (the best
  of its random_state 0..4), and their silhouette is at least sklearn's less 0.02.
  sklearn's silhouette itself depends on its seed (optima of equal inertia: REES46 at
  k = 16 gave 0.318 to 0.342 over five seeds), so "sklearn's" is the lowest of those
  five runs; every figure of both is logged.
- stable ids: a second refresh with no new events moves nobody, renews no generation
  and leaves the centroids where they were.
"""
import csv
import json
import os
import sys
import tempfile

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from harness import (DATA, REPLAY, Broker, Daemon, avro_reader, consume, decode_confluent,
                     log, metric, rees46_rows, run, ts_ms, wait_for)

FILES = {"rees46": "rees46-2019-oct-sample.csv", "sparkov": "sparkov-transactions-sample.csv"}
# A user whose last event is this far behind the stream has stopped: an hour in the
# clickstream (2 h 50 min of events, 1 h half-lives), a day in the card sample (7.6 days).
TRENDING = 10
SLOTS = 4096  # more than any segment's distinct items here: the sketch is exact
REF_RUNS = 5  # sklearn KMeans(n_init=10) fits, random_state 0..4
STALE_MS = {"rees46": 3_600_000, "sparkov": 86_400_000}


def events_in(dataset):
    if dataset == "rees46":
        return sum(1 for _ in rees46_rows())
    with open(os.path.join(DATA, FILES[dataset])) as f:
        return sum(1 for _ in f) - 1


def replay(broker, dataset, skip, n):
    """Data rows skip+1 .. skip+n of the sample (event ids keep their row numbers)."""
    run([REPLAY, "--brokers", broker.bootstrap, "--dataset", dataset, "--quiet", "--file",
         os.path.join(DATA, FILES[dataset]), "--skip", str(skip), "--limit", str(n)])


def events_by_id(dataset, n):
    """event_id -> (ts_ms, item, category or None) of the sample's first n events, as
    cohort-replay sends them."""
    out = {}
    if dataset == "rees46":
        for i, (ts, _, item, cat, _, _) in enumerate(rees46_rows()):
            if i == n:
                break
            out[f"rees46-{i + 1}"] = (ts, item, cat or None)
        return out
    with open(os.path.join(DATA, FILES[dataset]), newline="") as f:
        for i, r in enumerate(csv.DictReader(f)):
            if i == n:
                break
            out[r["trans_num"]] = (int(r["unix_time"]) * 1000, r["merchant"], r["category"])
    return out


def export(d):
    status, ctype, body = d.get("/segments/export", timeout=60)
    assert status == 200 and ctype == "application/x-ndjson", (status, ctype)
    lines = body.splitlines()
    head = json.loads(lines[0])
    users = [json.loads(line) for line in lines[1:]]
    return head, users


def pass_done(d, passes):
    m = d.metrics()
    return metric(m, "cohortd_segment_passes_total") >= passes and \
        metric(m, "cohortd_segment_pass_running") == 0


def centroids(head):
    return np.array([s["centroid"] for s in sorted(head["segments"], key=lambda s: s["id"])])


def nearest_ok(users, C):
    """Users whose segment is not their nearest centroid (float32 ties allowed)."""
    bad = 0
    for u in users:
        d2 = ((np.array(u["z"]) - C) ** 2).sum(axis=1)
        if d2[u["segment"]] > d2.min() + 1e-4 * (1 + d2.min()):
            bad += 1
    return bad


def check_segment_updates(dataset, k, n, seg_msgs, msgs, head, users):
    """The latest update of every segment against /segments, the members' vectors and an
    exact decayed count of the segment's items and categories."""
    reader = avro_reader("segment_update.avsc")
    latest = {}
    for part, off, key, value, _ in sorted(seg_msgs, key=lambda x: (x[0], x[1])):
        rec = decode_confluent(reader, value)[1]
        assert key.decode() == str(rec["segment"]), (key, rec["segment"])
        latest[rec["segment"]] = rec
    assert sorted(latest) == list(range(k)), sorted(latest)
    assert len(seg_msgs) >= 3 * k, f"{len(seg_msgs)} segment updates after 3 passes of {k}"
    segs = {s["id"]: s for s in head["segments"]}
    members = {}
    for u in users:
        members.setdefault(u["segment"], []).append(u["x"])
    # each event's (segment, generation) from its own profile update
    pr = avro_reader("profile_update.avsc")
    ev_seg = {}
    for _, _, _, value, headers in msgs:
        rec = decode_confluent(pr, value)[1]
        if rec["event_id"] is not None and rec["segment"] is not None:
            ev_seg[rec["event_id"]] = (rec["segment"], rec["segment_generation"])
    events = events_by_id(dataset, n)
    worst, exact_segments = 0.0, 0
    for j, rec in latest.items():
        s = segs[j]
        assert rec["generation"] == s["generation"] and rec["users"] == s["users"], (rec, s)
        assert np.allclose(rec["centroid"], s["centroid"], rtol=1e-5, atol=1e-6), j
        mean = np.mean(np.array(members[j], dtype=np.float64), axis=0)
        assert np.allclose(rec["feature_means"], mean, rtol=1e-4, atol=1e-6), \
            (j, rec["feature_means"], mean.tolist())
        T = ts_ms(rec["ts"])
        for field, pos in (("trending_items", 1), ("trending_categories", 2)):
            exact = {}
            for eid, (seg, gen) in ev_seg.items():
                ts, *vals = events[eid]
                v = vals[pos - 1]
                if seg == j and gen == rec["generation"] and v is not None:
                    exact[v] = exact.get(v, 0.0) + 2.0 ** (-(T - ts) / 3_600_000)
            got = [(t["value"], t["weight"]) for t in rec[field]]
            assert len(got) == min(TRENDING, len(exact)), (j, field, len(got), len(exact))
            assert len(exact) <= SLOTS, f"segment {j} {field}: {len(exact)} values > {SLOTS} slots"
            top = sorted(exact.values(), reverse=True)[:TRENDING]
            for (v, w), e in zip(got, top):
                rel = abs(w - exact[v]) / exact[v]
                worst = max(worst, rel, abs(w - e) / e)
                assert rel < 1e-6 and abs(w - e) < 1e-6 * e, (j, field, v, w, exact[v], e)
        exact_segments += 1
    return worst


def run_case(tmp, dataset, k):
    n = events_in(dataset)
    cut = n * 6 // 10
    with Broker(partitions=4, topics="events,profiles,risk,cohortd-dlq,segments") as broker, \
            Daemon(broker.bootstrap, "emit.policy=every", f"segments.k={k}",
                   f"segments.warmup={cut // 2}", "segments.refresh=0",
                   "segments.topic=segments", f"segments.trending={TRENDING}",
                   f"segments.trending_slots={SLOTS}") as d:
        d.wait_assigned()
        # seeded on the first 60% of the events; the rest then streams in
        replay(broker, dataset, 0, cut)
        wait_for("the first 60% processed and the seeding pass over",
                 lambda: metric(d.metrics(), "cohortd_events_processed_total") >= cut and
                 pass_done(d, 1), [d])
        replay(broker, dataset, cut, n - cut)
        wait_for("all events processed",
                 lambda: metric(d.metrics(), "cohortd_events_processed_total") >= n, [d])
        head0, before = export(d)
        assert all(u["segment"] is not None for u in before), \
            f"{sum(u['segment'] is None for u in before)} users without a segment after seeding"
        now = head0["stream_time"]
        stale = {u["user_id"] for u in before if now - u["last_event_ts"] >= STALE_MS[dataset]}
        C0 = centroids(head0)
        stale_wrong = nearest_ok([u for u in before if u["user_id"] in stale], C0)

        assert d.get("/segments/refresh", method="POST")[0] == 202
        wait_for("the refresh", lambda: pass_done(d, 2), [d])
        head1, after = export(d)
        assert {u["user_id"] for u in after} == {u["user_id"] for u in before}
        C1 = centroids(head1)
        bad = nearest_ok(after, C1)
        assert bad == 0, f"{bad} users are not in their nearest segment after the refresh"
        seg0 = {u["user_id"]: u["segment"] for u in before}
        moved_stale = sum(1 for u in after if u["user_id"] in stale and
                          u["segment"] != seg0[u["user_id"]])

        assert d.get("/segments/refresh", method="POST")[0] == 202
        wait_for("the second refresh", lambda: pass_done(d, 3), [d])
        head2, again = export(d)
        m = d.metrics()
        moves = int(metric(m, "cohortd_segment_pass_moves_total"))
        assert d.stop() == 0
        msgs = consume(broker.bootstrap, "profiles", expect=n + moves, refreshes=True)
        seg_msgs = consume(broker.bootstrap, "segments", expect=3 * k, idle=2)
    assert head2["last_pass"]["moved"] == 0, head2["last_pass"]
    assert head2["last_pass"]["renewed"] == 0, head2["last_pass"]
    gens1 = [s["generation"] for s in sorted(head1["segments"], key=lambda s: s["id"])]
    gens2 = [s["generation"] for s in sorted(head2["segments"], key=lambda s: s["id"])]
    assert gens1 == gens2, (gens1, gens2)
    shift = float(np.abs(centroids(head2) - C1).max())
    assert shift < 1e-3, f"centroids moved by {shift} on an unchanged population"
    assert [u["segment"] for u in again] == [u["segment"] for u in after]

    # every move was published, marked as a refresh
    reader = avro_reader("profile_update.avsc")
    last, marked = {}, 0
    for part, off, key, value, headers in sorted(msgs, key=lambda x: (x[0], x[1])):
        rec = decode_confluent(reader, value)[1]
        cause = dict(headers).get("cohortd-cause")
        if cause is not None:
            assert cause == b"segment-refresh" and rec["event_id"] is None, (cause, rec)
            marked += 1
        last[rec["user_id"]] = (rec["segment"], rec["segment_generation"])
    assert len(msgs) == n + moves, f"{len(msgs)} profile updates, {n} events + {moves} moves"
    assert marked == moves, f"{marked} updates marked as a refresh, {moves} moves"
    wrong = [u["user_id"] for u in after if last[u["user_id"]] != (u["segment"], u["generation"])]
    assert not wrong, f"{len(wrong)} users' last update is not their segment, e.g. {wrong[:3]}"

    trend_err = check_segment_updates(dataset, k, n, seg_msgs, msgs, head2, again)

    # quality against sklearn on the same vectors
    Z = np.array([u["z"] for u in after], dtype=np.float64)
    ours = np.array([u["segment"] for u in after])
    inertia = float(((Z - C1[ours]) ** 2).sum())
    if os.environ.get("CH_DUMP"):
        np.savez(f"{os.environ['CH_DUMP']}/{dataset}-{k}.npz", Z=Z, ours=ours, C=C1)
    # sklearn's own answer depends on its seed: equal-inertia optima differ in silhouette
    # by up to 0.024 here (REES46, k = 16), so the reference is REF_RUNS seeds of it
    refs = [KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=s).fit(Z)
            for s in range(REF_RUNS)]
    best = min(float(r.inertia_) for r in refs)
    ratio = inertia / best
    sil = silhouette_score(Z, ours)
    sils = [silhouette_score(Z, r.labels_) for r in refs]
    sil_ref = min(sils)
    log(f"{dataset} k={k}: {len(after)} users ({n} events); inertia {inertia:.1f} vs sklearn's "
        f"best of {REF_RUNS} seeds {best:.1f} (ratio {ratio:.4f}; theirs "
        f"{min(float(r.inertia_) for r in refs) / best:.4f}-"
        f"{max(float(r.inertia_) for r in refs) / best:.4f}); silhouette {sil:.4f} vs "
        f"sklearn's {min(sils):.4f}-{max(sils):.4f}; "
        f"{len(stale)} stale users, {stale_wrong} of them not in their nearest segment before "
        f"the refresh, {moved_stale} moved by it; {moves} moves published in 3 passes; "
        f"segment updates: {len(seg_msgs)}, centroids, member means and top-{TRENDING} items "
        f"and categories equal /segments, the export and an exact decayed count (worst "
        f"relative {trend_err:.1e}); refresh of {head1['last_pass']['users']} users took "
        f"{head1['last_pass']['seconds']:.3f} s")
    assert ratio <= 1.02, f"{dataset} k={k}: inertia ratio {ratio:.4f} > 1.02"
    assert sil >= sil_ref - 0.02, f"{dataset} k={k}: silhouette {sil:.4f} vs {sil_ref:.4f}"
    assert stale and moved_stale > 0, f"{dataset} k={k}: no stale user moved ({len(stale)})"
    return ratio, sil, sil_ref


def main():
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in ("rees46", "sparkov"):
            for k in (8, 16):
                if not only or f"{dataset}:{k}" in only:
                    run_case(tmp, dataset, k)
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
