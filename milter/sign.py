"""DKIM signing of our own outbound mail (the milter's sign mode): one pure call.

sign(message, keys) -> the DKIM-Signature header values to add, one per key (RSA and ed25519
both when both are configured): relaxed/relaxed; the headers that carry meaning are signed, and
OVERSIGNED ones once more than they occur (absent ones once), so that none can be added later
without breaking the signature (RFC 6376 8.15).
"""
from __future__ import annotations

import logging
import re

import dkim

from agentmx.dkimkeys import DkimKey

_dkimpy_log = logging.getLogger("agentmx.milter.dkimpy")

SIGNED = ("from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
          "references", "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
          "auto-submitted", "list-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id")
OVERSIGNED = {"from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
              "references", "mime-version", "content-type", "content-transfer-encoding", "auto-submitted"}
_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def include_headers(message: bytes) -> list[bytes]:
    end = message.find(b"\r\n\r\n")
    names = [n.lower().decode() for n in _NAME.findall(message if end < 0 else message[:end + 2])]
    out = []
    for name in SIGNED:
        count = names.count(name) + (1 if name in OVERSIGNED else 0)
        out.extend([name.encode()] * count)
    return out


def sign(message: bytes, keys: list[DkimKey]) -> list[str]:
    """Header values (without the field name, with a leading space, folded with LF + tab)."""
    values = []
    headers = include_headers(message)
    for key in keys:
        header = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private,
                           signature_algorithm=key.dkimpy_algorithm, canonicalize=(b"relaxed", b"relaxed"),
                           include_headers=headers, linesep=b"\r\n", logger=_dkimpy_log)
        name, _, value = header.decode("ascii").partition(":")
        assert name.lower() == "dkim-signature"
        values.append(value.rstrip("\r\n").replace("\r\n", "\n"))
    return values


def from_domain(from_values: list[str]) -> str | None:
    """The one domain of the From header, or None (no From, several From fields, several
    domains, or one that is no domain name): read as DMARC reads it (agentmx/fromheader.py)."""
    from agentmx.fromheader import authors
    return authors(from_values).single_domain
