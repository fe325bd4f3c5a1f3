"""Organizational domains: RFC 7489 section 3.2 (the public suffix list) and RFC 9989 4.10.2
(a DNS Tree Walk; the names it queries and the choice among what it found are here, the DNS
queries in milter/dmarc_check.py).

The list is the one shipped with the `publicsuffixlist` package (ICANN and private sections, as
the list's own tests expect); it is loaded once per process, on first use.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:                    # annotations only: the list is imported when first needed
    from publicsuffixlist import PublicSuffixList


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList()


def normalize(domain: str) -> str:
    """Lower-case A-label form without a trailing dot; '' for what is no domain name."""
    domain = (domain or "").strip().rstrip(".").lower()
    if not domain or domain.startswith(".") or ".." in domain:
        return ""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain if domain.isascii() else ""


def registrable(domain: str) -> str | None:
    """The registrable domain (public suffix plus one label); None for a public suffix itself."""
    domain = normalize(domain)
    if not domain:
        return None
    found: str | None = _psl().privatesuffix(domain)
    return found


def org_domain(domain: str) -> str:
    """The organizational domain; a public suffix (or an unparsable name) is its own."""
    return registrable(domain) or normalize(domain)


# --- RFC 9989 (DMARCbis): the Organizational Domain from a DNS Tree Walk ------------------------

MAX_WALK_QUERIES = 8      # RFC 9989 4.10: an Author Domain of any length costs at most eight queries


def walk_names(domain: str) -> list[str]:
    """The names whose _dmarc record a DNS Tree Walk queries, in order (RFC 9989 4.10 steps 1-7):
    the name itself; then, with x labels, x-1 labels when x < 8, else straight to 7 labels; then
    one label less each time, down to the single-label name. At most MAX_WALK_QUERIES names."""
    labels = domain.split(".") if domain else []
    if not labels:
        return []
    names = [domain]
    keep = min(len(labels) - 1, MAX_WALK_QUERIES - 1)
    for n in range(keep, 0, -1):
        names.append(".".join(labels[-n:]))
    return names


def org_from_walk(start: str, found: list[tuple[str, str]]) -> str:
    """RFC 9989 4.10.2: the Organizational Domain of `start` from the names at which its walk found
    one DMARC record, longest first, each with its psd value (y, n or u): the first with psd=n;
    else one label below a psd=y record other than the start's own; else the name with the fewest
    labels; else (no record at all) `start` itself."""
    for name, psd in found:
        if psd == "n":
            return name
        if psd == "y" and name != start:
            return ".".join(start.split(".")[-(name.count(".") + 2):])
    return found[-1][0] if found else start
