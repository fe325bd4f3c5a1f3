"""DKIM signing of our own outbound mail (the milter's sign mode): one pure call.

sign(message, keys) -> the DKIM-Signature header values to add, one per key (RSA and ed25519
both when both are configured): relaxed/relaxed; the headers that carry meaning are signed, and
OVERSIGNED ones once more than they occur (absent ones once), so that none can be added later
without breaking the signature (RFC 6376 8.15). The header is laid out as dkimpy's dkim.sign()
lays it out; the signature is OpenSSL's (RSA, through `cryptography`) or libsodium's (ed25519),
with the key loaded once at start (DkimKey.signer).
"""
from __future__ import annotations

import base64
import re
import time

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from agentmx import headerblock
from agentmx.dkimkeys import DkimKey
from agentmx.fromheader import authors

from . import dkimcrypto

SIGNED = ("from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
          "references", "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
          "auto-submitted", "list-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id")
OVERSIGNED = {"from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
              "references", "mime-version", "content-type", "content-transfer-encoding", "auto-submitted"}
_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def include_headers(message: bytes) -> list[bytes]:
    names = [n.lower().decode() for n in _NAME.findall(headerblock.split(message)[0])]
    out = []
    for name in SIGNED:
        count = names.count(name) + (1 if name in OVERSIGNED else 0)
        out.extend([name.encode()] * count)
    return out


def sign(message: bytes, keys: list[DkimKey], now: float | None = None,
         body_digest: bytes | None = None) -> list[str]:
    """Header values (without the field name, with a leading space, folded with LF + tab).
    `body_digest`: the relaxed body hash, streamed by the milter (bodyhash.py); `message` is then
    the header block alone."""
    headers, body = dkim.rfc822_parse(message)
    include = include_headers(message)
    if body_digest is None:
        body_digest = dkimcrypto.Bodies(body=body).hash(_RELAXED)
    bh = base64.b64encode(body_digest)
    t = str(int(time.time() if now is None else now)).encode()
    return [_signature(headers, include, bh, t, key) for key in keys]


_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_NAME_LEN = len(b"DKIM-Signature")


def _signature(headers: list, include: list[bytes], bh: bytes, t: bytes, key: DkimKey) -> str:
    domain, selector = key.domain.encode(), key.selector.encode()
    fields = [(b"v", b"1"), (b"a", key.dkim_algorithm), (b"c", b"relaxed/relaxed"), (b"d", domain),
              (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", selector), (b"t", t),
              (b"h", b" : ".join(include)), (b"bh", bh),
              (b"b", b"0" * 60)]    # a long placeholder folds b= onto its own line, as dkimpy does
    unsigned = dkim.RE_BTAG.sub(b"\\1", dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=_NAME_LEN))
    digest = dkimcrypto.header_digest(headers, _RELAXED, include, (b"DKIM-Signature", b" " + unsigned))
    fields[-1] = (b"b", base64.b64encode(dkimcrypto.sign(key.signer, digest)))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=_NAME_LEN)
    return " " + value.decode("ascii").rstrip("\r\n").replace("\r\n", "\n")


def from_domain(from_values: list[str]) -> str | None:
    """The one domain of the From header, or None (no From, several From fields, several
    domains, or one that is no domain name): read as DMARC reads it (agentmx/fromheader.py)."""
    return authors(from_values).single_domain
