"""One event per message, whichever MX host took it and however often: the key deliver keeps
with each event, and that put_event checks, in the transaction that keeps a new one.

The same message reaching two hosts (a sender retrying at host B after host A accepted it, a
backup MX, Postfix stopped after DATA and the client sending again) is two different raw
messages: each host adds its own Received and Authentication-Results lines and its own queue
id, so neither the raw sha256 nor the event id match. What matches is, for one recipient:

  the Message-ID                              (no Message-ID: no dedup)
  the body after the header block             (its sha256; line ends read as LF, so the pipe's
                                               LF and LMTP's CRLF copies agree)
  the envelope sender (MAIL FROM)             (a retry and a backup MX keep it; a bounce quoting
                                               the message has another)
  the DKIM and DMARC verdicts of the copy     (a forgery that fails them cannot stand for a
                                               copy that passes, nor the other way round)

kept within WINDOW (docs/decisions.md, "One event per message across MX hosts").
"""
from __future__ import annotations

import hashlib
from typing import Iterator

from agentmx import headerblock

WINDOW = 7 * 86400.0          # seconds: longer than the 5 days senders and backup MXs keep retrying


def body_chunks(raw: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    """The body after the header block (the first empty line), line ends as LF, in pieces of
    about `size` bytes: a 50 MB message is hashed without a copy of its body. Nothing without
    an empty line."""
    start = headerblock.body_start(raw)
    if start is None:
        return
    view, pos, carry = memoryview(raw), start, b""
    while pos < len(raw):
        chunk = carry + bytes(view[pos:pos + size])
        pos += size
        carry = b""
        if chunk.endswith(b"\r") and pos < len(raw):      # a CRLF split between two pieces
            chunk, carry = chunk[:-1], b"\r"
        yield chunk.replace(b"\r\n", b"\n")
    if carry:
        yield carry


def fingerprint(raw: bytes, sender: str, auth: dict) -> str:
    """The key beside recipient and Message-ID: sha256 over MAIL FROM, the verdicts and the body."""
    head = f"from={sender.lower()};dkim={auth.get('dkim') or 'none'};dmarc={auth.get('dmarc') or 'none'}\n"
    h = hashlib.sha256(head.encode("utf-8", "backslashreplace"))
    for chunk in body_chunks(raw):
        h.update(chunk)
    return h.hexdigest()
