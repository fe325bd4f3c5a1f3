"""The envelope sender of each message an agent sends (VERP): `bounces+<token>@<sending domain>`.

What comes back to that address (DSNs, bounces, complaints) names the send it is about by the
token alone, and the token is signed, so a forged report cannot name a send it never saw:

    token = <the 26 characters of the send id after "snd_"> "-" <signature>
    signature = lowercase base32 of the first 10 bytes of HMAC-SHA256(key, send_id)   (16 chars)
    key = HMAC-SHA256(url_secret, b"agentmx verp v1")   (the operator's secret, for this purpose only)

Checked case-insensitively (some MTAs change the case of what they return), in constant time.
Pure: no I/O, no configuration object (the caller passes the key).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re

LOCAL = "bounces"
MAX_RECIPIENT = 320                   # 64 (local part) + 1 + 255 (domain): longer is not an address
_ID = re.compile(r"[a-z2-7]{26}")
_TOKEN = re.compile(r"([a-z2-7]{26})-([a-z2-7]{16})")
_PURPOSE = b"agentmx verp v1"


class ForgedToken(ValueError):
    """A report address without a valid token; str() is a short reason: "no token",
    "malformed token" or "bad signature"."""


def key_from(secret: str) -> bytes:
    """The VERP key, derived from the operator's url_secret and used for nothing else."""
    return hmac.new(secret.encode("utf-8", "surrogatepass"), _PURPOSE, hashlib.sha256).digest()


def _signature(send_id: str, key: bytes) -> str:
    mac = hmac.new(key, send_id.encode("ascii"), hashlib.sha256).digest()[:10]
    return base64.b32encode(mac).decode("ascii").lower()         # 10 bytes: 16 chars, no padding


def address(send_id: str, domain: str, key: bytes, local: str = LOCAL) -> str:
    """The envelope sender for one send: `bounces+<id chars>-<signature>@domain`."""
    if not (send_id.startswith("snd_") and _ID.fullmatch(send_id[4:])):
        raise ValueError(f"not a send id: {send_id[:40]!r}")
    local_part = f"{local}+{send_id[4:]}-{_signature(send_id, key)}"
    assert len(local_part) <= 64, local_part                     # RFC 5321 4.5.3.1.1
    return f"{local_part}@{domain}"


def _local_part(recipient: str) -> str | None:
    """The local part of a bare or <>-bracketed address, lower case; None without an @."""
    value = recipient.strip().strip("<>").strip()
    if "@" not in value:
        return None
    return value.rpartition("@")[0].lower()


def is_report_address(recipient: str, local: str = LOCAL) -> bool:
    """True when the recipient's local part is `local` or `local+anything` (any case)."""
    if len(recipient) > MAX_RECIPIENT:
        return False
    part = _local_part(recipient)
    local = local.lower()
    return part is not None and (part == local or part.startswith(local + "+"))


def check(recipient: str, key: bytes, local: str = LOCAL) -> str:
    """The send id (`snd_...`) a report address names; ForgedToken when it names none validly."""
    if len(recipient) > MAX_RECIPIENT:
        raise ForgedToken("malformed token")
    part = _local_part(recipient)
    local = local.lower()
    if part is None or not (part == local or part.startswith(local + "+")):
        raise ForgedToken("no token")
    token = part[len(local) + 1:]
    if not token:
        raise ForgedToken("no token")
    match = _TOKEN.fullmatch(token)
    if not match:
        raise ForgedToken("malformed token")
    send_id = "snd_" + match.group(1)
    if not hmac.compare_digest(_signature(send_id, key), match.group(2)):
        raise ForgedToken("bad signature")
    return send_id
