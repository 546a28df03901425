"""GET /segments/export is streamed between batches and cannot hurt the loop (issue:
state that can never come back wrong, HTTP items).

About 16,000 users with segments. One export read whole has a line per user. Then 64
clients ask for the export and hang up at once, five times over, and 8 more ask and never read
(a 4 KiB receive buffer): at most 4 exports stream at once (the rest are answered 503),
an abandoned one ends with its client, and every probe meanwhile is answered 200. When
the clients are gone no export is left running. (Before, each export was built whole on
the loop: 4.56 s at 200,000 users, 16 abandoned ones stalled the loop 36.5 s, and 64
clients that never read held 213 MiB.)
"""
import json
import socket
import sys
import time

from harness import GEN, Broker, Daemon, caught_up, log, metric, probe, run, wait_for

PARTS = 2
USERS = 20000


def ask(port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /segments/export HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return s


def main():
    with Broker(partitions=PARTS) as broker:
        bs = broker.bootstrap
        run([GEN, "--brokers", bs, "--users", str(USERS), "--events", str(2 * USERS),
             "--step-ms", "100", "--seed", "61", "--quiet"])
        with Daemon(bs, "model.path=", "segments.warmup=2000") as d:
            wait_for("caught up", lambda: caught_up(d, bs, PARTS, 2 * USERS), [d])
            status, ctype, body = d.get("/segments/export", timeout=120)
            lines = body.splitlines()
            assert status == 200 and ctype == "application/x-ndjson", (status, ctype)
            users = metric(d.metrics(), "cohortd_users")
            assert len(lines) == 1 + users, f"{len(lines) - 1} user lines, {users} users"
            ids = {json.loads(ln)["user_id"] for ln in lines[1:]}
            assert len(ids) == users, f"{len(ids)} distinct users of {users}"

            bad, asked = [], 0
            for _ in range(5):
                for s in [ask(d.http_port) for _ in range(64)]:
                    s.close()  # hung up before reading anything
                    asked += 1
                for _ in range(10):
                    st = probe(d.http_port)[0]
                    if st != 200:
                        bad.append(st)
            stuck = [ask(d.http_port, rcvbuf=4096) for _ in range(8)]
            heads = []
            for s in stuck:
                heads.append(s.recv(64).split(b"\r\n")[0])  # the status line only
            for _ in range(50):
                st = probe(d.http_port)[0]
                if st != 200:
                    bad.append(st)
            streaming = metric(d.metrics(), "cohortd_segment_exports")
            for s in stuck:
                s.close()
            wait_for("no export left running",
                     lambda: metric(d.metrics(), "cohortd_segment_exports") == 0, [d], timeout=60)
            assert d.stop() == 0
    ok = sum(h.startswith(b"HTTP/1.1 200") for h in heads)
    busy = sum(h.startswith(b"HTTP/1.1 503") for h in heads)
    assert not bad, f"probes not answered 200: {bad[:10]}"
    assert ok <= 4 and ok + busy == len(heads), heads
    assert streaming <= 4, streaming
    log(f"export: {len(lines) - 1} user lines for {users:.0f} users; {asked} abandoned "
        f"exports and 8 clients that never read ({ok} streamed, {busy} answered 503, "
        f"{streaming:.0f} running at once): all {50 + 50 - len(bad)} probes answered 200; "
        f"none left running after")


if __name__ == "__main__":
    main()
    sys.exit(0)
