"""Logging as an operator sees it, and secrets that must never show.

1. On a terminal or file: every line is "<ISO-8601 UTC> <level> <message>".
2. Under systemd (JOURNAL_STREAM names our stderr): every line starts with a syslog
   priority prefix "<N>" and carries no timestamp (journald adds its own).
3. log.level = warning: no info or notice lines, warnings still written.
4. Repeated bad input is rate-limited: 60 malformed messages with
   log.bad_input_per_min = 3 give 3 log lines, while all 60 are counted and
   dead-lettered.
5. librdkafka's own log lines come through the same logger ("librdkafka <FAC>: ...").
6. Secrets: kafka.sasl.password and kafka.ssl.key.password never appear in
   --check-config output nor in the log, even with kafka.debug = all at log.level = debug.
"""
import re
import subprocess
import sys
import time

from harness import COHORTD, CONF, GEN, Broker, Daemon, log, metric, run

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|notice|info|debug) \S")
PRIO = re.compile(r"^<[3-7]>\S")
SECRET, KEY_SECRET = "hunter2-Sekr1t", "k3y-pa55-Sekr1t"


def wait_for(pred, what, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def lines(d):
    return [ln for ln in d.log_text().splitlines() if ln]


def main():
    with Broker(topics="events,events2,profiles,risk,cohortd-dlq") as b:
        # 1 + 4: plain format, bad input rate-limited
        with Daemon(b.bootstrap, "log.bad_input_per_min=3", group="log-a") as d:
            d.wait_assigned()
            run([GEN, "--brokers", b.bootstrap, "--events", "60", "--bad-every", "1", "--quiet"])
            wait_for(lambda: metric(d.metrics(), "cohortd_outputs_acked_total",
                                    output="dead_letter") == 60, "60 dead letters")
            m = d.metrics()
            bad_total = sum(v for (n, _), v in m.items() if n == "cohortd_events_bad_total")
            assert d.stop() == 0
            ls = lines(d)
            bad_lines = [ln for ln in ls if " bad input " in ln]
            assert all(ISO.match(ln) for ln in ls), [ln for ln in ls if not ISO.match(ln)][:3]
            assert bad_total == 60 and len(bad_lines) == 3, (bad_total, len(bad_lines))
            log(f"plain format on {len(ls)} lines; 60 bad messages -> {len(bad_lines)} log lines, "
                f"60 counted and dead-lettered")

        # 2 + 3: journal prefixes, level filter
        with Daemon(b.bootstrap, "log.level=warning", "input.topic=events2", group="log-b",
                    journal=True) as d:
            d.wait_http()
            status = d.get("/readyz")[0]
            wait_for(lambda: d.get("/readyz")[0] == 200, "ready")
            run([GEN, "--brokers", b.bootstrap, "--topic", "events2", "--events", "20",
                 "--bad-every", "10", "--seed", "3", "--quiet"])
            wait_for(lambda: metric(d.metrics(), "cohortd_outputs_acked_total",
                                    output="dead_letter") == 2, "2 dead letters")
            assert d.stop() == 0
            ls = lines(d)
            assert ls and all(PRIO.match(ln) for ln in ls), ls[:5]
            levels = {ln[1] for ln in ls}
            assert levels <= {"3", "4"}, (levels, ls[:5])
            assert sum(1 for ln in ls if ln.startswith("<4>") and "bad input" in ln) == 2, ls
            log(f"journal: {len(ls)} lines, all with <N> prefixes, levels {sorted(levels)} only "
                f"at log.level=warning (readyz was {status} at start)")

        # 5 + 6: secrets in --check-config and in debug logs
        secret_sets = ["kafka.security.protocol=SASL_PLAINTEXT", "kafka.sasl.mechanisms=PLAIN",
                       "kafka.sasl.username=cohortd", f"kafka.sasl.password={SECRET}",
                       f"kafka.ssl.key.password={KEY_SECRET}"]
        args = [COHORTD, "--config", CONF, "--check-config"]
        for s in secret_sets + [f"kafka.bootstrap.servers={b.bootstrap}"]:
            args += ["--set", s]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr and KEY_SECRET not in r.stdout + r.stderr
        assert "kafka.sasl.password = ********" in r.stdout, r.stdout
        assert "kafka.sasl.username = cohortd" in r.stdout
        with Daemon(b.bootstrap, *secret_sets, "kafka.debug=all", "log.level=debug",
                    group="log-c") as d:
            d.wait_http()
            time.sleep(3)  # SASL handshakes against a broker without SASL fail and retry
            d.stop()
            text = d.log_text()
            assert SECRET not in text and KEY_SECRET not in text, "a secret was logged"
            rk = [ln for ln in text.splitlines() if " librdkafka " in ln]
            assert len(rk) > 20, len(rk)
            assert "[redacted]" in text
            log(f"secrets: masked by --check-config; absent from {len(text.splitlines())} debug "
                f"log lines ({len(rk)} from librdkafka, which redacts them as well)")
        b.stop()
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
