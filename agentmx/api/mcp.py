"""MCP (streamable HTTP) at /mcp on serve's own port, its tools calling serve's own functions.

Each POST /mcp is one JSON-RPC call, stateless, answered as JSON. The request's own API key
(Authorization: Bearer ...) is checked before MCP sees the request (401 JSON, like every route) and
decides what its tools see: they run on a LocalMailbox, which calls the inbox's functions
(inbox.py: list_for, get_for, ack_for, wait_for, events_for) and the send path (sending.send_for_key,
sending.status) in this
process: no HTTP client, no second port, no hop back over loopback.

The guard bounds /mcp like any route (size, time, the request cap; the body is read whole before
MCP's own code sees it, so a slow or large body is our 408 or 413, not its 500). A wait tool holds
a stream slot (streams.py), not one of the ordinary request slots, like GET /v1/messages/wait.
"""
from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.routing import Route

from agentmx import client, send
from agentmx.config import ApiKey
from agentmx.mcpserver import http_endpoint
from agentmx.store import StoreError

from .context import Context
from .errors import ApiError
from .guard import RELEASE, buffered
from .inbox import InboxRoutes
from .sending import send_for_key, status

log = logging.getLogger("agentmx.serve")


class LocalMailbox:
    """mcpserver.Mailbox for one API key, in process. Refusals become agentmx.client.ApiError,
    the one error the tools know; a store that fails is a 503 (its reason is logged, not told)."""

    def __init__(self, ctx: Context, inbox: InboxRoutes, key: ApiKey, release=None):
        self.ctx, self.inbox, self.key = ctx, inbox, key
        self.release = release or (lambda: None)

    async def _do(self, coro):
        try:
            return await coro
        except ApiError as exc:
            raise client.ApiError(exc.status, exc.code, exc.message) from None
        except send.SendError as exc:
            raise client.ApiError(exc.status, exc.code, exc.message) from None
        except StoreError as exc:
            log.warning("MCP for %s: the store: %s", self.key.name, exc)
            raise client.ApiError(503, "store_unavailable", "the store is unavailable; try again shortly") from None

    @staticmethod
    def _query(to, from_, subject, **more) -> dict:
        """The query string the HTTP route would have had."""
        q = {"to": to, "from": from_, "subject": subject, **more}
        return {k: ("true" if v is True else str(v)) for k, v in q.items() if v not in (None, False, "")}

    async def messages(self, *, to=None, from_=None, subject=None, unread=False, limit=20) -> dict:
        return await self._do(self.inbox.list_for(self.key, self._query(to, from_, subject, unread=unread, limit=limit)))

    async def message(self, event_id: str) -> dict:
        return await self._do(self.inbox.get_for(self.key, event_id))

    async def ack(self, event_id: str) -> dict:
        return await self._do(self.inbox.ack_for(self.key, event_id))

    async def wait(self, *, to=None, from_=None, subject=None, timeout=30, ack=False) -> dict | None:
        self.release()                    # a long wait: a stream slot from here on, not a request slot
        q = self._query(to, from_, subject, timeout=int(timeout), ack=ack)
        return (await self._do(self.inbox.wait_for(self.key, q)))["message"]

    async def send(self, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        return await self._do(self.ctx.run(send_for_key, self.ctx, self.key, body))

    async def send_status(self, send_id: str) -> dict:
        return await self._do(self.ctx.run(status, self.ctx, self.key, send_id))

    async def events(self, *, name=None, kind=None, limit=20) -> dict:
        return await self._do(self.inbox.events_for(self.key, self._query(None, None, None, name=name, kind=kind,
                                                                          limit=limit)))


class Mcp:
    """The /mcp route, and `lifespan()`: its session manager's, which serve's lifespan runs."""

    def __init__(self, ctx: Context, inbox: InboxRoutes):
        self.ctx, self.inbox = ctx, inbox
        self.app, self.lifespan = http_endpoint(self.mailbox_for)

    def mailbox_for(self, mcp_ctx) -> LocalMailbox:
        request = mcp_ctx.request_context.request         # the Starlette request of this POST
        try:
            key = send.authorize(self.ctx.config, request.headers.get("authorization"))
        except send.SendError as exc:                     # checked before already (endpoint): cannot happen
            raise client.ApiError(exc.status, exc.code, exc.message) from None
        return LocalMailbox(self.ctx, self.inbox, key, request.scope.get(RELEASE))

    async def __call__(self, scope, receive, send_) -> None:
        """The ASGI app at /mcp: the key checked (401 before MCP reads anything), the body read
        whole within the guard's limits, then MCP's own transport."""
        self.ctx.key(Request(scope))
        await self.app(scope, await buffered(receive), send_)

    def routes(self) -> list[Route]:
        """POST only. Stateless, there are no sessions to end (DELETE) and nothing to push: MCP's
        GET would open a stream that sends nothing and held one of the API's request slots for as
        long as the client kept it; the spec lets a server answer it 405."""
        return [Route("/mcp", self, methods=["POST"])]
