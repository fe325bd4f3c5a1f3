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

from agentmx.sendevents import rfc3339
from agentmx.store.model import SendEvent, SendEventType, SendRecord

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
    """Each recipient's events, oldest first. email.sent (one per send, naming no recipient) is in
    every recipient's line; so is any other event whose report names no recipient (it concerns
    the message as a whole); a recipient the reports name that the send did not (an alias the
    remote expanded) gets a line of its own."""
    lines: dict[str, list[dict]] = {r.lower(): [] for r in rec.recipients}
    for e in events:
        doc = data(e)
        item = {"type": e.type.value, "at": rfc3339(e.at), "id": e.id, **{k: doc.get(k) for k in DETAIL}}
        if e.type is SendEventType.SENT or not e.recipient:
            for line in lines.values():
                line.append(item)
        else:
            lines.setdefault(e.recipient, []).append(item)
    return lines
