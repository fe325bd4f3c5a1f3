"""`agentmx worker`: deliver() resident, behind the lean pipe client (agentmx/pipeclient.py).

One process per message costs ~150 ms of CPU, most of it starting Python and importing; the
worker pays that once. Postfix still owns durability: the pipe client exits 0 only on the
worker's word, 75 on anything else, and runs deliver itself when the worker is down.

The worker listens on a unix socket ([worker] socket), forks [worker] processes children that
share it (deliver holds the GIL while it parses, so one process uses one core), and serves each
connection in a thread (most of a delivery is waiting on the endpoint). The configuration is
reloaded when its file changes, so a new route needs no restart.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path

from agentmx.config import Config, ConfigError, load_config

log = logging.getLogger("agentmx.worker")
MAX_MESSAGE = 128 * 1024 * 1024        # far above Postfix's message_size_limit


def _envelope_args(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            out[name.replace("-", "_")] = value
    return out


class _Configs:
    """The current configuration, reloaded when the file's mtime or size changes."""

    def __init__(self, config: Config):
        self.config = config
        self._stamp = self._stat()
        self._lock = threading.Lock()

    def _stat(self):
        try:
            st = os.stat(self.config.path)
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def get(self) -> Config:
        stamp = self._stat()
        if stamp != self._stamp and stamp is not None:
            with self._lock:
                try:
                    self.config = load_config(self.config.path, self.config.service)
                    log.info("configuration reloaded from %s", self.config.path)
                except ConfigError as exc:
                    log.error("configuration not reloaded, keeping the previous one: %s", exc)
                self._stamp = stamp
        return self.config


def handle(conn: socket.socket, configs: _Configs) -> None:
    from agentmx.deliver.core import EX_TEMPFAIL, Envelope, deliver
    f = conn.makefile("rb")
    head = f.readline(65536)
    qid = "NOQUEUE"
    try:
        if not head.startswith(b"AMX1 "):
            raise ValueError("not an agentmx pipe client")
        env_args = _envelope_args(json.loads(head[5:]))
        qid = env_args.get("queue_id") or qid
        raw = f.read(MAX_MESSAGE + 1)
        if len(raw) > MAX_MESSAGE:
            raise ValueError("message larger than the worker takes")
        env = Envelope(sender=env_args.get("sender", ""), recipient=env_args.get("recipient", ""),
                       queue_id=env_args.get("queue_id") or None, client_address=env_args.get("client_address"),
                       client_helo=env_args.get("client_helo"), original_recipient=env_args.get("original_recipient"))
        outcome = deliver(raw, env, configs.get())
        code = outcome.exit_code
        text = (f"{qid}: {outcome.state} to={env.recipient} id={outcome.event_id or '-'} "
                f"status={outcome.status if outcome.status is not None else '-'} ({outcome.reason})")
        log.info("%s", text)
    except Exception as exc:     # a bug of ours, or a broken request: the message stays in Postfix
        log.exception("%s: internal error", qid)
        code, text = EX_TEMPFAIL, f"{qid}: internal error {exc.__class__.__name__} in the worker (deferred)"
    try:
        conn.sendall(f"{code} {text}\n".encode("utf-8", "replace"))
    except OSError:
        log.warning("%s: the pipe client went away before the answer (Postfix will retry)", qid)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


def bind_unix(socket_path: Path, mode: int, backlog: int = 128) -> socket.socket:
    """A listening unix socket at socket_path (a stale one removed), created with `mode`."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        socket_path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(socket_path))
    finally:
        os.umask(old)
    os.chmod(socket_path, mode)
    sock.listen(backlog)
    return sock


def serve(config: Config, socket_path: Path, processes: int, mode: int) -> None:
    configs = _Configs(config)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            handle(self.request, configs)

    server = _Server(str(socket_path), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = bind_unix(socket_path, mode, _Server.request_queue_size)
    # Import the delivery path before forking, so each child starts warm.
    import agentmx.deliver.core  # noqa: F401
    import agentmx.deliver.extract  # noqa: F401
    children = []
    for _ in range(max(0, processes - 1)):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            try:
                server.serve_forever()
            finally:
                os._exit(0)
        children.append(pid)

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker listening on %s (%d process(es))", socket_path, processes)
    print(f"agentmx worker: listening on {socket_path} ({processes} process(es))", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass
