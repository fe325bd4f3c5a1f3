"""Send events (what became of what an agent sent: agentmx/sendevents.py) as the API shows them.

    listed(e)           an item of GET /v1/events (MailKite's listEvents shape, as email.received's)
    entry(e)            an item of GET /v1/send/{id}'s `events`, oldest first
    timeline(rec, es)   GET /v1/send/{id}'s `timeline`: {"<recipient>": [{type, at, status, ...}]}

The event's JSON is the one POSTed to the route (the webhook body, `data` here); `webhook` says
what became of that POST (pending, delivered, refused, failed, or kept: a route that does not
push). Texts from the remote side (diagnosticCode, remoteMta) are a stranger's words: data.
"""
from __future__ import annotations

import json

from agentmx.ops import by_recipient
from agentmx.times import rfc3339
from agentmx.store.model import SendEvent, SendRecord

# What a timeline entry and an `events` item carry of the event JSON, beside type and time.
DETAIL = ("status", "action", "diagnosticCode", "permanent", "remoteMta", "feedbackType", "suppressed")


def data(e: SendEvent) -> dict:
    return json.loads(e.body)


def webhook(e: SendEvent) -> dict:
    return {"state": e.state.value, "attempts": e.attempts}


def listed(e: SendEvent) -> dict:
    doc = data(e)
    return {"id": e.id, "name": e.type.value, "email": e.recipient or doc.get("from"), "recipient": e.recipient or None,
            "createdAt": rfc3339(e.at), "data": doc, "webhook": webhook(e)}


def entry(e: SendEvent) -> dict:
    doc = data(e)
    return {"id": e.id, "type": e.type.value, "recipient": e.recipient or None, "createdAt": rfc3339(e.at),
            **{k: doc.get(k) for k in DETAIL}, "webhook": webhook(e)}


def timeline(rec: SendRecord, events: list[SendEvent]) -> dict[str, list[dict]]:
    """Each recipient's events, oldest first (which events are in which line: ops.by_recipient)."""
    return {recipient: [{"type": e.type.value, "at": rfc3339(e.at), "id": e.id,
                         **{k: doc.get(k) for k in DETAIL}} for e, doc in ((e, data(e)) for e in line)]
            for recipient, line in by_recipient(rec, events).items()}
