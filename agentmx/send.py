"""The send path's stages, each its own function; the path that runs them in order for every door
(the API, a batch, a scheduled send, MCP, the agent) is agentmx/sendpath.py.

    authorize(config, header)            -> ApiKey            401
    parse_request(json)                  -> SendRequest       400 (bad field, header injection)
    check_request(request)                                    400 (what every request must be, however made)
    build(request, original, config)     -> Outgoing          409 (reply to an auto-submitted event),
                                                              400 (more than 10 recipients derived)
    take_limits(store, config, ...)      -> keys taken        429 (per correspondent, per thread: shared
                                                              by every process on every host)
    submit(outgoing, config)             -> Postfix queue id  502 (Postfix refused or is down)

Every value taken from an inbound message (the stored event) passes through one_line() or
_inbound_id() before it reaches a header of ours: a Subject encoded word that decodes to CR LF
must not break the reply, nor the worker that builds it. Whom an automatic answer (the agent's,
MCP's) goes to is agentmx/replies.py.
"""
from __future__ import annotations

import base64
import binascii
import email.policy
import hmac
import os
import re
import smtplib
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from . import verp
from .config import ApiKey, Config, SubmitTarget, SubmitVia


class SendError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass(frozen=True)
class Mailbox:
    address: str
    name: str | None = None

    def header(self) -> str:
        local, _, domain = self.address.rpartition("@")
        return str(Address(display_name=self.name or "", username=local, domain=domain))


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    url: str | None = None               # given by URL: fetched (agentmx/fetch.py) or a blob of ours, before build


@dataclass(frozen=True)
class SendRequest:
    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()
    reply_to: tuple[Mailbox, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    in_reply_to: str | None = None          # an event id (msg_...) or a Message-ID (<...>)
    force: bool = False
    scheduled_at: float | None = None       # unix seconds: park it until then (api/scheduling.py)
    auto_submitted: str | None = None       # RFC 3834's keyword for what a program of ours sends on its own
                                            # (the agent's forward: auto-generated); never from JSON


@dataclass(frozen=True)
class Outgoing:
    message: EmailMessage
    envelope_from: str
    recipients: tuple[str, ...]
    message_id: str
    thread_id: str
    in_reply_to: str | None
    correspondents: tuple[str, ...]
    envid: str | None = None          # with a return path of its own: DSNs asked for, ENVID = the send id


# --- authorize --------------------------------------------------------------------------------


def authorize(config: Config, authorization: str | None) -> ApiKey:
    token = (authorization or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    for key in config.api_keys:
        if token and hmac.compare_digest(token.encode(), key.key.encode()):
            return key
    raise SendError(401, "unauthorized", "send an API key from the config as: Authorization: Bearer <key>")


# --- parse ----------------------------------------------------------------------------------------

_ADDR = re.compile(r"^[^\s@<>()\[\],;:\\\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_EVENT_ID = re.compile(r"^msg_[a-z0-9]{16,64}$")
_MESSAGE_ID = re.compile(r"^<[^<>\s]{1,250}@[^<>\s]{1,250}>$")
_FIELDS = {"from", "to", "cc", "bcc", "replyTo", "subject", "text", "html", "attachments", "headers",
           "inReplyTo", "force", "scheduledAt"}
# MailKite's stored templates: not part of agentmx (a 501 that says so, not "unknown field").
NOT_SUPPORTED = ("templateId", "templateData", "baseId")

# --- headers: what a caller may add --------------------------------------------------------------
# The list headers a bulk or notification sender needs (RFC 2369, RFC 8058, RFC 2919) and X-*.
# Everything else is a field of ours (From, To, Subject, ...) or the milter's and Postfix's
# (DKIM-Signature, Received, Authentication-Results): never set by a caller.
ALLOWED_HEADERS = {"list-unsubscribe": "List-Unsubscribe", "list-unsubscribe-post": "List-Unsubscribe-Post",
                   "list-id": "List-Id"}
_X_HEADER = re.compile(r"^X-[A-Za-z0-9-]{1,70}$", re.I)
MAX_HEADERS = 20
MAX_HEADER_VALUE = 900           # characters: a folded line stays within RFC 5322's 998


def check_header(name, value) -> tuple[str, str]:
    """(name as we write it, value) for a header a caller may add; SendError 400 bad_header
    otherwise: a name not on the allowlist, a value that is not one line of printable text, or
    longer than MAX_HEADER_VALUE."""
    if not isinstance(name, str) or not (name.lower() in ALLOWED_HEADERS or _X_HEADER.match(name)):
        raise SendError(400, "bad_header", f"header {str(name)[:80]!r}: only List-Unsubscribe, List-Unsubscribe-Post, "
                                           "List-Id and X-* headers may be set (the rest are fields)")
    if not isinstance(value, str):
        raise SendError(400, "bad_header", f"header {name}: the value is a string")
    _no_breaks(f"headers[{name}]", value)              # 400 header_injection
    if _CONTROLS.search(value):
        raise SendError(400, "bad_header", f"header {name}: the value must be one line without control characters")
    if len(value) > MAX_HEADER_VALUE:
        raise SendError(400, "bad_header", f"header {name}: the value is longer than {MAX_HEADER_VALUE} characters")
    return ALLOWED_HEADERS.get(name.lower(), name), value


# Every character str.splitlines() breaks on (the email package refuses them all in a header),
# and NUL.
_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00")


def _no_breaks(name: str, value: str) -> str:
    if not _BREAKS.isdisjoint(value):
        raise SendError(400, "header_injection", f"{name} must not contain line breaks or NUL")
    return value


def _mailbox(name: str, value) -> Mailbox:
    if isinstance(value, dict):
        address, display = value.get("address"), value.get("name")
    elif isinstance(value, str):
        display, address = parseaddr(_no_breaks(name, value))
        if not address:
            raise SendError(400, "bad_address", f"{name}: {value!r} is not an address")
    else:
        raise SendError(400, "bad_address", f"{name}: an address is a string or {{address, name}}")
    if not isinstance(address, str) or not _ADDR.match(_no_breaks(name, address)):
        raise SendError(400, "bad_address", f"{name}: {address!r} is not an address")
    if not address.isascii():
        raise SendError(400, "bad_address", f"{name}: {address!r}: addresses with non-ASCII characters "
                                            "(SMTPUTF8) are not supported")
    if display is not None and not isinstance(display, str):
        raise SendError(400, "bad_address", f"{name}: name must be a string")
    return Mailbox(address, _no_breaks(name, display) if display else None)


def _mailboxes(name: str, value) -> tuple[Mailbox, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or len(value) > 100:
        raise SendError(400, "bad_address", f"{name}: a list of at most 100 addresses")
    return tuple(_mailbox(name, v) for v in value)


def _text(name: str, value, header: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SendError(400, "bad_field", f"{name} must be a string")
    return _no_breaks(name, value) if header else value


def _check_unicode(value, where: str = "body") -> None:
    """JSON may carry lone surrogates (\\udc41); no mail can: refuse them up front."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SendError(400, "bad_text", f"{where} is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_unicode(k, where)
            _check_unicode(v, f"{where}.{k}" if where != "body" else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_unicode(v, f"{where}[{i}]")


def parse_request(data) -> SendRequest:
    if not isinstance(data, dict):
        raise SendError(400, "bad_request", "the body is a JSON object")
    _check_unicode(data)
    templated = [f for f in NOT_SUPPORTED if f in data]
    if templated:
        raise SendError(501, "not_supported", f"{templated[0]}: stored templates are not part of agentmx; "
                                              "send the rendered text or html")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise SendError(400, "unknown_field", f"unknown field {unknown[0]!r}")
    if "from" not in data:
        raise SendError(400, "missing_field", "from is required")
    attachments = data.get("attachments") or []
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise SendError(400, "bad_attachment", f"attachments is a list of at most {MAX_ATTACHMENTS}")
    attachments = [_attachment(i, att) for i, att in enumerate(attachments)]
    given = data.get("headers") or {}
    if not isinstance(given, dict) or len(given) > MAX_HEADERS:
        raise SendError(400, "bad_header", f"headers is an object of at most {MAX_HEADERS} header names and values")
    headers = [check_header(hname, hvalue) for hname, hvalue in given.items()]
    if len({h.lower() for h, _ in headers}) != len(headers):
        raise SendError(400, "bad_header", "a header is given twice (names are case-insensitive)")
    in_reply_to = _text("inReplyTo", data.get("inReplyTo"), header=True)
    if in_reply_to is not None and not (_EVENT_ID.match(in_reply_to) or _MESSAGE_ID.match(in_reply_to)):
        raise SendError(400, "bad_in_reply_to", "inReplyTo is an event id (msg_...) or a Message-ID (<...>)")
    req = SendRequest(
        sender=_mailbox("from", data["from"]),
        to=_mailboxes("to", data.get("to")), cc=_mailboxes("cc", data.get("cc")),
        bcc=_mailboxes("bcc", data.get("bcc")), reply_to=_mailboxes("replyTo", data.get("replyTo")),
        subject=_text("subject", data.get("subject"), header=True),
        text=_text("text", data.get("text")), html=_text("html", data.get("html")),
        attachments=tuple(attachments), headers=tuple(headers), in_reply_to=in_reply_to,
        force=bool(data.get("force", False)), scheduled_at=scheduled_time(data.get("scheduledAt")),
    )
    return check_request(req)


def check_request(req: SendRequest) -> SendRequest:
    """What every request must be, however it was made: from JSON (parse_request) or by a door of
    ours from its own values (the agent's reply, whose text a model wrote). A body, text that is
    valid Unicode (a lone surrogate cannot be mailed), header values on one line, addresses that
    are addresses; SendError 400 otherwise. `req` when it is."""
    if req.text is None and req.html is None:
        raise SendError(400, "missing_field", "text or html is required")
    boxes = {"from": (req.sender,), "to": req.to, "cc": req.cc, "bcc": req.bcc, "replyTo": req.reply_to}
    _check_unicode({"subject": req.subject, "text": req.text, "html": req.html, "headers": dict(req.headers),
                    "attachments": [a.filename for a in req.attachments],
                    **{f: [m.name for m in ms] for f, ms in boxes.items()}})
    if req.subject is not None:
        _no_breaks("subject", req.subject)
    for f, ms in boxes.items():
        for m in ms:
            if not _ADDR.match(_no_breaks(f, m.address)) or not m.address.isascii():
                raise SendError(400, "bad_address", f"{f}: {m.address!r} is not an address")
            if m.name:
                _no_breaks(f, m.name)
    return req


MAX_ATTACHMENTS = 20
MAX_URL = 2048


def _attachment(i: int, att) -> Attachment:
    """One attachment: base64 `content`, or a `url` (https://..., or a blob URL of ours) that the
    API resolves before the message is built."""
    if not isinstance(att, dict) or (att.get("content") is None) == (att.get("url") is None):
        raise SendError(400, "bad_attachment", f"attachments[{i}] needs base64 content or a url (one of them)")
    by_url = att.get("url") is not None          # its name and type may come from where it is fetched
    filename = _text(f"attachments[{i}].filename", att.get("filename") or ("" if by_url else f"attachment-{i + 1}"),
                     header=True)
    ctype = _text(f"attachments[{i}].contentType", att.get("contentType") or ("" if by_url else
                                                                               "application/octet-stream"), header=True)
    if ctype and not re.fullmatch(r"[\w.+-]+/[\w.+-]+", ctype):
        raise SendError(400, "bad_attachment", f"attachments[{i}].contentType {ctype!r} is not a MIME type")
    if by_url:
        url = att["url"]
        if not isinstance(url, str) or len(url) > MAX_URL or not re.match(r"^https?://", url, re.I) \
                or not url.isascii() or _CONTROLS.search(url) or " " in url:
            raise SendError(400, "bad_attachment", f"attachments[{i}].url is an http(s) URL of at most {MAX_URL} "
                                                   "ASCII characters")
        return Attachment(filename, ctype.lower(), b"", url=url)
    if not isinstance(att["content"], str):
        raise SendError(400, "bad_attachment", f"attachments[{i}].content is base64 text")
    try:
        payload = base64.b64decode(att["content"], validate=True)
    except (binascii.Error, ValueError):
        raise SendError(400, "bad_attachment", f"attachments[{i}].content is not base64") from None
    return Attachment(filename, ctype.lower(), payload)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def scheduled_time(value) -> float | None:
    """scheduledAt (RFC 3339 with a zone: 2026-12-05T09:00:00Z) as unix seconds; None when absent.
    Whether it is in the window the API allows is the API's check (it holds the clock)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise SendError(400, "bad_scheduled_at", "scheduledAt is an RFC 3339 time with a zone, "
                                                 "e.g. 2026-12-05T09:00:00Z")
    text = value.upper().replace(" ", "T").replace("Z", "+00:00")
    if "." in text:                        # fromisoformat takes at most 6 digits of a fraction
        head, _, rest = text.partition(".")
        digits = re.match(r"\d+", rest).group()
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise SendError(400, "bad_scheduled_at", f"scheduledAt {value!r} is not a valid time") from None


# --- values from an inbound message -----------------------------------------------------------

# Line breaks (every character str.splitlines() breaks on), NUL, the other C0 and C1 controls.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]+")
_SURROGATES = re.compile("[\ud800-\udfff]")
_INBOUND_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,500}>$")     # printable ASCII, no < or >
MAX_DERIVED_RECIPIENTS = 10       # an answer without `to` goes to at most this many (Reply-To) addresses
MAX_REFERENCES = 20               # Message-IDs kept in References: the first and the latest


def one_line(value, limit: int = 1000) -> str:
    """A value from an inbound message, safe in an outbound header: each run of line breaks, NULs
    and other control characters becomes one space, lone surrogates U+FFFD; at most `limit`
    characters."""
    if not isinstance(value, str):
        return ""
    return _SURROGATES.sub("\ufffd", _CONTROLS.sub(" ", value)).strip()[:limit]


def _inbound_id(value) -> str | None:
    """A Message-ID from an inbound message, or None when it is not one we can repeat unchanged
    (a control character, a line break, a space, non-ASCII: dropped, never mended)."""
    return value if isinstance(value, str) and _INBOUND_ID.match(value) else None


def _inbound_mailbox(value: dict) -> Mailbox:
    address = value.get("address")
    if not isinstance(address, str) or not _ADDR.match(address):
        raise SendError(400, "bad_original_address", f"the original's address {one_line(address, 200)!r} "
                                                     "cannot be answered: give the recipients in `to`")
    return Mailbox(address, one_line(value.get("name"), 200) or None)


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


# --- build ----------------------------------------------------------------------------------------


def _re(subject: str | None) -> str:
    subject = one_line(subject)
    return subject if re.match(r"^(re|aw|sv|antw)\s*:", subject, re.I) else f"Re: {subject}".rstrip()


def build(req: SendRequest, original: dict | None, config: Config, now: float | None = None) -> Outgoing:
    """The message; `original` is the stored event when inReplyTo names one."""
    to = req.to
    subject = req.subject
    references: list[str] = []
    parent = None
    if original is not None:
        if original.get("autoSubmitted") and not req.force:
            raise SendError(409, "loop_risk", f"the event was {original['autoSubmitted']} mail: answering it "
                                              "can start a mail loop; send force=true if you mean it")
        parent = _inbound_id(original.get("messageId"))
        references = [r for r in map(_inbound_id, original.get("references") or []) if r] + ([parent] if parent else [])
        if len(references) > MAX_REFERENCES:
            references = references[:1] + references[1 - MAX_REFERENCES:]
        if not to:                     # answer the sender: Reply-To if it set one, else From
            candidates = [a for a in original.get("replyTo") or ([original["from"]] if original.get("from") else [])
                          if isinstance(a, dict) and a.get("address")]
            if len(candidates) > MAX_DERIVED_RECIPIENTS:
                raise SendError(400, "too_many_reply_recipients",
                                f"the original asks for answers to {len(candidates)} addresses; without `to` a reply "
                                f"goes to at most {MAX_DERIVED_RECIPIENTS}: choose its recipients with `to`")
            to = tuple(_inbound_mailbox(a) for a in candidates)
        if subject is None:
            subject = _re(original.get("subject"))
    elif req.in_reply_to and req.in_reply_to.startswith("<"):
        parent = req.in_reply_to
        references = [parent]
    if not to and not req.cc and not req.bcc:
        raise SendError(400, "missing_field", "to is required (or inReplyTo an event, to answer its sender)")

    msg = EmailMessage()
    msg["From"] = req.sender.header()
    if to:
        msg["To"] = ", ".join(m.header() for m in to)
    if req.cc:
        msg["Cc"] = ", ".join(m.header() for m in req.cc)
    if req.reply_to:
        msg["Reply-To"] = ", ".join(m.header() for m in req.reply_to)
    msg["Subject"] = subject or ""
    msg["Date"] = formatdate(now, localtime=False)
    domain = req.sender.address.rpartition("@")[2]
    message_id = make_msgid(domain=domain)
    msg["Message-ID"] = message_id
    if parent:
        msg["In-Reply-To"] = parent
    if references:
        msg["References"] = " ".join(dict.fromkeys(references))
    if req.auto_submitted:
        msg["Auto-Submitted"] = req.auto_submitted
    elif original is not None and config.send.auto_submitted:
        msg["Auto-Submitted"] = "auto-replied"
    for hname, hvalue in req.headers:
        msg[hname] = hvalue
    if req.text is not None:
        msg.set_content(req.text)
        if req.html is not None:
            msg.add_alternative(req.html, subtype="html")
    else:
        msg.set_content(req.html, subtype="html")
    for att in req.attachments:
        if att.url is not None:
            raise RuntimeError("an attachment by URL was not resolved before build")
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
    recipients = tuple(dict.fromkeys(m.address for m in (*to, *req.cc, *req.bcc)))
    thread = (references[0] if references else None) or parent or message_id
    return Outgoing(msg, req.sender.address, recipients, message_id, thread,
                    parent, tuple(m.address.lower() for m in (*to, *req.cc, *req.bcc)))


# --- rate limits ----------------------------------------------------------------------------------

HOUR = 3600.0


def take_limits(store, config: Config, correspondents: tuple[str, ...], thread: str | None,
                extra: tuple[tuple[str, int], ...] = ()) -> list[str]:
    """Count one message under every limit it falls under, in the store (so every serve and agent
    process on every host counts together): per correspondent ("to:<address>"), per thread
    ("thread:<id>", the loop breaker) and `extra` (the agent's "agent:<route>"), each a sliding
    hour, all or none. Returns the keys taken (for give_back when Postfix then refuses the
    message); raises SendError 429 with Retry-After when one is full."""
    limits = [(f"to:{c}", config.send.per_correspondent_per_hour) for c in dict.fromkeys(correspondents)]
    if thread:
        limits.append((f"thread:{thread}", config.send.per_thread_per_hour))
    limits += extra
    full = store.take(limits, HOUR)
    if full is not None:
        key, seconds = full
        kind, _, what = key.partition(":")
        text = f"to {what}" if kind == "to" else "into this thread" if kind == "thread" else f"under {key}"
        raise RateLimited(key, dict(limits)[key], f"more than {dict(limits)[key]} messages {text} in an hour",
                          int(seconds) + 1)
    return [key for key, _ in limits]


class RateLimited(SendError):
    """429: `key` has had `limit` messages in the last hour."""

    def __init__(self, key: str, limit: int, message: str, retry_after: int):
        super().__init__(429, "rate_limited", message, retry_after)
        self.key, self.limit = key, limit


# --- the return path: what comes back names the send (agentmx/verp.py) ----------------------------


def new_send_id() -> str:
    return "snd_" + base64.b32encode(os.urandom(16)).decode().lower().rstrip("=")


def with_return_path(out: Outgoing, send_id: str, config: Config) -> Outgoing:
    """`out` with its own envelope sender, <bounce_local>+<token>@<its From domain>, and a DSN
    request (RET=HDRS, ENVID = the send id, NOTIFY=SUCCESS,FAILURE,DELAY): the reports come back
    to deliver, which matches them to the send (deliver/reports.py). Unchanged with [send]
    verp = false, without [server] url_secret (the key of the token), or from a domain no route
    takes (Postfix would not hand reports to it to deliver: `agentmx postfix-map`)."""
    domain = out.envelope_from.rpartition("@")[2].lower()
    if not (config.send.verp and config.url_secret) or not any(r.match.rpartition("@")[2] == domain
                                                                for r in config.routes):
        return out                     # no route, no transport to deliver here: reports could not come back
    return replace(out, envelope_from=verp.address(send_id, domain, verp.key_from(config.url_secret),
                                                   config.send.bounce_local), envid=send_id)


# --- submit ---------------------------------------------------------------------------------------


class _UnixSMTP(smtplib.SMTP):
    """smtplib's client over a unix-domain socket (as smtplib.LMTP does, but speaking SMTP)."""

    def connect(self, host: str = "", port: int = 0, source_address=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.file = None
        try:
            self.sock.connect(host)
        except OSError:
            self.close()
            raise
        return self.getreply()


def _connect(target: SubmitTarget, helo: str) -> smtplib.SMTP:
    if target.via is SubmitVia.UNIX:
        return _UnixSMTP(str(target.path), timeout=60, local_hostname=helo)
    return smtplib.SMTP(target.host, target.port, timeout=60, local_hostname=helo)


def submit(out: Outgoing, config: Config) -> str:
    """Hand the message to Postfix's submission service for the send API ([send] submit: its
    milter_macro_daemon_name tells the milter that the send API submitted it); returns the queue id."""
    data = out.message.as_bytes(policy=email.policy.SMTP)
    where = str(config.send.submit)
    try:
        with _connect(config.send.submit, config.mail_host or config.authserv_id) as smtp:
            # EHLO first: smtplib's mail() does not send it, and a Postfix with
            # smtpd_helo_required = yes refuses MAIL FROM without it.
            smtp.ehlo_or_helo_if_needed()
            dsn = out.envid is not None and smtp.has_extn("dsn")
            code, resp = smtp.mail(out.envelope_from, ["RET=HDRS", f"ENVID={out.envid}"] if dsn else [])
            if code != 250:
                raise SendError(502, "smtp_refused", f"Postfix refused the sender: {code} {resp.decode(errors='replace')}")
            refused = []
            for rcpt in out.recipients:
                code, resp = smtp.rcpt(rcpt, ["NOTIFY=SUCCESS,FAILURE,DELAY"] if dsn else [])
                if code not in (250, 251):
                    refused.append(f"{rcpt}: {code} {resp.decode(errors='replace')}")
            if refused:
                raise SendError(502, "smtp_refused", "Postfix refused recipients: " + "; ".join(refused))
            code, resp = smtp.data(data)
            if code != 250:
                raise SendError(502, "smtp_refused", f"Postfix refused the message: {code} {resp.decode(errors='replace')}")
    except smtplib.SMTPHeloError as exc:
        raise SendError(502, "smtp_refused", f"Postfix ({where}) refused our EHLO and HELO: "
                                             f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise SendError(502, "smtp_unavailable", f"Postfix did not take the message at {where} "
                                                 f"({exc.__class__.__name__})") from None
    m = re.search(r"queued as ([A-Za-z0-9]+)", resp.decode(errors="replace"))
    return m.group(1) if m else ""
