"""POST /v1/send, GET and DELETE /v1/send/{id}: the send path (agentmx/send.py) behind the HTTP API.

ONE function sends: send_one(). POST /v1/send, each recipient of POST /v1/send/batch (batch.py)
and each scheduled send when it is due (scheduling.py) go through it, so every guard, limit and
record applies to all three:

    parse_request -> check_sender -> attachments (inline, a blob of ours, or fetched: attachments.py)
    -> the original (inReplyTo an event) -> build -> take_limits -> submit -> put_send

A request with scheduledAt is checked as far as it can be now (fields, sender, attachments, the
time window) and parked in the store (scheduling.park); it goes through send_one when due.

The API key is checked from the headers before one byte of the body is read; the body is then
read within the guard's size and time limits; the rest (the store, a fetch, SMTP) runs in the
thread pool. An Idempotency-Key header makes a retry answer the first answer (idempotency.py).
"""
from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import send, sendevents, suppression
from agentmx.address import split
from agentmx.config import ApiKey
from agentmx.store import StoreError
from agentmx.store.model import SendEvent, SendRecord, SendState
from agentmx.times import rfc3339

from . import attachments, idempotency, scheduling, timeline
from .context import Context
from .errors import ApiError

log = logging.getLogger("agentmx.serve")


def prepare(ctx: Context, key: ApiKey, data, resolved: tuple[send.Attachment, ...] | None = None):
    """(request, the original event or None, the message built) of one request of an authorized
    key; a scheduled send is checked this far when it is parked. Raises send.SendError."""
    req = send.parse_request(data)
    send.check_sender(key, req)
    req = attachments.resolve_request(ctx, req, resolved)
    original = None
    if req.in_reply_to and req.in_reply_to.startswith("msg_"):
        raw_event = ctx.store.get_event(req.in_reply_to)
        if raw_event is None:
            raise send.SendError(404, "unknown_event", f"no stored event {req.in_reply_to}")
        original = json.loads(raw_event)
        if not key.may_send_as(split(original.get("recipient", ""))[0]):
            raise send.SendError(403, "forbidden_event", "this key may not answer mail sent to another address")
    return req, original, send.build(req, original, ctx.config)


def send_one(ctx: Context, key: ApiKey, data, send_id: str | None = None,
             resolved: tuple[send.Attachment, ...] | None = None) -> dict:
    """THE send path: one request of an authorized key, sent now. `send_id`: a scheduled send's
    own id (the record is then updated, not added); `resolved`: attachments resolved already (a
    batch fetches a URL once for all its recipients). Raises send.SendError."""
    req, original, out = prepare(ctx, key, data, resolved)
    suppression.check(ctx.store, req.sender.address, out.recipients)     # 422 suppressed: before any limit counts it
    taken = send.take_limits(ctx.store, ctx.config, out.correspondents,
                             out.thread_id if original is not None or out.in_reply_to else None)
    send_id = send_id or send.new_send_id()
    out = send.with_return_path(out, send_id, ctx.config)
    try:
        queue_id = send.submit(out, ctx.config)
    except send.SendError:
        ctx.store.give_back(taken)                # Postfix refused it: it does not count
        raise
    result = {"id": send_id, "status": SendState.QUEUED.value, "messageId": out.message_id, "queueId": queue_id,
              "threadId": out.thread_id, "inReplyTo": out.in_reply_to, "recipients": list(out.recipients)}
    try:
        sendevents.record_send(ctx.store, ctx.config, send_id, key.name, req.sender.address, out, queue_id,
                                original.get("id") if original else None, ctx.clock(), req.scheduled_at)
    except StoreError as exc:                     # it is in Postfix's queue: the answer says so all the same
        log.warning("%s: sent as %s but not recorded: %s", send_id, queue_id, exc)
    log.info("%s: queued as %s from=%s to=%s key=%s", send_id, queue_id, req.sender.address,
             ",".join(out.recipients), key.name)
    return result


def send_or_park(ctx: Context, key: ApiKey, data, resolved=None) -> dict:
    """POST /v1/send's body (and a batch recipient's): now, or parked for its scheduledAt."""
    if isinstance(data, dict) and data.get("scheduledAt") is not None:
        return scheduling.park(ctx, key, data, resolved)
    return send_one(ctx, key, data, resolved=resolved)


def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise send.SendError(400, "bad_json", "the body is not JSON") from None


def send_for_key(ctx: Context, key: ApiKey, body: bytes) -> dict:
    """POST /v1/send's body of an authorized key. Raises send.SendError."""
    return send_or_park(ctx, key, parse_json(body))


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
    from functools import partial
    from . import batch
    return [Route("/v1/send", partial(sending_route, ctx, send_for_key, "send"), methods=["POST"]),
            Route("/v1/send/batch", partial(sending_route, ctx, batch.batch_for_key, "batch"), methods=["POST"]),
            Route("/v1/send/{id:str}", partial(get_send_route, ctx), methods=["GET"]),
            Route("/v1/send/{id:str}", partial(cancel_route, ctx), methods=["DELETE"]),
            *attachments.routes(ctx)]
