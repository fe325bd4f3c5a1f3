"""`agentmx serve` as one ASGI application (Starlette), behind the guard (guard.py).

    POST /v1/send, GET|DELETE /v1/send/{id}         send or reply, look a send up, cancel a scheduled one
    POST /v1/send/batch, POST /v1/attachments       (sending.py, batch.py, attachments.py, scheduling.py)
    GET  /v1/messages, /v1/messages/wait, /v1/messages/{id}, /v1/threads/{threadId}, /v1/events
    POST /v1/messages/{id}/ack                      the inbox API (inbox.py)
    POST /v1/realtime/token, GET /v1/realtime       events for a browser's EventSource (realtime.py)
    GET  /v1/me, /v1/events/names                   MailKite's account and event-name calls (mailkite.py)
    POST /mcp                                       MCP, streamable HTTP, tools in process (mcp.py)
    GET|POST /api/contacts/suppressions, DELETE .../{email}   the key's domains' suppressions (suppressions.py)
    GET|POST /v1/blocks, DELETE /v1/blocks/{sender} senders refused at RCPT for the key's routes (blocklist_api.py)
    the rest of MailKite's SDK paths                501 not_supported, with why (mailkite.py; last)
    GET  /v1/blobs/{sha256}?exp=&type=&name=&sig=   a stored raw message or attachment (blobs.py)
    GET  /metrics                                   Prometheus, with [server] metrics_token as Bearer
    /console/...                                    the web console: HTML pages, a session cookie (console/)
    GET  /healthz                                   200 "ok"

Every failure is JSON: {"error": "<message>", "code": "<code>"}; a store that cannot be reached is
503 {"error": ..., "code": "store_unavailable"}, and the next request tries again.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from functools import partial

from hypercorn.middleware import ProxyFixMiddleware
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agentmx.ops import metrics
from agentmx.store import StoreError

from . import blocklist_api, console, deliveries, domains, mailkite, messages, realtime, suppressions
from .blobs import blob_route
from .blocks import refresh as refresh_blocks
from .context import Context
from .dispatch import Dispatcher
from .errors import ApiError
from .guard import Guard, Limits, printable
from .inbox import InboxRoutes
from . import sending
from .attachments import body_limit
from .mcp import Mcp
from .scheduling import Scheduler

log = logging.getLogger("agentmx.serve")

_HTTP_CODES = {404: ("not_found", "no such path"), 405: ("method_not_allowed", "this path does not take that method")}


def _error(request: Request, exc: ApiError) -> Response:
    return Response(exc.encode(), exc.status, headers={k.decode(): v.decode() for k, v in exc.response_headers()})


def _http_error(request: Request, exc: HTTPException) -> Response:
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
    return _error(request, ApiError(exc.status_code, code, message))


def _store_error(request: Request, exc: StoreError) -> Response:
    # The store cannot be reached or written (or its schema is not ours): the next request tries
    # again; the reason is logged, not told (it names paths and hosts).
    log.warning("503 for %s: the store: %s", printable(request.url.path), exc)
    return _error(request, ApiError(503, "store_unavailable", "the store is unavailable; try again shortly",
                                    retry_after=5))


def _internal(request: Request, exc: Exception) -> Response:
    # The traceback is logged once, by the guard; the client learns nothing about it.
    return _error(request, ApiError(500, "internal", "internal error (logged); try again later"))


class Metrics:
    """GET /metrics for whoever holds [server] metrics_token; computed at most every 5 seconds."""

    def __init__(self, ctx: Context, min_interval: float = 5.0, dispatcher: Dispatcher | None = None):
        self.ctx, self.min_interval, self.dispatcher = ctx, min_interval, dispatcher
        self._text, self._at = "", 0.0

    async def handle(self, request: Request):
        token = self.ctx.config.metrics_token
        if not token:
            raise ApiError(403, "metrics_off", "metrics need a token: set [server] metrics_token_file")
        given = request.headers.get("authorization", "")
        given = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "send the metrics token as: Authorization: Bearer <token>")
        if time.monotonic() - self._at > self.min_interval:
            posts = dict(self.dispatcher.posts) if self.dispatcher is not None else None
            self._text = await self.ctx.run(metrics, self.ctx.config, self.ctx.store, posts)
            self._at = time.monotonic()
        return PlainTextResponse(self._text, media_type="text/plain; version=0.0.4")


def create_app(ctx: Context):
    inbox = InboxRoutes(ctx)
    mcp = Mcp(ctx, inbox)
    domain_routes = domains.DomainRoutes(ctx)     # its DNS checks shared by the API and the console

    async def healthz(request: Request):
        return PlainTextResponse("ok\n")

    scheduler = Scheduler(ctx)
    dispatcher = Dispatcher(ctx)               # send events to the routes' endpoints (api/dispatch.py)

    @asynccontextmanager
    async def lifespan(app):
        await ctx.listener.start()
        await ctx.news.start()
        await scheduler.start()
        await dispatcher.start()
        stop_refresh = asyncio.Event()
        refresher = asyncio.get_running_loop().create_task(refresh_blocks(ctx, stop_refresh))  # for the milter
        try:
            async with mcp.lifespan():
                yield
        finally:
            await scheduler.stop()
            await dispatcher.stop()            # its POSTs done: their store calls before the store closes
            stop_refresh.set()             # and wait: its thread must be done before the store closes
            await refresher
            await ctx.news.stop()
            await ctx.listener.stop()
            if await ctx.idle(10):
                ctx.store.close()
            else:                     # the process ends anyway; a connection closed under a query would crash it
                log.warning("stopping with store calls still running: the store is left to the process's end")

    routes = [
        Route("/healthz", healthz),
        *sending.routes(ctx),
        Route("/v1/messages", inbox.list),
        Route("/v1/messages/wait", inbox.wait),
        Route("/v1/messages/{id:str}/ack", inbox.ack, methods=["POST"]),
        Route("/v1/messages/{id:str}", inbox.get),
        Route("/v1/threads/{thread_id:path}", inbox.thread),
        Route("/v1/events", inbox.events),
        Route("/v1/blobs/{sha:str}", partial(blob_route, ctx)),
        Route("/metrics", Metrics(ctx, dispatcher=dispatcher).handle),
        *realtime.routes(ctx, inbox),
        *mailkite.routes(ctx),
        *messages.routes(ctx), *deliveries.routes(ctx), *domains.routes(ctx, domain_routes),
        *mcp.routes(),
        *suppressions.routes(ctx), *blocklist_api.routes(ctx),      # issue 16: suppressions and blocks
        *console.mount(ctx, inbox, domains=domain_routes),           # issue 19: the web console, /console (console/)
        *mailkite.not_offered_routes(ctx),    # last: never in front of a path another route serves
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: _error, HTTPException: _http_error, StoreError: _store_error, Exception: _internal})
    limits = ctx.config.limits
    guarded = Guard(app, Limits(max_body=ctx.config.send.max_request_bytes,
                                max_upload_body=body_limit(ctx.config.send.max_upload_bytes),
                                request_timeout=limits.request_timeout,
                                write_timeout=limits.write_timeout, max_requests=limits.max_requests))
    if ctx.config.proxy_hops:
        # Behind [server] proxy_hops reverse proxies: the client's address, scheme and host are the
        # ones the outermost trusted proxy saw (X-Forwarded-For/-Proto/-Host, counted from the
        # right), so that the console's sign-in limit is per person and its cookie Secure behind TLS.
        return ProxyFixMiddleware(guarded, mode="legacy", trusted_hops=ctx.config.proxy_hops)
    return guarded
