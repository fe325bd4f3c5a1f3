"""`agentmx worker`: deliver() resident, behind the lean pipe client (deliver/pipeclient.py).

One process per message costs ~150 ms of CPU, most of it starting Python and importing; the
worker pays that once. Postfix still owns durability: the pipe client exits 0 only on the
worker's word, 75 on anything else, and runs deliver itself when the worker is down.

The worker listens on a unix socket ([worker] socket); [worker] processes processes share it
(frontend.serve_unix), each serving connections on a pool of threads (most of a delivery is
waiting on the endpoint). The request is deliver's own command line, parsed by deliver's own parser
(frontend.command_line_parser), and the message; the answer is the exit code and the outcome
line (frontend.run). The configuration is reloaded when its file changes (frontend.Current).

Wire format (one request per connection): b"AMX1 " + JSON list of the arguments + b"\\n" +
the message bytes, then the client shuts down its write side; the answer is one line
"<exit code> <outcome line>".
"""
from __future__ import annotations

import json
import logging
import queue
import signal
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

from agentmx.config import Config

from . import frontend

log = logging.getLogger("agentmx.deliver.worker")
MAX_MESSAGE = 128 * 1024 * 1024        # far above Postfix's message_size_limit
MAX_HEAD = 65536                        # the request line: deliver's arguments


def handle(conn: socket.socket, current: frontend.Current, parser) -> frontend.Result:
    """One request on one connection: read it, deliver, answer."""
    f = conn.makefile("rb")

    def receive():
        head = f.readline(MAX_HEAD)
        if not head.startswith(b"AMX1 ") or not head.endswith(b"\n"):
            raise frontend.BadRequest("not an agentmx pipe client request")
        try:
            argv = json.loads(head[5:])
        except ValueError:
            raise frontend.BadRequest("bad command line: not JSON") from None
        env = frontend.envelope_from_command_line(argv, parser)
        raw = f.read(MAX_MESSAGE + 1)
        if len(raw) > MAX_MESSAGE:
            raise frontend.BadRequest("message larger than the worker takes")
        return env, raw

    result = frontend.run("worker", receive, current, log)
    try:
        conn.sendall(f"{result.exit_code} {result.line}\n".encode("utf-8", "replace"))
    except OSError:
        log.warning("%s: the pipe client went away before the answer (Postfix will retry)",
                    result.queue_id or frontend.NOQUEUE)
    return result


class _Server(socketserver.UnixStreamServer):
    """Each connection served by one of up to MAX_THREADS threads kept for the process's life,
    not by a thread of its own: a thread opens its SQLite connection to the store once, not
    once per message (~0.3 ms of CPU a message). Threads are added while every one is busy;
    connections beyond MAX_THREADS at once wait their turn (Postfix sends ~20 at a time)."""
    request_queue_size = 128
    MAX_THREADS = 32

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def process_request(self, request, client_address) -> None:
        with self._lock:
            if self._idle == 0 and self._threads < self.MAX_THREADS:
                self._threads += 1
                self._idle += 1
                threading.Thread(target=self._serve_requests, name=f"deliver-{self._threads}", daemon=True).start()
            self._idle -= 1
        self._waiting.put((request, client_address))

    def _serve_requests(self) -> None:
        while True:
            request, client_address = self._waiting.get()
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                with self._lock:
                    self._idle += 1


def serve_on(sock: socket.socket, current: frontend.Current) -> None:
    """Serve the listening socket in this process until SIGTERM or SIGINT."""
    parser = frontend.command_line_parser()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            handle(self.request, current, parser)

    server = _Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


def serve(config: Config, socket_path: Path, processes: int, mode: int,
          store_factory: Callable[[Config], Any] = frontend.open_store) -> None:
    current = frontend.Current.resident(config, store_factory)
    frontend.serve_unix("agentmx worker", socket_path, mode, processes, lambda sock: serve_on(sock, current),
                        backlog=_Server.request_queue_size)
