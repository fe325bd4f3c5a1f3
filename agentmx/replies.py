"""Whom an automatic answer goes to: the built-in agent's reply and MCP's `reply` tool, which act
on mail without a person deciding (the send API's own Reply-To semantics are in send.build).

    reply_address(original) -> Mailbox     the one address; SendError 403 unauthenticated_sender
"""
from __future__ import annotations

from .orgdomain import org_domain
from .send import Mailbox, SendError, _domain, _inbound_mailbox


def sender_authenticated(original: dict) -> bool:
    """Whether the From domain of an inbound message is vouched for: DMARC passed, or (the domain
    publishes no DMARC record) an SPF or DKIM pass aligned with it (relaxed: the same organizational
    domain). Read from our own verdicts in the stored event, never from the message."""
    auth = original.get("auth") if isinstance(original.get("auth"), dict) else {}
    if auth.get("dmarc") == "pass":
        return True
    if auth.get("dmarc") != "none":
        return False
    sender = original.get("from") if isinstance(original.get("from"), dict) else {}
    org = org_domain(_domain(str(sender.get("address") or "")))
    if not org:
        return False
    details = auth.get("details") if isinstance(auth.get("details"), dict) else {}
    passes = [d.get("domain") for d in details.get("dkim") or [] if isinstance(d, dict) and d.get("result") == "pass"]
    spf = details.get("spf") if isinstance(details.get("spf"), dict) else {}
    if spf.get("result") == "pass":
        passes.append(spf.get("domain"))
    return any(isinstance(d, str) and org_domain(d) == org for d in passes)


def reply_address(original: dict) -> Mailbox:
    """The ONE address an automatic answer (the built-in agent's reply, MCP's reply tool) goes to:
    the From address, and only when it is authenticated (sender_authenticated): a forged From
    would otherwise make us send a DKIM-signed message to whoever the forger names. Never the
    Reply-To (on a shared provider, bob@gmail.com with DMARC pass may name any other gmail user),
    never an address found in the body, never more than one. 403 unauthenticated_sender else."""
    sender = original.get("from") if isinstance(original.get("from"), dict) else {}
    mailbox = _inbound_mailbox(sender)
    if not sender_authenticated(original):
        dmarc = ((original.get("auth") or {}).get("dmarc") if isinstance(original.get("auth"), dict) else None)
        raise SendError(403, "unauthenticated_sender",
                        f"not answered: the sender {mailbox.address} is not authenticated (dmarc={dmarc or 'none'}, "
                        "no aligned SPF or DKIM pass), so its From may be forged; an automatic reply would go to "
                        "whoever the forger named")
    return mailbox
