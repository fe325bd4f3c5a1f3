"""Delivery reports to what agents sent: mail to <bounce_local>+<token>@<domain> (agentmx/verp.py)
becomes send events (agentmx/sendevents.py) kept in the store, and suppressions.

    take(raw, env, config, store, clock) -> Outcome          (deliver/core.py calls it first)

Each send goes out with its own envelope sender and a DSN request (agentmx/send.py), so what
comes back to it names the send: the token, checked against its signature. A report is read by
deliver/dsn.py (RFC 3464 DSNs, the common non-standard bounces, RFC 5965 feedback reports), and
each recipient it names becomes one event for the sender's route:

    Action delivered, relayed, expanded -> email.delivered
    Action delayed                      -> email.delayed
    Action failed (a bounce)            -> email.bounced  (permanent unless its Status is 4.x.x)
    a feedback report                   -> email.complained

A permanent bounce and a complaint suppress the recipient for the sending domain (a send to it
then answers 422). Only recipients of that send are taken: the token is in the Return-Path every
recipient sees, so a report naming anyone else is ignored (logged). A report to the bare
<bounce_local>@ (no token: a feedback loop's address) is matched by the Message-ID of the message
it returns together with the send's ENVID (a Message-ID alone is quoted by every reply in the
thread), and then only for that send's recipients too. At most MAX_EVENTS_PER_RECIPIENT events
are kept for one recipient of a send (whoever has the token can send reports without end).

Exit 0 once the events are kept (deliver POSTs nothing here: serve's dispatcher does, api/
dispatch.py); exit 75 when the store cannot keep them (Postfix retries; the events' ids are
derived from the report's bytes, so a retry keeps nothing twice). A forged token, a report
matching no send, or mail that is no report at all is logged and taken (exit 0): nothing to keep.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Callable

from agentmx import sendevents, verp
from agentmx.config import Config
from agentmx.store import Store
from agentmx.store.model import DeliveryState, SendEventType, SendRecord, Suppression, SuppressionReason

from .outcome import EX_OK, Envelope, Outcome

log = logging.getLogger("agentmx.deliver.reports")

TYPES = {"delivered": SendEventType.DELIVERED, "relayed": SendEventType.DELIVERED,
         "expanded": SendEventType.DELIVERED, "delayed": SendEventType.DELAYED, "failed": SendEventType.BOUNCED,
         "complained": SendEventType.COMPLAINED}
NO_COMPLAINT = ("not-spam", "auth-failure")    # feedback reports that say no one complained (RFC 6430, 6591)
MAX_EVENTS_PER_RECIPIENT = 20     # a send's events about one recipient: what a report may add past it is dropped


def is_report_address(recipient: str, config: Config) -> bool:
    """Mail for <bounce_local>@ or <bounce_local>+...@ (reports come back there while a key signs
    the tokens: [server] url_secret)."""
    return bool(config.url_secret) and verp.is_report_address(recipient, config.send.bounce_local)


def _token(recipient: str, key: bytes, config: Config) -> str | None:
    """The send id a report address names; None for the bare address (no token). ForgedToken
    for a token that is not ours."""
    try:
        return verp.check(recipient, key, config.send.bounce_local)
    except verp.ForgedToken as exc:
        if str(exc) == "no token":
            return None
        raise


def _send_of(report, send_id: str | None, key: bytes, config: Config, store: Store) -> tuple[SendRecord | None, str]:
    """(the send the report is about, or None with why). `send_id`: the report address's token."""
    if send_id is None and report is not None:
        # the bare address: a feedback loop's reports, matched by what they return
        mail_from = report.original_mail_from or ""
        if mail_from and is_report_address(mail_from, config):
            try:
                send_id = verp.check(mail_from, key, config.send.bounce_local)
            except verp.ForgedToken as exc:
                return None, f"forged Original-Mail-From ({exc})"
    if send_id is not None:
        send = store.get_send(send_id)
        return send, "" if send is not None else f"no send {send_id} (gone, or not ours)"
    if report is not None and report.original_message_id:
        send = store.send_by_message_id(report.original_message_id)
        # The Message-ID alone is no proof: every reply in the thread quotes it (In-Reply-To,
        # References). With it, the report must give the send's ENVID, which only MTAs see.
        if send is not None and (report.envelope_id or "").lower() == send.id:
            return send, ""
        if send is not None:
            return None, f"the Message-ID of {send.id} without its token or ENVID"
    return None, "no token and no Message-ID of a send"


def take(raw: bytes, env: Envelope, config: Config, store: Store, clock: Callable[[], float]) -> Outcome:
    # The report reader is imported here, not with this module: deliver/core.py imports this
    # module for every message, and dsn's import (its patterns) cost ~5 ms of the pipe program's
    # ~60 ms start-up (python -X importtime), for mail that is almost never a report.
    from . import dsn
    qid = env.queue_id or "-"
    key = verp.key_from(config.url_secret)
    try:               # the token first: a forged one costs no parse of what may be 1 MB of report
        send_id = _token(env.recipient, key, config)
    except verp.ForgedToken as exc:
        report, send, why = None, None, f"forged report address ({exc})"
    else:
        report = dsn.parse_report(raw)
        send, why = _send_of(report, send_id, key, config, store)
    if send is None:
        log.warning("%s: report to %s from <%s> not taken: %s", qid, env.recipient, env.sender, why)
        return Outcome(EX_OK, DeliveryState.DROPPED, reason=f"report not taken: {why}")
    if report is None or not report.recipients:
        log.info("%s: mail to %s about %s is no delivery report: not kept", qid, env.recipient, send.id)
        return Outcome(EX_OK, DeliveryState.DROPPED, reason=f"not a delivery report (about {send.id})")
    if report.feedback_type in NO_COMPLAINT:
        log.info("%s: a %s feedback report about %s: no complaint, not kept", qid, report.feedback_type, send.id)
        return Outcome(EX_OK, DeliveryState.DROPPED, reason=f"{report.feedback_type} report (about {send.id})")
    now = clock()
    source = hashlib.sha256(raw).hexdigest()
    ours = {r.lower() for r in send.recipients}
    domain = send.sender.rpartition("@")[2].lower()
    kept = []
    before = store.send_events(send.id)
    counts = Counter(e.recipient for e in before)
    known = {e.id for e in before}
    for rs in report.recipients:
        type_ = TYPES.get(rs.action)
        # Original-Recipient is what we sent to when the remote expanded an alias (Final-Recipient
        # is then the alias's target); a report naming neither goes to a one-recipient send's one
        named = [r for r in (rs.original_recipient, rs.recipient) if r]
        recipient = next((r for r in named if r in ours), named[0] if named else
                         next(iter(ours)) if len(ours) == 1 else "")
        if type_ is None:
            log.info("%s: %s: action %r for %s ignored", qid, send.id, rs.action, recipient)
            continue
        if recipient not in ours:
            log.warning("%s: %s: report names %s, not a recipient of the send: ignored", qid, send.id,
                        recipient or "no recipient")
            continue
        if counts[recipient] >= MAX_EVENTS_PER_RECIPIENT:
            log.warning("%s: %s: %s has %d events already: %s not kept", qid, send.id, recipient,
                        counts[recipient], type_.value)
            continue
        counts[recipient] += 1
        permanent = type_ is SendEventType.BOUNCED and rs.permanent
        suppress = permanent or type_ is SendEventType.COMPLAINED
        event = sendevents.make(send, type_, now, config, source, recipient, action=rs.action,
                                status=rs.status or None, permanent=permanent if type_ is SendEventType.BOUNCED else None,
                                diagnosticCode=rs.diagnostic or None, remoteMta=rs.remote_mta or None,
                                reportingMta=report.reporting_mta or None, feedbackType=report.feedback_type,
                                suppressed=suppress)
        # A report kept before suppresses nothing again: an operator who lifted the suppression
        # since must not see a replay of the same report put it back.
        if suppress and event.id not in known:
            reason = SuppressionReason.COMPLAINED if type_ is SendEventType.COMPLAINED else SuppressionReason.BOUNCED
            store.suppress(Suppression(domain, recipient, reason, now, event.id))
        new = store.put_send_event(event)
        kept.append(f"{type_.value} {recipient}{'' if new else ' (kept before)'}")
        log.info("%s: %s: %s %s status=%s%s", qid, send.id, type_.value, recipient, rs.status or "-",
                 " suppressed" if suppress else "")
    return Outcome(EX_OK, DeliveryState.STORED, reason=f"report about {send.id}: " + (", ".join(kept) or "nothing kept"))
