"""DMARC (RFC 7489): record discovery, alignment, result and the policy that would apply.

discover_record(): _dmarc.<From domain>, then _dmarc.<organizational domain>; a name with several
v=DMARC1 records has none (and the walk stops there); a DNS failure is temperror.
evaluate(): pass when an SPF or DKIM pass is aligned with the From domain (relaxed: same
organizational domain; strict: the same name); fail otherwise, or temperror when an identifier
that could have aligned could not be checked because of DNS.
The author domains are every domain of every From field (agentmx/fromheader.py). Only one From
field naming one domain can pass; otherwise (RFC 9989 5.3.1 and 11.5) each domain, up to
MAX_AUTHOR_DOMAINS, is evaluated on its own and the strictest policy among those that fail
applies, so that a second From cannot hide a domain whose policy would reject the message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable

from agentmx.resolver import DnsTempError, Lookups

from agentmx.fromheader import authors
from agentmx.orgdomain import normalize, org_domain
from .results import DkimResult, DmarcRecord, DmarcResult, SpfResult

_POLICIES = ("none", "quarantine", "reject")
MAX_AUTHOR_DOMAINS = 5     # From domains evaluated when there are several (RFC 9989 11.5: a bound)
_TAG = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.S)
_VERSION = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)", re.I)


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC record, or None when it is not one or asks for no DMARC processing (6.6.3 step 6)."""
    parts = text.split(";")
    first = _TAG.match(parts[0])
    if not first or first.group(1).lower() != "v" or first.group(2) != "DMARC1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        m = _TAG.match(part)
        if m:
            tags.setdefault(m.group(1).lower(), m.group(2))
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or None
    rua = tags.get("rua") or None
    if p not in _POLICIES or (sp is not None and sp not in _POLICIES):
        # No valid p (or a bad sp): act as p=none when there is a reporting address, else no DMARC.
        if not rua or not re.search(r"^\s*[a-z][a-z0-9+.-]*:", rua, re.I):
            return None
        p, sp = "none", None
    return DmarcRecord(
        raw=text,
        p=p,
        sp=sp,
        adkim=_choice(tags.get("adkim"), ("r", "s"), "r"),
        aspf=_choice(tags.get("aspf"), ("r", "s"), "r"),
        pct=_int(tags.get("pct"), 0, 100, 100),
        rua=rua,
        ruf=tags.get("ruf") or None,
        fo=tags.get("fo", "0"),
        ri=_int(tags.get("ri"), 0, 2**32 - 1, 86400),
    )


def _choice(value: str | None, allowed: tuple[str, ...], default: str) -> str:
    value = (value or "").lower()
    return value if value in allowed else default   # syntax errors take the default (6.3)


def _int(value: str | None, lo: int, hi: int, default: int) -> int:
    if value is not None and value.strip().isdigit():
        n = int(value)
        if lo <= n <= hi:
            return n
    return default


@dataclass(frozen=True)
class Discovery:
    record: DmarcRecord | None
    domain: str            # where it was found ("" when none)
    is_org: bool           # found at the organizational domain, not the From domain


def _records_at(lookups: Lookups, domain: str) -> list[str]:
    texts = []
    for raw in lookups.txt(f"_dmarc.{domain}"):
        text = raw.decode("utf-8", "replace")
        if _VERSION.match(text):
            texts.append(text)
    return texts


def discover_record(lookups: Lookups, from_domain: str) -> Discovery:
    """RFC 7489 section 6.6.3. Raises DnsTempError when a lookup fails."""
    candidates = [from_domain]
    org = org_domain(from_domain)
    if org and org != from_domain:
        candidates.append(org)
    for domain in candidates:
        texts = _records_at(lookups, domain)
        if len(texts) > 1:
            return Discovery(None, "", False)          # several records: none, and no walk on
        if texts:
            record = parse_record(texts[0])
            if record is None:
                return Discovery(None, "", False)
            return Discovery(record, domain, domain != from_domain)
    return Discovery(None, "", False)


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    domain = normalize(domain)
    if not domain:
        return False
    if mode == "s":
        return domain == from_domain
    return org_domain(domain) == org_domain(from_domain)


def evaluate(lookups: Lookups, from_values: Iterable[str], spf: SpfResult,
             dkim: Iterable[DkimResult], sample: float = 0.0) -> DmarcResult:
    """The DMARC result for one message. `sample` in [0, 1) is compared with pct/100."""
    who = authors(from_values)
    dkim = list(dkim)
    if not who.problem:
        return _evaluate_domain(lookups, who.domains[0], spf, dkim, sample)
    # RFC 9989 5.3.1: with zero or several author domains DMARC validation "is not possible"
    # (nor with a repeated From field, 4.4), so the message never passes; 11.5: a receiver that
    # goes on evaluates each domain and applies the strictest policy among those that fail.
    each = tuple(_evaluate_domain(lookups, d, spf, dkim, sample) for d in who.domains[:MAX_AUTHOR_DOMAINS])
    skipped = len(who.domains) - len(each)
    problem = who.problem + (f"; only the first {MAX_AUTHOR_DOMAINS} checked" if skipped > 0 else "")
    failed = [r for r in each if r.result == "fail"]
    if failed:
        worst = max(failed, key=lambda r: (_POLICIES.index(r.disposition), _POLICIES.index(r.policy)))
        return replace(worst, reason=f"{problem}; {worst.from_domain} fails: {worst.reason}", each=each)
    temp = [r for r in each if r.result == "temperror"]
    if temp:
        return DmarcResult("temperror", from_domain=temp[0].from_domain, each=each,
                           reason=f"{problem}; {temp[0].from_domain}: {temp[0].reason}")
    verdicts = ", ".join(f"{r.from_domain} {r.result}" for r in each)
    return DmarcResult("permerror", from_domain=who.domains[0] if who.domains else "", each=each,
                       reason=f"{problem}" + (f"; none fails ({verdicts})" if each else ""))


def _evaluate_domain(lookups: Lookups, from_domain: str, spf: SpfResult, dkim: list[DkimResult],
                     sample: float) -> DmarcResult:
    """RFC 7489 for one author domain."""
    try:
        found = discover_record(lookups, from_domain)
    except DnsTempError as exc:
        return DmarcResult("temperror", from_domain=from_domain, reason=f"record lookup failed: {exc}")
    if found.record is None:
        return DmarcResult("none", from_domain=from_domain, reason="no DMARC record")
    rec = found.record
    policy = rec.sp if (found.is_org and rec.sp) else rec.p

    dkim_ok = next((d.domain for d in dkim if d.result == "pass"
                    and aligned(d.domain, from_domain, rec.adkim)), None)
    spf_ok = spf.domain if (spf.result == "pass" and aligned(spf.domain, from_domain, rec.aspf)) else None
    common = dict(from_domain=from_domain, record_domain=found.domain, record=rec, policy=policy,
                  dkim_aligned=dkim_ok, spf_aligned=spf_ok)
    if dkim_ok or spf_ok:
        via = f"DKIM d={dkim_ok}" if dkim_ok else f"SPF {spf_ok}"
        return DmarcResult("pass", disposition="none", reason=f"aligned {via}", **common)

    temp = [f"DKIM d={d.domain}" for d in dkim if d.result == "temperror"
            and aligned(d.domain, from_domain, rec.adkim)]
    if spf.result == "temperror" and aligned(spf.domain, from_domain, rec.aspf):
        temp.append(f"SPF {spf.domain}")
    if temp:
        return DmarcResult("temperror", disposition="none",
                           reason="could not check " + ", ".join(temp), **common)

    disposition = policy
    if sample * 100 >= rec.pct:          # not sampled: the next policy down (6.6.4)
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult("fail", disposition=disposition, reason=_why_fail(dkim, spf, from_domain, rec),
                       **common)


def _why_fail(dkim: list[DkimResult], spf: SpfResult, from_domain: str, rec: DmarcRecord) -> str:
    parts = []
    if not dkim:
        parts.append("no DKIM signature")
    for d in dkim:
        if d.result != "pass":
            parts.append(f"DKIM d={d.domain or '?'} {d.result}" + (f" ({d.reason})" if d.reason else ""))
        else:
            parts.append(f"DKIM d={d.domain} passed but is not aligned "
                         f"({'strict' if rec.adkim == 's' else 'relaxed'}) with {from_domain}")
    if spf.result != "pass":
        parts.append(f"SPF {spf.domain or '?'} {spf.result}")
    else:
        parts.append(f"SPF {spf.domain} passed but is not aligned "
                     f"({'strict' if rec.aspf == 's' else 'relaxed'}) with {from_domain}")
    return "; ".join(parts)
