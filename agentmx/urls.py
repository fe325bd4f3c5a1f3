"""Signed, expiring URLs for stored blobs (raw messages, attachments), served by `agentmx serve`.

    {public_url}/v1/blobs/{sha256}?exp={unix}&type={content type}&name={filename}&sig={hex}

sig = HMAC-SHA256(url_secret, JSON ["agentmx-blob/2", sha256, exp, type, name]): one unambiguous
encoding, so no text can move from one field to another (the first version joined the fields with
newlines). A changed byte anywhere, or a time past exp, and the server answers 403. The type must
be a plain `type/subtype` and the name carries no control characters, both checked when signing
and again when serving (they become response headers). The file on disk is found by the sha256
alone: the filename is only echoed in Content-Disposition, never used as a path.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from urllib.parse import quote, urlencode

SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SIG = re.compile(r"^[0-9a-f]{64}$")
_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_NAME = 255
FALLBACK_TYPE = "application/octet-stream"


def safe_type(ctype: str | None) -> str:
    """A content type fit for a response header: lower-case type/subtype, else octet-stream."""
    ctype = (ctype or "").strip().lower()
    return ctype if _TYPE.match(ctype) else FALLBACK_TYPE


def safe_name(name: str | None) -> str:
    """A filename without control characters (line breaks included), at most 255 characters."""
    return _CONTROL.sub("_", name or "")[:MAX_NAME]


def _mac(key: str, sha: str, exp: int, ctype: str, name: str) -> str:
    msg = json.dumps(["agentmx-blob/2", sha, exp, ctype, name], ensure_ascii=True, separators=(",", ":"))
    return hmac.new(key.encode(), msg.encode("ascii"), hashlib.sha256).hexdigest()


def sign_url(public_url: str, key: str, sha: str, ctype: str, name: str, ttl: int, now: float | None = None) -> str:
    ctype, name = safe_type(ctype), safe_name(name)
    exp = int((time.time() if now is None else now) + ttl)
    query = urlencode({"exp": exp, "type": ctype, "name": name, "sig": _mac(key, sha, exp, ctype, name)},
                      quote_via=quote)
    return f"{public_url}/v1/blobs/{sha}?{query}"


def check(key: str, sha: str, exp: str | None, ctype: str, name: str, sig: str, now: float | None = None) -> str:
    """'' when valid, else the reason (for the log; the client only ever sees 403)."""
    if not SHA256.match(sha or ""):
        return "not a sha256"
    if exp is None or not re.fullmatch(r"[0-9]{1,12}", exp):   # not isdigit(): "²" is a digit to it
        return "bad exp"
    if not _SIG.match(sig or ""):
        return "bad signature"
    if not _TYPE.match(ctype or ""):
        return "bad type"
    if _CONTROL.search(name or "") or len(name or "") > MAX_NAME:
        return "bad name"
    if not hmac.compare_digest(_mac(key, sha, int(exp), ctype or "", name or ""), sig):
        return "bad signature"
    if int(exp) < (time.time() if now is None else now):
        return "expired"
    return ""
