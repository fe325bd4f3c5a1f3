"""GET /console/inbox: the messages the viewer may read, newest first, with filters and search;
GET /console/live: the viewer's events as server-sent events (static/live.js adds new rows).

Filters (the query string, so a filtered view is a link): q (a substring of the subject or the
sender), to (one of the viewer's addresses), unread=1, before (a message's seq: the next page).
The page works without JavaScript; with it, new messages appear at the top as they arrive.
Viewing the console never marks a message read: "read" is the agent's (POST /v1/messages/{id}/ack).
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from agentmx.store.model import base_address

from ..errors import ApiError
from ..inbox import InboxRoutes
from ..messages import _search
from . import session
from .core import Console
from .listing import cursor, page

PAGE = 50


def _summary(row, event: dict | None) -> dict:
    auth = (event or {}).get("auth") or {}
    return {"id": row.id, "seq": row.seq, "sender": row.sender, "recipient": row.recipient,
            "subject": row.subject, "received": row.received, "read": row.read, "state": row.state.value,
            "dmarc": auth.get("dmarc", "none"), "dkim": auth.get("dkim", "none"), "spf": auth.get("spf", "none"),
            "spam": auth.get("spam", "unknown"), "flagged": bool((event or {}).get("flagged")),
            "attachments": len((event or {}).get("attachments") or ()), "gone": event is None}


def routes(console: Console, inbox: InboxRoutes) -> list[Route]:
    ctx = console.ctx

    def listing(viewer: session.Viewer, q: str | None, to: str | None, unread: bool, before: int | None):
        rows, last = page(ctx.store.inbox_query(viewer.key.allow, to=to, search=q, unread=unread,
                                                before_seq=before, limit=PAGE + 1), PAGE)
        return [_summary(r, inbox.message(r)) for r in rows], (last.seq if last else None)

    async def show(request: Request, viewer: session.Viewer):
        params = request.query_params
        q = _search((params.get("q") or "").strip() or None)
        to = (params.get("to") or "").strip().lower() or None
        if to and (len(to) > 254 or "@" not in to or not viewer.key.may_send_as(base_address(to))):
            raise ApiError(403, "forbidden_address", "you may not read mail sent to that address")
        unread = params.get("unread") in ("1", "on", "true")
        before = cursor(params.get("before"))
        last = await ctx.run(ctx.store.last_seq)        # first: a message between the two is streamed, not lost
        rows, next_before = await ctx.run(listing, viewer, q, to, unread, before)
        live = not (q or to or unread or before)           # live rows only on the plain newest-first view
        return console.render(request, viewer, "inbox.html", title="Inbox", rows=rows, q=q or "", to=to or "",
                              unread=unread, next_before=next_before, live=live, last_seq=last,
                              addresses=viewer.key.allow)

    async def live(request: Request, viewer: session.Viewer):
        after = request.query_params.get("after") or None
        return await inbox.stream_for(viewer.key, after, slot="console:" + viewer.name)

    return [Route("/inbox", console.page(show)), Route("/live", console.page(live))]

