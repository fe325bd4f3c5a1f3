"""Our spam header, X-Agentmx-Spam: the milter writes it (milter/spam_check.py), deliver reads
it into `auth.spam` (deliver/authread.py), each without importing the other.

    render(authserv_id, SpamResult) -> 'mx.example.com; verdict=spam; score=15.0; ...'
    parse(value) -> {"authserv-id": ..., "verdict": ..., "score": ..., ...}
"""
from __future__ import annotations

from dataclasses import dataclass

HEADER = "X-Agentmx-Spam"


@dataclass(frozen=True)
class SpamResult:
    verdict: str                  # ham, spam, unknown
    score: float | None = None
    required: float | None = None
    action: str | None = None
    reason: str = ""


def render(authserv_id: str, res: SpamResult) -> str:
    """X-Agentmx-Spam: <authserv-id>; verdict=spam; score=15.0; required=15.0; action="reject" """
    out = f"{authserv_id}; verdict={res.verdict}"
    if res.score is not None:
        out += f"; score={res.score}; required={res.required}; action=\"{res.action}\""
    if res.reason:
        out += f"; reason=\"{res.reason.replace(chr(34), chr(39))}\""
    return out


def parse(value: str) -> dict:
    """The fields of one X-Agentmx-Spam value: {"authserv-id", "verdict", "score", ...}."""
    first, _, rest = value.partition(";")
    out: dict = {"authserv-id": first.strip().lower()}
    for item in rest.split(";"):
        k, _, v = item.strip().partition("=")
        if k:
            out[k.strip().lower()] = v.strip().strip('"')
    return out
