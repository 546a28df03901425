"""Reading cohortd's durations and feature declarations from its config file, for the
Python implementations the benchmark compares cohortd with (baseline.py,
featurize_numpy.py)."""
import math
import re

DUR = {None: 1, "ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6, "d": 8.64e7, "w": 6.048e8}


def duration_ms(s):
    """"1h", "7d", "250ms", "inf" -> milliseconds."""
    if s in ("inf", "infinite"):
        return math.inf
    m = re.fullmatch(r"([0-9.eE+-]+)(ms|s|m|h|d|w)?", s.strip())
    return float(m.group(1)) * DUR[m.group(2)]


def read_feature_specs(path):
    """[(name, spec)] in declared order, and features.half_life (ms)."""
    specs, default_hl = [], "1h"
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("features.half_life"):
                default_hl = line.split("=", 1)[1].strip()
            m = re.match(r"feature\.([\w.-]+)\s*=\s*(.+)$", line)
            if m:
                specs.append((m.group(1), m.group(2).strip()))
    return specs, duration_ms(default_hl)
