"""The one error type of the HTTP API, and how every failure becomes a JSON answer.

    {"error": "send an API key ...", "code": "unauthorized"}

The shape MailKite's SDKs read (they raise MailKiteError(status, body["error"])), and DESIGN.md's.

Raised by the routes (ApiError), by the send path (send.SendError, converted here), and made up by
the guard for what never reaches a route (413, 408, 503, 404, 405, 500). No traceback, path or
secret ever goes into a message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from agentmx.send import SendError


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    retry_after: int | None = None
    headers: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    @classmethod
    def from_send(cls, exc: SendError) -> "ApiError":
        return cls(exc.status, exc.code, exc.message, exc.retry_after)

    def body(self) -> dict:
        return {"error": self.message, "code": self.code}

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        if self.retry_after is not None:
            out.append((b"retry-after", str(int(self.retry_after)).encode()))
        out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        return out

    def encode(self) -> bytes:
        return json.dumps(self.body()).encode()


NOT_FOUND = ApiError(404, "not_found", "no such path")
INTERNAL = ApiError(500, "internal", "internal error (logged); try again later")
