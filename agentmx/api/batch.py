"""POST /v1/send/batch: one message per recipient (up to MAX_RECIPIENTS), MailKite's sendBatch shape:

    {"from": ..., "subject": ..., "text"/"html": ..., "headers": {...}, "attachments": [...],
     "scheduledAt": ..., "recipients": [{"to": "a@x", "headers": {...}}, ...]}

Each recipient is its own send through the one send path (scheduling.send_or_park: now, or parked
for scheduledAt), with its own id; its headers are merged over the shared ones (its own win).
The answer is 200 for any well-formed batch, with each recipient's result in order, so a batch
can partly succeed:

    {"results": [{"to", "id", "status": "queued"|"scheduled"}, {"to", "status": "failed", "error", "code"}],
     "queued": n, "scheduled": n, "failed": n}

Attachments by URL are fetched once for the whole batch. A malformed batch (not an object, no or
too many recipients, a recipient without exactly one `to`) is a 400 and nothing is sent.
templateId (stored templates) is a 501, as for /v1/send; a recipient's templateData fails that
recipient.
"""
from __future__ import annotations

import logging

from agentmx import send, sendpath
from agentmx.config import ApiKey

from . import attachments, scheduling, sendnow
from .context import Context

log = logging.getLogger("agentmx.serve")

MAX_RECIPIENTS = 50
_RECIPIENT_FIELDS = {"to", "headers", "templateData"}


def split_batch(data) -> tuple[dict, list[dict]]:
    """(the shared fields, the recipients), or SendError 400 for a malformed batch."""
    if not isinstance(data, dict):
        raise send.SendError(400, "bad_request", "the body is a JSON object")
    recipients = data.get("recipients")
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise send.SendError(400, "bad_batch", f"recipients is a list of 1 to {MAX_RECIPIENTS} objects")
    for i, r in enumerate(recipients):
        if not isinstance(r, dict) or "to" not in r:
            raise send.SendError(400, "bad_batch", f"recipients[{i}] is an object with `to`")
        unknown = sorted(set(r) - _RECIPIENT_FIELDS)
        if unknown:
            raise send.SendError(400, "bad_batch", f"recipients[{i}]: unknown field {unknown[0]!r}")
        if isinstance(r["to"], list) and len(r["to"]) != 1:
            raise send.SendError(400, "bad_batch", f"recipients[{i}].to is exactly one address")
        if r.get("headers") is not None and not isinstance(r["headers"], dict):
            raise send.SendError(400, "bad_header", f"recipients[{i}].headers is an object")
    for f in ("to", "cc", "bcc"):
        if f in data:
            raise send.SendError(400, "bad_batch", f"{f}: a batch names its recipients in `recipients`")
    shared = {k: v for k, v in data.items() if k != "recipients"}
    if "from" not in shared:
        raise send.SendError(400, "missing_field", "from is required")
    return shared, recipients


def one(shared: dict, r: dict) -> dict:
    """A recipient's own request: the shared fields, its `to`, its headers over the shared ones."""
    data = {**shared, "to": r["to"]}
    if r.get("headers"):                     # the shared ones are a dict: checked once before (the probe)
        own = {str(k).lower() for k in r["headers"]}          # names are case-insensitive: its own win
        base = {k: v for k, v in (shared.get("headers") or {}).items() if k.lower() not in own}
        data["headers"] = {**base, **r["headers"]}
    if r.get("templateData") is not None:
        data["templateData"] = r["templateData"]      # send.parse_request: 501 not_supported
    return data


def batch_for_key(ctx: Context, key: ApiKey, body: bytes) -> dict:
    shared, recipients = split_batch(sendnow.parse_json(body))
    # The shared part is checked once (a bad field fails the whole batch, before anything goes),
    # and its attachments resolved once: a URL is fetched once, not per recipient.
    probe = send.parse_request({**shared, "to": recipients[0]["to"]})
    sendpath.check_sender(sendpath.Caller.api_key(key), probe)
    resolved = attachments.resolve_all(ctx, probe.attachments)
    results, counts = [], {"queued": 0, "scheduled": 0, "failed": 0}
    for r in recipients:
        try:
            got = scheduling.send_or_park(ctx, key, one(shared, r), resolved)
            results.append({"to": r["to"], "id": got["id"], "status": got["status"]})
        except send.SendError as exc:
            results.append({"to": r["to"], "status": "failed", "error": exc.message, "code": exc.code})
        counts[results[-1]["status"]] += 1
    log.info("batch for key %s: %s", key.name, ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return {"results": results, **counts}

