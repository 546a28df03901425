"""A Confluent Schema Registry test server: the documented REST endpoints cohortd uses,
run in a thread of the test on 127.0.0.1.

  GET  /schemas/ids/{id}             -> 200 {"schema": "..."} | 404 {"error_code": 40403}
  POST /subjects/{subject}/versions  {"schema": "..."} -> 200 {"id": N} (the same id for
                                     the same schema, as the registry does)
  GET  /subjects                     -> ["subject", ...]

Optional HTTP basic authentication (401 {"error_code": 401} otherwise) and TLS. The
schemas live in the object, so stop() and start() model a registry that goes down and
comes back with its data. Every request is counted by (method, path).
"""
import base64
import collections
import http.server
import json
import re
import socket
import ssl
import threading


class Registry:
    def __init__(self, port, user=None, password=None, certfile=None, keyfile=None, first_id=100):
        self.port = port
        self.auth = None
        if user is not None:
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.certfile, self.keyfile = certfile, keyfile
        self.schemas = {}   # id -> schema text
        self.subjects = collections.defaultdict(list)  # subject -> [id]
        self.next_id = first_id
        self.requests = collections.Counter()  # (method, path) -> count
        self.lock = threading.Lock()
        self.httpd = None
        self.thread = None
        self.conns = set()  # open client connections, cut by stop() as a crash would

    @property
    def url(self):
        return f"{'https' if self.certfile else 'http'}://127.0.0.1:{self.port}"

    def add(self, schema_text, subject="events-value"):
        """Register a schema directly (as a producer would); returns its id."""
        with self.lock:
            return self._register(subject, schema_text)

    def _register(self, subject, text):
        canon = json.dumps(json.loads(text), sort_keys=True)
        for sid, t in self.schemas.items():
            if json.dumps(json.loads(t), sort_keys=True) == canon:
                break
        else:
            sid = self.next_id
            self.next_id += 1
            self.schemas[sid] = text
        if sid not in self.subjects[subject]:
            self.subjects[subject].append(sid)
        return sid

    def count(self, method, path):
        with self.lock:
            return self.requests[(method, path)]

    def start(self):
        reg = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with reg.lock:
                    reg.conns.add(self.connection)

            def finish(self):
                with reg.lock:
                    reg.conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def reply(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def authorized(self):
                if reg.auth is None or self.headers.get("Authorization") == reg.auth:
                    return True
                body = json.dumps({"error_code": 401, "message": "Unauthorized"}).encode()
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return False

            def do_GET(self):
                with reg.lock:
                    reg.requests[("GET", self.path)] += 1
                if not self.authorized():
                    return
                m = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
                if m:
                    with reg.lock:
                        text = reg.schemas.get(int(m.group(1)))
                    if text is None:
                        return self.reply(404, {"error_code": 40403,
                                                "message": "Schema not found"})
                    return self.reply(200, {"schema": text})
                if self.path == "/subjects":
                    with reg.lock:
                        return self.reply(200, sorted(reg.subjects))
                self.reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with reg.lock:
                    reg.requests[("POST", self.path)] += 1
                if not self.authorized():
                    return
                m = re.fullmatch(r"/subjects/([^/]+)/versions", self.path)
                if not m:
                    return self.reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                try:
                    text = json.loads(body)["schema"]
                    json.loads(text)
                except (ValueError, KeyError, TypeError):
                    return self.reply(422, {"error_code": 42201,
                                            "message": "Invalid schema"})
                with reg.lock:
                    sid = reg._register(m.group(1), text)
                self.reply(200, {"id": sid})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certfile, self.keyfile)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        """Stop answering, as a crash would: open connections are cut, new ones refused
        until start()."""
        if self.httpd:
            with self.lock:
                for c in self.conns:
                    try:
                        c.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.httpd = None
