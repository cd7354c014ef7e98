"""A real HTTP server on 127.0.0.1 for webhook and alert tests.

It records every request (headers and raw body) and answers from a script:
a list of (status, body, delay_seconds) consumed in order, then `default`.
"""

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    script: list = field(default_factory=list)
    default: tuple = (200, b"", 0.0)
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    @property
    def port(self):
        return self.server.server_address[1]

    def answer(self, *responses):
        """Queue responses: status, or (status, body) or (status, body, delay)."""
        with self.lock:
            for item in responses:
                if isinstance(item, int):
                    item = (item, b"", 0.0)
                status, body, *rest = item
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                elif isinstance(body, str):
                    body = body.encode()
                self.script.append((status, body, rest[0] if rest else 0.0))

    def _next(self):
        with self.lock:
            return self.script.pop(0) if self.script else self.default


def start_receiver(ssl_context=None):
    """Start the server (HTTPS when `ssl_context`, a server-side SSLContext, is given)."""
    holder = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            receiver = holder["receiver"]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.requests.append(Received(self.path, dict(self.headers), body))
            status, reply, delay = receiver._next()
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(server)
    holder["receiver"] = receiver
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return receiver, thread


def stop_receiver(receiver, thread):
    receiver.server.shutdown()
    receiver.server.server_close()
    thread.join(timeout=5)


@contextmanager
def running_receiver(ssl_context=None):
    """A running Receiver, stopped on exit (test modules wrap it in a fixture)."""
    started, thread = start_receiver(ssl_context)
    try:
        yield started
    finally:
        stop_receiver(started, thread)
