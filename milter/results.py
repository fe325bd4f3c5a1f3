"""Verdicts as values: what each check found, in RFC 8601 result words (agentmx.authservid.RESULT_WORDS)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SpfResult:
    result: str
    identity: str              # "mailfrom" or "helo"
    domain: str                # the domain checked (MAIL FROM's, or the HELO name)
    address: str               # smtp.mailfrom value (postmaster@HELO for a null sender), or the HELO name
    reason: str = ""


@dataclass(frozen=True)
class DkimResult:
    result: str
    domain: str = ""           # d=
    selector: str = ""         # s=
    algorithm: str = ""        # a=
    header_b: str = ""         # first 8 characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""


@dataclass(frozen=True)
class ArcResult:
    result: str                # pass, fail, none (temperror when DNS failed)
    instances: int = 0
    reason: str = ""
    sealers: tuple[str, ...] = ()   # d= of each ARC-Seal checked, i=1 first (lower case)
    earliest_aar: str = ""          # the ARC-Authentication-Results of i=1 as verified ("" if none)


@dataclass(frozen=True)
class DmarcRecord:
    raw: str
    p: str                     # none, quarantine, reject
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: str | None = None
    ruf: str | None = None
    fo: str = "0"
    ri: int = 86400
    np: str | None = None      # RFC 9989: policy for non-existent subdomains
    psd: str = "u"             # RFC 9989: y (a public suffix domain), n (an Organizational Domain), u
    t: str = "n"               # RFC 9989: y asks for the policy one step down (testing)


@dataclass(frozen=True)
class PolicyOverride:
    """Why the domain's policy was not applied (RFC 7489 6.7 / RFC 9990's PolicyOverrideType)."""
    type: str                  # trusted_forwarder (milter/arc_override.py)
    sealer: str                # the newest ARC sealer's domain, trusted by [milter] arc_trusted_sealers
    evaluated: str             # the disposition the policy gave before the override: quarantine or reject


@dataclass(frozen=True)
class DmarcResult:
    result: str                # pass, fail, none, temperror, permerror
    from_domain: str = ""      # header.from
    record_domain: str = ""    # where the record was found (the From domain or its org domain)
    record: DmarcRecord | None = None
    policy: str = "none"       # the policy the domain asks for (p, or sp for a subdomain)
    disposition: str = "none"  # what applies to this message: none, quarantine or reject (after pct)
    dkim_aligned: str | None = None   # the aligned, passing d= domain
    spf_aligned: str | None = None    # the aligned, passing MAIL FROM domain
    reason: str = ""
    # When the From fields name several domains (or From is repeated): the verdict of each
    # domain checked (RFC 9989 11.5); the result above is the one that applies. Else empty.
    each: tuple["DmarcResult", ...] = ()
    mode: str = "rfc9989"      # the DMARC rules applied: rfc9989 or rfc7489 ([milter] dmarc)
    org_domain: str = ""       # the From domain's Organizational Domain (RFC 9989: from the walk)
    walk: tuple[str, ...] = ()  # RFC 9989: where the walk found one record each, "name" or "name psd=y|n"
    # Set when a local policy overrode the domain's (disposition is then none; result stays).
    override: PolicyOverride | None = None


@dataclass(frozen=True)
class IprevResult:
    result: str                # pass, fail, temperror, permerror (RFC 8601 section 2.7.3)
    ip: str                    # policy.iprev: the client address checked
    names: tuple[str, ...] = ()   # the PTR names checked (valid host names, at most iprev_check.MAX_NAMES)
    confirmed: str = ""        # the PTR name whose A/AAAA records include the address (pass only)
    reason: str = ""


@dataclass(frozen=True)
class AuthResults:
    spf: SpfResult
    spf_helo: SpfResult
    dkim: tuple[DkimResult, ...]
    arc: ArcResult
    dmarc: DmarcResult
    dns_lookups: int = 0
    notes: tuple[str, ...] = field(default=())
    iprev: IprevResult | None = None

    @property
    def dkim_summary(self) -> str:
        """One word for all signatures: pass if any passed, else the first signature's result."""
        if any(d.result == "pass" for d in self.dkim):
            return "pass"
        return self.dkim[0].result if self.dkim else "none"
