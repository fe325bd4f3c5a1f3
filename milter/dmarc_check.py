"""DMARC, per RFC 9989 (DMARCbis, the default) or RFC 7489 ([milter] dmarc, DmarcMode): record
discovery, alignment, result and the policy that would apply.

discover_record(), RFC 9989: _dmarc.<From domain>, else a DNS Tree Walk (section 4.10: at most
eight queries, agentmx/orgdomain.walk_names) up to a record with psd=y or psd=n or the top; the
Organizational Domain is chosen from what the walk found (4.10.2) and its record applies, else
the psd=y record's (4.10.1). Several v=DMARC1 records at the From domain: no policy; at a name
above it: that name is passed over. RFC 7489: _dmarc.<From domain>, then _dmarc.<organizational
domain from the public suffix list>; several records anywhere: none.
Any DNS failure on the way is temperror, never fail or none.
evaluate(): pass when an SPF or DKIM pass is aligned with the From domain (relaxed: the same
Organizational Domain, in RFC 9989 each identifier's own from its own walk; strict: the same
name); fail otherwise, or temperror when an identifier that could have aligned could not be
checked because of DNS. RFC 9989: sp for an existing subdomain, np for one that does not exist
(NXDOMAIN), t=y one policy step down, pct ignored. RFC 7489: pct samples the policy.
The author domains are every domain of every From field (agentmx/fromheader.py). Only one From
field naming one domain can pass; otherwise (RFC 9989 5.3.1 and 11.5) each domain, up to
MAX_AUTHOR_DOMAINS, is evaluated on its own and the strictest policy among those that fail
applies, so that a second From cannot hide a domain whose policy would reject the message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable

import ipaddress

from agentmx.resolver import DnsTempError, Lookups

from agentmx.config import DmarcMode
from agentmx.fromheader import authors
from agentmx.orgdomain import normalize, org_domain, org_from_walk, walk_names
from .results import DkimResult, DmarcRecord, DmarcResult, SpfResult

_POLICIES = ("none", "quarantine", "reject")
MAX_AUTHOR_DOMAINS = 5     # From domains evaluated when there are several (RFC 9989 11.5: a bound)
_TAG = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.S)
_VERSION = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)", re.I)
_VERSION_BIS = re.compile(r"^[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(;|$)")   # RFC 9989 4.7: "DMARC1" exactly
_PSD = re.compile(r";\s*psd\s*=\s*([a-z]*)\s*(?=;|$)", re.I)
MAX_ALIGNMENT_WALKS = 10   # RFC 9989: walks for identifiers' Organizational Domains, per author domain
_STEP_DOWN = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def parse_record(text: str, mode: DmarcMode = DmarcMode.RFC9989) -> DmarcRecord | None:
    """A DMARC record, or None when it is not one or asks for no DMARC processing (RFC 7489 6.6.3
    step 6, RFC 9989 4.10.1: no valid p, or an invalid sp or, in RFC 9989, np, without a rua)."""
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
    np = (tags.get("np", "").lower() or None) if mode is DmarcMode.RFC9989 else None
    if p not in _POLICIES or (sp is not None and sp not in _POLICIES) or (np is not None and np not in _POLICIES):
        # No valid p (or a bad sp): act as p=none when there is a reporting address, else no DMARC.
        if not rua or not re.search(r"^\s*[a-z][a-z0-9+.-]*:", rua, re.I):
            return None
        p, sp, np = "none", None, None
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
        np=np,
        psd=_choice(tags.get("psd"), ("y", "n", "u"), "u"),
        t=_choice(tags.get("t"), ("y", "n"), "n"),
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
    is_org: bool           # found above the From domain (its organizational domain, or its PSD)
    org: str = ""          # the From domain's Organizational Domain ("" when unknown)
    walk: tuple[str, ...] = ()   # RFC 9989: the names where the walk found one record ("name psd=y")
    org_error: str = ""    # RFC 9989: the walk above a record found at the From domain failed (DNS)


def _records_at(lookups: Lookups, domain: str, version: re.Pattern = _VERSION) -> list[str]:
    texts = []
    for raw in lookups.txt(f"_dmarc.{domain}"):
        text = raw.decode("utf-8", "replace")
        if version.match(text):
            texts.append(text)
    return texts


def discover_record(lookups: Lookups, from_domain: str, mode: DmarcMode = DmarcMode.RFC9989) -> Discovery:
    """The record that applies to from_domain. Raises DnsTempError when a lookup it needs fails."""
    if mode is DmarcMode.RFC9989:
        return _discover_9989(lookups, from_domain)
    return _discover_7489(lookups, from_domain)


def _discover_7489(lookups: Lookups, from_domain: str) -> Discovery:
    """RFC 7489 section 6.6.3."""
    candidates = [from_domain]
    org = org_domain(from_domain)
    if org and org != from_domain:
        candidates.append(org)
    for domain in candidates:
        texts = _records_at(lookups, domain)
        if len(texts) > 1:
            return Discovery(None, "", False, org)     # several records: none, and no walk on
        if texts:
            record = parse_record(texts[0], DmarcMode.RFC7489)
            if record is None:
                return Discovery(None, "", False, org)
            return Discovery(record, domain, domain != from_domain, org)
    return Discovery(None, "", False, org)


def _is_address(domain: str) -> bool:
    try:
        ipaddress.ip_address(domain.strip("[]"))
        return True
    except ValueError:
        return False


def _psd(text: str) -> str:
    """The psd value of a record, read on its own so that a record without a valid p still stops
    the walk where its publisher said (RFC 9989 4.10 steps 2 and 6)."""
    m = _PSD.search(text)
    value = m.group(1).lower() if m else "u"
    return value if value in ("y", "n") else "u"


def tree_walk(lookups: Lookups, start: str) -> list[tuple[str, str, str]]:
    """RFC 9989 4.10: (name, record, psd) for each name where one DMARC record was found, longest
    name first; a name with several is passed over; a record with psd=y or psd=n ends the walk.
    At most eight queries (orgdomain.walk_names). Raises DnsTempError when any query fails."""
    found = []
    for name in walk_names(start):
        texts = _records_at(lookups, name, _VERSION_BIS)
        if len(texts) != 1:
            continue
        psd = _psd(texts[0])
        found.append((name, texts[0], psd))
        if psd in ("y", "n"):
            break
    return found


def _walk_summary(found: list[tuple[str, str, str]]) -> tuple[str, ...]:
    return tuple(name + (f" psd={psd}" if psd != "u" else "") for name, _, psd in found)


def _discover_9989(lookups: Lookups, from_domain: str) -> Discovery:
    """RFC 9989 4.10.1 (policy) and 4.10.2 (the Organizational Domain), from one walk."""
    if not from_domain or _is_address(from_domain):
        return Discovery(None, "", False, from_domain)
    own = _records_at(lookups, from_domain, _VERSION_BIS)
    if len(own) > 1:
        return Discovery(None, "", False)              # several records at the From domain: none
    if own:
        record = parse_record(own[0], DmarcMode.RFC9989)
        if record is None:
            return Discovery(None, "", False)
        try:                                           # the record applies whatever is above it;
            found = tree_walk(lookups, from_domain)    # the walk gives the Organizational Domain
        except DnsTempError as exc:
            return Discovery(record, from_domain, False, "", (from_domain,), org_error=str(exc))
        return Discovery(record, from_domain, False, org_from_walk(from_domain, [(n, p) for n, _, p in found]),
                         _walk_summary(found))
    found = tree_walk(lookups, from_domain)
    org = org_from_walk(from_domain, [(n, p) for n, _, p in found])
    walk = _walk_summary(found)
    chosen = next((f for f in found if f[0] == org), None)
    if chosen is None and found and found[-1][2] == "y":
        chosen = found[-1]                             # the Public Suffix Domain's record
    if chosen is None:
        return Discovery(None, "", False, org, walk)
    record = parse_record(chosen[1], DmarcMode.RFC9989)
    if record is None:
        return Discovery(None, "", False, org, walk)
    return Discovery(record, chosen[0], chosen[0] != from_domain, org, walk)


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 alignment (the public suffix list)."""
    domain = normalize(domain)
    if not domain:
        return False
    if mode == "s":
        return domain == from_domain
    return org_domain(domain) == org_domain(from_domain)


class _Aligner:
    """RFC 9989 alignment for one author domain: relaxed compares Organizational Domains, each
    from its own walk (4.10.2), remembered per message. aligns() is None when DNS failed."""

    def __init__(self, lookups: Lookups, from_domain: str, found: Discovery):
        self.lookups, self.from_domain, self.org = lookups, from_domain, found.org
        self.orgs: dict[str, str] = {}

    def aligns(self, domain: str, strictness: str) -> bool | None:
        domain = normalize(domain)
        if not domain:
            return False
        if domain == self.from_domain:
            return True
        if strictness == "s":
            return False
        if not self.org:
            return None                               # the From domain's own walk failed
        # An Organizational Domain is the name itself or a parent: only names at or under the
        # From domain's can share it, and they alone need a walk.
        if domain != self.org and not domain.endswith("." + self.org):
            return False
        if domain not in self.orgs:
            if len(self.orgs) >= MAX_ALIGNMENT_WALKS:
                return False
            try:
                found = tree_walk(self.lookups, domain)
            except DnsTempError:
                return None
            self.orgs[domain] = org_from_walk(domain, [(n, p) for n, _, p in found])
        return self.orgs[domain] == self.org


def evaluate(lookups: Lookups, from_values: Iterable[str], spf: SpfResult,
             dkim: Iterable[DkimResult], sample: float = 0.0,
             mode: DmarcMode = DmarcMode.RFC9989) -> DmarcResult:
    """The DMARC result for one message. `sample` in [0, 1) is compared with pct/100 (RFC 7489 only)."""
    who = authors(from_values)
    dkim = list(dkim)
    if not who.problem:
        return _evaluate_domain(lookups, who.domains[0], spf, dkim, sample, mode)
    # RFC 9989 5.3.1: with zero or several author domains DMARC validation "is not possible"
    # (nor with a repeated From field, 4.4), so the message never passes; 11.5: a receiver that
    # goes on evaluates each domain and applies the strictest policy among those that fail.
    each = tuple(_evaluate_domain(lookups, d, spf, dkim, sample, mode) for d in who.domains[:MAX_AUTHOR_DOMAINS])
    skipped = len(who.domains) - len(each)
    problem = who.problem + (f"; only the first {MAX_AUTHOR_DOMAINS} checked" if skipped > 0 else "")
    failed = [r for r in each if r.result == "fail"]
    if failed:
        worst = max(failed, key=lambda r: (_POLICIES.index(r.disposition), _POLICIES.index(r.policy)))
        return replace(worst, reason=f"{problem}; {worst.from_domain} fails: {worst.reason}", each=each)
    temp = [r for r in each if r.result == "temperror"]
    if temp:
        return DmarcResult("temperror", from_domain=temp[0].from_domain, each=each, mode=mode.value,
                           reason=f"{problem}; {temp[0].from_domain}: {temp[0].reason}")
    verdicts = ", ".join(f"{r.from_domain} {r.result}" for r in each)
    return DmarcResult("permerror", from_domain=who.domains[0] if who.domains else "", each=each, mode=mode.value,
                       reason=f"{problem}" + (f"; none fails ({verdicts})" if each else ""))


def _exists(lookups: Lookups, domain: str) -> bool:
    """RFC 9989 (non-existent domains, as RFC 8020): only NXDOMAIN says a name does not exist; any
    answer, NODATA included, says it does. TXT, which SPF may have asked already. DnsTempError."""
    return lookups.lookup(domain, "TXT").exists


def _evaluate_domain(lookups: Lookups, from_domain: str, spf: SpfResult, dkim: list[DkimResult],
                     sample: float, mode: DmarcMode = DmarcMode.RFC9989) -> DmarcResult:
    """RFC 9989 or RFC 7489 for one author domain."""
    bis = mode is DmarcMode.RFC9989
    try:
        found = discover_record(lookups, from_domain, mode)
    except DnsTempError as exc:
        return DmarcResult("temperror", from_domain=from_domain, mode=mode.value,
                           reason=f"record lookup failed: {exc}")
    if found.record is None:
        return DmarcResult("none", from_domain=from_domain, mode=mode.value, org_domain=found.org,
                           walk=found.walk, reason="no DMARC record")
    rec = found.record
    policy = rec.sp if (found.is_org and rec.sp) else rec.p
    if bis:
        if found.is_org and rec.np:
            try:
                if not _exists(lookups, from_domain):
                    policy = rec.np
            except DnsTempError as exc:
                return DmarcResult("temperror", from_domain=from_domain, record_domain=found.domain, record=rec,
                                   mode=mode.value, org_domain=found.org, walk=found.walk,
                                   reason=f"could not tell whether {from_domain} exists: {exc}")
        if rec.t == "y":
            policy = _STEP_DOWN[policy]             # testing: one step down (RFC 9989 4.7 t)
        aligner = _Aligner(lookups, from_domain, found)
        check = aligner.aligns
    else:
        def check(domain: str, strictness: str) -> bool | None:
            return aligned(domain, from_domain, strictness)

    # SPF first, so that many DKIM signatures cannot use up the DNS budget its walk needs
    spf_check = check(spf.domain, rec.aspf) if spf.result in ("pass", "temperror") else False
    dkim_checks = [(d, check(d.domain, rec.adkim)) for d in dkim if d.result == "pass"]
    dkim_ok = next((d.domain for d, ok in dkim_checks if ok), None)
    spf_ok = spf.domain if (spf.result == "pass" and spf_check) else None
    common = dict(from_domain=from_domain, record_domain=found.domain, record=rec, policy=policy,
                  dkim_aligned=dkim_ok, spf_aligned=spf_ok, mode=mode.value, org_domain=found.org,
                  walk=found.walk)
    if dkim_ok or spf_ok:
        via = f"DKIM d={dkim_ok}" if dkim_ok else f"SPF {spf_ok}"
        return DmarcResult("pass", disposition="none", reason=f"aligned {via}", **common)

    # an identifier that could have aligned but was not checked (DNS), or whose alignment could
    # not be told (an RFC 9989 walk failed): temperror, not fail
    dkim_checks += [(d, check(d.domain, rec.adkim)) for d in dkim if d.result == "temperror"]
    temp = [f"DKIM d={d.domain}" + (" (its Organizational Domain)" if ok is None else "")
            for d, ok in dkim_checks if (d.result == "temperror" and ok is not False) or ok is None]
    if (spf.result == "temperror" and spf_check is not False) or spf_check is None:
        temp.append(f"SPF {spf.domain}" + (" (its Organizational Domain)" if spf_check is None else ""))
    if temp:
        why = "could not check " + ", ".join(temp) + (f" ({found.org_error})" if found.org_error else "")
        return DmarcResult("temperror", disposition="none", reason=why, **common)

    disposition = policy
    if not bis and sample * 100 >= rec.pct:          # not sampled: the next policy down (6.6.4)
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
