"""Online segments with the population refresh on (segments.refresh, off by default).

The stationary stream of test_segments.py (4 planted groups, 1,000 users, 30 s of
stream time per event, warm-up 60,000) with segments.refresh = 1d: every day of stream
time the centroids are refreshed on the users' current vectors (Lloyd passes, and a
k-means++ candidate kept only if it lowers the inertia by more than 2%).
- the refreshes happen and are counted: at least one, and at most one per day of
  stream time after the seeding. (Stream time is the largest event time seen; with
  input.max_skew = 0 a partition read ahead of the others moved it on by days in
  one batch, with one refresh at most; aligned, it advances about evenly.)
- the stationary bounds hold with them: the inertia of the final centroids on the
  last 10,000 updates <= 1.02 x sklearn KMeans(n_init=10) on the same vectors, and the
  ARI of the users' final segments vs their planted groups >= 0.9.
"""
import sys
import tempfile

from harness import log, metric
from test_segments import STEP_MS, WARMUP, quality, stream


def main():
    events = 120_000
    with tempfile.TemporaryDirectory() as tmp:
        rows, group, st, m = stream(tmp, events, extra=("segments.refresh=1d",))
    refreshes = metric(m, "cohortd_segment_refreshes_total")
    restarts = metric(m, "cohortd_segment_restarts_total")
    days = (events - WARMUP) * STEP_MS / 86_400_000  # stream time after the seeding
    _, _, ratio, ari, _ = quality(rows, group, st)
    log(f"refreshed: {events} events, segments.refresh = 1d: {refreshes:.0f} refreshes "
        f"({restarts:.0f} restarts) in {days:.1f} days of stream time after the seeding; "
        f"last-window inertia ratio {ratio:.4f} vs sklearn KMeans; ARI of final segments vs "
        f"planted groups {ari:.4f}")
    assert 1 <= refreshes <= days, f"{refreshes:.0f} refreshes in {days:.1f} days"
    assert ratio <= 1.02, f"inertia ratio {ratio:.4f} > 1.02"
    assert ari >= 0.9, f"ARI {ari:.4f} < 0.9"


if __name__ == "__main__":
    sys.exit(main())
