"""Deliveries and routes as MailKite's SDK reads them: retryDelivery, retryDeliveries,
listDeliveryAttempts, listRoutes, listRouteCandidates, deliverToRoute.

    POST /api/deliveries/{id}/retry             POST the stored event to its route again
    POST /api/deliveries/retry                  {deliveryIds, messageIds, threadIds}: at most 50 ids
    GET  /api/deliveries/{id}/attempts          every attempt, newest first
    GET  /api/routes                            the config's routes this key may read
    GET  /api/routes/{id}/candidates            stored messages that route delivers, newest first
    POST /api/routes/{id}/deliver               {messageIds}: POST them to that route, at most 50

A delivery is one event: agentmx makes one event per message and envelope recipient, and delivers
it once (with Postfix's retries), so a delivery id IS the event id (msg_...), the message's id in
GET /api/messages, and the webhook-id the agent saw. A key reaches only the deliveries of the
recipients its `allow` list names, and only the routes whose whole match it may read.

A retry is `agentmx replay` (ops.replay: the original webhook-id, signed anew, the answer read
as deliver reads it and kept as one more attempt), run in serve's thread pool. A pull route or
an agent route has nothing to POST: 409. Routes are read-only, from the config file; their id is
derived from the match (rt_ + 16 hex of its sha256), so it is stable while the match is. A route
is shown with its endpoint stripped of userinfo and query (where secrets hide), never its secret.
"""
from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import ops
from agentmx.config import ApiKey, Route as RouteConfig, RouteAction
from agentmx.deliver import route as routing
from agentmx.store import StoreError
from agentmx.store.model import InboxRow
from agentmx.times import rfc3339

from .context import Context
from .errors import ApiError
from .messages import MessageRoutes

MAX_IDS = 50            # ids in one bulk call, and deliveries one call POSTs (after threads are expanded)
MAX_ATTEMPTS = 200      # attempts one answer lists (the newest)
PARALLEL = 4            # replays of one bulk call running at once (each waits up to its route's timeout)



def route_id(route: RouteConfig) -> str:
    return "rt_" + hashlib.sha256(route.match.lower().encode()).hexdigest()[:16]


def public_endpoint(url: str | None) -> str | None:
    """The endpoint as a reader may see it: no user:password@, no query, no fragment."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def route_view(route: RouteConfig) -> dict:
    """What GET /api/routes shows of a route: never its secret."""
    return {"id": route_id(route), "match": route.match, "mode": route.mode.value, "action": route.action.value,
            "endpoint": public_endpoint(route.endpoint) if route.pushes else None,
            "mailkiteSignature": route.mailkite_signature, "timeout": route.timeout,
            "attachments": route.attachments.value, "trust": route.trust.value, "ack": route.ack.value}


def readable_routes(config, key: ApiKey) -> list[RouteConfig]:
    """The routes whose whole match (an address, or a whole domain) this key may read."""
    return [r for r in config.routes if key.may_send_as(r.match)]


def _ids(value, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value):
        raise ApiError(400, "bad_ids", f"{name} is a list of ids")
    return value


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body is a JSON object")
    return body


class DeliveryRoutes:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.messages = MessageRoutes(ctx)

    # --- sync parts, run in the thread pool -----------------------------------------------------

    # (the web console's deliveries pages call owned, pushing_route, retry_one and attempts_of too)

    def owned(self, key: ApiKey, delivery_id: str) -> InboxRow:
        """The delivery's inbox row, if this key may read its recipient; else 404 (never 403:
        another key's delivery is not there for this one)."""
        row = self.ctx.store.inbox_row(delivery_id)
        if row is None or not key.may_send_as(row.address):
            raise ApiError(404, "unknown_delivery", f"no delivery {delivery_id[:100]} for this key")
        return row

    def pushing_route(self, row: InboxRow, only: RouteConfig | None = None) -> RouteConfig:
        """The route a retry of `row` POSTs to; 409 when there is none to POST to (no route any
        more, another route than `only`, an agent route, a pull route)."""
        found = routing.match(row.recipient, self.ctx.config.routes)
        if found is None:
            raise ApiError(409, "no_route", f"no route takes {row.recipient} any more: nothing to POST it to")
        if only is not None and found.route is not only:
            raise ApiError(409, "other_route", f"{row.recipient} goes to route {route_id(found.route)}, not this one")
        if found.route.action is RouteAction.AGENT:
            raise ApiError(409, "agent_route", f"the route for {row.recipient} runs agentmx's agent: nothing to POST")
        if not found.route.pushes:
            raise ApiError(409, "pull_route", f"the route for {row.recipient} is a pull route: the message waits "
                                              f"in GET /api/messages, nothing to POST")
        return found.route

    def retry_one(self, key: ApiKey, delivery_id: str, only: RouteConfig | None = None) -> dict:
        self.pushing_route(self.owned(key, delivery_id), only)
        try:
            status, why = ops.replay(self.ctx.config, self.ctx.store, delivery_id, clock=self.ctx.clock)
        except LookupError:
            raise ApiError(410, "gone", "the stored copy is gone: removed by retention, or dropped by the "
                                        "agent's answer") from None
        delivery = self.ctx.store.delivery(delivery_id)
        return {"id": delivery_id, "ok": 200 <= status < 300, "status": delivery.state.value if delivery else None,
                "httpStatus": status, "reason": why, "attempts": delivery.attempts if delivery else None}

    def attempts_of(self, key: ApiKey, delivery_id: str) -> dict:
        self.owned(key, delivery_id)
        return self.attempts_answer(delivery_id, self.ctx.store.delivery(delivery_id))

    def attempts_answer(self, delivery_id: str, delivery) -> dict:
        """GET /api/deliveries/{id}/attempts's answer for a delivery already known to be the key's."""
        attempts = list(reversed(self.ctx.store.attempts(delivery_id)))[:MAX_ATTEMPTS]
        return {"id": delivery_id, "status": delivery.state.value if delivery else None,
                "attempts": [{"at": rfc3339(a.at), "status": a.status, "durationMs": a.duration_ms,
                              "outcome": a.outcome.value, "excerpt": a.excerpt, "webhookId": a.webhook_id}
                             for a in attempts]}

    def _thread(self, key: ApiKey, thread_id: str) -> list[str]:
        return [r.id for r in self.ctx.store.inbox_query(key.allow, thread_id=thread_id, limit=MAX_IDS)]

    # --- the routes -------------------------------------------------------------------------------

    async def retry(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.retry_one, key, request.path_params["id"]))

    async def attempts(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.attempts_of, key, request.path_params["id"]))

    async def _each(self, key: ApiKey, ids: list[str], only: RouteConfig | None = None) -> list[dict]:
        """Retry each id, PARALLEL at a time; every id gets a result, a failure its code."""
        gate = asyncio.Semaphore(PARALLEL)

        async def one(delivery_id: str) -> dict:
            async with gate:
                try:
                    return await self.ctx.run(self.retry_one, key, delivery_id, only)
                except ApiError as exc:
                    return {"id": delivery_id, "ok": False, "code": exc.code, "error": exc.message}
                except StoreError:
                    return {"id": delivery_id, "ok": False, "code": "store_unavailable",
                            "error": "the store is unavailable; try again shortly"}
        return list(await asyncio.gather(*(one(i) for i in ids)))

    async def retry_many(self, request: Request):
        key = self.ctx.key(request)
        body = await _json(request)
        delivery_ids, message_ids = _ids(body.get("deliveryIds"), "deliveryIds"), _ids(body.get("messageIds"), "messageIds")
        thread_ids = _ids(body.get("threadIds"), "threadIds")
        if not 0 < len(delivery_ids) + len(message_ids) + len(thread_ids) <= MAX_IDS:
            raise ApiError(400, "bad_ids", f"give 1 to {MAX_IDS} ids in deliveryIds, messageIds and threadIds together")
        targets = list(dict.fromkeys(delivery_ids + message_ids))    # a message's id is its delivery's
        results: list[dict] = []
        for thread_id in thread_ids:
            found = await self.ctx.run(self._thread, key, thread_id)
            if not found:
                results.append({"id": thread_id, "ok": False, "code": "unknown_thread",
                                "error": f"no thread {thread_id[:100]} for this key"})
            targets += [i for i in found if i not in targets]
        over = targets[MAX_IDS:]
        results = await self._each(key, targets[:MAX_IDS]) + results
        results += [{"id": i, "ok": False, "code": "too_many", "error": f"more than {MAX_IDS} deliveries in one call"}
                    for i in over]
        return JSONResponse({"results": results})

    def _route(self, key: ApiKey, rid: str) -> RouteConfig:
        for route in readable_routes(self.ctx.config, key):
            if route_id(route) == rid:
                return route
        raise ApiError(404, "unknown_route", f"no route {rid[:100]} for this key")

    async def list_routes(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse({"routes": [route_view(r) for r in readable_routes(self.ctx.config, key)]})

    def _candidates(self, key: ApiKey, route: RouteConfig, q) -> dict:
        page = self.messages.page(key, (route.match,), q)
        config = self.ctx.config

        def goes_here(msg: dict) -> bool:
            found = routing.match(msg.get("recipient", ""), config.routes)
            return found is not None and found.route is route
        page["messages"] = [m for m in page["messages"] if goes_here(m)]
        return page

    async def candidates(self, request: Request):
        key = self.ctx.key(request)
        route = self._route(key, request.path_params["id"])
        return JSONResponse(await self.ctx.run(self._candidates, key, route, request.query_params))

    async def deliver(self, request: Request):
        key = self.ctx.key(request)
        route = self._route(key, request.path_params["id"])
        if not route.pushes:
            raise ApiError(409, "pull_route" if route.action is not RouteAction.AGENT else "agent_route",
                           f"route {route_id(route)} does not POST: nothing to deliver")
        ids = list(dict.fromkeys(_ids((await _json(request)).get("messageIds"), "messageIds")))
        if not 0 < len(ids) <= MAX_IDS:
            raise ApiError(400, "bad_ids", f"give 1 to {MAX_IDS} ids in messageIds")
        return JSONResponse({"route": route_id(route), "results": await self._each(key, ids, only=route)})


def routes(ctx: Context) -> list[Route]:
    d = DeliveryRoutes(ctx)
    return [Route("/api/deliveries/retry", d.retry_many, methods=["POST"]),
            Route("/api/deliveries/{id:str}/retry", d.retry, methods=["POST"]),
            Route("/api/deliveries/{id:str}/attempts", d.attempts),
            Route("/api/routes", d.list_routes),
            Route("/api/routes/{id:str}/candidates", d.candidates),
            Route("/api/routes/{id:str}/deliver", d.deliver, methods=["POST"])]
