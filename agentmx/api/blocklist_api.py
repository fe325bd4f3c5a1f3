"""Inbound blocks over the API: senders refused at RCPT by the milter (550 5.7.1) for a route's
addresses, and kept aside by deliver if they got past it.

    GET    /v1/blocks?scope=&limit=&cursor=   {"blocks": [...], "nextCursor": ...}
    POST   /v1/blocks                         {sender, scope?}: block it
    DELETE /v1/blocks/{sender}?scope=         lift it ({"removed": false} when it was not blocked)

`sender` is an envelope sender (spammer@example.net) or a whole domain (@bad.example). `scope` is
the match of a route this key may read (deliveries.readable_routes: its whole match is on the key's
allow list); without it, the route that takes the key's own address (400 missing_scope when that
is not one route the key may read). A key sees and changes the blocks of its routes only: any
other scope is 404 unknown_scope, as if it were not there.

A block shows who made it (`source`): config (the route's block_senders: only the operator lifts
it, DELETE is 409 config_block), agent (a block-sender answer, with its eventId), api (a key,
named), operator (`agentmx blocks add`). After a change this serve writes <data_dir>/blocks.json
(deliver/control.publish) so that this host's milter refuses the sender at once; other hosts' serves
rewrite theirs from the shared store within blocklist.REFRESH seconds (api/blocks.py). A file that
cannot be written is logged and said (`published: false`): the block is kept all the same.
"""
from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import blocklist
from agentmx.config import ApiKey, block_sender
from agentmx.deliver.control import publish
from agentmx.routing import match
from agentmx.store.model import Block
from agentmx.times import rfc3339

from .context import Context
from .deliveries import _json as json_object, readable_routes
from .errors import ApiError
from .inbox import _int
from .suppressions import cursor_of, read_cursor

log = logging.getLogger("agentmx.api.blocks")

MAX_BLOCKS = 10_000      # blocks of one scope kept in the store (the config's not counted)


def view(b: Block) -> dict:
    source = blocklist.source_of(b)
    return {"sender": b.sender, "scope": b.scope, "source": source,
            "createdAt": rfc3339(b.created) if source != "config" else None,
            "eventId": b.event_id if source == "agent" else None,
            "key": b.event_id[4:] if source == "api" else None}


def _sender(value) -> str:
    try:
        return block_sender(value)
    except ValueError as exc:
        raise ApiError(400, "bad_sender", f"sender must be {exc}") from None


class BlockRoutes:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def _scope(self, key: ApiKey, given) -> str:
        """The scope asked for (one of the key's readable routes), or the route of the key's address."""
        readable = [r.match for r in readable_routes(self.ctx.config, key)]
        if given not in (None, ""):
            scope = given.strip().lower() if isinstance(given, str) else ""
            if scope not in readable:
                raise ApiError(404, "unknown_scope", f"no route {str(given)[:100]!r} whose blocks this key may change")
            return scope
        own = list(dict.fromkeys(found.route.match for found in (match(a, self.ctx.config.routes) for a in key.allow)
                                 if found is not None and found.route.match in readable))
        if len(own) != 1:
            raise ApiError(400, "missing_scope", "name the route to block for as `scope`: one of "
                                                 + (", ".join(readable[:10]) or "none (this key may read no route)"))
        return own[0]

    def _publish(self) -> bool:
        try:
            publish(self.ctx.store, self.ctx.config.data_dir)
            return True
        except OSError as exc:
            log.warning("block list not written (%s): %s", blocklist.path_in(self.ctx.config.data_dir), exc)
            return False

    def page(self, key: ApiKey, q) -> dict:
        scopes = (self._scope(key, q["scope"]),) if q.get("scope") else tuple(
            r.match for r in readable_routes(self.ctx.config, key))
        limit = _int(q.get("limit"), 100, 1, 500, "limit")
        after = read_cursor(q.get("cursor"), 3)
        rows = [b for b in blocklist.every(self.ctx.store, self.ctx.config.routes, scopes)
                if after is None or blocklist.order(b) > after]
        more = len(rows) > limit
        rows = rows[:limit]
        return {"blocks": [view(b) for b in rows],
                "nextCursor": cursor_of(*blocklist.order(rows[-1])) if more and rows else None}

    async def list(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.page, key, request.query_params))

    def add_one(self, key: ApiKey, body: dict) -> dict:
        unknown = sorted(set(body) - {"sender", "scope"})
        if unknown:
            raise ApiError(400, "bad_field", f"unknown field {unknown[0][:50]!r}")
        sender = _sender(body.get("sender"))
        scope = self._scope(key, body.get("scope"))
        kept = self.ctx.store.blocked(sender, (scope,))
        if kept is None and sum(b.scope == scope for b in self.ctx.store.blocks()) >= MAX_BLOCKS:
            raise ApiError(409, "too_many_blocks", f"{scope} has {MAX_BLOCKS} blocks: lift some first")
        created = self.ctx.store.add_block(sender, scope, f"key:{key.name}")
        kept = self.ctx.store.blocked(sender, (scope,)) or Block(sender, scope, f"key:{key.name}", self.ctx.clock())
        log.info("%s blocked for %s by key %s", sender, scope, key.name)
        return {**view(kept), "created": created, "published": self._publish()}

    async def add(self, request: Request):
        key = self.ctx.key(request)
        body = await json_object(request)
        return JSONResponse(await self.ctx.run(self.add_one, key, body))

    def remove_one(self, key: ApiKey, sender: str, scope) -> dict:
        sender, scope = _sender(sender), self._scope(key, scope)
        route = next(r for r in self.ctx.config.routes if r.match == scope)
        if sender in route.block_senders:
            raise ApiError(409, "config_block", f"{sender} is blocked for {scope} by the config (the route's "
                                                "block_senders): only the operator lifts it")
        removed = self.ctx.store.remove_block(sender, scope)
        if removed:
            log.info("%s unblocked for %s by key %s", sender, scope, key.name)
        return {"sender": sender, "scope": scope, "removed": removed, "published": self._publish() if removed else True}

    async def remove(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.remove_one, key, request.path_params["sender"],
                                               request.query_params.get("scope")))


def routes(ctx: Context) -> list[Route]:
    b = BlockRoutes(ctx)
    return [Route("/v1/blocks", b.list, methods=["GET"]),
            Route("/v1/blocks", b.add, methods=["POST"]),
            Route("/v1/blocks/{sender:path}", b.remove, methods=["DELETE"])]
