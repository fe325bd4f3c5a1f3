"""Standard Webhooks signing and verification (https://www.standardwebhooks.com/), and the
optional MailKite header. Stdlib only: the pipe program imports this per message.

    headers = sign_headers(secret, msg_id, body)                # what deliver sends
    verify(headers, body, secret)                               # what a receiver calls

Secrets are "whsec_" + base64 of the key. Signatures: "v1," + base64(HMAC-SHA256(key,
"{id}.{timestamp}.{body}")); several may be sent space-separated during key rotation, and verify()
accepts the request when any one matches.

MailKite: x-mailkite-signature: t=<unix ms>,v1=<hex HMAC-SHA256 keyed with the whole whsec_ string
as UTF-8, over "<t>." + body>.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Mapping

DEFAULT_TOLERANCE = 5 * 60      # seconds a signed timestamp may be old (or ahead)


class WebhookVerificationError(ValueError):
    """The request is not authentic: missing headers, old timestamp, or no matching signature."""


MIN_KEY_BYTES = 16             # a shorter HMAC key is refused (setup makes 32 random bytes)
MAX_SECRET_CHARS = 1024


def key_of(secret: str) -> bytes:
    """The HMAC key of a whsec_ secret: strict base64 (the alphabet, padded, nothing else), at
    least MIN_KEY_BYTES. ValueError (never quoting the secret) otherwise: config.py refuses such a
    secret at load, so that no delivery fails on it later."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ValueError("it starts with whsec_")
    text = secret[len("whsec_"):]
    if len(text) > MAX_SECRET_CHARS:
        raise ValueError(f"at most {MAX_SECRET_CHARS} characters after whsec_")
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("what follows whsec_ is not strict base64 (A-Z a-z 0-9 + /, padded with =)") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key after whsec_ decodes to {len(key)} bytes, fewer than {MIN_KEY_BYTES}")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key_of(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign_headers(secrets: str | list[str], msg_id: str, body: bytes, timestamp: int | None = None,
                 mailkite: bool = True) -> dict[str, str]:
    """The headers of one signed delivery. `secrets`: one, or several during a key rotation."""
    if isinstance(secrets, str):
        secrets = [secrets]
    ts = int(time.time()) if timestamp is None else int(timestamp)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signature(s, msg_id, ts, body) for s in secrets),
    }
    if mailkite:
        t_ms = ts * 1000
        mac = hmac.new(secrets[0].encode("utf-8"), f"{t_ms}.".encode() + body, hashlib.sha256)
        headers["x-mailkite-signature"] = f"t={t_ms},v1={mac.hexdigest()}"
    return headers


def verify(headers: Mapping[str, str], body: bytes | str, secret: str,
           tolerance: int = DEFAULT_TOLERANCE, now: float | None = None) -> None:
    """Raise WebhookVerificationError unless the request was signed with `secret`, recently."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    ts_text = lower.get("webhook-timestamp")
    sigs = lower.get("webhook-signature")
    if not (msg_id and ts_text and sigs):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    if isinstance(body, str):
        body = body.encode("utf-8")
    expected = signature(secret, msg_id, ts, body).split(",", 1)[1].encode()
    for candidate in sigs.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise WebhookVerificationError("no signature matches")


def verify_mailkite(headers: Mapping[str, str], body: bytes, secret: str,
                    tolerance: int = DEFAULT_TOLERANCE, now: float | None = None) -> None:
    """Verify the MailKite-style header, for receivers written against MailKite."""
    lower = {k.lower(): v for k, v in headers.items()}
    parts = dict(p.split("=", 1) for p in lower.get("x-mailkite-signature", "").split(",") if "=" in p)
    try:
        t_ms = int(parts["t"])
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or bad x-mailkite-signature") from None
    current = time.time() if now is None else now
    if abs(current - t_ms / 1000) > tolerance:
        raise WebhookVerificationError("x-mailkite-signature timestamp is outside the tolerance window")
    mac = hmac.new(secret.encode("utf-8"), f"{t_ms}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, parts.get("v1", "")):
        raise WebhookVerificationError("x-mailkite-signature does not match")
