"""What the viewer's addresses sent, and what became of it:

    GET /console/sends[?before=]    newest first: send id, from, to, subject (a scheduled send's), state,
                                    the newest send event (sent, delivered, delayed, bounced, complained)
    GET /console/sends/{id}         the send and each recipient's status timeline, as GET /v1/send/{id}
                                    gives it (api/sending.describe, api/timeline.py), bounces' diagnostics

Scope: the sends whose From address the viewer's key may send as (store.list_sends with the key's
allow list; one send: key.may_send_as(its sender)), whichever key or agent route sent it: the same
scope as the send events of GET /v1/events (docs/decisions.md). Another's send is a 404.
"""
from __future__ import annotations

import json

from starlette.requests import Request
from starlette.routing import Route

from agentmx.store.model import SendRecord

from ..errors import ApiError
from ..sending import describe
from . import session
from .core import Console
from .listing import page, valid_id

PAGE = 50
MAX_SUBJECT = 200


def subject_of(rec: SendRecord) -> str:
    """The subject, when the store knows it: a scheduled send's request keeps it until it goes."""
    if not rec.request:
        return ""
    try:
        subject = json.loads(rec.request).get("subject")
    except (ValueError, AttributeError):
        return ""
    return subject[:MAX_SUBJECT] if isinstance(subject, str) else ""


def send_cursor(value: str | None) -> tuple[float, str] | None:
    """`before` as an earlier page gave it: "<created>:<send id>"."""
    if not value:
        return None
    created, _, send_id = value.partition(":")
    try:
        when = float(created)
    except ValueError:
        when = None
    if when is None or when != when or not send_id.startswith("snd_") or len(value) > 100:
        raise ApiError(400, "bad_before", "before is a value an earlier page gave")
    return when, send_id


def routes(console: Console) -> list[Route]:
    ctx = console.ctx

    def listing(viewer: session.Viewer, before: tuple[float, str] | None):
        rows, last_row = page(ctx.store.list_sends(viewer.key.allow, before=before, limit=PAGE + 1), PAGE)
        last = last_row.record if last_row is not None else None
        return ([(r, subject_of(r.record)) for r in rows],
                f"{last.created!r}:{last.id}" if last is not None else None)

    async def index(request: Request, viewer: session.Viewer):
        rows, next_before = await ctx.run(listing, viewer, send_cursor(request.query_params.get("before")))
        return console.render(request, viewer, "sends.html", title="Sends", rows=rows, next_before=next_before)

    def detail(viewer: session.Viewer, send_id: str) -> tuple[SendRecord, dict]:
        rec = ctx.store.get_send(valid_id(send_id, "snd_", "send"))
        if rec is None or not viewer.key.may_send_as(rec.sender):
            raise ApiError(404, "unknown_send", "no such send (or not one of your addresses')")
        return rec, describe(rec, ctx.store.send_events(rec.id))

    async def show(request: Request, viewer: session.Viewer):
        rec, doc = await ctx.run(detail, viewer, request.path_params["id"])
        return console.render(request, viewer, "send.html", title=f"Send {rec.id}", rec=rec, doc=doc,
                              subject=subject_of(rec))

    return [Route("/sends", console.page(index)), Route("/sends/{id:str}", console.page(show))]
