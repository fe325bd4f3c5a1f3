"""The `auth` field of the event, read from our own Authentication-Results header only.

Trusted: the first Authentication-Results header whose authserv-id is ours AND that stands above
every Received header (the milter inserts it at the top, above the Received line our Postfix
adds; a header the sender wrote sits below it). Anything else is ignored. A message without it
says `none` for every method, never `pass`.
"""
from __future__ import annotations

import re

import authres

from agentmx.authservid import RESULT_WORDS, authserv_id_of
from agentmx.spamheader import HEADER, parse


def _word(value) -> str:
    value = str(value or "none").lower()
    return value if value in RESULT_WORDS else "permerror"


def empty(authserv_id: str, note: str) -> dict:
    return {"spf": "none", "dkim": "none", "dmarc": "none", "arc": "none", "spam": "unknown", "iprev": "none",
            "authservId": authserv_id,
            "details": {"spf": None, "spfHelo": None, "dkim": [], "dmarc": None, "arc": None, "iprev": None,
                        "note": note}}


# The comment after policy.iprev in our own header (authres does not keep it): the PTR names
# checked, the confirmed one first (milter/arheader.py renders it; host names only).
_IPREV_NAMES = re.compile(r'(?:^|;)\s*iprev=[^;]*?policy\.iprev=(?:"[^"]*"|[^\s;()]+)\s*\(([a-z0-9.\- ]*)\)', re.I)


def _iprev(r, header: str) -> dict:
    found = _IPREV_NAMES.search(header)
    names = [n for n in found.group(1).lower().split() if len(n) <= 253][:10] if found else []
    result = _word(r.result)
    result = result if result in ("pass", "fail", "none", "temperror", "permerror") else "permerror"
    return {"result": result, "ip": getattr(r, "policy_iprev", None), "names": names,
            "confirmed": names[0] if result == "pass" and names else None, "reason": getattr(r, "reason", None)}


def read_spam(headers: list[tuple[str, str]], authserv_id: str) -> tuple[str, dict | None]:
    """(verdict, details) from our X-Agentmx-Spam header above every Received line, else unknown."""
    for name, value in headers:
        lname = name.lower()
        if lname == "received":
            break
        if lname == HEADER.lower():
            fields = parse(value)
            if fields.get("authserv-id") != authserv_id.lower():
                continue
            verdict = fields.get("verdict") if fields.get("verdict") in ("ham", "spam", "unknown") else "unknown"
            return verdict, {"verdict": verdict, "score": _number(fields, "score"),
                             "required": _number(fields, "required"), "action": fields.get("action"),
                             "reason": fields.get("reason")}
    return "unknown", None


def _number(fields: dict, key: str) -> float | None:
    try:
        return float(fields[key])
    except (KeyError, ValueError):
        return None


OVERRIDES = {"trusted_forwarder"}          # milter/arc_override.py (RFC 9990's PolicyOverrideType)
DISPOSITIONS = {"none", "quarantine", "reject"}


def _override(props: dict) -> dict | None:
    """A policy override our milter wrote (policy.override-reason and its companions), or None."""
    kind = str(props.get(("policy", "override-reason")) or "").lower()
    if kind not in OVERRIDES:
        return None
    evaluated = str(props.get(("policy", "evaluated-disposition")) or "").lower()
    return {"type": kind, "sealer": str(props.get(("policy", "arc-sealer")) or "")[:253].lower() or None,
            "evaluatedDisposition": evaluated if evaluated in DISPOSITIONS else None}


_DMARC_COMMENT = re.compile(r";\s*dmarc\s*=\s*[a-z]+\s*(?:reason\s*=\s*\"\"\s*)?\(([^()]*)\)", re.I)


def _dmarc_comment(value: str) -> str:
    """The comment after our dmarc=<result> (dis=, record=, org=), outside quoted reasons."""
    m = _DMARC_COMMENT.search(re.sub(r'"[^"]*"', '""', " ".join(value.split())))
    return m.group(1) if m else ""


def read_auth(headers: list[tuple[str, str]], authserv_id: str) -> dict:
    out = _read_auth(headers, authserv_id)
    out["spam"], out["details"]["spam"] = read_spam(headers, authserv_id)
    return out


def _read_auth(headers: list[tuple[str, str]], authserv_id: str) -> dict:
    ours = None
    for name, value in headers:
        lname = name.lower()
        if lname == "received":
            break
        if lname == "authentication-results" and authserv_id_of(value) == authserv_id.lower():
            ours = value
            break
    if ours is None:
        return empty(authserv_id, "no Authentication-Results header of ours: not verified")
    try:
        parsed = authres.all_features().parse_value(" ".join(ours.split()))
    except Exception as exc:
        return empty(authserv_id, f"our Authentication-Results header could not be read ({exc.__class__.__name__})")
    out = empty(authserv_id, "")
    details = out["details"]
    dkims = []
    for r in parsed.results:
        method = getattr(r, "method", None)   # "; none" among results parses as a result without one
        if method == "spf":
            entry = {"result": _word(r.result), "reason": getattr(r, "reason", None)}
            if getattr(r, "smtp_helo", None):
                details["spfHelo"] = {**entry, "helo": r.smtp_helo}
            else:
                mailfrom = getattr(r, "smtp_mailfrom", None)
                details["spf"] = {**entry, "mailFrom": mailfrom,
                                  "domain": mailfrom.rpartition("@")[2] if mailfrom else None}
                out["spf"] = entry["result"]
        elif method == "dkim":
            props = {(p.type, p.name): p.value for p in r.properties}
            dkims.append({"result": _word(r.result), "domain": props.get(("header", "d")),
                          "selector": props.get(("header", "s")), "algorithm": props.get(("header", "a")),
                          "reason": getattr(r, "reason", None)})
        elif method == "arc":
            out["arc"] = _word(r.result)
            details["arc"] = {"result": out["arc"], "reason": getattr(r, "reason", None)}
        elif method == "iprev":
            details["iprev"] = _iprev(r, " ".join(ours.split()))
            out["iprev"] = details["iprev"]["result"]
        elif method == "dmarc":
            props = {(p.type, p.name): p.value for p in r.properties}
            comment = r.result_comment or _dmarc_comment(ours)     # authres drops result comments
            dis = next((part.split("=", 1)[1] for part in comment.split() if part.startswith("dis=")), None)
            walk = dict(part.split("=", 1) for part in comment.split() if part.startswith(("record=", "org=")))
            out["dmarc"] = _word(r.result)
            details["dmarc"] = {"result": out["dmarc"], "from": props.get(("header", "from")),
                                "policy": props.get(("policy", "dmarc")), "disposition": dis,
                                "reason": getattr(r, "reason", None), "override": _override(props),
                                "recordDomain": walk.get("record"), "orgDomain": walk.get("org")}
            if details["dmarc"]["override"]:
                details["dmarc"]["disposition"] = "none"
    details["dkim"] = [d for d in dkims if d["domain"] or d["result"] != "none"]
    if details["dkim"]:
        out["dkim"] = "pass" if any(d["result"] == "pass" for d in details["dkim"]) else details["dkim"][0]["result"]
    details["note"] = None
    return out
