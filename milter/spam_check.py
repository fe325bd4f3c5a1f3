"""The spam verdict: rspamd's /checkv2 over HTTP on loopback, as a value.

    check(url, message, envelope, timeout) -> SpamResult(verdict, score, required, action, reason)

verdict is ham, spam or unknown: rspamd's action reject, add header or rewrite subject is spam;
no action and greylist are ham; soft reject, an error, a timeout or no rspamd at all is unknown
(never spam: an outage must not mark good mail). The milter writes it into our own header,
X-Agentmx-Spam (incoming copies removed first), which deliver reads into `auth.spam`.

SMTPUTF8 envelopes: http.client encodes str header values as Latin-1, so a UTF-8 sender, recipient
or HELO name raised UnicodeEncodeError (a tempfail on every retry, then a bounce); and rspamd
(3.4) reads a UTF-8 envelope address as a broken header (BROKEN_HEADERS, 8 points: a plain
message came out "add header"). So rspamd is told what it can parse: domains as A-labels
(bücher.test -> xn--bcher-kva.test, the same domain), and an address whose local part is not
ASCII (which has no ASCII form) is left out, as rspamd's own milter would have no better: it then
scores that message without that envelope address (from the headers). Every header value goes as
bytes, without control characters.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from agentmx.spamheader import SpamResult

SPAM_ACTIONS = {"reject", "add header", "rewrite subject"}
HAM_ACTIONS = {"no action", "greylist"}


@dataclass(frozen=True)
class SpamEnvelope:
    client_ip: str
    helo: str
    client_name: str
    mail_from: str
    rcpts: tuple[str, ...]
    queue_id: str | None


_CONTROLS = re.compile(rb"[\x00-\x1f\x7f]")


def _ascii_domain(domain: str) -> str | None:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def _ascii_address(address: str) -> str | None:
    """The address as rspamd can parse it, or None when its local part is not ASCII."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address if address.isascii() else None
    domain = _ascii_domain(domain)
    return f"{local}@{domain}" if local.isascii() and domain else None


def _value(text: str) -> bytes:
    """One header value as rspamd reads it: the UTF-8 bytes Postfix gave us (pymilter hands
    undecodable bytes over as surrogate escapes), without control characters."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
    return _CONTROLS.sub(b"", raw)


def check(url: str, message: bytes, env: SpamEnvelope, timeout: float) -> SpamResult:
    if not url:
        return SpamResult("unknown", reason="no rspamd configured")
    parts = urlsplit(url)
    headers = {"IP": env.client_ip, "Helo": (env.helo and _ascii_domain(env.helo)) or env.client_ip,
               "Content-Length": str(len(message))}
    mail_from = _ascii_address(env.mail_from) if env.mail_from else "<>"
    if mail_from:
        headers["From"] = mail_from
    if env.client_name and env.client_name != "unknown":
        headers["Hostname"] = env.client_name
    if env.queue_id:
        headers["Queue-Id"] = env.queue_id
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 11333, timeout=timeout)
        try:
            conn.putrequest("POST", (parts.path.rstrip("/") or "") + "/checkv2")
            for k, v in headers.items():
                conn.putheader(k, _value(v))
            for rcpt in filter(None, map(_ascii_address, env.rcpts)):
                conn.putheader("Rcpt", _value(rcpt))
            conn.endheaders(message)
            resp = conn.getresponse()
            body = resp.read(1 << 20)
        finally:
            conn.close()
    except (socket.timeout, TimeoutError):
        return SpamResult("unknown", reason=f"rspamd gave no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException) as exc:
        return SpamResult("unknown", reason=f"rspamd unreachable ({exc.__class__.__name__})")
    if resp.status != 200:
        return SpamResult("unknown", reason=f"rspamd answered HTTP {resp.status}")
    try:
        data = json.loads(body)
        action = str(data["action"])
        score, required = float(data.get("score", 0.0)), float(data.get("required_score", 0.0))
    except (ValueError, KeyError, TypeError):
        return SpamResult("unknown", reason="rspamd's answer could not be read")
    verdict = "spam" if action in SPAM_ACTIONS else "ham" if action in HAM_ACTIONS else "unknown"
    return SpamResult(verdict, round(score, 2), round(required, 2), action)
