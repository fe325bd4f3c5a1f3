"""What an agent wants out of a parsed message, each a pure function of it.

html_to_text (html2text), reply_text (email-reply-parser), codes and links (for agents that sign
up for things), auto_submitted (RFC 3834 and friends: what an agent must not answer blindly),
addresses, message ids and the thread id, calendar invitations (icalendar, imported only when a
text/calendar part is there).
"""
from __future__ import annotations

import re
from email.utils import getaddresses, parsedate_to_datetime
from html import unescape

from email_reply_parser import EmailReplyParser

from .codes import codes as find_codes
from .parse import Parsed

# --- text ---------------------------------------------------------------------------------------


def html_to_text(html: str) -> str:
    import html2text      # lazy: 2 ms a message, for HTML-only mail
    h = html2text.HTML2Text()
    h.body_width = 0
    h.ignore_images = True
    h.ignore_emphasis = True
    h.unicode_snob = True
    try:
        return h.handle(html).strip() + "\n"
    except Exception:     # html2text on broken markup: strip tags instead of failing
        return unescape(re.sub(r"<[^>]+>", " ", html))


def reply_text(text: str) -> str:
    """The new text of a reply: quoted history and signature removed (the full text stays in `text`)."""
    try:
        reply = EmailReplyParser.parse_reply(text)
    except Exception:
        return text
    reply = _strip_attribution_tail(reply)
    return reply if reply.strip() else text


# Attribution lines that email-reply-parser misses (German, French, Outlook headers blocks).
_ATTRIBUTION = re.compile(
    r"^(?:Am .{4,120} schrieb .{1,120}:|Le .{4,120} a écrit ?:|El .{4,120} escribió:|"
    r"-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine)\s*-{2,}|"
    r"(?:From|Von|De):\s.+\n(?:(?:Sent|Gesendet|Envoyé|Date|Datum):\s.+))",
    re.M | re.I)


def _strip_attribution_tail(text: str) -> str:
    m = _ATTRIBUTION.search(text)
    return text[:m.start()].rstrip() + "\n" if m and m.start() > 0 else text


# --- codes and links ----------------------------------------------------------------------------

_URL = re.compile(r"""https?://[^\s<>"'\])]+""", re.I)
_HREF = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))[^>]*>(.*?)</a>""", re.I | re.S)
_VERIFY_WORDS = re.compile(r"verif|confirm|activat|magic|sign[-_ ]?in|log[-_ ]?in|token|reset|validate|auth", re.I)


def links(text: str | None, html: str | None) -> list[dict]:
    found: dict[str, dict] = {}
    for m in _HREF.finditer(html or ""):
        url = unescape(next(g for g in m.groups()[:3] if g is not None)).strip()
        if url.lower().startswith(("http://", "https://")):
            label = " ".join(unescape(re.sub(r"<[^>]+>", " ", m.group(4))).split())[:200]
            found.setdefault(url, {"url": url, "text": label or None})
    for url in _URL.findall(text or ""):
        url = url.rstrip(".,;:!?")
        found.setdefault(url, {"url": url, "text": None})
    out = []
    for item in found.values():
        item["verification"] = bool(_VERIFY_WORDS.search(item["url"]) or _VERIFY_WORDS.search(item["text"] or ""))
        out.append(item)
    return out[:200]


def codes(subject: str | None, text: str | None) -> list[str]:
    """Verification codes, the most likely first (see codes.py for what counts as one)."""
    return find_codes(subject, text)


# --- auto-submitted -----------------------------------------------------------------------------


# From lines only delivery systems use, and subjects only bounces have.
_DAEMON_FROM = re.compile(r"^\s*<>\s*$|mailer[-_]?daemon@|^\s*mdaemon@|mail delivery (system|subsystem)", re.I)
_BOUNCE_SUBJECT_STRONG = re.compile(r"^(undeliver(ed|able)|returned mail|mail delivery failed|delivery status "
                                    r"notification \(failure\)|non[- ]?delivery|failure notice|mail could not be "
                                    r"delivered|permanent delivery failure)", re.I)
_BOUNCE_FROM = re.compile(r"mailer[-_]?daemon|postmaster|mail delivery|delivery subsystem|"
                          r"mail administrator|mmdf|smtp32|noreply-dmarc|mailadmin", re.I)
_BOUNCE_SUBJECT = re.compile(r"undeliver|delivery (status|fail|notification|problem)|failure notice|"
                             r"returned mail|mail delivery failed|non[- ]?deliver|delivery report|"
                             r"could not be delivered|warning: could not send|mail system error|"
                             r"not delivered|delivery error|rejected|failure|failed|delayed|processing error|"
                             r"delivery warning", re.I)


def auto_submitted(parsed: Parsed, mail_from: str | None) -> str | None:
    """bounce, auto-replied, auto-generated, list, or None for a message written by a person."""
    h = {n.lower(): v for n, v in reversed(parsed.headers)}
    ctype = parsed.content_type
    if ctype == "multipart/report" or (mail_from is not None and mail_from.strip("<>") == ""):
        return "bounce"
    sender = h.get("from", "")
    if _DAEMON_FROM.search(sender) or (_BOUNCE_FROM.search(sender) and _BOUNCE_SUBJECT.search(h.get("subject", ""))) \
            or _BOUNCE_SUBJECT_STRONG.search(h.get("subject", "")):
        return "bounce"
    auto = (h.get("auto-submitted") or "").strip().lower().split(";")[0].strip()
    if auto == "auto-replied":
        return "auto-replied"
    if auto and auto != "no":
        return "auto-generated"
    if h.get("x-autoreply") or h.get("x-autorespond") or "x-auto-response-suppress" in h and \
            re.search(r"\b(oof|autoreply|all)\b", h.get("x-auto-response-suppress", ""), re.I) and \
            re.search(r"automatic reply|out of office|abwesend|absence", h.get("subject", ""), re.I):
        return "auto-replied"
    precedence = (h.get("precedence") or "").strip().lower()
    if precedence == "list" or "list-id" in h or "list-unsubscribe" in h:
        return "list"
    if precedence in ("bulk", "junk", "auto_reply"):
        return "auto-replied" if precedence == "auto_reply" else "auto-generated"
    if "x-auto-response-suppress" in h:
        return "auto-generated"
    return None


# --- addresses, ids, threads --------------------------------------------------------------------


def addresses(values: list[str]) -> list[dict]:
    out = []
    for name, addr in getaddresses(values):
        if addr or name:
            out.append({"address": addr or None, "name": name or None})
    return out


_MSGID = re.compile(r"<([^<>\s]+)>")


def message_ids(value: str | None) -> list[str]:
    return [f"<{m}>" for m in _MSGID.findall(value or "")]


def thread_id(message_id: str | None, in_reply_to: list[str], references: list[str]) -> str | None:
    """The first Message-ID in References, else In-Reply-To, else the message's own."""
    if references:
        return references[0]
    if in_reply_to:
        return in_reply_to[0]
    return message_id


def iso_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):   # "2777777777777777772:21:22": too big
        return None
    return dt.isoformat() if dt else None


# --- calendars ----------------------------------------------------------------------------------


def calendar_entries(calendars: list[str], defects: list[str]) -> list[dict]:
    if not calendars:
        return []
    try:
        import icalendar      # lazy: 20 ms a message, for invitations only
    except ImportError:     # pragma: no cover - a dependency
        defects.append("calendar: icalendar is not installed")
        return []
    out = []
    for text in calendars:
        try:
            cal = icalendar.Calendar.from_ical(text)
        except Exception as exc:
            defects.append(f"calendar could not be parsed ({exc.__class__.__name__})")
            continue
        method = str(cal.get("METHOD")) if cal.get("METHOD") else None
        for ev in cal.walk("VEVENT"):
            out.append({
                "method": method,
                "uid": _s(ev.get("UID")),
                "summary": _s(ev.get("SUMMARY")),
                "start": _dt(ev.get("DTSTART")),
                "end": _dt(ev.get("DTEND")),
                "organizer": _mailto(ev.get("ORGANIZER")),
                "attendees": [_mailto(a) for a in _list(ev.get("ATTENDEE"))],
                "location": _s(ev.get("LOCATION")),
            })
    return out


def _s(v) -> str | None:
    return str(v) if v is not None else None


def _dt(v) -> str | None:
    if v is None:
        return None
    value = getattr(v, "dt", v)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _mailto(v) -> str | None:
    if v is None:
        return None
    return re.sub(r"^mailto:", "", str(v), flags=re.I)


def _list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]
