"""Online segments (incremental mini-batch K-Means) against sklearn and planted groups.

cohort-gen streams users from 4 planted behaviour groups (--labels gives each user's
group) through cohortd (shipped features, segments.k = 4, no risk model).
- stationary: on the last 10,000 profile updates, the inertia of cohortd's centroids
  (from segments.state_file, in the transformed space it reports) is <= 1.02 x the
  inertia of sklearn KMeans(k-means++, n_init=10) fitted on those same points; the
  adjusted Rand index of the users' final segments vs their planted groups is >= 0.9;
  once every group has a segment of its own (>= 90% of its updates), the group ->
  segment mapping never changes.
- drift (cohort-gen --drift-at): every group's event mix and amounts move; the ARI of
  each 5,000-update window (from 25,000 updates after warm-up) dips below 0.9, then is
  back >= 0.9 within RECOVERY_EVENTS of the drift and stays there.
The warm-up is 60,000 vectors (21 days of stream time), so that k-means++ seeds
mostly on matured 7-day features rather than on users' first few events.
"""
import os
import sys
import tempfile
from collections import Counter, defaultdict

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from harness import GEN, Broker, Daemon, avro_reader, consume, decode_confluent, log, run

K = 4
USERS = 1000
STEP_MS = 30_000  # stream time per event: 1,000 users see ~3 events a day each
WINDOW = 10_000
WARMUP = 60_000  # 21 days of stream time: most vectors have matured 7-day features
# Users' vectors themselves take a few half-lives of the slowest feature (7 days =
# 20,160 events at STEP_MS) to reach their new place; segments cannot settle sooner.
RECOVERY_EVENTS = 80_000  # 4 x 7 days of stream time


def stream(tmp, events, drift_at=None, extra=()):
    labels = os.path.join(tmp, "labels.csv")
    state = os.path.join(tmp, "segments.state")
    gen = [GEN, "--users", str(USERS), "--events", str(events), "--groups", str(K),
           "--anomalous", "0", "--step-ms", str(STEP_MS), "--seed", "7", "--labels", labels,
           "--quiet"]
    if drift_at is not None:
        gen += ["--drift-at", str(drift_at)]
    with Broker(partitions=8) as broker, \
            Daemon(broker.bootstrap, "emit.policy=every", "model.path=", f"segments.k={K}",
                   f"segments.state_file={state}", f"segments.warmup={WARMUP}", *extra) as d:
        d.wait_assigned()
        run(gen + ["--brokers", broker.bootstrap])
        msgs = consume(broker.bootstrap, "profiles", expect=events, timeout=300, refreshes=True)
        metrics = d.metrics()
        rc = d.stop()
        assert rc == 0, f"cohortd exited {rc}"
        broker.stop()
    reader = avro_reader("profile_update.avsc")
    latest, ev_msgs = {}, []  # each user's segment as last published (refreshes too)
    for m in sorted(msgs, key=lambda x: (x[0], x[1])):
        _, r = decode_confluent(reader, m[3])
        latest[r["user_id"]] = r["segment"]
        if r["event_id"] is not None:
            ev_msgs.append(m)
    msgs = ev_msgs
    assert len(msgs) == events, f"{len(msgs)} profile updates for {events} events"
    group = {}
    with open(labels) as f:
        next(f)
        for line in f:
            u, g = line.strip().split(",")
            group[u] = int(g)
    rows = []
    for _, _, _, value, _ in msgs:
        _, r = decode_confluent(reader, value)
        i = int(r["event_id"].rsplit("-", 1)[1])
        rows.append((i, r["user_id"], r["segment"], r["segment_generation"], r["features"]))
    rows.sort()
    st = read_state(state)
    st["latest"] = latest
    return rows, group, st, metrics


def read_state(path):
    st = {"centroids": {}}
    with open(path) as f:
        for line in f:
            w = line.split()
            if w[0] in ("mean", "std"):
                st[w[0]] = np.array([float(v) for v in w[1:]])
            elif w[0] == "centroid":
                st["centroids"][int(w[1])] = (int(w[2]), np.array([float(v) for v in w[4:]]))
            elif len(w) == 2:
                st[w[0]] = w[1]
    return st


def window_ari(rows, group):
    segs = [r[2] for r in rows if r[2] is not None]
    labs = [group[r[1]] for r in rows if r[2] is not None]
    return adjusted_rand_score(labs, segs) if segs else float("nan")


def majority(rows, group):
    """group -> (its most frequent segment, the share of its updates there)."""
    votes = defaultdict(Counter)
    for _, u, s, _, _ in rows:
        if s is not None:
            votes[group[u]][s] += 1
    return {g: (c.most_common(1)[0][0], c.most_common(1)[0][1] / sum(c.values()))
            for g, c in sorted(votes.items())}


def quality(rows, group, st):
    """(cohortd's last-window inertia, sklearn's, their ratio, ARI of final segments,
    users) with the centroids and transform of the saved state."""
    X = np.array([r[4] for r in rows[-WINDOW:]], dtype=np.float64)
    Z = (np.sign(X) * np.log1p(np.abs(X)) - st["mean"]) / st["std"]
    C = np.array([st["centroids"][j][1] for j in range(K)])
    d2 = ((Z[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    ours = float(d2.min(axis=1).sum())
    ref = KMeans(n_clusters=K, init="k-means++", n_init=10, random_state=0).fit(Z)
    final = {}
    for _, u, s, _, _ in rows:
        if s is not None:
            final[u] = s
    users = sorted(final)
    ari = adjusted_rand_score([group[u] for u in users], [final[u] for u in users])
    return ours, float(ref.inertia_), ours / float(ref.inertia_), ari, users


def stationary(tmp):
    events = 160_000
    rows, group, st, _ = stream(tmp, events)
    # inertia on the last window, in cohortd's transformed space
    ours, ref_inertia, ratio, ari, users = quality(rows, group, st)
    # Stable ids: from the first window where every group has a segment of its own
    # (>= 90% of the group's updates there), the group -> segment mapping never
    # changes (no permutation, no re-sorting).
    maps = []
    for lo in range(WARMUP, events - WINDOW // 2 + 1, WINDOW // 2):
        m = majority(rows[lo:lo + WINDOW // 2], group)
        if not m:
            continue  # the seeding pass (between batches, just after the warm-up) not over yet
        maps.append((lo, {g: seg for g, (seg, _) in m.items()}, min(f for _, f in m.values())))
    settled = next((i for i, (_, m, purity) in enumerate(maps)
                    if len(set(m.values())) == K and purity >= 0.9), None)
    assert settled is not None, f"no window where each of the {K} groups has >= 90% of its " \
                                f"updates in a segment of its own"
    first, last = maps[settled][1], maps[-1][1]
    moved = [(lo, m) for lo, m, _ in maps[settled:] if m != first]
    gens = Counter(r[3] for r in rows if r[3] is not None)
    log(f"stationary: {events} events, {len(users)} users; last-window inertia cohortd "
        f"{ours:.1f} vs sklearn KMeans {ref_inertia:.1f} (ratio {ratio:.4f}); ARI of final "
        f"segments vs planted groups {ari:.4f}; group->segment {first} from update "
        f"{maps[settled][0]} to the end ({len(maps) - settled} windows); generations seen "
        f"{dict(gens)}")
    assert ratio <= 1.02, f"inertia ratio {ratio:.4f} > 1.02"
    assert ari >= 0.9, f"ARI {ari:.4f} < 0.9"
    assert not moved, f"segment ids moved after settling on {first}: {moved[:3]}"
    assert len(set(last.values())) == K, f"groups share a segment: {last}"


def drift(tmp):
    drift_at, events, win = 120_000, 260_000, 5_000
    rows, group, _, _ = stream(tmp, events, drift_at=drift_at)
    series = []
    for lo in range(WARMUP + 25_000, events, win):
        series.append((lo, window_ari(rows[lo:lo + win], group)))
    txt = ", ".join(f"{lo // 1000}k:{a:.2f}" for lo, a in series)
    log(f"drift at {drift_at}: ARI per {win}-update window: {txt}")
    before = [a for lo, a in series if lo + win <= drift_at]
    after = [(lo, a) for lo, a in series if lo >= drift_at]
    assert min(before) >= 0.9, f"ARI before the drift {min(before):.3f} < 0.9"
    dip = min(a for _, a in after)
    assert dip < 0.9, f"the drift did not disturb the segments (min ARI {dip:.3f}): no test"
    recovered = None
    for idx, (lo, a) in enumerate(after):
        if all(b >= 0.9 for _, b in after[idx:]):
            recovered = lo + win - drift_at
            break
    assert recovered is not None and recovered <= RECOVERY_EVENTS, \
        f"ARI not back >= 0.9 within {RECOVERY_EVENTS} events of the drift ({txt})"
    log(f"drift: ARI dipped to {dip:.3f} and was >= 0.9 from {recovered} events after the "
        f"drift on (bound {RECOVERY_EVENTS})")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        stationary(tmp)
    with tempfile.TemporaryDirectory() as tmp:
        drift(tmp)


if __name__ == "__main__":
    sys.exit(main())
