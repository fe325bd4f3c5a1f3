"""MailKite's Realtime API: a browser's EventSource cannot send an Authorization header, so it
trades a short-lived token for the event stream.

    POST /v1/realtime/token         (API key)  {"token", "expiresAt", "url"}: single use, 5 minutes
    GET  /v1/realtime?token=...     (no key)   the key's server-sent events, as GET /v1/events with
                                               Accept: text/event-stream (resume: &after=<event id>)

No table: the token names the key and its expiry and is signed (HMAC-SHA256) with that API key's
own secret, so only a holder of the key can make one, and a key removed or rotated in the config
voids its tokens at once. Single use across every host of a shared store: the token's random id is
taken once through store.take(("rt:<id>", 1), 300), the counter the rate limits share; a second
take within the token's life finds it full. Expired, reused, forged or malformed: 401 JSON, with
no hint which (the token is a credential).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import urllib.parse

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx.config import ApiKey
from agentmx.times import rfc3339

from .context import Context
from .errors import ApiError
from .inbox import InboxRoutes

TTL = 300                      # seconds a token stays valid
MAX_TOKEN = 600                # characters: longer is not ours
PREFIX = "rt_"
_DOMAIN = b"agentmx realtime token v1\0"     # the signature is for this use only


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: ApiKey, body: str) -> str:
    return _b64(hmac.new(key.key.encode(), _DOMAIN + body.encode(), hashlib.sha256).digest())


def mint(key: ApiKey, now: float) -> tuple[str, int]:
    """(a token for `key`, when it expires: unix seconds)."""
    expires = int(now) + TTL
    body = _b64(json.dumps([key.name, expires, _b64(os.urandom(16))], separators=(",", ":")).encode())
    return f"{PREFIX}{body}.{_sign(key, body)}", expires


def read(keys: dict[str, ApiKey], token: str, now: float) -> tuple[ApiKey, str] | None:
    """(its key, its single-use id) when `token` is one of ours, unexpired; else None. Not yet
    spent: the caller takes the id."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN or token.count(".") != 1:
        return None
    body, sig = token[len(PREFIX):].split(".")
    try:
        name, expires, nonce = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    key = keys.get(name) if isinstance(name, str) else None
    if key is None or not hmac.compare_digest(sig, _sign(key, body)):
        return None
    if not isinstance(expires, int) or not isinstance(nonce, str) or not now < expires <= now + TTL:
        return None
    return key, nonce


class Realtime:
    def __init__(self, ctx: Context, inbox: InboxRoutes):
        self.ctx, self.inbox = ctx, inbox
        self.keys = {k.name: k for k in ctx.config.api_keys}

    async def token(self, request: Request):
        key = self.ctx.key(request)
        token, expires = mint(key, self.ctx.clock())
        return JSONResponse({"token": token, "expiresAt": rfc3339(expires),
                             "url": "/v1/realtime?token=" + urllib.parse.quote(token)},
                            headers={"cache-control": "no-store"})

    async def stream(self, request: Request):
        found = read(self.keys, request.query_params.get("token", ""), self.ctx.clock())
        if found is not None:
            key, nonce = found
            if await self.ctx.run(self.ctx.store.take, [(f"rt:{nonce}", 1)], TTL) is None:
                last = request.headers.get("last-event-id") or request.query_params.get("after")
                return await self.inbox.stream_for(key, last)
        raise ApiError(401, "bad_token", "the realtime token is invalid, expired or already used: "
                                         "get a new one with POST /v1/realtime/token")

    def routes(self) -> list[Route]:
        return [Route("/v1/realtime/token", self.token, methods=["POST"]),
                Route("/v1/realtime", self.stream)]


def routes(ctx: Context, inbox: InboxRoutes) -> list[Route]:
    return Realtime(ctx, inbox).routes()
