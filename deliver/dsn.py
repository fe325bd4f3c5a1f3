"""parse_report(raw) -> Report | None: what a delivery report says about the mail we sent.

Three shapes come back to a send's envelope sender (agentmx/verp.py):
- an RFC 3464 delivery status notification (multipart/report, a message/delivery-status part;
  RFC 6533's message/global-delivery-status too): per-message fields, then one field group per
  recipient (Final-Recipient, Action, Status, Diagnostic-Code, Remote-MTA);
- an RFC 5965 feedback report (ARF, a message/feedback-report part): a complaint;
- a non-standard bounce (Exim, qmail, Exchange, Gmail, ... texts): recognised by its Subject,
  From, X-Failed-Recipients or qmail's greeting, and read for failed addresses only where the
  text says plainly which they are (a wrong address would suppress an innocent recipient, so
  precision before recall).

Pure (no I/O) and made for hostile input: it never raises; at most MAX_RAW bytes are parsed, the
first MAX_PARTS parts looked at, MAX_TEXT characters of any text scanned, MAX_RECIPIENTS
recipients kept; every value is one line, control characters removed, bounded. Regexes run on
single bounded lines or tokens, none can backtrack badly.
"""
from __future__ import annotations

import binascii
import dataclasses
import email.header
import email.parser
import email.policy
import enum
import itertools
import logging
import re
from dataclasses import dataclass
from email.message import Message

log = logging.getLogger("agentmx.deliver.dsn")

MAX_RAW = 1024 * 1024             # bytes of a report that are parsed at all (the report is at the start)
MAX_BOUNDARY_LINES = 300          # "--" lines kept before the rest is cut off (MIME parts, nesting)
MAX_PARTS = 20                    # MIME parts looked at
MAX_DEPTH = 8                     # MIME nesting walked
MAX_TEXT = 1024 * 1024            # characters of any text scanned with regexes
MAX_LINE = 1000                   # characters of a line scanned
MAX_FIELDS = 4000                 # DSN / ARF fields read
MAX_RECIPIENTS = 100
MAX_FAILED_HEADERS = 10       # X-Failed-Recipients fields read (Exim writes one)
MAX_HEADER_BLOCK = 64 * 1024      # bytes of a returned header block parsed


class ReportKind(enum.Enum):
    """What a report is; prints as its value ("dsn")."""
    DSN = "dsn"                   # RFC 3464 delivery status notification
    BOUNCE = "bounce"             # a non-standard bounce text
    FEEDBACK = "feedback"         # RFC 5965 feedback report (a complaint)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str            # Final-Recipient address (no "rfc822;"), lower case; "" unknown
    action: str               # failed|delayed|delivered|relayed|expanded (|complained for ARF); "" unknown
    status: str               # "5.1.1"-style; "" unknown
    diagnostic: str           # Diagnostic-Code value ("smtp; 550 5.1.1 ..."), one line, <= 1000 chars
    remote_mta: str           # Remote-MTA value, one line, <= 255 chars
    original_recipient: str   # Original-Recipient address, lower case; "" unknown

    @property
    def permanent(self) -> bool:
        return self.action == "failed" and not self.status.startswith("4")


@dataclass(frozen=True)
class Report:
    kind: ReportKind
    envelope_id: str | None
    reporting_mta: str
    recipients: tuple[RecipientStatus, ...]
    original_message_id: str | None
    original_mail_from: str | None
    feedback_type: str | None
    arrival_date: str | None


# --- small bounded helpers -----------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]+")
_SPACES = re.compile(r"[ \t]{2,}")
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<![\d.])([45])[0-5]\d(?![\d.])")
_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                   r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,20}[A-Za-z][A-Za-z0-9-]{0,62}")
_TOKEN_SPLIT = re.compile(r"[\s<>()\[\]\"',;:=]+")
_MSGID = re.compile(r"<[^<>\s]{1,994}>")
_BOUNDARY_LINE = re.compile(rb"(?m)^--")
_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")


def _text(value, limit: int) -> str:
    """One line of text: surrogate escapes decoded (UTF-8, else windows-1252), folds joined,
    control characters removed, at most `limit` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:                 # a Header the email package cannot render
            return ""
    value = value[:limit * 4 + 1024]
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raw = value.encode("utf-8", "surrogateescape")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("cp1252", "replace")
    value = value.encode("utf-8", "replace").decode("utf-8")          # lone surrogates of any kind
    value = _CONTROL.sub(" ", value)
    return _SPACES.sub(" ", value).strip()[:limit]


def _address(value: str) -> str:
    """The address of a DSN/ARF address field ("rfc822; <User@X>") in lower case; "" unless it
    looks like one."""
    value = _text(value, 400)
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip().lower()
    if value.startswith("mailto:"):
        value = value[7:]
    return value if len(value) <= 320 and _ADDR.fullmatch(value) else ""


def _addresses_in(line: str) -> list[str]:
    """Every address in a line, in order, lower case (tokens split on delimiters first: linear)."""
    found = []
    for token in _TOKEN_SPLIT.split(line[:MAX_LINE]):
        if "@" not in token or len(token) > 320:
            continue
        token = token.strip(".").lower()
        if token.startswith("mailto"):
            token = token[6:]
        if _ADDR.fullmatch(token) and token not in found:
            found.append(token)
    return found


def _status_of(text: str) -> str:
    m = _STATUS.search(text[:MAX_LINE])
    if m:
        return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
    m = _SMTP_CODE.search(text[:MAX_LINE])
    return f"{m.group(1)}.0.0" if m else ""


def _message_id(value) -> str | None:
    value = _text(value, 998)
    if not value:
        return None
    m = _MSGID.search(value)
    if m:
        return m.group(0)
    word = value.split()[0]
    return f"<{word[:996]}>" if "@" in word else None


def _mailbox(value) -> str | None:
    value = _text(value, 400).strip().strip("<>").strip().lower()
    found = _addresses_in(value)
    return found[0] if found else None


def _header(msg: Message, name: str) -> str | None:
    """A header's raw value (first occurrence), never a Header object."""
    name = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) else None
    return None


def _decoded(value: str | None, limit: int = 500) -> str:
    """An unstructured header (Subject) with RFC 2047 words decoded, one line."""
    if not value:
        return ""
    value = value[:limit * 4]
    try:
        parts = email.header.decode_header(value)
        out = []
        for chunk, charset in parts:
            if isinstance(chunk, bytes):
                try:
                    chunk = chunk.decode(charset or "ascii", "replace")
                except LookupError:
                    chunk = chunk.decode("utf-8", "replace")
            out.append(chunk)
        value = "".join(out)
    except Exception:                     # a malformed encoded word: the raw value will do
        pass
    return _text(value, limit)


# --- the MIME tree, bounded -----------------------------------------------------------------------

def _bounded(raw: bytes) -> bytes:
    """At most MAX_RAW bytes, cut before the MAX_BOUNDARY_LINES-th "--" line: bounded parse cost
    and nesting (the report parts come first; what is cut is the returned message's body)."""
    raw = raw[:MAX_RAW]
    for count, m in enumerate(_BOUNDARY_LINE.finditer(raw), 1):
        if count >= MAX_BOUNDARY_LINES:
            return raw[:m.start()]
    return raw


def _parts(msg: Message) -> list[tuple[Message, bool]]:
    """The first MAX_PARTS parts, depth first, each with whether it lies inside a returned
    message (message/rfc822): that text is the original's, not the report's."""
    out: list[tuple[Message, bool]] = []
    stack: list[tuple[Message, int, bool]] = [(msg, 0, False)]
    while stack and len(out) < MAX_PARTS:
        part, depth, inner = stack.pop()
        out.append((part, inner))
        if depth >= MAX_DEPTH:
            continue
        ctype = part.get_content_type()
        payload = _children(part)
        if payload is None:
            continue
        if ctype in ("message/delivery-status", "message/global-delivery-status",
                     "message/feedback-report"):
            continue                     # its "parts" are field groups, read by _field_groups
        returned = inner or part.get_content_maintype() == "message"
        for child in reversed(payload[:MAX_PARTS]):
            if isinstance(child, Message):
                stack.append((child, depth + 1, returned))
    return out


def _children(part: Message) -> list | None:
    """A multipart's (or message/*'s) parts; None for a leaf. (get_payload() on a leaf decodes 8-bit
    text by its charset parameter and raises on one with a NUL in it: leaves are read as bytes.)"""
    return part.get_payload() if part.is_multipart() else None


def _body_text(part: Message) -> str:
    """A leaf's text, transfer-decoded, at most MAX_TEXT characters."""
    try:
        if part.is_multipart():
            return ""
        data = part.get_payload(decode=True) or b""
        data = data[:MAX_TEXT]
        charset = part.get_content_charset() or "utf-8"
        try:
            text = data.decode(charset, "replace")
        except (LookupError, ValueError):
            text = data.decode("utf-8", "replace")
        if "\ufffd" in text and charset.lower() in ("utf-8", "us-ascii", "ascii"):
            text = data.decode("cp1252", "replace")
        return text[:MAX_TEXT]
    except Exception as exc:          # a part the email package cannot decode: no text
        log.debug("undecodable part: %s", exc.__class__.__name__)
        return ""


def _field_groups(part: Message) -> list[list[tuple[str, str]]]:
    """The field groups of a message/delivery-status or message/feedback-report part, whichever
    shape the email package left them in (a list of Message objects, one per group, or text)."""
    payload = _children(part)
    groups: list[list[tuple[str, str]]] = []
    encoding = (_header(part, "content-transfer-encoding") or "").strip().lower()
    if payload is not None and encoding == "base64":
        # the stdlib split the encoded text into "groups" before any decoding: join and decode it
        encoded = "".join(_body_text(b) for b in payload[:MAX_PARTS] if isinstance(b, Message))
        try:
            text = binascii.a2b_base64("".join(encoded.split())[:MAX_TEXT * 2].encode("ascii", "replace"))
        except (binascii.Error, ValueError):
            text = b""
        return _groups_of_text(text.decode("utf-8", "replace"))
    if payload is not None:
        for block in payload[:MAX_RECIPIENTS * 2 + 2]:
            if not isinstance(block, Message):
                continue
            fields = [(k, v) for k, v in block.raw_items() if isinstance(v, str)]
            rest = _body_text(block)
            # lines after one the parser could not take as a field: the rest of this group, then
            # any further groups
            more = _groups_of_text(rest) if rest.strip() else []
            groups.append(fields + (more[0] if more else []))
            groups.extend(more[1:])
        return groups
    return _groups_of_text(_body_text(part))


_FIELD_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]{0,75})[ \t]*:(.*)")


def _groups_of_text(text: str) -> list[list[tuple[str, str]]]:
    """Field groups parsed from text: "Name: value" lines, folded continuations, blank lines
    between groups."""
    groups: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    count = 0
    for line in text[:MAX_TEXT].splitlines():
        if count >= MAX_FIELDS:
            break
        if not line.strip():
            if current:
                groups.append(current)
                current = []
            continue
        if line[:1] in (" ", "\t") and current:
            name, value = current[-1]
            current[-1] = (name, value + " " + line[:MAX_LINE].strip())
            continue
        m = _FIELD_LINE.match(line[:MAX_LINE])
        if m:
            current.append((m.group(1), m.group(2)))
            count += 1
    if current:
        groups.append(current)
    return groups


def _header_block(part: Message) -> Message | None:
    """The headers of a returned message: a message/rfc822 part's message, or a
    text/rfc822-headers part's text parsed as headers."""
    payload = _children(part)
    if payload is not None:
        first = payload[0] if payload else None
        return first if isinstance(first, Message) else None
    text = _body_text(part)[:MAX_HEADER_BLOCK].lstrip("\r\n")
    if not text:
        return None
    try:
        return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text, headersonly=True)
    except Exception as exc:       # unreadable headers: no original Message-ID
        log.debug("unreadable returned headers: %s", exc.__class__.__name__)
        return None


_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global",
                   "message/global-headers")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


# --- the entry point ------------------------------------------------------------------------------

def parse_report(raw: bytes) -> Report | None:
    """The report a message is, or None when it is none (or could not be read at all)."""
    try:
        return _parse(raw)
    except Exception as exc:                # RecursionError, MemoryError's cousins, our own bugs
        log.warning("report unreadable (%s): ignored", exc.__class__.__name__)
        return None


def _parse(raw: bytes) -> Report | None:
    if not isinstance(raw, (bytes, bytearray)):
        return None
    return _parse_tree(email.parser.BytesParser(policy=email.policy.compat32).parsebytes(_bounded(bytes(raw))))


def _parse_tree(msg: Message) -> Report | None:
    parts = _parts(msg)
    status_parts: list[Message] = []
    feedback_part = returned = None
    for part, inner in parts:
        ctype = part.get_content_type()
        if inner:
            continue
        if ctype in _STATUS_TYPES:
            status_parts.append(part)
        elif ctype == "message/feedback-report" and feedback_part is None:
            feedback_part = part
        elif ctype in _RETURNED_TYPES and returned is None:
            returned = part
    original = _header_block(returned) if returned is not None else None
    if feedback_part is not None and not status_parts:
        return _feedback(feedback_part, original)
    if status_parts:
        reports = [_dsn(part, original) for part in status_parts]
        report = next((r for r in reports if r.recipients), reports[0])
        if report.recipients:
            return report
        bounce = _bounce(msg, parts, original, report_part=True)     # a report part without recipient groups
        if bounce is None or not bounce.recipients:
            return report
        return dataclasses.replace(report, recipients=bounce.recipients,
                                   original_message_id=report.original_message_id or bounce.original_message_id)
    if _bounce_signals(msg):
        # a bounce that carries the real report as an attachment (message/rfc822 around multipart/report)
        for part, inner in parts:
            if inner and part.get_content_type() == "multipart/report":
                nested = _parse_tree(part)
                if nested is not None and nested.recipients:
                    return nested
    if original is not None and _header(original, "x-hmxmroriginalrecipient") is not None \
            and _JMRP_SUBJECT.match(_decoded(_header(msg, "subject"))):
        return _jmrp(original)
    if any(p.get_content_type() in ("message/disposition-notification",
                                    "message/global-disposition-notification") for p, _ in parts):
        return None                                      # a read receipt (MDN), not a delivery report
    return _bounce(msg, parts, original)


# --- RFC 3464 --------------------------------------------------------------------------------------

_PER_MESSAGE = {"original-envelope-id", "reporting-mta", "dsn-gateway", "received-from-mta", "arrival-date"}
_PER_RECIPIENT = {"original-recipient", "final-recipient", "action", "status", "remote-mta", "diagnostic-code",
                  "last-attempt-date", "final-log-id", "will-retry-until", "x-actual-recipient"}


def _dsn(part: Message, original: Message | None) -> Report:
    message, recipients = _read_fields(_field_groups(part))
    return Report(kind=ReportKind.DSN,
                  envelope_id=_text(message.get("original-envelope-id"), 100) or None,
                  reporting_mta=_text(message.get("reporting-mta"), 255),
                  recipients=recipients,
                  original_message_id=_message_id(_header(original, "message-id")) if original else None,
                  original_mail_from=_mailbox(_header(original, "return-path")) if original else None,
                  feedback_type=None,
                  arrival_date=_text(message.get("arrival-date"), 100) or None)


def _read_fields(blocks: list[list[tuple[str, str]]]) -> tuple[dict[str, str], tuple[RecipientStatus, ...]]:
    """Per-message fields and recipient statuses from DSN field groups."""
    message: dict[str, str] = {}
    groups: list[dict[str, str]] = []
    for block in blocks:
        current: dict[str, str] | None = None
        for name, value in block:
            name = name.lower()
            if name in _PER_RECIPIENT:
                # a field seen twice starts the next recipient (groups run together without blank lines)
                if current is None or name in current:
                    current = {}
                    if len(groups) < MAX_RECIPIENTS:
                        groups.append(current)
                current[name] = value
            elif name in _PER_MESSAGE and name not in message:
                message[name] = value
    return message, tuple(r for r in (_recipient(g) for g in groups) if r is not None)


def _recipient(group: dict[str, str]) -> RecipientStatus | None:
    final = _address(group.get("final-recipient", "")) or _address(group.get("x-actual-recipient", ""))
    orig = _address(group.get("original-recipient", ""))
    diagnostic = _text(group.get("diagnostic-code"), 1000)
    status = _status_of(_text(group.get("status"), 100))
    if not status and diagnostic:
        status = _status_of(diagnostic)
    action = _action(_text(group.get("action"), 100).lower(), status)
    if not (final or orig or action):
        return None
    return RecipientStatus(recipient=final or orig, action=action, status=status, diagnostic=diagnostic,
                           remote_mta=_text(group.get("remote-mta"), 255), original_recipient=orig)


def _action(value: str, status: str) -> str:
    word = value.split()[0] if value.split() else ""
    for action in _ACTIONS:
        if word.startswith(action[:5]):                  # "failure", "Delayed", "delivered."
            return action
    return {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[:1], "")


# --- RFC 5965 --------------------------------------------------------------------------------------

def _feedback(part: Message, original: Message | None) -> Report:
    fields: dict[str, str] = {}
    rcpts: list[str] = []
    for block in _field_groups(part):
        for name, value in block:
            name = name.lower()
            if name == "original-rcpt-to":
                addr = _address(value)
                if addr and addr not in rcpts and len(rcpts) < MAX_RECIPIENTS:
                    rcpts.append(addr)
            elif name not in fields:
                fields[name] = value
    mail_from = _mailbox(fields.get("original-mail-from"))
    if mail_from is None and original is not None:
        mail_from = _mailbox(_header(original, "return-path"))
    feedback_type = _text(fields.get("feedback-type"), 64).lower() or None
    return Report(kind=ReportKind.FEEDBACK, envelope_id=None,
                  reporting_mta=_text(fields.get("reporting-mta"), 255),
                  recipients=tuple(RecipientStatus(recipient=a, action="complained", status="", diagnostic="",
                                                   remote_mta="", original_recipient="") for a in rcpts),
                  original_message_id=_message_id(_header(original, "message-id")) if original else None,
                  original_mail_from=mail_from, feedback_type=feedback_type,
                  arrival_date=_text(fields.get("arrival-date") or fields.get("received-date"), 100) or None)


# Microsoft's complaint reports (JMRP, Outlook.com / Hotmail): not ARF, the complained-of message
# attached, its recipient in X-HmXmrOriginalRecipient.
_JMRP_SUBJECT = re.compile(r"\s*complaint about message from ", re.IGNORECASE)


def _jmrp(original: Message) -> Report:
    rcpt = _address(_header(original, "x-hmxmroriginalrecipient") or "")
    return Report(kind=ReportKind.FEEDBACK, envelope_id=None, reporting_mta="",
                  recipients=(RecipientStatus(recipient=rcpt, action="complained", status="", diagnostic="",
                                              remote_mta="", original_recipient=""),) if rcpt else (),
                  original_message_id=_message_id(_header(original, "message-id")),
                  original_mail_from=_mailbox(_header(original, "return-path")), feedback_type="abuse",
                  arrival_date=None)


# --- non-standard bounces ----------------------------------------------------------------------------

_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery status notification|delivery (?:status )?(?:failure|failed|problem|report)"
    r"|delivery notification|mail delivery (?:failed|failure|problem|warning|system)|returned mail|returning message"
    r"|failure notice|failure delivery|non[- ]?delivery|not (?:be )?delivered|could not be delivered"
    r"|delivery has failed|message delayed|delayed mail|warning: message|permanent delivery failure"
    r"|mail not delivered|mail system error|delivery warning|nondeliverable|returned to sender|mail failed"
    r"|delivery failure|error during delivery|processing error|unzustellbar|non remis|no entregado",
    re.IGNORECASE)
_DAEMON_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery (?:system|subsystem|service)|mail administrator"
                          r"|\bmdaemon\b|mail\.delivery\.system", re.IGNORECASE)
_QMAIL = "hi. this is the qmail-send program"
_WARNING = re.compile(r"this is a warning message only|you do not need to resend|will (?:continue to )?(?:retry|try)"
                      r"|has not yet been delivered|not yet been delivered|delivery (?:to the following recipients? )?"
                      r"(?:has been |is )?delayed|\(delay\)|delivery warning|warning: message|message delayed"
                      r"|delayed mail|still (?:being )?retried", re.IGNORECASE)
# Where the returned message starts in a text bounce: addresses below are the original's.
_ORIGINAL = re.compile(
    r"^\s*(?:-{2,}\s*)?(?:-+ ?this is a copy of|below this line is a copy|original message follows|"
    r"a copy of the original message|-+ ?original message|-+ ?(?:returned|undelivered|unsent) message|"
    r"-* ?returned mail follows|message headers follow|below is a copy|original message:?\s*$|"
    r"-* ?message text follows|content-type: ?(?:message/rfc822|text/rfc822-headers)|"
    r"-+ ?message header follows|-+ ?start of returned message|"
    r"your message (?:reads|follows)|unsent message below|the header of the original|"
    r"-+ ?forwarded message|------ this is a copy)", re.IGNORECASE)
# Lines that say which addresses follow (Exim, Gmail, Exchange, sendmail, smtp32, Yahoo ...).
_LEAD_IN = re.compile(
    r"following (?:e-?mail )?(?:address(?:es|\(es\))?|recipients?(?:\(s\))?|users?|destinations?)"
    r"[^\n]{0,80}?(?:failed|not be delivered|not been delivered|could not be reached|permanent|fatal|undeliverable"
    r"|delayed|not reach|rejected|unknown|errors?|delivery problems|affected)"
    r"|did not reach the following recipient|delivery has failed to these recipients"
    r"|could not be delivered to the following|unable to deliver (?:your )?message to"
    r"|delivery to the following recipients? (?:failed|has been delayed|was delayed)"
    r"|your message (?:was not|wasn't|could not be) delivered to|the following recipients? (?:did|could)"
    r"|failed to deliver to the following|message could not be delivered to|failed addresses follow"
    r"|not (?:be |been )?delivered to(?: the following(?: addresses| recipients)?)?"
    r"|address(?:es)? to which the message has not (?:yet )?been delivered (?:is|are)"
    r"|delivery of (?:e-?mail|your message) to this address|following message, addressed to"
    r"|(?:error|fail|problem|could not|unable)[^\n]{0,80}?(?:to|for) the following (?:list of )?"
    r"(?:recipients?|addresses?)"
    r"|error delivering (?:your )?(?:mail|message) to",
    re.IGNORECASE)
_ANGLE_COLON = re.compile(r"^\s{0,4}<([^<>\s]{3,320})>:?\s*(.*)$")            # qmail, Yahoo, Postfix texts
_SENDMAIL_PREFIX = re.compile(r"^\s{0,4}(?:\d{3}[ -](?:\d\.\d{1,3}\.\d{1,3} )?)?<([^<>\s]{3,320})>\.\.\.\s")
# "Intended recipient: user@x": a label that names the failed address alone on its line.
_LABELLED = re.compile(r"^\s{0,8}\(?(?:intended recipient|failed recipient|recipient address|original recipient"
                       r"|bad address|invalid address|unknown address|undeliverable address|error-for"
                       r"|invalid final delivery userid|delivery failed \d{1,4} attempts|originally addressed to)"
                       r"\s{0,4}:?\s*<?([^<>\s()]{3,320})>?\)?\s*$", re.IGNORECASE)
# "Local mailbox user@x is unavailable", "user@x... User unknown": an address, then why it failed.
_ADDR_THEN_REASON = re.compile(r"(?:mailbox|user|recipient|address)\s{1,4}[<'\"]?([^<>\s'\"]{3,320})[>'\"]?"
                               r"(?:\s{1,4}is)?\s{1,4}(?:unavailable|unknown|not found|does not exist|full"
                               r"|over quota|disabled|not listed|invalid)", re.IGNORECASE)
# "c=US;a= ;p=IKON;o=Nexus2;dda:SMTP=user@x; on ...": Exchange's X.400 form of an address
_EXCHANGE_SMTP = re.compile(r"smtp[=:]<?([^<>\s;]{3,320})", re.IGNORECASE)
_RCPT_TO = re.compile(r"rcpt to:\s{0,4}<([^<>\s]{3,320})>", re.IGNORECASE)
_FIRST_ADDR = re.compile(r"[\s:]{0,4}[<'\"]?([^<>\s'\"]{3,320}@[^<>\s'\":,;]{1,255})")
_RCPT_LINE = re.compile(r"(?:unknown user|no such user|user unknown|unknown recipient|invalid recipient"
                        r"|mailbox (?:is )?(?:unavailable|not found|full)|user mailbox exceeds)"
                        r"[^:\n]{0,40}:\s*<?([^<>\s]{3,320})>?\s*$",
                        re.IGNORECASE)


def _bounce_signals(msg: Message) -> int:
    signals = 0
    if _BOUNCE_SUBJECT.search(_decoded(_header(msg, "subject"))):
        signals += 1
    if _DAEMON_FROM.search(_text(_header(msg, "from"), 300)):
        signals += 1
    if _header(msg, "x-failed-recipients"):
        signals += 2
    return signals


def _report_text(parts) -> tuple[list[str], list[str]]:
    """The report's own text as lines: the text/plain leaves outside any returned message, cut
    where a returned message starts inline (the lines after that are the second value); at most
    MAX_TEXT characters in all."""
    texts: list[str] = []
    size = 0
    for part, inner in parts:
        if inner or part.is_multipart():
            continue
        if part.get_content_type() != "text/plain" and part.get_content_maintype() != "multipart":
            continue                             # (a multipart without its boundaries is text)
        text = _body_text(part)[:MAX_TEXT - size]
        size += len(text)
        texts.append(text)
        if size >= MAX_TEXT:
            break
    lines = [line[:MAX_LINE] for line in "\n".join(texts).splitlines()]
    for i, line in enumerate(lines):
        if _ORIGINAL.match(line):
            return lines[:i], lines[i + 1:]
    return lines, []


def _bounce(msg: Message, parts, original: Message | None, report_part: bool = False) -> Report | None:
    """A non-standard bounce (or a delivery report without recipient groups: report_part)."""
    lines, returned = _report_text(parts)
    head = " ".join(lines[:5]).lower()
    signals = _bounce_signals(msg) + (2 if _QMAIL in head else 0) + (2 if report_part else 0)
    if signals == 0:
        return None
    subject = _decoded(_header(msg, "subject"))
    warning = bool(_WARNING.search(subject)) or any(_WARNING.search(line) for line in lines[:60])
    never, weak = _not_recipients(msg, original)
    found: dict[str, tuple[str, str]] = {}                # address -> (status, diagnostic)

    def add(addr: str, index: int, context: str = "", strong: bool = True) -> None:
        addr = addr.lower().strip(".")
        if addr in found or addr in never or len(found) >= MAX_RECIPIENTS or not _ADDR.fullmatch(addr):
            return
        if not strong and (addr in weak or _DAEMON_FROM.search(addr.split("@")[0])):
            return
        near = " ".join([context] + [lines[i] for i in range(index, min(index + 6, len(lines)))])
        found[addr] = (_status_of(near), _text(context or _diagnostic_near(lines, index), 1000))

    lowered = [line.lower() for line in lines[:2000]]      # once, not once per address
    for value in _all_headers(msg, "x-failed-recipients")[:MAX_FAILED_HEADERS]:
        for addr in _addresses_in(_text(value, 4000)):
            if len(found) >= MAX_RECIPIENTS:
                break
            # the status and diagnostic: near where the text names it (Exim: "SMTP error ... 550 5.1.1")
            index = next((i for i, line in enumerate(lowered) if addr in line), len(lines))
            add(addr, index)
    if not found and any(line[:16].lower() == "final-recipient:" for line in lines):
        # the fields of a delivery-status part, pasted into the text (Amazon WorkMail, old sendmail)
        fields, statuses = _read_fields(_groups_of_text("\n".join(lines)))
        inline = tuple(r for r in statuses if r.recipient and r.recipient not in never)
        if inline:
            report = _bounce_report(inline, original, returned)
            return dataclasses.replace(
                report, kind=ReportKind.DSN if msg.get_content_type() == "multipart/report" else ReportKind.BOUNCE,
                envelope_id=_text(fields.get("original-envelope-id"), 100) or None,
                reporting_mta=_text(fields.get("reporting-mta"), 255),
                arrival_date=_text(fields.get("arrival-date"), 100) or None)
    if not found:
        _from_text(lines, add)
    action = "delayed" if warning else "failed"
    recipients = []
    for addr, (status, diagnostic) in found.items():
        if not status:
            status = "4.0.0" if warning else ""
        if warning and status.startswith("5"):
            status = "4.0.0"
        recipients.append(RecipientStatus(recipient=addr, action=action, status=status, diagnostic=diagnostic,
                                          remote_mta="", original_recipient=""))
    return _bounce_report(tuple(recipients), original, returned)


def _bounce_report(recipients: tuple[RecipientStatus, ...], original: Message | None, returned: list[str]) -> Report:
    return Report(kind=ReportKind.BOUNCE, envelope_id=None, reporting_mta="", recipients=recipients,
                  original_message_id=(_message_id(_header(original, "message-id")) if original
                                       else _inline_id(returned)),
                  original_mail_from=_mailbox(_header(original, "return-path")) if original else None,
                  feedback_type=None, arrival_date=None)


def _all_headers(msg: Message, name: str) -> list[str]:
    return [v for k, v in itertools.islice(msg.raw_items(), 500) if k.lower() == name and isinstance(v, str)]


def _not_recipients(msg: Message, original: Message | None) -> tuple[set[str], set[str]]:
    """Addresses that are never the failed recipient (the report's From, the returned message's
    sender), and those taken from a loose pattern only when something else names them (the
    report's To: our envelope sender, unless a list manager forwarded the bounce)."""
    never: set[str] = set()
    weak: set[str] = set()
    heads = [(msg, "from", never), (msg, "sender", never), (msg, "reply-to", never), (msg, "to", weak),
             (msg, "cc", weak)]
    if original is not None:
        heads += [(original, "return-path", never), (original, "errors-to", never), (original, "from", weak),
                  (original, "sender", weak), (original, "reply-to", weak)]
    for source, name, into in heads:
        for value in _all_headers(source, name)[:5]:
            into.update(_addresses_in(_text(value, 2000)))
    return never, weak


def _diagnostic_near(lines: list[str], index: int) -> str:
    for i in range(index, min(index + 6, len(lines))):
        if _STATUS.search(lines[i]) or _SMTP_CODE.search(lines[i]):
            return lines[i]
    return ""


def _inline_id(returned: list[str]) -> str | None:
    """The Message-ID of a message returned inline in a text bounce (from its header block)."""
    started = False
    for line in returned[:200]:
        if not line.strip():
            if started:
                break                      # the end of its header block
            continue
        started = True
        if line.lower().startswith("message-id:"):
            return _message_id(line[11:])
    return None


def _from_text(lines: list[str], add) -> None:
    """Failed addresses from the lines of a bounce text, by the shapes MTAs write them in."""
    block_left = 0                          # lines left in a "the following addresses failed:" block
    for i, line in enumerate(lines):
        # a lead-in may wrap ("The following addresses\nfailed:"): read it with the next line
        joined = line + " " + lines[i + 1].strip()[:200] if i + 1 < len(lines) and len(line) < 200 else line
        m = _LEAD_IN.search(joined)
        if m and m.start() < len(line):
            block_left = 12
            rest = joined[m.end():]
            first = _FIRST_ADDR.match(rest)         # "wasn't delivered to user@x because ..."
            colon = rest.find(":", 0, 40)            # "... returned permanent errors: user@x. Reason"
            if first is None and colon >= 0:
                first = _FIRST_ADDR.match(rest[colon + 1:])
            if first:
                add(first.group(1), i)
            continue
        m = (_ANGLE_COLON.match(line) or _SENDMAIL_PREFIX.match(line) or _RCPT_LINE.search(line)
             or _LABELLED.match(line) or _ADDR_THEN_REASON.search(line))
        if m and "@" in m.group(1):
            add(m.group(1), i, _diagnostic_near(lines, i))
            continue
        m = _RCPT_TO.search(line)               # ">>> RCPT To:<user@x>" answered by "<<< 550 ..."
        if m and "@" in m.group(1):
            reply = " ".join(lines[i + 1:i + 3])
            if _SMTP_CODE.search(reply[:MAX_LINE]):
                add(m.group(1), i, _diagnostic_near(lines, i + 1))
            continue
        if block_left:
            block_left -= 1
            stripped = line.strip().lstrip("<'\"([*->\u2022 \t")
            if not stripped:
                continue
            addrs = _addresses_in(stripped)
            # an address that opens the line: "user@x", "user@x on <date>", "'Name' <user@x>"
            if addrs and _TOKEN_SPLIT.split(stripped, 1)[0].lower().strip(".") == addrs[0]:
                add(addrs[0], i)
                continue
            m = _EXCHANGE_SMTP.search(line)
            if m and "@" in m.group(1):
                add(m.group(1), i)
                continue
        if _SMTP_CODE.match(line.strip()[:3]):
            for addr in _addresses_in(line)[:1]:
                add(addr, i, line, strong=False)
