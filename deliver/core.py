"""deliver(raw, envelope, config) -> Outcome: one message, one recipient, one exit code.

The whole delivery as one call with its edges passed in (store, HTTP post, clock), so that it can
run in the per-message pipe process or in a resident worker without changing the contract:

  exit 0   the agent took it (2xx, as the route's ack mode reads it: control.py), or refused it
           (406: kept, logged, not retried), or answered with a control body in control mode
           ({"status": "drop"}: its stored copy deleted; {"status": "spam"}: marked; not
           retried), or the route's trust policy kept it aside (require-dmarc and DMARC did not
           pass), or its sender is blocked for the route (kept aside), or the route is a pull
           route (kept for GET /v1/messages)
  exit 75  anything else (3xx, other 4xx, 5xx, a 2xx the ack mode does not take, timeout, refused
           connection, a store that cannot be written, no route): Postfix keeps the message and
           retries on its own schedule.
A message that cannot be parsed is still delivered, with what was decoded and its defects.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from agentmx import blocklist, urls
from agentmx.config import AttachmentMode, Config, RouteAction, TrustPolicy
from agentmx.store import DuplicateEvent, Store, StoreError, open_store
from agentmx.store.model import EXCERPT, Attempt, DeliveryState

from . import control, dedup, reports
from . import event as ev
from . import route as routing
from .authread import read_auth
from .http import Response, post as http_post
from .outcome import EX_OK, EX_TEMPFAIL, Envelope, Outcome  # noqa: F401  (the contract, as callers import it)
from .parse import parse

log = logging.getLogger("agentmx.deliver")

def build_event(raw: bytes, env: Envelope, config: Config, store: Store | None, now: float,
                match: routing.Match | None, event_id: str | None = None) -> tuple[dict, dict]:
    """The event for one delivery, storing the raw message and attachments when `store` is given.
    Returns (event, extra) where extra holds what the caller logs (raw sha, defects count) and
    the message's dedup fingerprint. `event_id`: the id of the first copy of this message (a
    duplicate delivered under it), else this copy's own."""
    raw_sha = store.put_blob(raw) if store else hashlib.sha256(raw).hexdigest()
    event_id = event_id or ev.event_id(env.recipient, raw_sha, env.queue_id)
    parsed = parse(raw)
    route = match.route if match else None
    auth = read_auth(parsed.headers, config.authserv_id)

    def link(sha: str, ctype: str, name: str) -> str | None:
        if not config.url_secret:
            return None
        return urls.sign_url(config.public_url, config.url_secret, sha, ctype, name, config.url_ttl, now)

    attachments = []
    blobs = [(raw_sha, raw)]
    for n, att in enumerate(parsed.attachments):             # ids from 0 (msg_…:0), like MailKite's
        sha = store.put_blob(att.data) if store else hashlib.sha256(att.data).hexdigest()
        blobs.append((sha, att.data))
        name = att.filename or f"attachment-{n + 1}"
        inline = route is not None and route.attachments is AttachmentMode.INLINE and len(att.data) <= route.inline_max_bytes
        attachments.append({
            "id": f"{event_id}:{n}",
            "filename": att.filename,
            "contentType": att.content_type,
            "size": len(att.data),
            "sha256": sha,
            "disposition": att.disposition,
            "contentId": att.content_id,
            "url": link(sha, att.content_type, name),
            "content": base64.b64encode(att.data).decode() if inline else None,
        })
    envelope = {"mailFrom": env.sender, "rcptTo": env.original_recipient or env.recipient,
                "clientIp": env.client_address or None, "helo": env.client_helo or None,
                "tls": ev.received_with_tls(parsed)}
    created = ev.accepted_at(parsed) or ev.rfc3339(datetime.fromtimestamp(now, timezone.utc))
    flagged = bool(route and route.trust is TrustPolicy.FLAG and auth["dmarc"] != "pass")
    event = ev.render(parsed, event_id=event_id, created_at=created, recipient=env.recipient.lower(),
                      mailbox_hash=match.mailbox_hash if match else routing.split(env.recipient)[1],
                      envelope=envelope, auth=auth, attachments=attachments,
                      raw={"sha256": raw_sha, "url": link(raw_sha, "message/rfc822", f"{event_id}.eml")},
                      size=len(raw), flagged=flagged)
    return event, {"raw_sha": raw_sha, "defects": len(parsed.defects),
                   "fingerprint": dedup.fingerprint(raw, env.sender, auth),
                   "blobs": blobs}


# What only a POST makes of a delivery: a retry that finds one of these does not POST again.
POSTED = frozenset({DeliveryState.DELIVERED, DeliveryState.REFUSED, DeliveryState.DROPPED, DeliveryState.SPAM})


def _duplicate(env: Envelope, first: str, state: DeliveryState) -> Outcome:
    """Exit 0 for a copy of a message its first copy took care of (the agent has it, or it is kept)."""
    log.info("%s: duplicate of %s (%s): not delivered again", env.queue_id or "-", first, state)
    return Outcome(EX_OK, state, first, reason=f"duplicate of {first}, already {state}: not delivered again")


def _keep(raw: bytes, env: Envelope, config: Config, store: Store, now: float, match: routing.Match, event: dict,
          fingerprint: str, blobs: list[tuple[str, bytes]]) -> tuple[dict, bytes] | Outcome:
    """Keep the event, unless it is a copy of a message kept already (another MX host took it, or
    this one under another queue id: deliver/dedup.py). Returns the event to deliver and its
    body (the first copy's id for a copy not delivered yet), or the Outcome of a copy whose
    first copy was taken care of."""
    route = match.route
    state = DeliveryState.RECEIVED if route.pushes else DeliveryState.STORED
    body = _body(event)
    first, again = None, False
    try:                 # the look-up for a first copy and the insert are one transaction in the store
        again = not store.put_event(event, body, route.match, state, fingerprint, now - dedup.WINDOW)
    except DuplicateEvent as exc:                # a copy kept before, here or at another host
        first = exc.first
    if first is not None:
        known = store.delivery(first)
        if known is None:
            return Outcome(EX_TEMPFAIL, DeliveryState.DEFERRED, first,
                           reason=f"duplicate of {first}, which is gone (gc): the retry keeps it anew")
        if known.state.final:
            return _duplicate(env, first, known.state)
        # Not delivered yet (deferred, or in flight at the other host): delivered under the first
        # copy's id, so the agent sees one webhook-id for the message.
        log.info("%s: duplicate of %s (%s): delivered under its id", env.queue_id or "-", first, known.state)
        event, _ = build_event(raw, env, config, store, now, match, event_id=first)
        body = _body(event)
        store.put_event(event, body, route.match, state)
    elif again and (known := store.delivery(event["id"])) is not None and known.state is DeliveryState.DROPPED:
        return _duplicate(env, event["id"], known.state)     # dropped: its copy is not kept again
    elif again:
        # This copy's own retry, while a copy under another queue id or at another host was
        # delivered under this id: the agent has it. (This copy's own delivered attempt is POSTed
        # again, with the same webhook-id: Postfix retries only what it was not told was delivered.)
        known = store.delivery(event["id"])
        if known is not None and known.state in POSTED and known.queue_id != env.queue_id:
            return _duplicate(env, event["id"], known.state)
    # A blob that is gone, put again: a drop_event of another event that shared it may have
    # deleted it between build_event's put and put_event. Now that the event refers to it (put_event
    # has committed), no drop_event or gc deletes it, so what is there now stays. (Each blob was put
    # again before, which hashed the message and its attachments a second time: 1.3 ms for 1 MB.)
    for sha, data in blobs:
        if not store.has_blob(sha):
            store.put_blob(data)
    return event, body


def _body(event: dict) -> bytes:
    """The event as POSTed and kept."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def excerpt(resp: Response) -> str:
    """The first characters of the answer (or the error), kept with the attempt."""
    return (resp.body[:EXCERPT * 4].decode("utf-8", "replace") if resp.body else resp.error)[:EXCERPT]


def deliver(raw: bytes, env: Envelope, config: Config, *, store: Store | None = None,
            post: Callable[[str, bytes, dict, float], Response] = http_post,
            clock: Callable[[], float] = time.time) -> Outcome:
    """One delivery. `store`: the process's store (a front-end keeps one open); without it, one
    is opened for this call. A store that cannot be reached or written (StoreUnavailable), or
    whose schema is not this version's (SchemaMismatch), is exit 75: Postfix keeps the message."""
    own = store is None
    try:
        if own:
            store = open_store(config, clock)
        try:
            return _deliver(raw, env, config, store, post, clock)
        finally:
            if own:
                store.close()
    except StoreError as exc:
        return Outcome(EX_TEMPFAIL, DeliveryState.DEFERRED, reason=f"store: {exc}")


def _deliver(raw: bytes, env: Envelope, config: Config, store: Store, post, clock) -> Outcome:
    if reports.is_report_address(env.recipient, config):       # a report about what an agent sent
        return reports.take(raw, env, config, store, clock)
    match = routing.match(env.recipient, config.routes)
    if match is None:
        return Outcome(EX_TEMPFAIL, DeliveryState.DEFERRED, reason=f"no route for {env.recipient} (fix the config "
                                                                   f"or the Postfix recipient map); Postfix keeps the message")
    now = clock()
    route = match.route
    event, extra = build_event(raw, env, config, store, now, match)

    # The event is stored, with its inbox row, before the agent sees it: an agent that answers at
    # once (inReplyTo the event id) must find it, and a replay has it even if this process dies
    # after the POST.
    try:
        kept = _keep(raw, env, config, store, now, match, event, extra["fingerprint"], extra["blobs"])
    except StoreError as exc:
        return Outcome(EX_TEMPFAIL, DeliveryState.DEFERRED, event["id"], reason=f"store: {exc}")
    if isinstance(kept, Outcome):
        return kept
    event, body = kept
    event_id = event["id"]

    def record(outcome: Outcome, status: int | None = None, took_ms: int = 0, answer: str = "") -> Outcome:
        """The attempt, kept. A store that fails now defers a message that was not POSTed (held,
        stored, queued: done again on the retry); after a POST the outcome stands: deferred
        anyway, or the agent has the message (2xx, 406, a control answer) and it must not arrive
        twice."""
        try:
            store.record_attempt(event_id, Attempt(clock(), outcome.state, status, took_ms, answer, event_id,
                                                   env.queue_id), outcome.reason)
        except StoreError as exc:
            if status is None:
                return Outcome(EX_TEMPFAIL, DeliveryState.DEFERRED, event_id, reason=f"store: {exc}")
            log.warning("%s: %s, but the attempt was not recorded: %s", env.queue_id or "-", outcome.state, exc)
        return outcome

    if route.trust is TrustPolicy.REQUIRE_DMARC and event["auth"]["dmarc"] != "pass":
        return record(Outcome(EX_OK, DeliveryState.HELD, event_id,
                              reason=f"kept aside: route requires DMARC pass, got {event['auth']['dmarc']}"))

    if route.action is RouteAction.AGENT:
        store.put_job(event_id)
        return record(Outcome(EX_OK, DeliveryState.QUEUED, event_id, reason="queued for the agent (agentmx agent)"))
    if not route.pushes:
        return record(Outcome(EX_OK, DeliveryState.STORED, event_id, reason="kept for the inbox API (pull route)"))

    # A sender blocked for this recipient's route (the route's block_senders, the blocks API, an
    # agent's block-sender answer: the same scopes the milter checks at RCPT) whose mail got past
    # the milter (a block added since, or a blocks.json not rewritten yet): kept aside, not POSTed.
    block = blocklist.blocking(store, route, control.sender_of(event)) if env.sender else None
    if block is not None:
        return record(Outcome(EX_OK, DeliveryState.HELD, event_id,
                              reason=f"kept aside: {block.sender} is blocked for {block.scope} (by {block.event_id})"))

    resp, answer, took_ms = control.exchange(route, event_id, body, clock, post)
    details = {"defects": extra["defects"], "bytes": len(body), "ms": took_ms}
    code = EX_TEMPFAIL if answer.state is DeliveryState.DEFERRED else EX_OK
    outcome = record(Outcome(code, answer.state, event_id, resp.status, answer.why, details), resp.status, took_ms,
                     excerpt(resp))
    control.apply(answer, event, route, store, config.data_dir, env.queue_id)
    return outcome
