"""render(): the email.received event (version 1) from what parse() and read_auth() found.

Every field of DESIGN.md's table is always present (null or [] when absent); names as MailKite
spells them. Pure: the stored blobs' URLs are passed in, the clock is not read here.
"""
from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from agentmx.orgdomain import normalize

from . import extract
from .parse import Parsed

EVENT_TYPE = "email.received"


def event_id(recipient: str, raw_sha: str, queue_id: str | None) -> str:
    """Stable for one message and one recipient across every retry (the webhook-id)."""
    seed = "\0".join([queue_id or "", recipient.lower(), raw_sha]).encode()
    digest = hashlib.sha256(seed).digest()
    return "msg_" + base64.b32encode(digest).decode().lower().rstrip("=")[:26]


def accepted_at(parsed: Parsed) -> str | None:
    """When our Postfix accepted the message: the date of the topmost Received header."""
    received = parsed.header("Received")
    if received and ";" in received:
        try:
            dt = parsedate_to_datetime(received.rsplit(";", 1)[1].strip())
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return rfc3339(dt)
        except (TypeError, ValueError, IndexError, OverflowError):   # "Mon, 3111...110 Jan": too big
            return None
    return None


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def received_with_tls(parsed: Parsed) -> bool | None:
    received = parsed.header("Received")
    m = re.search(r"\bwith\s+(\w+)", received or "", re.I)
    return None if not m else m.group(1).upper() in ("ESMTPS", "ESMTPSA", "LMTPS", "UTF8SMTPS", "UTF8SMTPSA")


def _sender(parsed: Parsed, auth: dict) -> tuple[dict | None, list[str]]:
    """`from`: the first mailbox of the first From field, read as the milter reads it
    (agentmx/fromheader.py), so that its domain is one DMARC judged. Several From fields, or
    addresses in several domains, are said in a defect: `from` shows only the first, and
    auth.dmarc is then never pass (RFC 9989 5.3.1). A DMARC pass for another domain than
    `from`'s (the milter and deliver read different bytes: a bug) is said too."""
    who = parsed.authors
    if who is None:                     # reading the From fields failed (a defect says so)
        listed = extract.addresses(parsed.header_all("From"))
        return (listed[0] if listed else None), []
    first = who.first
    sender = {"address": first.address, "name": first.name} if first else None
    defects = []
    if who.fields > 1 or len(who.domains) + len(who.unusable) > 1 or who.incomplete:
        shown = ", ".join(m.address or "<>" for m in who.mailboxes[:10]) + (" ..." if len(who.mailboxes) > 10 else "")
        defects.append(f"header From: {who.problem}: `from` is only the first of {shown}")
    judged = ((auth.get("details") or {}).get("dmarc") or {}).get("from")
    if auth.get("dmarc") == "pass" and first and judged and normalize(judged) != first.domain:
        defects.append(f"auth: DMARC passed for {judged}, but `from` is in {first.domain_text or 'no domain'}")
    return sender, defects


def render(parsed: Parsed, *, event_id: str, created_at: str, recipient: str, mailbox_hash: str | None,
           envelope: dict, auth: dict, attachments: list[dict], raw: dict, size: int,
           flagged: bool) -> dict:
    sender, from_defects = _sender(parsed, auth)
    subject = parsed.header("Subject")
    message_id = next(iter(extract.message_ids(parsed.header("Message-ID"))), None)
    in_reply_to = extract.message_ids(parsed.header("In-Reply-To"))
    references = extract.message_ids(" ".join(parsed.header_all("References")))
    text = parsed.text
    if text is None and parsed.html is not None:
        text = extract.html_to_text(parsed.html)
    defects = list(parsed.defects) + from_defects
    calendar = extract.calendar_entries(parsed.calendars, defects)
    mail_from = envelope.get("mailFrom")
    auto = extract.auto_submitted(parsed, mail_from)
    return {
        "id": event_id,
        "type": EVENT_TYPE,
        "createdAt": created_at,
        "from": sender,
        "to": extract.addresses(parsed.header_all("To")),
        "cc": extract.addresses(parsed.header_all("Cc")),
        "replyTo": extract.addresses(parsed.header_all("Reply-To")),
        "recipient": recipient,
        "mailboxHash": mailbox_hash,
        "envelope": envelope,
        "subject": subject,
        "date": extract.iso_date(parsed.header("Date")),
        "messageId": message_id,
        "inReplyTo": in_reply_to[0] if in_reply_to else None,
        "references": references,
        "threadId": extract.thread_id(message_id, in_reply_to, references),
        "text": text,
        "html": parsed.html,
        "textReply": extract.reply_text(text) if text else None,
        "headers": [[name, value] for name, value in parsed.headers],
        "auth": auth,
        "autoSubmitted": auto,
        # a bounce quotes diagnostic codes and ids, never a code meant for the agent
        "codes": [] if auto == "bounce" else extract.codes(subject, text),
        "links": extract.links(text, parsed.html),
        "attachments": attachments,
        "calendar": calendar,
        "size": size,
        "raw": raw,
        "flagged": flagged,
        "defects": defects,
    }
