"""POST one event: the I/O edge of deliver. http.client, not requests: this runs in a process
started per message, and requests costs ~60-100 ms of imports there (shared/PARSING.md)."""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_ANSWER = 65536               # bytes of an answer read: what is past it is not read at all


@dataclass(frozen=True)
class Response:
    status: int                  # 0: no HTTP answer at all (refused, timeout, TLS failure)
    retry_after: str | None = None
    error: str = ""
    body: bytes = b""            # the first 64 KB of the answer (ack and control modes read it)
    ack: str | None = None       # the x-mailkite-ack header (MailKite's ack without a body), cut short


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """The deadline: shut the connection's socket, which ends a read blocked in another thread."""
    cut.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, deadline: float | None = None) -> Response:
    """`timeout` bounds each socket operation; `deadline` (seconds), when given, the whole exchange:
    an endpoint that drips its answer a byte at a time is cut off then."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    cut = threading.Event()
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        timer = None
        try:
            if deadline is not None:            # connected first (within `timeout`): then the clock runs
                conn.connect()
                timer = threading.Timer(deadline, _cut, (conn, cut))
                timer.daemon = True
                timer.start()
            conn.request("POST", path, body=body, headers={**headers, "content-type": "application/json",
                                                           "user-agent": "agentmx"})
            resp = conn.getresponse()
            answer = resp.read(MAX_ANSWER)
            ack = resp.getheader("x-mailkite-ack")
            if cut.is_set():                    # what came before the cut may look whole: it is not
                raise TimeoutError
            return Response(resp.status, resp.getheader("retry-after"), body=answer,
                            ack=ack[:16] if ack is not None else None)
        finally:
            if timer is not None:
                timer.cancel()
            conn.close()
    except (socket.timeout, TimeoutError):
        return Response(0, error=f"no whole answer within {deadline:g}s" if cut.is_set()
                        else f"no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Response(0, error=f"no whole answer within {deadline:g}s" if cut.is_set()
                        else f"{exc.__class__.__name__}: {exc}")
