"""The outermost layer of `agentmx serve`: every request bounded in size, time and number.

- a body larger than its route allows is refused from its Content-Length before one byte of it is
  read (413), and counted while it streams in when there is no Content-Length;
- the whole body must arrive within `request_timeout` seconds (408), so a slow sender cannot hold
  a request open; every write to the client must complete within `write_timeout` (a client that
  stops reading is dropped);
- at most `max_requests` ordinary requests run at once; the next gets 503 at once, with
  Retry-After (long-polls and event streams have their own caps, per key, in streams.py);
- idle connections and request heads that do not complete are the HTTP server's (Hypercorn's
  keep-alive timeout, server.py);
- anything that escapes a route becomes a JSON 500 with no detail; the traceback is logged once.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from .errors import ApiError

log = logging.getLogger("agentmx.serve")

# Long requests that hold a stream slot (streams.py) instead of a request slot; /v1/events only as a
# stream (Accept: text/event-stream): its JSON list is an ordinary request.
STREAM_PATHS = ("/v1/events", "/v1/messages/wait", "/v1/realtime", "/console/live")
RELEASE = "agentmx.release"     # scope key: gives the request's slot back (a long wait holds a stream slot instead)
SEND_PATHS = ("/v1/send", "/v1/send/batch")
UPLOAD_PATH = "/v1/attachments"


@dataclass(frozen=True)
class Limits:
    max_body: int                  # POST /v1/send and /v1/send/batch
    max_small_body: int = 65536    # every other request (none of them needs a body)
    max_upload_body: int = 65536   # POST /v1/attachments (a file, raw or base64 in JSON)
    request_timeout: float = 60.0
    write_timeout: float = 30.0
    max_requests: int = 64
    max_mcp_body: int = 1_000_000  # POST /mcp: one JSON-RPC tool call (a send's text)


class BodyTooLarge(ApiError):
    pass


class BodyTimeout(ApiError):
    pass


class Guard:
    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits
        self.active = 0

    def _body_limit(self, scope) -> int:
        path = scope["path"]
        if path == "/mcp":
            return self.limits.max_mcp_body
        if path in SEND_PATHS:
            return self.limits.max_body
        return self.limits.max_upload_body if path == UPLOAD_PATH else self.limits.max_small_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self.app(scope, receive, send)
            return                                      # no websockets here
        started = time.monotonic()
        state = {"status": 0, "started": False}
        path = scope.get("path", "")
        limit = self._body_limit(scope)
        accept = _header(scope, b"accept") or b""
        stream = path in STREAM_PATHS and (path != "/v1/events" or b"text/event-stream" in accept)

        async def respond(err: ApiError) -> None:
            if state["started"]:
                return
            state["started"], state["status"] = True, err.status
            body = err.encode()
            await send({"type": "http.response.start", "status": err.status,
                        "headers": err.response_headers() + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        if _header(scope, b"transfer-encoding") is not None and _header(scope, b"content-length") is not None:
            # RFC 9112 6.1: a request with both is a smuggling attempt or a broken proxy: refuse, close
            err = ApiError(400, "bad_request", "Content-Length and Transfer-Encoding together", headers={"connection": "close"})
            await respond(err)
            return self._log(scope, state, started)
        length = _content_length(scope)
        if length is None and _header(scope, b"content-length") is not None:
            await respond(ApiError(400, "bad_request", "Content-Length is not a number"))
            return self._log(scope, state, started)
        if length is not None and length > limit:
            await respond(ApiError(413, "too_large", f"a request to {path} is at most {limit} bytes"))
            return self._log(scope, state, started)
        if not stream and self.active >= self.limits.max_requests:
            await respond(ApiError(503, "busy", "too many requests at once; try again shortly", retry_after=1))
            return self._log(scope, state, started)

        deadline = started + self.limits.request_timeout
        received = 0

        async def guarded_receive():
            nonlocal received
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BodyTimeout(408, "timeout", f"the request body did not arrive within "
                                                  f"{self.limits.request_timeout:g}s")
            try:
                message = await asyncio.wait_for(receive(), remaining) if not _body_done(state) else await receive()
            except asyncio.TimeoutError:
                raise BodyTimeout(408, "timeout", f"the request body did not arrive within "
                                                  f"{self.limits.request_timeout:g}s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(413, "too_large", f"a request to {path} is at most {limit} bytes")
                if not message.get("more_body", False):
                    state["body_done"] = True
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                state["started"], state["status"] = True, message["status"]
                release()               # a download a client reads slowly holds no request slot
            await asyncio.wait_for(send(message), self.limits.write_timeout)

        holding = not stream

        def release():
            nonlocal holding
            if holding:
                holding = False
                self.active -= 1

        if holding:
            self.active += 1
        scope[RELEASE] = release
        try:
            await self.app(scope, guarded_receive, guarded_send)
        except ApiError as err:
            await respond(err)
        except asyncio.TimeoutError:
            log.info("%s %s: the client stopped reading; dropped", printable(scope.get("method", "")), printable(path))
        except (ConnectionError, OSError) as exc:
            log.info("%s %s: connection lost (%s)", printable(scope.get("method", "")), printable(path),
                     exc.__class__.__name__)
        except Exception:
            log.exception("%s %s: internal error", printable(scope.get("method", "")), printable(path))
            await respond(ApiError(500, "internal", "internal error (logged); try again later"))
        finally:
            release()
            self._log(scope, state, started)

    @staticmethod
    def _log(scope, state, started) -> None:
        # The path only: query strings carry URL signatures.
        log.info("%s %s %s %dms", printable(scope.get("method", "")), printable(scope.get("path", "")),
                 state["status"] or "-", (time.monotonic() - started) * 1000)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, limit: int = 300) -> str:
    """A client's text for a log line: control characters escaped (a %0a in a path must not
    write a line of its own), at most `limit` characters."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)[:limit])


async def buffered(receive):
    """For an app that is not ours (MCP's), which would turn a body that is too slow or too big
    into its own 500 instead of our 408 or 413: the whole body read now (ApiError 408 or 413 from
    `receive` as it comes), then handed to the app as one message; after it, receive() is the
    client's again (http.disconnect)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()
    return replay


def _body_done(state: dict) -> bool:
    """Once the body is in, receive() only waits for the client to go (long-poll, events): no
    deadline then."""
    return bool(state.get("body_done"))


def _header(scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return None


def _content_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None
