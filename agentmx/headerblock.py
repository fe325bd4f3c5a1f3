"""Where a message's header block ends, once for the milter and deliver: at the first empty line,
whatever mix of CRLF and LF ends the lines, an empty line at the very start included (no fields,
then the body). That is where dkimpy's rfc822_parse cuts, so the milter's DKIM verification, its
signing and deliver's duplicate fingerprint read the same body.

    body_start(message) -> int | None     the offset of the body; None when there is no empty line
    split(message) -> (head, body)        head with its empty line; no empty line: no body

Not this: fromheader.py ends the block as Postfix does (at a line that is not a field, too), to
read From as Postfix passed it on; deliver's parse reads the message with the standard library's
parser, which cuts as it does.
"""
from __future__ import annotations

import re

_END = re.compile(rb"(?:\A|\r?\n)\r?\n")


def body_start(message: bytes) -> int | None:
    m = _END.search(message)
    return m.end() if m else None


def split(message: bytes) -> tuple[bytes, bytes]:
    end = body_start(message)
    return (message, b"") if end is None else (message[:end], message[end:])
