"""POST /v1/send, GET and DELETE /v1/send/{id}: the HTTP door of the one send path (agentmx/sendpath.py).

sendnow.send_one() is what POST /v1/send, each recipient of POST /v1/send/batch (batch.py), each
scheduled send when it is due (scheduling.py) and MCP's send and reply (mcp.py) call: the JSON
parsed into a SendRequest, the key made the Caller, the attachments by URL loaded by the path's
`resolve` (attachments.py), the answer made JSON. Every guard, limit and record is the path's.

A request with scheduledAt is checked as far as it can be now (sendpath.prepare, the time
window) and parked in the store (scheduling.park); it goes through send_one when due.

The API key is checked from the headers before one byte of the body is read; the body is then
read within the guard's size and time limits; the rest (the store, a fetch, SMTP) runs in the
thread pool. An Idempotency-Key header makes a retry answer the first answer (idempotency.py).
"""
from __future__ import annotations

import logging
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import send
from agentmx.config import ApiKey
from agentmx.store.model import SendEvent, SendRecord, SendState
from agentmx.times import rfc3339

from . import attachments, batch, idempotency, scheduling, sendnow, timeline
from .context import Context
from .errors import ApiError

log = logging.getLogger("agentmx.serve")


def send_for_key(ctx: Context, key: ApiKey, body: bytes) -> dict:
    """POST /v1/send's body of an authorized key. Raises send.SendError."""
    return scheduling.send_or_park(ctx, key, sendnow.parse_json(body))


async def sending_route(ctx: Context, handler, what: str, request: Request):
    """POST /v1/send and /v1/send/batch: handler(ctx, key, body) -> dict, under Idempotency-Key."""
    key = ctx.key(request)                        # before the body: no key, nothing read
    body = await request.body()
    try:
        return await idempotency.answer(ctx, key, request, body, handler)
    except send.SendError as exc:
        log.info("%s refused (%s): %s", what, exc.status, exc.message)
        raise ApiError.from_send(exc) from None


# --- GET and DELETE /v1/send/{id} ----------------------------------------------------------------------

def describe(rec: SendRecord, events: list[SendEvent] = ()) -> dict:
    """A send as GET /v1/send/{id} shows it; with what became of it (its send events, oldest first):
    `events`, and `timeline`, each recipient's events (api/timeline.py)."""
    out = {"id": rec.id, "status": rec.state.value, "from": rec.sender, "recipients": list(rec.recipients),
           "messageId": rec.message_id or None, "queueId": rec.queue_id, "threadId": rec.thread_id,
           "inReplyTo": rec.in_reply_to, "createdAt": rfc3339(rec.created),
           "scheduledAt": rfc3339(rec.scheduled_at) if rec.scheduled_at is not None else None}
    if rec.error:
        out["error"] = rec.error
    out["events"] = [timeline.entry(e) for e in events]
    out["timeline"] = timeline.timeline(rec, list(events))
    return out


def _own_send(ctx: Context, key: ApiKey, send_id: str) -> SendRecord:
    rec = ctx.store.get_send(send_id) if len(send_id) <= 64 else None
    if rec is None or rec.key != key.name:        # another key's send is not there for this one
        raise ApiError(404, "unknown_send", "no send with this id for this API key")
    return rec


def status(ctx: Context, key: ApiKey, send_id: str) -> dict:
    """GET /v1/send/{id} (and MCP's send_status): the key's own send, with its timeline."""
    rec = _own_send(ctx, key, send_id)
    return describe(rec, ctx.store.send_events(rec.id))


async def get_send_route(ctx: Context, request: Request):
    key = ctx.key(request)
    return JSONResponse(await ctx.run(status, ctx, key, request.path_params["id"]))


def cancel(ctx: Context, key: ApiKey, send_id: str) -> dict:
    _own_send(ctx, key, send_id)
    rec = ctx.store.cancel_send(send_id)
    if rec is None:
        raise ApiError(404, "unknown_send", "no send with this id for this API key")
    if rec.state is not SendState.CANCELED:
        raise ApiError(409, "not_cancelable", f"the send is {rec.state.value}: only a scheduled send that has not "
                                              "gone out can be canceled")
    log.info("%s: canceled by key %s", send_id, key.name)
    return describe(rec)


async def cancel_route(ctx: Context, request: Request):
    key = ctx.key(request)
    return JSONResponse(await ctx.run(cancel, ctx, key, request.path_params["id"]))


def routes(ctx: Context) -> list[Route]:
    return [Route("/v1/send", partial(sending_route, ctx, send_for_key, "send"), methods=["POST"]),
            Route("/v1/send/batch", partial(sending_route, ctx, batch.batch_for_key, "batch"), methods=["POST"]),
            Route("/v1/send/{id:str}", partial(get_send_route, ctx), methods=["GET"]),
            Route("/v1/send/{id:str}", partial(cancel_route, ctx), methods=["DELETE"]),
            *attachments.routes(ctx)]
