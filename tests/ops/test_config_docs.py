"""Every configuration key is documented, from the one config table.

- `cohortd --help-config=markdown` (generated from the table) appears verbatim in the
  README between the config-reference markers: the docs cannot drift from the code;
- every scalar key that `--check-config` prints is listed by `--help-config` with a
  type and a default, and every row gives a meaning;
- every key used in conf/cohortd.conf is accepted (the example config checks clean);
- an unknown key is an error naming file:line with a suggestion.
"""
import os
import re
import subprocess
import sys
import tempfile

SRC = os.environ.get("CH_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.environ.get("CH_BUILD_DIR", os.path.join(SRC, "build"))
COHORTD = os.path.join(BUILD, "daemon", "cohortd")
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def out(*args):
    r = subprocess.run([COHORTD, *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def main():
    rc, md, _ = out("--help-config=markdown")
    assert rc == 0
    with open(os.path.join(SRC, "README.md")) as f:
        readme = f.read()
    assert BEGIN in readme and END in readme, "README lacks the config-reference markers"
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    assert section == md.strip("\n"), \
        "README's configuration reference is stale: regenerate it with " \
        "`cohortd --help-config=markdown`"

    rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    documented = {}
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        key, typ, dflt, rng, meaning = cells[0].strip("`"), cells[1], cells[2], cells[3], cells[4]
        assert typ in {"string", "path", "integer", "duration", "enum", "number"}, ln
        assert dflt.startswith("`") and len(meaning) > 10, ln
        if typ in {"integer", "number", "enum"}:
            assert rng, f"{key}: no range"
        documented[key] = typ

    conf = os.path.join(SRC, "conf", "cohortd.conf")
    rc, eff, err = out("--config", conf, "--check-config")
    assert rc == 0, err
    printed = [m.group(1) for m in re.finditer(r"^([a-z_]+\.[a-z_.]+) =", eff, re.M)
               if not m.group(1).startswith(("kafka.", "feature."))]
    missing = [k for k in printed if k not in documented]
    assert not missing and len(printed) == len(documented), (missing, len(printed), len(documented))

    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("kafka.bootstrap.servers = x:1\nfeature.n = count\nsegments.kk = 4\n")
    rc, _, err = out("--config", f.name, "--check-config")
    os.unlink(f.name)
    assert rc == 2 and f"{f.name}:3: unknown key 'segments.kk' (did you mean 'segments.k'?)" in err, err
    print(f"{len(documented)} keys documented with type, default, range and meaning; README "
          f"reference matches --help-config=markdown; unknown keys suggested")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
