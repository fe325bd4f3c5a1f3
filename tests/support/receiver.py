"""A real HTTP endpoint on loopback standing in for the agent: records every POST, answers from a
script (status codes, delays), or hangs, or is down (stopped)."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 256       # many deliveries at once must not see refused connections
    daemon_threads = True


@dataclass
class Request:
    path: str
    headers: dict
    body: bytes
    at: float = field(default_factory=time.time)
    status: int = 0            # what was answered; 0: the connection was dropped without an answer


class Receiver:
    def __init__(self, port: int = 0):
        self.requests: list[Request] = []
        self.script: list[tuple[int, float]] = []       # (status, delay seconds) per request;
        # status 0 reads the whole request, then drops the connection without answering: an
        # endpoint killed in the middle of a POST (the agent may have seen it; deliver cannot know)
        self.default = (200, 0.0)
        self.answer: bytes | None = None       # the body to answer with (default: {"ok":true})
        self.answer_headers: dict[str, str] = {}   # more headers to answer with (x-mailkite-ack)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()     # connections kept alive (HTTP/1.1) by deliver
        self.connections = 0                        # connections accepted, ever
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with receiver._lock:
                    receiver._open.add(self.connection)
                    receiver.connections += 1

            def finish(self):
                with receiver._lock:
                    receiver._open.discard(self.connection)
                super().finish()

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status, delay = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                     body, status=status))
                if delay:
                    time.sleep(delay)
                if status == 0:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                out = receiver.answer if receiver.answer is not None else (
                    b'{"ok":true}' if status < 300 else b'{"error":"scripted"}')
                try:
                    self.send_response(status)
                    if status == 503:
                        self.send_header("retry-after", "120")
                    self.send_header("content-type", "application/json")
                    for name, value in receiver.answer_headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass

        self._handler = Handler
        self.port = port
        self.server = None
        self.start()
        self.url = f"http://127.0.0.1:{self.port}/hooks/email"

    def start(self):
        """Listen (again) on the same port: an endpoint that comes back."""
        self.server = _Server(("127.0.0.1", self.port), self._handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        """Stop listening: connections are refused, as for an endpoint that is down, and the
        connections kept alive are closed."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self._lock:
            kept, self._open = self._open, set()
        for conn in kept:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def events(self) -> list[dict]:
        import json
        return [json.loads(r.body) for r in self.requests]
