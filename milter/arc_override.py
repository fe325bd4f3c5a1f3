"""Trusted ARC forwarders: a DMARC failure rescued by an ARC chain that trusted domains sealed.

A mailing list that changes the Subject or the body breaks the author's DKIM signature, and it
sends from its own IP with its own envelope: DMARC fails at the next hop though the list saw it
pass. When the list ARC-seals the message (RFC 8617), a receiver that trusts the list may use
the list's record of what it saw. This module decides whether it does, as one pure function of
values already computed (no DNS, no clock: dkim_check verified the chain; the trusted domains
come from [milter] arc_trusted_sealers, passed in):

  1. DMARC failed, for one author domain, and its policy gave quarantine or reject;
  2. the ARC chain validates (cv=pass);
  3. EVERY sealer of the chain (each ARC-Seal's d=) is a trusted domain. Not the newest only:
     the claim we use is written by the sealer of i=1, so that sealer must be trusted, and a
     later hop that is not trusted could have rewritten the message after the trusted one saw
     it (a valid chain proves each hop sealed what it sent, not that it changed nothing);
  4. the earliest ARC-Authentication-Results (i=1, what the first trusted hop saw) holds exactly
     one dmarc result, `pass`, whose header.from is the From domain DMARC failed for. Only
     dmarc=pass counts, not spf/dkim results: the first hop's DMARC verdict already applied the
     author's own alignment modes (adkim/aspf) and organizational domain, which spf/dkim
     entries alone do not carry (authentication_milter re-runs DMARC on them; mailauth and
     real lists record dmarc in the AAR, so requiring it loses little).

Then the applied policy (the disposition) becomes none, with a PolicyOverride of type
trusted_forwarder (RFC 7489 section 6.7 and RFC 9990's PolicyOverrideType both name it). The
DMARC result itself stays fail: the author's domain did not authenticate this copy.

What it does not stop: ARC, like DKIM, can be replayed. A message that once went through a
trusted list can be sent again, unchanged, from anywhere; the override then applies to it too.
That is why trust is per domain and opt-in (default: nobody).
"""
from __future__ import annotations

import re
from dataclasses import replace

import authres

from .results import ArcResult, DmarcResult, PolicyOverride

TRUSTED_FORWARDER = "trusted_forwarder"

_INSTANCE = re.compile(r"^\s*i\s*=\s*1\s*;")


def check(dmarc: DmarcResult, arc: ArcResult, trusted: tuple[str, ...] | frozenset[str]
          ) -> tuple[PolicyOverride | None, str]:
    """(the override, "") when the rules above hold; else (None, why not)."""
    if not trusted:
        return None, "no trusted ARC sealers configured"
    if dmarc.override is not None:
        return dmarc.override, ""
    if dmarc.result != "fail":
        return None, f"DMARC did not fail ({dmarc.result})"
    if dmarc.disposition == "none":
        return None, "the policy applied is none already"
    if dmarc.each:
        return None, "several author domains: one ARC verdict cannot cover them"
    if arc.result != "pass":
        return None, f"the ARC chain did not validate (arc={arc.result})"
    if not arc.sealers:
        return None, "no ARC sealer"
    for i, sealer in enumerate(arc.sealers, 1):
        if sealer not in trusted:
            return None, f"ARC sealer of i={i} ({sealer[:80] or '?'}) is not trusted"
    verdict = earliest_dmarc(arc.earliest_aar)
    if verdict is None:
        return None, "the earliest ARC-Authentication-Results has no single, readable dmarc result"
    result, header_from = verdict
    if result != "pass":
        return None, f"the earliest ARC-Authentication-Results says dmarc={result[:20]}"
    if header_from != dmarc.from_domain.lower():
        return None, (f"the earliest ARC-Authentication-Results is about {header_from[:80] or 'no From domain'}, "
                      f"not {dmarc.from_domain}")
    return PolicyOverride(TRUSTED_FORWARDER, sealer=arc.sealers[-1], evaluated=dmarc.disposition), ""


def apply(dmarc: DmarcResult, arc: ArcResult, trusted: tuple[str, ...] | frozenset[str]) -> DmarcResult:
    """The DMARC result with the override applied (disposition none), or unchanged."""
    found, _ = check(dmarc, arc, trusted)
    if found is None or dmarc.override is not None:
        return dmarc
    return replace(dmarc, disposition="none", override=found)


def earliest_dmarc(aar: str) -> tuple[str, str] | None:
    """(result, header.from) of the one dmarc result in an ARC-Authentication-Results value
    ("i=1; authserv-id; ..."), lower case; None when it is unreadable or has none or several."""
    m = _INSTANCE.match(aar or "")
    if not m:
        return None
    try:
        parsed = authres.all_features().parse_value(" ".join(aar[m.end():].split()))
    except Exception:             # hostile or broken: authres raises its own and Python errors
        return None
    found = [r for r in parsed.results if getattr(r, "method", None) == "dmarc"]
    if len(found) != 1:
        return None
    props = {(p.type, p.name): p.value for p in found[0].properties}
    return str(found[0].result or "").lower(), str(props.get(("header", "from")) or "").strip().lower()
