"""deliver/worker.py's server: connections served by a pool of threads kept for the process's
life (issue 18: a thread per connection opened a new SQLite connection to the store for every
message), growing while every thread is busy, never past MAX_THREADS."""
from __future__ import annotations

import socket
import socketserver
import threading
import time

from support.postfix import wait_for

from agentmx.deliver import worker


def start(tmp_path, max_threads: int, hold: float = 0.0):
    seen: list[str] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            seen.append(threading.current_thread().name)
            time.sleep(hold)
            self.request.sendall(b"0 ok\n")

    class Server(worker._Server):
        MAX_THREADS = max_threads
    path = str(tmp_path / "w.sock")
    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, path, seen


def ask(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        return c.recv(100)


def test_one_message_after_another_is_served_by_one_thread(tmp_path):
    server, path, seen = start(tmp_path, 32)
    try:
        answers = []
        for _ in range(6):
            answers.append(ask(path))
            # the answer is sent before the thread counts itself idle again: wait for that (an
            # event, not a sleep), else a quick next connection rightly gets a second thread
            wait_for(lambda: server._idle == 1, timeout=5, what="the thread idle again")
        assert answers == [b"0 ok\n"] * 6
        assert len(seen) == 6 and len(set(seen)) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_threads_grow_while_all_are_busy_up_to_the_limit(tmp_path):
    server, path, seen = start(tmp_path, 3, hold=0.3)
    try:
        answers: list[bytes] = []
        clients = [threading.Thread(target=lambda: answers.append(ask(path))) for _ in range(7)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(10)
        assert answers == [b"0 ok\n"] * 7              # every one served, some after waiting
        assert len(set(seen)) == 3                     # three at once, not seven
    finally:
        server.shutdown()
        server.server_close()
