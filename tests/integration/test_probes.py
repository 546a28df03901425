"""Probes first (issue 13, item 3): /healthz and /readyz are answered while 200 slow
clients (one byte of a request per second) and 300 idle connections hold on to the HTTP
endpoint, reconnecting as soon as they are closed, and events keep flowing.

Before the fix, such clients kept every slot and the probes got 503 or nothing for as
long as they stayed (1 of 149 answered). The test asserts that every probe is answered
200 and every event is processed; it prints the probes' latency (p50, p99, max) and the
event rate with and without the attack, which are figures, not assertions (the machine
is shared).
"""
import multiprocessing
import socket
import subprocess
import sys
import threading
import time

from harness import GEN, Broker, Daemon, caught_up, log, metric, probe, wait_for

PARTITIONS = 4
SLOW, IDLE = 200, 300
PROBES = 300
EVENTS = 20000


class Attack(multiprocessing.Process):
    """SLOW connections sending a request one byte per second and IDLE connections
    sending nothing; any the daemon closes is opened again at the next tick (0.1 s). A
    process of its own, as attackers and probers are: in the probing process, its work
    held the GIL between a probe's connect and its request for milliseconds."""

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = multiprocessing.Event()
        self.conns = [None] * (SLOW + IDLE)
        self.sent = [0] * SLOW
        self.count = multiprocessing.Value("l", 0)

    @property
    def opened(self):
        return self.count.value

    def open(self, i):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            s.setblocking(False)
            self.conns[i] = s
            with self.count.get_lock():
                self.count.value += 1
            if i < SLOW:
                self.sent[i] = 0
        except OSError:
            self.conns[i] = None

    def alive(self, s):
        try:
            return s.recv(4096) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def run(self):
        last_byte = 0.0
        while not self.stop.is_set():
            byte_due = time.monotonic() - last_byte >= 1.0
            if byte_due:
                last_byte = time.monotonic()
            for i, s in enumerate(self.conns):
                if s is not None and not self.alive(s):
                    s.close()
                    s = self.conns[i] = None
                if s is None:
                    self.open(i)
                    continue
                if i < SLOW and byte_due and self.sent[i] < len(self.REQUEST):
                    try:
                        s.send(self.REQUEST[self.sent[i]:self.sent[i] + 1])
                        self.sent[i] += 1
                    except OSError:
                        s.close()
                        self.conns[i] = None
            time.sleep(0.1)
        for s in self.conns:
            if s is not None:
                s.close()


class NoRead(multiprocessing.Process):
    """N clients that each send a whole request for /metrics and never read the answer,
    closing and reconnecting every 2.5 s."""

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def __init__(self, port, n):
        super().__init__(daemon=True)
        self.port, self.n = port, n
        self.stop = multiprocessing.Event()
        self.count = multiprocessing.Value("l", 0)

    def run(self):
        conns = []
        while not self.stop.is_set():
            for s in conns:
                s.close()
            conns = []
            for _ in range(self.n):
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.sendall(self.REQUEST)
                    conns.append(s)
                    with self.count.get_lock():
                        self.count.value += 1
                except OSError:
                    pass
            self.stop.wait(2.5)
        for s in conns:
            s.close()


def never_reading():
    """64 clients (http.max_connections) that send a request and never read, reconnecting
    every 2.5 s, hold no slot a probe needs: every probe is answered 200. (Before, they
    kept every slot answering or lingering: 61 of 300 probes were answered.)"""
    with Broker(partitions=PARTITIONS) as broker:
        with Daemon(broker.bootstrap) as d:
            d.wait_assigned()
            wait_for("ready", lambda: d.get("/readyz")[0] == 200, [d])
            attack = NoRead(d.http_port, 64)
            attack.start()
            wait_for("the clients connected", lambda: attack.count.value >= 128, [d])
            bad = []
            for i in range(100):
                path = "/healthz" if i % 2 == 0 else "/readyz"
                status, secs = probe(d.http_port, path)
                if status != 200:
                    bad.append((i, path, status, round(secs, 3)))
                time.sleep(0.02)
            opened = attack.count.value
            attack.stop.set()
            attack.join(timeout=30)
            evicted = metric(d.metrics(), "cohortd_http_connections_evicted_total")
            assert d.stop() == 0
    log(f"never-reading clients: 64 of them ({opened} connections, {evicted:.0f} evicted); "
        f"{100 - len(bad)}/100 probes answered 200")
    assert not bad, f"probes not answered 200: {bad[:10]}"


def timed_events(broker, d, total, seed):
    """Seconds cohortd took to process EVENTS more events (total so far)."""
    t0 = time.monotonic()
    subprocess.run([GEN, "--brokers", broker.bootstrap, "--events", str(EVENTS), "--users",
                    "2000", "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300)
    wait_for("events processed", lambda: caught_up(d, broker.bootstrap, PARTITIONS, total), [d],
             step=0.05)
    return time.monotonic() - t0


def main():
    with Broker(partitions=PARTITIONS) as broker:
        with Daemon(broker.bootstrap) as d:
            d.wait_assigned()
            wait_for("ready", lambda: d.get("/readyz")[0] == 200, [d])
            timed_events(broker, d, EVENTS, 1)  # warm-up: model, segments, user table
            quiet = timed_events(broker, d, 2 * EVENTS, 2)
            attack = Attack(d.http_port)
            attack.start()
            wait_for("the attack connected", lambda: attack.opened >= SLOW + IDLE, [d])
            gen = threading.Thread(target=lambda: results.append(
                timed_events(broker, d, 3 * EVENTS, 3)))
            results = []
            gen.start()
            lat, bad = [], []
            for i in range(PROBES):
                path = "/healthz" if i % 2 == 0 else "/readyz"
                status, secs = probe(d.http_port, path)
                lat.append(secs)
                if status != 200:
                    bad.append((i, path, status, round(secs, 3)))
                time.sleep(0.02)
            gen.join(timeout=600)
            attack.stop.set()
            attack.join(timeout=30)
            m = d.metrics()
            evicted = metric(m, "cohortd_http_connections_evicted_total")
            assert d.proc.poll() is None, "cohortd died"
            rc = d.stop()
        broker.stop()
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000  # noqa: E731
    loaded = results[0] if results else float("nan")
    log(f"probes under {SLOW} slow + {IDLE} idle clients ({attack.opened} connections "
        f"opened, {evicted:.0f} evicted): {PROBES - len(bad)}/{PROBES} answered 200; "
        f"latency p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms; "
        f"{EVENTS} events took {quiet:.2f} s without the attack, {loaded:.2f} s during it "
        f"(ratio {quiet / loaded:.2f})")
    assert not bad, f"probes not answered 200: {bad[:10]}"
    assert results, "events were not processed during the attack"
    assert rc == 0, rc
    log("PASS")


if __name__ == "__main__":
    never_reading()
    sys.exit(main())
