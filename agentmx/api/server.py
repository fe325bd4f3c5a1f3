"""Running `agentmx serve`: the application on Hypercorn, in the foreground (the CLI, systemd) or in
a thread of its own (the demo, tests that need the API beside them).

Hypercorn, not uvicorn: a connection that never sends a request, or sends its head a byte at a
time, is closed after the keep-alive timeout ([server] read_timeout); uvicorn keeps both for good
(measured: bench/serve-idle). The listening socket is ours (IPv4 or IPv6, a backlog for bursts),
handed to Hypercorn by file descriptor, so the port is known before serving starts (port 0 in tests).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.h11 import H11Protocol

from agentmx.config import Config, ServerLimits

from .app import create_app
from .context import Context

log = logging.getLogger("agentmx.serve")

BACKLOG = 1024


def listening_socket(listen: tuple[str, int], user_timeout: float | None = None) -> socket.socket:
    host, port = listen
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if user_timeout:
        # Data the client does not take (it stopped reading: a zero window) for this long, and the
        # kernel drops the connection; accepted sockets inherit it. Hypercorn's own close waits
        # for unsent data forever (measured: three unread downloads held for good).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _hypercorn_config(fd: int, limits: ServerLimits) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"fd://{fd}"]
    hc.keep_alive_timeout = limits.read_timeout       # idle connections and unfinished request heads
    hc.backlog = BACKLOG
    hc.graceful_timeout = 5
    hc.include_server_header = False
    hc.accesslog = None                               # the guard logs each request (path only)
    hc.errorlog = logging.getLogger("agentmx.serve.http")
    return hc


def http1_only() -> None:
    """HTTP/1.1 only. Hypercorn turns a cleartext connection into HTTP/2 on a `PRI *` preface or
    an `Upgrade: h2c` request, and an HTTP/2 connection that opens no stream is never timed out
    (measured: 260 preface-only connections held for good exhausted the file descriptors); h2c is
    also a way past a front proxy's rules. serve sits behind the operator's TLS proxy, which
    speaks HTTP/1.1 to it, so the check that would switch protocols is turned off: a preface is
    then an unknown request (404) followed by garbage (400, closed), an h2c upgrade is ignored.
    Hypercorn has no setting for this; tests/api/test_serve_limits.py holds it to the behaviour."""

    async def stay_on_http1(self, event) -> None:
        return None
    H11Protocol._check_protocol = stay_on_http1


def _dropped_connections(loop, context: dict) -> None:
    """A connection the kernel dropped (TCP_USER_TIMEOUT: the client stopped reading) ends
    Hypercorn's connection task with that error; it is one line, not a traceback."""
    exc = context.get("exception")
    if isinstance(exc, (TimeoutError, ConnectionError)) and "_server_callback" in repr(context.get("future")):
        log.info("connection dropped: %s", exc.strerror or exc.__class__.__name__)
        return
    loop.default_exception_handler(context)


async def serve_app(app, sock: socket.socket, limits: ServerLimits, shutdown=None) -> None:
    """Serve on `sock`, which Hypercorn takes over (ours is detached: one owner for the fd)."""
    http1_only()
    asyncio.get_running_loop().set_exception_handler(_dropped_connections)
    await hypercorn_serve(app, _hypercorn_config(sock.detach(), limits), shutdown_trigger=shutdown)


def create(config: Config):
    """The application for `config`, its store's schema checked first (SchemaMismatch: run
    `agentmx store migrate`; StoreUnavailable: the store cannot be reached)."""
    ctx = Context.for_config(config)
    ctx.store.check_schema()
    return create_app(ctx)


def run(config: Config) -> None:
    """The foreground service: SIGTERM or SIGINT stops it gracefully."""
    sock = listening_socket(config.listen, config.limits.write_timeout)
    log.info("serving on %s (public URL %s)", url_of(sock), config.public_url)
    asyncio.run(serve_app(create(config), sock, config.limits))


@dataclass
class Running:
    """An application served from a thread of its own; stop() ends it."""
    url: str
    port: int
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event
    _thread: threading.Thread

    def stop(self, timeout: float = 10) -> None:
        try:
            self._loop.call_soon_threadsafe(self._stop.set)
        except RuntimeError:              # its loop has ended already
            pass
        self._thread.join(timeout)


def start_app(app, listen: tuple[str, int], limits: ServerLimits, name: str = "serve") -> Running:
    sock = listening_socket(listen, limits.write_timeout)
    url, port = url_of(sock), sock.getsockname()[1]
    ready = threading.Event()
    holder: dict = {}

    async def main():
        holder.update(loop=asyncio.get_running_loop(), stop=asyncio.Event())
        ready.set()
        await serve_app(app, sock, limits, shutdown=holder["stop"].wait)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True, name=name)
    thread.start()
    ready.wait(10)
    return Running(url, port, holder["loop"], holder["stop"], thread)


def start(config: Config) -> Running:
    """`agentmx serve` in a thread: for the demo and for tests that need the API beside them."""
    return start_app(create(config), config.listen, config.limits)
