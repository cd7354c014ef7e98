"""A local OpenAI-compatible chat-completions server on loopback: the outer
boundary of the assistant's tests (and of bench/assistant.py).

It records every request (JSON body and headers) and answers from a script:
each `Reply` says what the next request gets (a text, a tool call, a JSON
classification, an HTTP error, a refusal, a delay). With the script empty it
answers DEFAULT_TEXT. Runs in a thread of the test process: no subprocess."""

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_TEXT = "Hello from the test model."


@dataclass
class Reply:
    text: str = DEFAULT_TEXT
    tool_call: dict | None = None  # {"name": ..., "arguments": {...}}
    status: int = 200
    delay: float = 0.0
    refusal: str = ""
    tokens_in: int = 50
    tokens_out: int = 20
    finish_reason: str = "stop"


def classification(action, language="English", reason="test"):
    return Reply(text=json.dumps({"action": action, "language": language, "reason": reason}),
                 tokens_in=30, tokens_out=10)


class ModelServer:
    def __init__(self, delay=0.0):
        self.requests = []
        self.script = deque()
        self.delay = delay  # fixed latency of every answer (the bench's "model time")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def add(self, *replies):
        self.script.extend(replies)

    def bodies(self):
        return [r["body"] for r in self.requests]

    def _next(self):
        with self._lock:
            return self.script.popleft() if self.script else Reply()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms stall

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "headers": dict(self.headers)})
                reply = server._next()
                time.sleep(server.delay + reply.delay)
                if reply.status != 200:
                    return self._send(reply.status, {"error": {
                        "message": "scripted failure", "type": "server_error"}})
                message = {"role": "assistant", "content": reply.text or None}
                if reply.refusal:
                    message = {"role": "assistant", "content": None, "refusal": reply.refusal}
                if reply.tool_call:
                    message["tool_calls"] = [{
                        "id": "call_1", "type": "function",
                        "function": {"name": reply.tool_call["name"],
                                     "arguments": json.dumps(reply.tool_call["arguments"])},
                    }]
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if reply.tool_call
                                 else reply.finish_reason}],
                    "usage": {"prompt_tokens": reply.tokens_in,
                              "completion_tokens": reply.tokens_out,
                              "total_tokens": reply.tokens_in + reply.tokens_out},
                })

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        return Handler
