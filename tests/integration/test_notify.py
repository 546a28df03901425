"""The systemd notify protocol, checked with a NOTIFY_SOCKET of our own (what systemd
does for a Type=notify unit): an AF_UNIX datagram socket we bind, passed to cohortd in
the environment together with WATCHDOG_USEC.

- READY=1 arrives once, after the consumer is subscribed and the model loaded;
- WATCHDOG=1 arrives every WATCHDOG_USEC/2 from the loop, and stops while the loop
  is stopped (SIGSTOP): what lets systemd restart a stuck daemon;
- STATUS= carries rates and counts;
- SIGHUP: RELOADING=1 then READY=1; SIGTERM: STOPPING=1, then exit 0;
- without NOTIFY_SOCKET nothing is sent and nothing fails (the other tests).
"""
import os
import signal
import socket
import sys
import tempfile
import time

from harness import GEN, Broker, Daemon, log, run

WATCHDOG_USEC = 400000  # pings every 0.2 s


class NotifySocket:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cohortd-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.msgs = []  # (time, {key: value})

    def pump(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.msgs.append((time.time(), fields))

    def wait(self, key, value=None, timeout=30, after=0.0):
        end = time.time() + timeout
        while time.time() < end:
            for t, f in self.msgs:
                if t >= after and key in f and (value is None or f[key] == value):
                    return t, f
            self.pump(0.1)
        raise AssertionError(f"no {key}={value} on the notify socket; got {self.msgs[-10:]}")

    def count(self, key, t0, t1):
        return sum(1 for t, f in self.msgs if t0 <= t <= t1 and key in f)

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def main():
    ns = NotifySocket()
    try:
        with Broker() as b, Daemon(b.bootstrap, env={"NOTIFY_SOCKET": ns.path,
                                                     "WATCHDOG_USEC": str(WATCHDOG_USEC)}) as d:
            t_ready, f = ns.wait("READY", "1")
            text = d.log_text()
            assert "model" in text and "loaded" in text, "READY=1 before the model was loaded"
            assert "STATUS" in f and "subscribed to events" in f["STATUS"], f
            log(f"READY=1 with STATUS={f['STATUS']!r}")

            ns.pump(2.0)
            t1 = time.time()
            pings = ns.count("WATCHDOG", t1 - 2.0, t1)
            assert 7 <= pings <= 13, f"{pings} watchdog pings in 2 s at WATCHDOG_USEC={WATCHDOG_USEC}"
            log(f"WATCHDOG=1: {pings} pings in 2 s (expected ~10)")

            # a stopped loop stops the pings; it resumes afterwards
            d.proc.send_signal(signal.SIGSTOP)
            t_stop = time.time()
            ns.pump(1.0)
            d.proc.send_signal(signal.SIGCONT)
            t_cont = time.time()
            ns.pump(1.0)
            during = ns.count("WATCHDOG", t_stop + 0.1, t_cont - 0.05)
            after = ns.count("WATCHDOG", t_cont + 0.2, time.time())
            assert during == 0 and after >= 3, (during, after)
            log(f"SIGSTOP for 1 s: {during} pings while stopped, {after} in the second after")

            d.wait_assigned()
            run([GEN, "--brokers", b.bootstrap, "--users", "100", "--events", "3000",
                 "--rate", "1000", "--quiet"])
            _, f = ns.wait("STATUS", timeout=15, after=time.time())
            st = f["STATUS"]
            assert "ev/s" in st and "users" in st and "partitions" in st, st
            log(f"STATUS={st!r}")

            t_hup = time.time()
            d.proc.send_signal(signal.SIGHUP)
            t_rel, _ = ns.wait("RELOADING", "1", after=t_hup)
            t_rdy, _ = ns.wait("READY", "1", after=t_rel)
            log("SIGHUP: RELOADING=1, then READY=1")

            t_term = time.time()
            d.proc.send_signal(signal.SIGTERM)
            _, f = ns.wait("STOPPING", "1", after=t_term)
            assert d.proc.wait(timeout=60) == 0
            log(f"SIGTERM: STOPPING=1 (STATUS={f.get('STATUS')!r}), exit 0")
            b.stop()
    finally:
        ns.close()
    log("PASS")


if __name__ == "__main__":
    sys.exit(main())
