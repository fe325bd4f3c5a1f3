"""SPF (RFC 7208) with pyspf, on our injected DNS session.

Both identities are checked (section 2.3): HELO, and MAIL FROM; a null sender is checked as
postmaster@HELO, so its MAIL FROM result is the HELO result. pyspf's evaluator is used unchanged;
only its DNS method is replaced so that lookups go through `Lookups` (budget, cache, temperror).
"""
from __future__ import annotations

import ipaddress

import spf

from agentmx.resolver import DnsTempError, Lookups

from .results import SpfResult


class _Query(spf.query):
    """pyspf's query with its DNS lookup taken from the session instead of a module global."""

    def __init__(self, lookups: Lookups, *args, **kwargs):
        self._lookups = lookups
        super().__init__(*args, **kwargs)

    def _lookup(self, name: str, qtype: str) -> list:
        try:
            ans = self._lookups.lookup(name, qtype)
        except DnsTempError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        out = [((alias, "CNAME"), target) for alias, target in ans.cnames]
        owner = ans.cnames[-1][1] if ans.cnames else name
        out.extend(((owner, qtype), rec) for rec in ans.records)
        return out

    def validated_ptrs(self):
        """PTR names that resolve back to the client; a DNS error on one A lookup skips that
        name and the search goes on (RFC 7208 section 5.5), it does not end in temperror."""
        limit = spf.MAX_PTR if self.strict else spf.MAX_PTR * 4
        names = []
        for name in self.dns_ptr(self.i)[:limit]:
            try:
                if self.cidrmatch(self.dns_a(name, self.A), self.cidrmax):
                    names.append(name)
            except spf.TempError:
                continue
        return names

    # The body of pyspf 2.0.14's query.dns(), with DNSLookup(...) replaced by self._lookup(...).
    def dns(self, name, qtype, cnames=None, ignore_void=False):
        if not name:
            raise Exception("Invalid query")
        name = str(name)
        if name.endswith("."):
            name = name[:-1]
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []   # a name DNS cannot carry (RFC 7208 section 4.3)
        name = name.lower()
        result = self.cache.get((name, qtype), [])
        if result:
            return result
        cnamek = (name, "CNAME")
        cname = self.cache.get(cnamek)
        if cname:
            cname = cname[0]
        else:
            for k, v in self._lookup(name, qtype):
                k = (k[0].lower().rstrip("."), k[1])
                if k == cnamek:
                    cname = v
                    result = self.cache.get((cname, qtype), [])
                    if result:
                        break
                if k[1] == "CNAME" or (qtype, k[1]) in spf.query.SAFE2CACHE:
                    self.cache.setdefault(k, []).append(v)
            result = self.cache.get((name, qtype), [])
        if not result and cname:
            if not cnames:
                cnames = {}
            elif len(cnames) >= spf.MAX_CNAME:
                raise spf.PermError("Length of CNAME chain exceeds %d" % spf.MAX_CNAME)
            cnames[name] = cname
            if cname.lower().rstrip(".") not in cnames:
                result = self.dns(cname, qtype, cnames=cnames)
                if result:
                    self.cache[(name, qtype)] = result
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError("Void lookup limit of %d exceeded" % spf.MAX_VOID_LOOKUPS)
        return result


def _evaluate(lookups: Lookups, ip: str, sender: str, helo: str, receiver: str) -> tuple[str, str]:
    try:
        q = _Query(lookups, i=ip, s=sender, h=helo, receiver=receiver, timeout=lookups.timeout)
        result, _code, explanation = q.check()
    except spf.PermError as exc:       # e.g. a client address pyspf cannot parse
        return "permerror", str(exc)
    except spf.TempError as exc:
        return "temperror", str(exc)
    return result, explanation


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def check_helo(lookups: Lookups, ip: str, helo: str, receiver: str = "") -> SpfResult:
    """The HELO identity (RFC 7208 section 2.3); `none` for a HELO that is no domain name."""
    helo = (helo or "").strip().strip("[]")
    if not helo or "." not in helo or _is_ip(helo):
        return SpfResult("none", "helo", helo, helo, "HELO is not a domain name")
    result, why = _evaluate(lookups, ip, "postmaster@" + helo, helo, receiver)
    return SpfResult(result, "helo", helo.lower(), helo, why)


def check_mailfrom(lookups: Lookups, ip: str, mail_from: str, helo: str,
                   helo_result: SpfResult | None = None, receiver: str = "") -> SpfResult:
    """The MAIL FROM identity; a null sender is postmaster@HELO and reuses the HELO result."""
    mail_from = (mail_from or "").strip().strip("<>")
    if not mail_from:
        h = helo_result or check_helo(lookups, ip, helo, receiver)
        return SpfResult(h.result, "mailfrom", h.domain, f"postmaster@{h.domain}" if h.domain else "",
                         h.reason or "null sender: checked as postmaster@HELO")
    if "@" not in mail_from:
        mail_from = "postmaster@" + mail_from
    result, why = _evaluate(lookups, ip, mail_from, helo, receiver)
    return SpfResult(result, "mailfrom", _domain_of(mail_from), mail_from, why)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.removeprefix("IPv6:"))
        return True
    except ValueError:
        return False
