"""Suppressions as MailKite's SDK reads and writes them: listSuppressions, addSuppression,
removeSuppression, on the key's own sending domains.

    GET    /api/contacts/suppressions?domain=&limit=&cursor=   {"suppressions": [...], "nextCursor": ...}
    POST   /api/contacts/suppressions          {email, reason?, note?, domain?}: suppress it
    DELETE /api/contacts/suppressions/{email}?domain=           lift it (a no-op success when not there)

A suppression is kept per sending domain (agentmx/suppression.py: a send from that domain to that
address is a 422 `suppressed`). A key's domains are those of its allow list entries (agent@x.example
and @x.example both give x.example): it lists, adds and removes only theirs, never another
domain's (404 unknown_domain, as if it were not there). POST needs `domain` when the key may send
from several; DELETE without it lifts the address on every domain of the key. `reason` is manual
(the default), bounced or complained; `note` one line of at most suppression.MAX_NOTE characters.
Listed in (domain, address) order, `limit` 1-500 (default 100), `cursor` the answer's nextCursor.
"""
from __future__ import annotations

import base64
import json

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import suppression
from agentmx.config import ApiKey
from agentmx.store.model import Suppression

from .context import Context
from .deliveries import _json as json_object
from .errors import ApiError
from .inbox import _int

MAX_CURSOR = 1200


def key_domains(key: ApiKey) -> list[str]:
    """The sending domains of a key: those of its allow list entries, in their order."""
    return list(dict.fromkeys(a.rpartition("@")[2].lower() for a in key.allow))


def _domains(key: ApiKey, given) -> list[str]:
    """The key's domains, or the one `given` (which must be one of them)."""
    mine = key_domains(key)
    if given in (None, ""):
        return mine
    if not isinstance(given, str) or given.lower().rstrip(".") not in mine:
        raise ApiError(404, "unknown_domain", f"no domain {str(given)[:100]!r} this key sends from")
    return [given.lower().rstrip(".")]


def read_cursor(value: str | None, n: int) -> tuple[str, ...] | None:
    """An opaque cursor of ours (cursor_of) back to its `n` strings; 400 bad_cursor for anything else."""
    if not value:
        return None
    try:
        if len(value) > MAX_CURSOR:
            raise ValueError
        got = json.loads(base64.urlsafe_b64decode(value.encode() + b"=" * (-len(value) % 4)))
        if not (isinstance(got, list) and len(got) == n and all(isinstance(x, str) for x in got)):
            raise ValueError
        return tuple(got)
    except ValueError:                  # binascii.Error, UnicodeError and JSON errors are ValueErrors
        raise ApiError(400, "bad_cursor", "cursor is the nextCursor of an earlier answer") from None


def cursor_of(*values: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _address(value) -> str:
    try:
        return suppression.address(value)
    except ValueError as exc:
        raise ApiError(400, "bad_email", f"email must be {exc}") from None


class SuppressionRoutes:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def page(self, key: ApiKey, q) -> dict:
        domains = _domains(key, q.get("domain"))
        limit = _int(q.get("limit"), 100, 1, 500, "limit")
        rows = self.ctx.store.suppressions(tuple(domains), after=read_cursor(q.get("cursor"), 2), limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"suppressions": [suppression.view(s) for s in rows],
                "nextCursor": cursor_of(rows[-1].domain, rows[-1].address) if more and rows else None}

    async def list(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.page, key, request.query_params))

    def add_one(self, key: ApiKey, body: dict) -> dict:
        unknown = sorted(set(body) - {"email", "reason", "note", "domain"})
        if unknown:
            raise ApiError(400, "bad_field", f"unknown field {unknown[0][:50]!r}")
        address = _address(body.get("email"))
        try:
            why = suppression.reason(body.get("reason"))
        except ValueError as exc:
            raise ApiError(400, "bad_reason", f"reason must be {exc}") from None
        try:
            note = suppression.note(body.get("note"))
        except ValueError as exc:
            raise ApiError(400, "bad_note", f"note must be {exc}") from None
        domains = _domains(key, body.get("domain"))
        if len(domains) != 1:
            raise ApiError(400, "missing_domain", "this key sends from several domains: name one as `domain` "
                                                  f"({', '.join(domains[:10])})")
        domain = domains[0]
        created = self.ctx.store.suppress(Suppression(domain, address, why, self.ctx.clock(), "",
                                                      note or f"by API key {key.name}"))
        found = self.ctx.store.suppressed(domain, (address,))       # the first reason and time stand
        kept = found[0] if found else Suppression(domain, address, why, self.ctx.clock(), "", note)
        return {**suppression.view(kept), "created": created}

    async def add(self, request: Request):
        key = self.ctx.key(request)
        body = await json_object(request)
        return JSONResponse(await self.ctx.run(self.add_one, key, body))

    def remove_one(self, key: ApiKey, email: str, domain) -> dict:
        address = _address(email)
        lifted = [d for d in _domains(key, domain) if self.ctx.store.unsuppress(d, address)]
        return {"email": address, "removed": bool(lifted), "domains": lifted}

    async def remove(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self.remove_one, key, request.path_params["email"],
                                               request.query_params.get("domain")))


def routes(ctx: Context) -> list[Route]:
    s = SuppressionRoutes(ctx)
    return [Route("/api/contacts/suppressions", s.list, methods=["GET"]),
            Route("/api/contacts/suppressions", s.add, methods=["POST"]),
            Route("/api/contacts/suppressions/{email:path}", s.remove, methods=["DELETE"])]

