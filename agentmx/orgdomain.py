"""Organizational domains (RFC 7489 section 3.2) from the public suffix list.

The list is the one shipped with the `publicsuffixlist` package (ICANN and private sections, as
the list's own tests expect); it is loaded once per process, on first use.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _psl():
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
    return _psl().privatesuffix(domain)


def org_domain(domain: str) -> str:
    """The organizational domain; a public suffix (or an unparsable name) is its own."""
    return registrable(domain) or normalize(domain)
