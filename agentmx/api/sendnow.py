"""One API request sent now through the one send path (agentmx/sendpath.py): what POST /v1/send
(sending.py), each recipient of a batch (batch.py), a scheduled send when it is due
(scheduling.py) and MCP's send and reply (mcp.py, through sending.send_for_key) share. Below
sending, batch and scheduling, so that none of them imports another to reach it.
"""
from __future__ import annotations

import json

from agentmx import send, sendpath
from agentmx.config import ApiKey
from agentmx.store.model import SendState

from . import attachments
from .context import Context


def outbox(ctx: Context) -> sendpath.Outbox:
    return sendpath.Outbox(ctx.config, ctx.store, ctx.clock, ctx.submit)


def resolver(ctx: Context, resolved: tuple[send.Attachment, ...] | None = None):
    """The path's `resolve` for this API: attachments by URL loaded (or those a batch loaded once)."""
    return lambda req: attachments.resolve_request(ctx, req, resolved)


def send_one(ctx: Context, key: ApiKey, data, send_id: str | None = None,
             resolved: tuple[send.Attachment, ...] | None = None) -> dict:
    """One request of an authorized key, sent now through the one send path (sendpath.py).
    `send_id`: a scheduled send's own id (the record is then updated, not added); `resolved`:
    attachments resolved already (a batch fetches a URL once for all its recipients). Raises
    send.SendError."""
    sent = sendpath.send_message(outbox(ctx), sendpath.Caller.api_key(key), send.parse_request(data),
                                 send_id=send_id, resolve=resolver(ctx, resolved))
    out = sent.out
    return {"id": sent.send_id, "status": SendState.QUEUED.value, "messageId": out.message_id,
            "queueId": sent.queue_id, "threadId": out.thread_id, "inReplyTo": out.in_reply_to,
            "recipients": list(out.recipients)}


def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise send.SendError(400, "bad_json", "the body is not JSON") from None
