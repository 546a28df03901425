"""systemd/cohortd.service: the sandbox's exposure score and the commands it runs.

- `systemd-analyze security --offline=true` rates the unit below 2.0 (the goal) and
  the directives the issue names are present;
- the unit's ExecStartPre (`--check-config --quiet`) and ExecStart flags are accepted
  by this build of cohortd (run against the example config: silent, exit 0), so the
  unit cannot drift from the binary's command line.
Skipped (exit 77) where systemd-analyze is missing.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

SRC = os.environ.get("CH_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.environ.get("CH_BUILD_DIR", os.path.join(SRC, "build"))
UNIT = os.path.join(SRC, "systemd", "cohortd.service")
GOAL = 2.0


def directives():
    out = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                k, v = line.split("=", 1)
                out.setdefault(k, []).append(v)
    return out


def main():
    d = directives()
    need = {"Type": "notify", "DynamicUser": "yes", "ProtectSystem": "strict",
            "NoNewPrivileges": "yes", "PrivateTmp": "yes", "SystemCallFilter": "@system-service"}
    for k, v in need.items():
        assert v in d.get(k, []), f"{k}={v} missing from the unit"
    assert "WatchdogSec" in d and "RestrictAddressFamilies" in d and "ExecReload" in d

    # the unit's command lines, pointed at this build and the example config
    conf = os.path.join(SRC, "conf", "cohortd.conf")
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(d[key][0])
        assert argv[0] == "/usr/local/bin/cohortd", argv
        argv = [os.path.join(BUILD, "daemon", "cohortd")] + \
               [conf if a == "/etc/cohortd/cohortd.conf" else a for a in argv[1:]]
        if key == "ExecStart":
            argv += ["--check-config", "--quiet"]  # flags accepted; do not run the daemon
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (key, r)
    print("ExecStartPre/ExecStart flags accepted by this build (silent check, exit 0)")

    sa = shutil.which("systemd-analyze")
    if not sa:
        print("SKIP: systemd-analyze not installed")
        return 77
    r = subprocess.run([sa, "security", "--offline=true", UNIT],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for cohortd.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security --offline=true: exposure {score} (goal < {GOAL})")
    assert score < GOAL, r.stdout
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
