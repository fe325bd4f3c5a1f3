"""POST one event: the I/O edge of deliver. http.client, not requests: this runs in a process
started per message, and requests costs ~60-100 ms of imports there (shared/PARSING.md)."""
from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    status: int                  # 0: no HTTP answer at all (refused, timeout, TLS failure)
    retry_after: str | None = None
    error: str = ""
    body: bytes = b""            # the first 64 KB of the answer (control answers: {"status": "drop"})


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Response:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers={**headers, "content-type": "application/json",
                                                           "user-agent": "agentmx"})
            resp = conn.getresponse()
            answer = resp.read(65536)
            return Response(resp.status, resp.getheader("retry-after"), body=answer)
        finally:
            conn.close()
    except (socket.timeout, TimeoutError):
        return Response(0, error=f"no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Response(0, error=f"{exc.__class__.__name__}: {exc}")
