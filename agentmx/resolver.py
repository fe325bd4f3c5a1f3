"""DNS for authentication: one resolver, passed in, never global.

Every lookup of one message goes through a `Lookups` session: it counts lookups against the
per-message budget, caches answers for the message, and turns every failure to get an answer
(timeout, SERVFAIL, REFUSED, a budget exhausted) into `DnsTempError`, which every check reports as
`temperror`, never as `fail`. NXDOMAIN and NODATA are answers, not errors: `Answer.exists` and
`Answer.records` tell them apart, and each protocol applies its own RFC to them.
"""
from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver


class DnsTempError(Exception):
    """No answer could be had (timeout, SERVFAIL, REFUSED, budget): a temporary failure."""


@dataclass(frozen=True)
class Answer:
    name: str
    rdtype: str
    exists: bool                  # False: NXDOMAIN (or a name DNS cannot carry)
    records: tuple                # TXT: bytes (strings joined); A/AAAA: str; MX: (pref, host); PTR/CNAME: host
    cnames: tuple = ()            # (alias, target) pairs followed on the way


def _convert(rdtype: str, rdata) -> object:
    if rdtype in ("TXT", "SPF"):
        return tuple(rdata.strings)
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if rdtype in ("PTR", "CNAME", "NS"):
        return rdata.target.to_text(omit_final_dot=True)
    return rdata.to_text()


class Resolver:
    """A dnspython resolver with our servers and timeout. Thread-safe; one per process."""

    def __init__(self, servers: tuple[tuple[str, int], ...] = (), timeout: float = 2.0):
        if servers:
            r = dns.resolver.Resolver(configure=False)
            r.nameservers = [host for host, _ in servers]
            ports = {port for _, port in servers}
            r.port = ports.pop() if len(ports) == 1 else 53
            r.nameserver_ports = {host: port for host, port in servers}
        else:
            r = dns.resolver.Resolver()
        r.timeout = timeout
        r.lifetime = timeout
        r.retry_servfail = False
        r.cache = None
        self._r = r
        self.timeout = timeout

    @classmethod
    def from_config(cls, dns_config) -> "Resolver":
        return cls(dns_config.servers, dns_config.timeout)

    def lookup(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name)
        except (dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.NameTooLong,
                dns.name.BadEscape, UnicodeError, ValueError):
            # A name DNS cannot carry has no records; each protocol treats it as nonexistent.
            return Answer(name, rdtype, False, ())
        try:
            ans = self._r.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, rdtype, False, ())
        except dns.resolver.YXDOMAIN:
            return Answer(name, rdtype, False, ())
        except dns.resolver.NoNameservers as exc:        # SERVFAIL, REFUSED from every server
            raise DnsTempError(f"{rdtype} {name}: server failure") from exc
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"{rdtype} {name}: timeout after {self.timeout:g}s") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        cnames = []
        records: tuple = ()
        want = dns.rdatatype.from_text(rdtype)
        for rrset in ans.response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                cnames.extend((rrset.name.to_text(True), r.target.to_text(True)) for r in rrset)
            elif rrset.rdtype == want:
                records += tuple(_convert(rdtype, r) for r in rrset)
        return Answer(name, rdtype, True, records, tuple(cnames))

    def session(self, budget: int) -> "Lookups":
        return Lookups(self, budget)


class Lookups:
    """The lookups of one message: counted against a budget and cached. Not shared by threads."""

    def __init__(self, resolver: Resolver, budget: int):
        self.resolver = resolver
        self.budget = budget
        self.count = 0
        self._cache: dict[tuple[str, str], Answer | DnsTempError] = {}

    @property
    def timeout(self) -> float:
        return self.resolver.timeout

    def lookup(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().rstrip("."), rdtype)
        hit = self._cache.get(key)
        if hit is None:
            if self.count >= self.budget:
                raise DnsTempError(f"DNS lookup budget of {self.budget} for this message exhausted")
            self.count += 1
            try:
                hit = self.resolver.lookup(key[0] + ".", rdtype)
            except DnsTempError as exc:
                hit = exc
            self._cache[key] = hit
        if isinstance(hit, DnsTempError):
            raise hit
        return hit

    def txt(self, name: str) -> list[bytes]:
        """TXT records of a name, each record's strings joined; [] for NXDOMAIN or NODATA."""
        return [b"".join(parts) for parts in self.lookup(name, "TXT").records]
