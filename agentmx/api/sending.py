"""POST /v1/send: the send path (agentmx/send.py) behind the HTTP API.

The API key is checked from the headers before one byte of the body is read; the body is then
read within the guard's size and time limits, and the rest (the stored original, building the
message, the rate limits (counted in the store: shared by every process and host; given back when
Postfix refuses the message), handing it to Postfix, the sent record) runs in the thread pool.
"""
from __future__ import annotations

import base64
import json
import logging
import os

from starlette.requests import Request
from starlette.responses import JSONResponse

from agentmx import send
from agentmx.config import ApiKey
from agentmx.address import split
from agentmx.store import StoreError
from agentmx.store.model import SendRecord, SendState

from .context import Context
from .errors import ApiError

log = logging.getLogger("agentmx.serve")


def send_for_key(ctx: Context, key: ApiKey, body: bytes) -> dict:
    """One send request of an authorized key. Raises send.SendError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise send.SendError(400, "bad_json", "the body is not JSON") from None
    req = send.parse_request(data)
    send.check_sender(key, req)
    original = None
    if req.in_reply_to and req.in_reply_to.startswith("msg_"):
        raw_event = ctx.store.get_event(req.in_reply_to)
        if raw_event is None:
            raise send.SendError(404, "unknown_event", f"no stored event {req.in_reply_to}")
        original = json.loads(raw_event)
        if not key.may_send_as(split(original.get("recipient", ""))[0]):
            raise send.SendError(403, "forbidden_event", "this key may not answer mail sent to another address")
    out = send.build(req, original, ctx.config)
    taken = send.take_limits(ctx.store, ctx.config, out.correspondents,
                             out.thread_id if original is not None or out.in_reply_to else None)
    try:
        queue_id = send.submit(out, ctx.config)
    except send.SendError:
        ctx.store.give_back(taken)                # Postfix refused it: it does not count
        raise
    send_id = "snd_" + base64.b32encode(os.urandom(16)).decode().lower().rstrip("=")
    result = {"id": send_id, "messageId": out.message_id, "queueId": queue_id, "threadId": out.thread_id,
              "inReplyTo": out.in_reply_to, "recipients": list(out.recipients)}
    try:
        ctx.store.put_send(SendRecord(send_id, key.name, out.envelope_from, out.recipients, out.message_id,
                                      queue_id or None, out.thread_id, out.in_reply_to,
                                      original.get("id") if original else None, SendState.QUEUED, ctx.clock()))
    except StoreError as exc:                     # it is in Postfix's queue: the answer says so all the same
        log.warning("%s: sent as %s but not recorded: %s", send_id, queue_id, exc)
    log.info("%s: queued as %s from=%s to=%s key=%s", send_id, queue_id, out.envelope_from,
             ",".join(out.recipients), key.name)
    return result


async def send_route(ctx: Context, request: Request):
    key = ctx.key(request)                        # before the body: no key, nothing read
    body = await request.body()
    try:
        return JSONResponse(await ctx.run(send_for_key, ctx, key, body))
    except send.SendError as exc:
        log.info("send refused (%s): %s", exc.status, exc.message)
        raise ApiError.from_send(exc) from None
