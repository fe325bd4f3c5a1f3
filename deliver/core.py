"""deliver(raw, envelope, config) -> Outcome: one message, one recipient, one exit code.

The whole delivery as one call with its edges passed in (store, HTTP post, clock), so that it can
run in the per-message pipe process or in a resident worker without changing the contract:

  exit 0   the agent took it (2xx), or refused it (406: kept, logged, not retried), or answered
           with a control body ({"status": "drop"} or {"status": "spam"}: kept, marked, not
           retried), or the route's trust policy kept it aside (require-dmarc and DMARC did not
           pass), or the route is a pull route (kept for GET /v1/messages)
  exit 75  anything else (3xx, other 4xx, 5xx, timeout, refused connection, a store that cannot be
           written, no route): Postfix keeps the message and retries on its own schedule.
A message that cannot be parsed is still delivered, with what was decoded and its defects.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Callable

from agentmx import notify, urls
from agentmx.config import Config
from agentmx.inbox import Inbox
from agentmx.store import Store, StoreError
from agentmx.webhook import sign_headers

from . import event as ev
from . import route as routing
from .authread import read_auth
from .http import Response, post as http_post
from .parse import parse

log = logging.getLogger("agentmx.deliver")

EX_OK = 0
EX_TEMPFAIL = 75


@dataclass(frozen=True)
class Envelope:
    sender: str                       # MAIL FROM ("" for the null sender)
    recipient: str                    # this delivery's recipient
    queue_id: str | None = None
    client_address: str | None = None
    client_helo: str | None = None
    original_recipient: str | None = None


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    state: str                        # delivered, refused, dropped, spam, held, stored, deferred
    event_id: str | None = None
    status: int | None = None         # the endpoint's HTTP status, 0 when it did not answer
    reason: str = ""
    details: dict = field(default_factory=dict)


def build_event(raw: bytes, env: Envelope, config: Config, store: Store | None, now: float,
                match: routing.Match | None) -> tuple[dict, dict]:
    """The event for one delivery, storing the raw message and attachments when `store` is given.
    Returns (event, extra) where extra holds what the caller logs (raw sha, defects count)."""
    raw_sha = store.put_blob(raw) if store else hashlib.sha256(raw).hexdigest()
    event_id = ev.event_id(env.recipient, raw_sha, env.queue_id)
    parsed = parse(raw)
    route = match.route if match else None
    auth = read_auth(parsed.headers, config.authserv_id)

    def link(sha: str, ctype: str, name: str) -> str | None:
        if not config.url_secret:
            return None
        return urls.sign_url(config.public_url, config.url_secret, sha, ctype, name, config.url_ttl, now)

    attachments = []
    for n, att in enumerate(parsed.attachments, 1):
        sha = store.put_blob(att.data) if store else hashlib.sha256(att.data).hexdigest()
        name = att.filename or f"attachment-{n}"
        inline = route is not None and route.attachments == "inline" and len(att.data) <= route.inline_max_bytes
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
    flagged = bool(route and route.trust == "flag" and auth["dmarc"] != "pass")
    event = ev.render(parsed, event_id=event_id, created_at=created, recipient=env.recipient.lower(),
                      mailbox_hash=match.mailbox_hash if match else routing.split(env.recipient)[1],
                      envelope=envelope, auth=auth, attachments=attachments,
                      raw={"sha256": raw_sha, "url": link(raw_sha, "message/rfc822", f"{event_id}.eml")},
                      size=len(raw), flagged=flagged)
    return event, {"raw_sha": raw_sha, "defects": len(parsed.defects)}


CONTROL = {"drop": "dropped", "spam": "spam"}


def _retry(write, attempts: int = 4, pause: float = 0.05):
    """An SQLite write, tried again a few times: a file that another user's process (root, by
    hand) created an instant ago is ours only once it has been handed over (sqlitedb)."""
    for n in range(attempts):
        try:
            return write()
        except sqlite3.OperationalError:
            if n == attempts - 1:
                raise
            time.sleep(pause * (n + 1))


def control_state(resp: Response) -> str | None:
    """MailKite's control answers: {"status": "drop"} or {"status": "spam"} in any HTTP answer."""
    try:
        status = json.loads(resp.body).get("status") if resp.body.lstrip()[:1] == b"{" else None
    except (ValueError, UnicodeDecodeError):
        return None
    return CONTROL.get(status) if isinstance(status, str) else None


def deliver(raw: bytes, env: Envelope, config: Config, *, store: Store | None = None,
            post: Callable[[str, bytes, dict, float], Response] = http_post,
            clock: Callable[[], float] = time.time, inbox: Inbox | None = None) -> Outcome:
    store = store or Store(config.data_dir)
    own_inbox = inbox is None
    inbox = inbox or Inbox(config.data_dir, clock)
    try:
        return _deliver(raw, env, config, store, post, clock, inbox)
    finally:
        if own_inbox:
            inbox.close()


def _deliver(raw: bytes, env: Envelope, config: Config, store: Store, post, clock, inbox: Inbox) -> Outcome:
    match = routing.match(env.recipient, config.routes)
    if match is None:
        return Outcome(EX_TEMPFAIL, "deferred", reason=f"no route for {env.recipient} (fix the config or the "
                                                      f"Postfix recipient map); Postfix keeps the message")
    now = clock()
    try:
        event, extra = build_event(raw, env, config, store, now, match)
    except StoreError as exc:
        return Outcome(EX_TEMPFAIL, "deferred", reason=f"data directory: {exc.strerror}")
    event_id = event["id"]
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    state = store.get_state(event_id)
    attempts = int(state.get("attempts", 0)) + 1
    route = match.route

    def record(outcome: Outcome) -> Outcome:
        try:
            store.put_state(event_id, {"state": outcome.state, "attempts": attempts, "status": outcome.status,
                                       "reason": outcome.reason, "updatedAt": ev.rfc3339(
                                           datetime.fromtimestamp(clock(), timezone.utc)),
                                       "recipient": env.recipient.lower(), "queueId": env.queue_id})
        except StoreError as exc:
            log.warning("%s: could not record state: %s", env.queue_id or "-", exc.strerror)
        try:
            inbox.set_state(event_id, outcome.state)
        except sqlite3.Error as exc:
            log.warning("%s: could not record state in the inbox index: %s", env.queue_id or "-", exc)
        return outcome

    # The event is stored before the agent sees it: an agent that answers at once (inReplyTo the
    # event id) must find it, and a replay has it even if this process dies after the POST.
    try:
        store.put_event(event_id, body)
    except StoreError as exc:
        return Outcome(EX_TEMPFAIL, "deferred", event_id, reason=f"data directory: {exc.strerror}")
    try:
        _retry(lambda: inbox.record(event, "stored" if not route.pushes else state.get("state", "received")))
    except sqlite3.Error as exc:
        if not route.pushes or route.mode == "both":   # the inbox is where the agent reads it
            return Outcome(EX_TEMPFAIL, "deferred", event_id, reason=f"inbox index: {exc}")
        log.warning("%s: not in the inbox index (%s); pushed anyway", env.queue_id or "-", exc)
    else:
        notify.ring(config.data_dir)            # long-polls and event streams on this host wake up

    if route.trust == "require-dmarc" and event["auth"]["dmarc"] != "pass":
        return record(Outcome(EX_OK, "held", event_id,
                              reason=f"kept aside: route requires DMARC pass, got {event['auth']['dmarc']}"))

    if route.action == "agent":
        from agentmx.agentjobs import Jobs
        jobs = Jobs(config.data_dir, clock)
        try:
            _retry(lambda: jobs.put(event_id))
        except sqlite3.Error as exc:
            return Outcome(EX_TEMPFAIL, "deferred", event_id, reason=f"agent queue: {exc}")
        finally:
            jobs.close()
        return record(Outcome(EX_OK, "queued", event_id, reason="queued for the agent (agentmx agent)"))
    if not route.pushes:
        return record(Outcome(EX_OK, "stored", event_id, reason="kept for the inbox API (pull route)"))

    headers = sign_headers(route.secret, event_id, body, timestamp=int(clock()), mailkite=route.mailkite_signature)
    resp = post(route.endpoint, body, headers, route.timeout)
    details = {"attempts": attempts, "defects": extra["defects"], "bytes": len(body)}
    control = control_state(resp) if resp.status else None
    if control:
        return record(Outcome(EX_OK, control, event_id, resp.status,
                              f"the agent's answer marked it {control}; kept, not retried", details))
    if 200 <= resp.status < 300:
        return record(Outcome(EX_OK, "delivered", event_id, resp.status, "accepted", details))
    if resp.status == 406:
        return record(Outcome(EX_OK, "refused", event_id, 406, "the agent refused it (406); raw kept", details))
    why = resp.error or f"HTTP {resp.status}"
    if resp.retry_after:
        why += f", Retry-After {resp.retry_after}"
    return record(Outcome(EX_TEMPFAIL, "deferred", event_id, resp.status, why, details))
