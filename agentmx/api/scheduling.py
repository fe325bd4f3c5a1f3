"""scheduledAt: a send parked in the store until it is due, then sent by serve through the one
send path (sendpath.py through sendnow.send_one: every guard and limit applies at send time).

    park(ctx, key, data)   POST /v1/send (or a batch recipient) with scheduledAt: checked now as far as
                           it can be (sendpath.prepare: fields, sender, attachments fetched, the
                           original, the message built, suppressions), the attachments kept as
                           uploads (until a week after it is due) and named in the kept request by
                           signed blob URLs of ours; the send is SCHEDULED. At most [send] max_schedule_days ahead; up to PAST_GRACE
                           seconds in the past is "now" (clocks differ).
    Scheduler              in every serve: claims due sends (Store.claim_scheduled: one serve on one
                           host gets each, SKIP LOCKED on postgres) every POLL seconds and sends
                           them; a refusal at send time (a rate limit, Postfix, the key gone from the
                           config) makes the send FAILED with the reason (GET /v1/send/{id} shows it).
A send whose serve died while handing it to Postfix becomes FAILED when its lease runs out: it
may have gone out, and it is never sent twice.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

from agentmx import send, sendpath
from agentmx.config import ApiKey
from agentmx.store import StoreError
from agentmx.store.model import SendRecord, SendState
from agentmx.times import rfc3339

from . import attachments, sendnow

log = logging.getLogger("agentmx.serve.scheduler")

POLL = 1.0                  # seconds between looks for due sends
LEASE = 180.0               # seconds one serve holds a claimed send (SMTP's own timeout is 60)
PAST_GRACE = 300.0          # a scheduledAt this far in the past is taken as now
KEEP_AFTER_DUE = 7 * 86400  # a scheduled send's attachments are kept this long after it is due



def check_window(ctx, when: float) -> None:
    now = ctx.clock()
    days = ctx.config.send.max_schedule_days
    if when < now - PAST_GRACE:
        raise send.SendError(400, "bad_scheduled_at", "scheduledAt is in the past")
    if when > now + days * 86400:
        raise send.SendError(400, "bad_scheduled_at", f"scheduledAt is at most {days} days ahead")


def send_or_park(ctx, key: ApiKey, data, resolved=None) -> dict:
    """POST /v1/send's body (and a batch recipient's): now, or parked for its scheduledAt."""
    if isinstance(data, dict) and data.get("scheduledAt") is not None:
        return park(ctx, key, data, resolved)
    return sendnow.send_one(ctx, key, data, resolved=resolved)


def park(ctx, key: ApiKey, data: dict, resolved=None) -> dict:
    """Checked now by the send path up to what counts or sends (sendpath.prepare: the sender, the
    original, the message built, the suppressions); all of it again when it is due (send_one)."""
    prep = sendpath.prepare(sendnow.outbox(ctx), sendpath.Caller.api_key(key), send.parse_request(data),
                            sendnow.resolver(ctx, resolved))
    req, out = prep.req, prep.out
    check_window(ctx, req.scheduled_at)
    expires = max(req.scheduled_at, ctx.clock()) + KEEP_AFTER_DUE
    kept = []
    for att in req.attachments:
        up = attachments.store_file(ctx, key, att.data, att.filename, att.content_type, expires)
        kept.append({"url": attachments.signed_url(ctx, up), "filename": att.filename, "contentType": att.content_type})
    stored = {**data, "attachments": kept} if kept else {k: v for k, v in data.items() if k != "attachments"}
    send_id = send.new_send_id()
    ctx.store.put_send(SendRecord(send_id, key.name, out.envelope_from, out.recipients, "", None, None,
                                  req.in_reply_to, None, SendState.SCHEDULED, ctx.clock(),
                                  scheduled_at=req.scheduled_at, request=json.dumps(stored)))
    log.info("%s: scheduled for %s from=%s to=%s key=%s", send_id, rfc3339(req.scheduled_at), out.envelope_from,
             ",".join(out.recipients), key.name)
    return {"id": send_id, "status": SendState.SCHEDULED.value, "scheduledAt": rfc3339(req.scheduled_at),
            "recipients": list(out.recipients)}


def send_due(ctx, rec: SendRecord) -> SendState:
    """One claimed send, through the one send path; its record says what became of it."""
    key = next((k for k in ctx.config.api_keys if k.name == rec.key), None)
    try:
        if key is None:
            raise send.SendError(403, "forbidden_sender", f"the API key {rec.key!r} is no longer in the config")
        sendnow.send_one(ctx, key, json.loads(rec.request or "{}"), send_id=rec.id)
        return SendState.QUEUED
    except send.SendError as exc:
        log.warning("%s: scheduled send refused at its time (%s %s): %s", rec.id, exc.status, exc.code, exc.message)
        ctx.store.put_send(replace(rec, state=SendState.FAILED, request=None, error=f"{exc.code}: {exc.message}"))
        return SendState.FAILED


class Loop:
    """A loop of serve's (`_run`, until `_stop` is set). stop() lets the store call in progress
    finish before it returns (never a cancel in the middle: the store closes after it, and a
    connection closed under a running statement crashes SQLite)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self._stop.set()
            await asyncio.shield(self.task)
            self.task = None

    async def _run(self) -> None:
        raise NotImplementedError


class Scheduler(Loop):
    """The loop in every serve that sends what is due; stop() waits for a claim or a send in progress."""

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rec = await self.ctx.run(self.ctx.store.claim_scheduled, LEASE)
                if rec is not None:
                    await self.ctx.run(send_due, self.ctx, rec)
                    continue                      # more may be due
            except StoreError as exc:
                log.warning("scheduled sends: the store: %s", exc)
            except Exception:
                log.exception("scheduled sends: internal error")
            try:
                await asyncio.wait_for(self._stop.wait(), POLL)
            except asyncio.TimeoutError:
                pass
