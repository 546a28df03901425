#!/usr/bin/python3
"""cohortd featurize's job written the way a data scientist would in Python with numpy:
the same features (count, sum, mean, std, max, since_last and ratio, with type filters
and half-lives, as README "Features" defines them) for every event of a CSV file of
cohortd's own fields (event_id,user_id,ts,type,amount), the row of each event read at
its own time. tools/bench's featurize phase runs it on the same file as cohortd and
requires the same values.

Vectorised per user: with E_j = 2^((t_j - t_0) / h), a decayed sum at event i is
cumsum(x E)_i / E_i, a decayed max is cummax(x E)_i / E_i, means and variances are
ratios of such sums (the variance about the user's first amount, to keep the
difference of squares small), since_last is a running max of the matching times.
Exact for a user whose events span less than about 1,000 of the shortest half-life
(2^1000 stays a finite double); the benchmark's file keeps well within that.

Usage: featurize_numpy.py CONFIG EVENTS.csv OUT.npy
Prints one JSON line: events, seconds, cpu_seconds (reading, computing, writing).
"""
import json
import math
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from specs import duration_ms, read_feature_specs  # noqa: E402


def parse(spec, default_hl):
    m = re.match(r"(\w+)(?:\(([^)]*)\))?\s*(.*)$", spec)
    kind, args, rest = m.group(1), m.group(2), m.group(3)
    opts = dict(kv.split("=", 1) for kv in rest.split())
    types = opts.get("type")
    return (kind, args, set(types.split("|")) if types else None,
            duration_ms(opts["half_life"]) if "half_life" in opts else default_hl,
            float(opts.get("default", 0)))


def features(specs, default_hl, t, ty, amount):
    """Rows of every feature for one user's events (in time order)."""
    n = len(t)
    out = {}
    rel = (t - t[0]).astype(np.float64)
    for name, spec in specs:
        kind, args, types, h, dflt = parse(spec, default_hl)
        sel = np.isin(ty, list(types)) if types else np.ones(n, bool)
        if kind == "ratio":
            a, b = [x.strip() for x in args.split(",")]
            num, den = out[a], out[b]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = np.where(den != 0, num / den, dflt)
            continue
        if kind == "since_last":
            last = np.maximum.accumulate(np.where(sel, t, np.iinfo(np.int64).min))
            out[name] = np.where(sel.cumsum() > 0, (t - last) / 1000.0, dflt)
            continue
        e = np.exp2(rel / h) if math.isfinite(h) else np.ones(n)
        w = np.where(sel, e, 0.0)
        if kind == "count":
            out[name] = np.cumsum(w) / e
        elif kind == "sum":
            out[name] = np.cumsum(w * amount) / e
        elif kind == "max":
            run = np.maximum.accumulate(np.where(sel, amount * e, -np.inf))
            out[name] = np.where(np.isfinite(run), run / e, dflt)
        elif kind in ("mean", "std"):
            sw = np.cumsum(w)
            c = amount - amount[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                mean_c = np.cumsum(w * c) / sw
                if kind == "mean":
                    out[name] = np.where(sw > 0, mean_c + amount[0], dflt)
                else:
                    var = np.cumsum(w * c * c) / sw - mean_c * mean_c
                    out[name] = np.where(sw > 0, np.sqrt(np.maximum(var, 0)), dflt)
        else:
            raise SystemExit(f"featurize_numpy: feature kind {kind} is not implemented")
    return np.stack([out[name] for name, _ in specs], axis=1)


def main():
    conf, events, out_path = sys.argv[1:4]
    specs, default_hl = read_feature_specs(conf)
    t0, c0 = time.monotonic(), time.process_time()
    ev = np.loadtxt(events, delimiter=",", skiprows=1, dtype=[
        ("event_id", "i8"), ("user_id", "i8"), ("ts", "i8"), ("type", "U8"), ("amount", "f8")])
    user, ts, ty, amount = ev["user_id"], ev["ts"], ev["type"], ev["amount"]
    order = np.lexsort((np.arange(len(ts)), ts, user))  # by user, then time, then file
    starts = np.flatnonzero(np.r_[True, user[order][1:] != user[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    rows = np.empty((len(ts), len(specs)))
    for s, e in zip(starts, ends):
        idx = order[s:e]
        rows[idx] = features(specs, default_hl, ts[idx], ty[idx], amount[idx])
    np.save(out_path, rows.astype(np.float32))
    print(json.dumps({"events": len(ts), "users": len(starts),
                      "seconds": time.monotonic() - t0, "cpu_seconds": time.process_time() - c0}))


if __name__ == "__main__":
    main()
