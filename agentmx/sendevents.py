"""What became of a message an agent sent, as events: `email.sent` (Postfix queued it: the send
path), `email.delivered`, `email.delayed`, `email.bounced` (delivery reports to the send's own
envelope sender, agentmx/verp.py, read by deliver/dsn.py), `email.complained` (feedback reports).

    make(send, type, at, config, source, recipient=..., **fields) -> SendEvent   (pure)

Each event is kept in the store (a send's timeline, GET /v1/send/{id}; /v1/events; the event
stream) and goes to the route of the address that sent it: serve's dispatcher POSTs it there,
signed like every webhook (api/dispatch.py); a route that does not push keeps it for the pull
API. The event, every field always present (null when the report does not say):

    {"id": "evt_...", "type": "email.bounced", "createdAt": "2026-12-05T09:30:00Z",
     "sendId": "snd_...", "messageId": "<...@agents.example>", "threadId": "<...>",
     "from": "agent@agents.example", "recipient": "nobody@remote.example", "recipients": [...],
     "queueId": "4XyZ...", "action": "failed", "status": "5.1.1", "permanent": true,
     "diagnosticCode": "smtp; 550 5.1.1 <nobody@remote.example>: no such user",
     "remoteMta": "dns; mx.remote.example", "reportingMta": "dns; mx.agents.example",
     "feedbackType": null, "suppressed": true}

The id is derived from the send, the type, the recipient and the report (`source`: the report's
sha256, "queued" for email.sent): a report delivered twice (deliver exited 75 after keeping it)
is one event, one webhook-id.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

from agentmx.config import Config
from agentmx.times import rfc3339
from agentmx.routing import match
from agentmx.store.model import PostState, SendEvent, SendEventType, SendRecord, SendState, base_address

if TYPE_CHECKING:                    # annotations only: send and the store import more than events need
    from agentmx.send import Outgoing
    from agentmx.store.base import Store

FIELDS = ("action", "status", "permanent", "diagnosticCode", "remoteMta", "reportingMta", "feedbackType",
          "suppressed")


def event_id(send_id: str, type_: SendEventType, recipient: str, source: str) -> str:
    digest = hashlib.sha256("\n".join((send_id, type_.value, recipient.lower(), source)).encode()).digest()
    return "evt_" + base64.b32encode(digest[:16]).decode().lower().rstrip("=")



def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def make(send: SendRecord, type_: SendEventType, at: float, config: Config, source: str, recipient: str = "",
         **fields: Any) -> SendEvent:
    """The event for `send`, to the route that takes its sender (PENDING: to be POSTed; KEPT: the
    route does not push, or none takes the sender). `fields`: those of FIELDS the report gives."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"not a send event field: {sorted(unknown)}")
    eid = event_id(send.id, type_, recipient, source)
    doc: dict[str, Any] = {"id": eid, "type": type_.value, "createdAt": rfc3339(at), "sendId": send.id,
           "messageId": send.message_id or None, "threadId": send.thread_id, "from": send.sender,
           "recipient": recipient.lower() or None, "recipients": list(send.recipients), "queueId": send.queue_id}
    doc.update({f: fields.get(f) for f in FIELDS})
    doc["suppressed"] = bool(fields.get("suppressed"))
    found = match(send.sender, config.routes)
    pushes = found is not None and found.route.pushes
    return SendEvent(eid, send.id, type_, recipient.lower(), at, base_address(send.sender),
                     found.route.match if found else "", body(doc),
                     PostState.PENDING if pushes else PostState.KEPT, next_at=at)


def record_send(store: Store, config: Config, send_id: str, key_name: str, sender: str, out: Outgoing, queue_id: str,
                reply_to_event: str | None, now: float, scheduled_at: float | None = None) -> SendRecord:
    """Keep a send Postfix took (`out`: send.Outgoing, as submitted) and its `email.sent` event for
    the sender's route. StoreError is the caller's: the message is in Postfix's queue all the same."""
    rec = SendRecord(send_id, key_name, sender, out.recipients, out.message_id, queue_id or None, out.thread_id,
                     out.in_reply_to, reply_to_event, SendState.QUEUED, now, scheduled_at=scheduled_at)
    store.put_send(rec)
    store.put_send_event(make(rec, SendEventType.SENT, now, config, "queued"))
    return rec
