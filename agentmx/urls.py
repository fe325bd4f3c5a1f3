"""Signed, expiring URLs for stored blobs (raw messages, attachments), served by `agentmx serve`.

    {public_url}/v1/blobs/{sha256}?exp={unix}&type={content type}&name={filename}&sig={hex}

sig = HMAC-SHA256(url_secret, "sha256\\nexp\\ntype\\nname"). A changed byte anywhere, or a time past
exp, and the server answers 403. The file on disk is found by the sha256 alone: the filename is
only echoed in Content-Disposition, never used as a path.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import time
from urllib.parse import quote, urlencode

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _mac(key: str, sha: str, exp: int, ctype: str, name: str) -> str:
    msg = "\n".join([sha, str(exp), ctype, name]).encode("utf-8", "surrogatepass")
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def sign_url(public_url: str, key: str, sha: str, ctype: str, name: str, ttl: int, now: float | None = None) -> str:
    exp = int((time.time() if now is None else now) + ttl)
    query = urlencode({"exp": exp, "type": ctype, "name": name, "sig": _mac(key, sha, exp, ctype, name)},
                      quote_via=quote)
    return f"{public_url}/v1/blobs/{sha}?{query}"


def check(key: str, sha: str, exp: str, ctype: str, name: str, sig: str, now: float | None = None) -> str:
    """'' when valid, else the reason (for the log; the client only ever sees 403)."""
    if not SHA256.match(sha or ""):
        return "not a sha256"
    try:
        exp_i = int(exp)
    except (TypeError, ValueError):
        return "bad exp"
    if not hmac.compare_digest(_mac(key, sha, exp_i, ctype or "", name or ""), sig or ""):
        return "bad signature"
    if exp_i < (time.time() if now is None else now):
        return "expired"
    return ""
