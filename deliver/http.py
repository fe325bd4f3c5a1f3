"""POST one event: the I/O edge of deliver. http.client, not requests: this runs in a process
started per message, and requests costs ~60-100 ms of imports there (shared/PARSING.md).

post() opens a connection for one POST and closes it (the pipe: one message per process).
Connections.post() is the same contract with the connection kept alive for the next message to
the same endpoint (the resident worker and LMTP front-ends: one Connections per process).
"""
from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import SplitResult, urlsplit

MAX_ANSWER = 65536               # bytes of an answer read: what is past it is not read at all
MAX_IDLE = 32                    # idle connections kept per endpoint: one per delivery thread (LMTP, worker: 32)
IDLE_FOR = 30.0                  # seconds an idle connection is kept (an endpoint closes its own sooner or later)
# What a kept-alive connection the endpoint closed meanwhile gives before any answer.
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class Response:
    status: int                  # 0: no HTTP answer at all (refused, timeout, TLS failure)
    retry_after: str | None = None
    error: str = ""
    body: bytes = b""            # the first 64 KB of the answer (ack and control modes read it)
    ack: str | None = None       # the x-mailkite-ack header (MailKite's ack without a body), cut short


# What a POST fails with short of an answer (a refused connection, a reset, TLS, a bad status line).
_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError)


def _failed(exc: BaseException) -> Response:
    return Response(0, error=f"{exc.__class__.__name__}: {exc}")


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The deadline: shut the connection's socket, which ends a read blocked in another thread."""
    cut.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _target(url: str) -> tuple[SplitResult, str]:
    parts = urlsplit(url)
    return parts, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _connection(parts: SplitResult, timeout: float, tls: Callable[[], ssl.SSLContext]) -> http.client.HTTPConnection:
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=tls())
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str], timeout: float,
              deadline: float | None) -> tuple[Response, bool, bool]:
    """One POST on conn: (the Response, whether conn may carry another request, whether the
    endpoint closed the connection before any answer at all: no status line, no timeout)."""
    cut = threading.Event()
    answered = False
    try:
        timer = None
        try:
            if deadline is not None:            # connected first (within `timeout`): then the clock runs
                if conn.sock is None:
                    conn.connect()
                timer = threading.Timer(deadline, _cut, (conn, cut))
                timer.daemon = True
                timer.start()
            conn.request("POST", path, body=body, headers={**headers, "content-type": "application/json",
                                                           "user-agent": "agentmx"})
            _ack_at_once(conn)
            resp = conn.getresponse()
            answered = True
            answer = resp.read(MAX_ANSWER)
            ack = resp.getheader("x-mailkite-ack")
            if cut.is_set():                    # what came before the cut may look whole: it is not
                raise TimeoutError
            # Again only when the whole answer was read (not more than MAX_ANSWER) and the
            # endpoint keeps the connection open.
            again = resp.isclosed() and not resp.will_close
            return (Response(resp.status, resp.getheader("retry-after"), body=answer,
                             ack=ack[:16] if ack is not None else None), again, False)
        finally:
            if timer is not None:
                timer.cancel()
    except (socket.timeout, TimeoutError):
        return (Response(0, error=f"no whole answer within {deadline:g}s" if cut.is_set()
                         else f"no answer within {timeout:g}s"), False, False)
    except _ERRORS as exc:
        closed = isinstance(exc, _CLOSED) and not answered and not cut.is_set()
        return (Response(0, error=f"no whole answer within {deadline:g}s" if cut.is_set()
                         else f"{exc.__class__.__name__}: {exc}"), False, closed)


def _ack_at_once(conn: http.client.HTTPConnection) -> None:
    """ACK the answer's first segment at once (Linux TCP_QUICKACK, set again before each answer:
    the kernel clears it). An endpoint that writes its headers and body in two small writes
    without TCP_NODELAY (Python's http.server does) holds the body until the headers are ACKed;
    on a connection past its first exchanges our ACK waits for the delayed-ACK timer, and every
    POST on a kept-alive connection took 40 ms longer."""
    sock = conn.sock
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass                          # not TCP (a test's unix socket), or refused: only slower


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, deadline: float | None = None) -> Response:
    """`timeout` bounds each socket operation; `deadline` (seconds), when given, the whole exchange:
    an endpoint that drips its answer a byte at a time is cut off then."""
    parts, path = _target(url)
    try:
        conn = _connection(parts, timeout, ssl.create_default_context)
    except _ERRORS as exc:
        return _failed(exc)
    try:
        return _exchange(conn, path, body, headers, timeout, deadline)[0]
    finally:
        conn.close()


class Connections:
    """post() with connections kept alive across messages: one per endpoint and concurrent
    delivery, at most MAX_IDLE idle per endpoint, each for at most IDLE_FOR seconds. For one
    process (a fork makes its own: frontend.Current); thread-safe.

    A kept connection the endpoint has closed is found before use (it reads as ready: EOF) and
    dropped. If the endpoint closes it in the instant between that check and our request, the
    POST fails with no answer at all (no status line): it is sent once more, at once, on a fresh
    connection. The endpoint may have read that first request (an endpoint that died after
    reading it looks the same): the event goes again with the same webhook-id, as it would at
    Postfix's next retry of a deferred message (docs/decisions.md, "Kept-alive connections to
    the endpoint"). Nothing else is retried here: a timeout, a refused connection, an answer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._idle: dict[tuple, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self.opened = 0                  # connections made (for tests and benchmarks)

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:            # loading the CA file costs a few ms: once per process
            self._tls = ssl.create_default_context()
        return self._tls

    def _take(self, key: tuple) -> http.client.HTTPConnection | None:
        now = self.clock()
        stale = []
        found = None
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                conn, since = idle.pop()
                if now - since > IDLE_FOR or _closed(conn):
                    stale.append(conn)
                    continue
                found = conn
                break
        for conn in stale:
            conn.close()
        return found

    def _give(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append((conn, self.clock()))
                return
        conn.close()

    def _open(self, parts: SplitResult, timeout: float) -> http.client.HTTPConnection:
        self.opened += 1
        return _connection(parts, timeout, self._context)

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float,
             deadline: float | None = None) -> Response:
        parts, path = _target(url)
        key = (parts.scheme, parts.hostname, parts.port)
        try:
            conn = self._take(key)
            kept = conn is not None
            if conn is None:
                conn = self._open(parts, timeout)
            else:
                conn.timeout = timeout
                conn.sock.settimeout(timeout)
        except _ERRORS as exc:
            return _failed(exc)
        resp, again, closed = _exchange(conn, path, body, headers, timeout, deadline)
        if closed and kept:              # closed by the endpoint while it sat idle: once more, fresh
            conn.close()
            try:
                conn = self._open(parts, timeout)
            except _ERRORS as exc:
                return _failed(exc)
            resp, again, _ = _exchange(conn, path, body, headers, timeout, deadline)
        if again:
            self._give(key, conn)
        else:
            conn.close()
        return resp

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()


def _closed(conn: http.client.HTTPConnection) -> bool:
    """An idle connection that reads as ready has been closed by the endpoint (or sent what it
    should not have): not to be used again."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
