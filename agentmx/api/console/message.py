"""One message: GET /console/messages/{id} (headers, the verdicts explained, text, HTML, attachments,
links), and the parts it shows from the store:

    GET /console/messages/{id}/html[?remote=T]   the message's HTML, as the document of a sandboxed iframe
    GET /console/messages/{id}/raw               the raw message, as stored (text/plain, a download)
    GET /console/messages/{id}/attachments/{n}   an attachment (application/octet-stream, a download)

The message's HTML is never our HTML: it is served alone, under a Content-Security-Policy that
allows no script, no form, no frame, no plugin and no remote request (images: data: only; with
remote=<a token of the session and the message>, which the user asks for with a button, http: and
https: images too; a "remote=1" the message's own links could set does nothing), with `sandbox` in
the policy itself (an opaque origin even when the document is opened on its own) and a sandboxed
iframe without allow-scripts or allow-same-origin around it. Its links do nothing there (no
allow-popups, no navigation of the page); the message page lists them as text the user may follow.
"""
from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentmx.store.model import base_address

from ..blobs import disposition
from ..errors import ApiError
from ..inbox import InboxRoutes
from . import session
from .core import Console
from .explain import explain
from .listing import valid_id

MAX_HTML = 5_000_000          # characters of a message's HTML served into the frame (the rest cut)
MAX_TEXT = 2_000_000

FRAME_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src 'none'; "
             "form-action 'none'; frame-ancestors 'self'; base-uri 'none'")
FRAME_CSP_REMOTE = FRAME_CSP.replace("img-src data:", "img-src data: http: https:")
# Before the message's own HTML: no base of its own, and links open nowhere (no popups allowed).
FRAME_HEAD = '<!doctype html><meta charset="utf-8"><base target="_blank">'


def _remote(request: Request, viewer: session.Viewer, event_id: str) -> bool:
    return session.same(request.query_params.get("remote", ""), viewer.remote_token(event_id))


def routes(console: Console, inbox: InboxRoutes) -> list[Route]:
    ctx = console.ctx

    def load(viewer: session.Viewer, event_id: str) -> tuple[object, dict]:
        row = ctx.store.inbox_row(valid_id(event_id, "msg_", "message"))
        if row is None or not viewer.key.may_send_as(base_address(row.recipient)):
            raise ApiError(404, "unknown_message", "no such message (or not yours to read)")
        event = inbox.message(row)
        if event is None:
            raise ApiError(410, "gone", "the message was removed by retention")
        return row, event

    async def show(request: Request, viewer: session.Viewer):
        row, event = await ctx.run(load, viewer, request.path_params["id"])
        delivery = await ctx.run(ctx.store.delivery, row.id)
        text = event.get("text") or ""
        return console.render(request, viewer, "message.html", title=event.get("subject") or "(no subject)",
                              row=row, event=event, verdicts=explain(event.get("auth") or {}),
                              text=text[:MAX_TEXT], text_cut=len(text) > MAX_TEXT, delivery=delivery,
                              remote=_remote(request, viewer, row.id), remote_token=viewer.remote_token(row.id),
                              headers_list=event.get("headers") or [],
                              attachments=list(enumerate(event.get("attachments") or [])),
                              links=event.get("links") or [], defects=event.get("defects") or [],
                              event_json=json.dumps(event, indent=2, ensure_ascii=False)[:200_000])

    async def html(request: Request, viewer: session.Viewer):
        _, event = await ctx.run(load, viewer, request.path_params["id"])
        body = (event.get("html") or "")[:MAX_HTML]
        remote = _remote(request, viewer, request.path_params["id"])
        return Response(FRAME_HEAD + body, 200, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": FRAME_CSP_REMOTE if remote else FRAME_CSP,
            "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
            "x-frame-options": "SAMEORIGIN", "cache-control": "no-store"})

    async def blob(request: Request, viewer: session.Viewer, sha: str | None, name: str):
        if not sha:
            raise ApiError(404, "gone", "the message's bytes are not stored")
        found = await ctx.run(ctx.store.open_blob, sha)
        if found is None:
            raise ApiError(410, "gone", "the file was removed by retention")
        return StreamingResponse(found.chunks, media_type="application/octet-stream", headers={
            "content-length": str(found.size), "content-disposition": disposition(name),
            "x-content-type-options": "nosniff", "content-security-policy": "sandbox", "cache-control": "no-store"})

    async def raw(request: Request, viewer: session.Viewer):
        row, event = await ctx.run(load, viewer, request.path_params["id"])
        return await blob(request, viewer, (event.get("raw") or {}).get("sha256"), f"{row.id}.eml")

    async def attachment(request: Request, viewer: session.Viewer):
        _, event = await ctx.run(load, viewer, request.path_params["id"])
        items = event.get("attachments") or []
        n = request.path_params["n"]
        if n >= len(items):
            raise ApiError(404, "unknown_attachment", "no such attachment")
        return await blob(request, viewer, items[n].get("sha256"), items[n].get("filename") or f"attachment-{n}")

    return [Route("/messages/{id:str}", console.page(show)),
            Route("/messages/{id:str}/html", console.page(html)),
            Route("/messages/{id:str}/raw", console.page(raw)),
            Route("/messages/{id:str}/attachments/{n:int}", console.page(attachment))]
