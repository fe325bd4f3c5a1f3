"""What the milter and deliver share of the Authentication-Results header: the authserv-id it
claims (the milter removes forged headers, deliver trusts only ours) and the RFC 8601 result words
(the milter writes them, deliver reads them back). Stdlib only, cheap to import."""
from __future__ import annotations

import re

# RFC 8601 section 2.7 words used by agentmx (policy is DMARC's "policy" for local overrides).
RESULT_WORDS = frozenset(("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"))

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
