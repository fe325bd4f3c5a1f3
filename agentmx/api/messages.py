"""MailKite's message listing (its SDK's listMessages and getMessage), over the same inbox.

    GET /api/messages?before=&limit=&search=    newest first
    GET /api/messages/{id}                      one message

A message is the stored `email.received` event with its `inbox` member, exactly as
GET /v1/messages gives it (inbox.py), and a key sees only the messages whose recipient its
`allow` list names. `before` is the id of a message (the last one of the page before: the
answer's `nextCursor`); `limit` 1-100 (default 20); `search` a substring of the subject or of the
sender's address (any case; % and _ are plain characters; a parameter of the query, never SQL), at
most 200 characters.
The answer: {"messages": [...], "nextCursor": "<id to pass as before>" | null}.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx.config import ApiKey

from .context import Context
from .errors import ApiError
from .inbox import InboxRoutes, _int

MAX_SEARCH = 200


def _search(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > MAX_SEARCH:
        raise ApiError(400, "bad_search", f"search is at most {MAX_SEARCH} characters")
    return value


class MessageRoutes:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.inbox = InboxRoutes(ctx)

    def page(self, key: ApiKey, scope: tuple[str, ...], q) -> dict:
        """One page of the messages of `scope` (the key's allow list, or a part of it), newest first."""
        limit = _int(q.get("limit"), 20, 1, 100, "limit")
        search = _search(q.get("search"))
        before = None
        if q.get("before"):
            row = self.ctx.store.inbox_row(q["before"][:200])
            if row is None or not key.may_send_as(row.address):
                raise ApiError(400, "bad_before", "before is the id of a message this key may read (nextCursor)")
            before = row.seq
        rows = self.ctx.store.inbox_query(scope, search=search, before_seq=before, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        messages = [m for m in (self.inbox.message(r) for r in rows) if m is not None]
        return {"messages": messages, "nextCursor": rows[-1].id if more and rows else None}

    async def list(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.page, key, key.allow, request.query_params))

    async def get(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.inbox._get, key, request.path_params["id"]))


def routes(ctx: Context) -> list[Route]:
    m = MessageRoutes(ctx)
    return [Route("/api/messages", m.list), Route("/api/messages/{id:str}", m.get)]
