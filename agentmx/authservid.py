"""The authserv-id an Authentication-Results header claims: shared by the milter (which removes
forged headers) and deliver (which trusts only ours). Stdlib only, cheap to import."""
from __future__ import annotations

import re

_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims (lower case), '' if none."""
    text = value
    for _ in range(5):                       # nested comments, innermost first
        stripped = _COMMENT.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    token = re.split(r"[;\s]", text.strip(), maxsplit=1)[0] if text.strip() else ""
    return token.strip('"').rstrip(".").lower()


def claims_id(value: str, authserv_id: str) -> bool:
    return authserv_id_of(value) == authserv_id.lower().rstrip(".")
