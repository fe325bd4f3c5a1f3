"""Suppressions: addresses agents may not send to from one sending domain (a hard bounce, a
complaint, or by hand), and the one check every send makes before it counts or goes out.

    check(store, sender, recipients)   raises send.SendError 422 "suppressed" when one is

Called in one place, the one send path (sendpath.prepare), whatever the door: /v1/send, each
recipient of a batch, a scheduled send when it is parked and when it is due, MCP's send and
reply, the agent's replies and forwards. The domain is the sender address's (the From address of
the send), lower case: what a suppression is kept under.

The API (api/suppressions.py) and the CLI (cli/suppressions.py) read what people give them with
address(), reason() and note() here, and show a suppression with view().
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable

from agentmx.send import SendError
from agentmx.store.model import Suppression, SuppressionReason
from agentmx.times import rfc3339

if TYPE_CHECKING:                    # annotations only
    from agentmx.store.base import Store

MAX_NOTE = 500          # characters of a note given by hand: one line
SHOWN = 3               # suppressed recipients a refusal names (the rest are counted)
_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\\\"]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                      r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")



def domain_of(sender: str) -> str:
    """The sending domain a suppression is kept under: the sender address's domain, lower case."""
    return sender.strip().strip("<>").rpartition("@")[2].lower()


def check(store: Store, sender: str, recipients: Iterable[str]) -> None:
    """SendError 422 `suppressed` when any recipient is suppressed for the sender's domain."""
    domain = domain_of(sender)
    found = store.suppressed(domain, recipients)
    if not found:
        return
    said = "; ".join(f"{s.address} is suppressed for {domain} since {rfc3339(s.created)} ({s.reason.value})"
                     for s in found[:SHOWN])
    more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    raise SendError(422, "suppressed", said + more)


def address(value: object) -> str:
    """A recipient address as given by hand, lower case; ValueError otherwise."""
    v = value.strip().lower() if isinstance(value, str) else ""
    if len(v) > 254 or not v.isascii() or not _ADDRESS.match(v):
        raise ValueError("an email address (someone@example.com)")
    return v


def reason(value: object) -> SuppressionReason:
    """manual (the default), bounced or complained; ValueError otherwise."""
    if value is None:
        return SuppressionReason.MANUAL
    try:
        return SuppressionReason(value)
    except ValueError:
        raise ValueError("manual, bounced or complained") from None


def note(value: object) -> str:
    """A note given by hand: one line of at most MAX_NOTE characters; ValueError otherwise."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NOTE or _LINE_BREAKS.search(value):
        raise ValueError(f"one line of text, at most {MAX_NOTE} characters")
    return value.strip()


def view(s: Suppression) -> dict[str, Any]:
    """A suppression as the API shows it (MailKite's `email`, our domain and reason)."""
    return {"email": s.address, "domain": s.domain, "reason": s.reason.value, "note": s.note or None,
            "createdAt": rfc3339(s.created), "eventId": s.event_id or None}
