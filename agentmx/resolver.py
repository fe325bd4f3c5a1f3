"""DNS for authentication: one resolver, passed in, never global.

Every lookup of one message goes through a `Lookups` session: it counts lookups against the
per-message budget, caches answers for the message, and turns every failure to get an answer
(timeout, SERVFAIL, REFUSED, a budget exhausted) into `DnsTempError`, which every check reports as
`temperror`, never as `fail`. NXDOMAIN and NODATA are answers, not errors: `Answer.exists` and
`Answer.records` tell them apart, and each protocol applies its own RFC to them.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

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


MAX_TTL = 3600          # cache no answer longer than this, whatever its TTL says


class TtlCache:
    """Answers across messages, each kept for its DNS TTL (negative answers for the SOA's negative
    TTL; failures never), at most `size` of them, least recently used dropped first. The clock is
    passed in (time.monotonic in the milter, a fake one in tests). Thread-safe."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic):
        self.size, self.clock = size, clock
        self._data: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str]) -> Answer | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry[0] <= self.clock():
                if entry is not None:
                    del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: tuple[str, str], answer: Answer, ttl: float) -> None:
        if ttl <= 0 or self.size <= 0:
            return
        with self._lock:
            self._data[key] = (self.clock() + min(ttl, MAX_TTL), answer)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _negative_ttl(response) -> int:
    """RFC 2308: a negative answer lives min(SOA TTL, SOA MINIMUM); no SOA, no caching."""
    for rrset in getattr(response, "authority", ()) or ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(rrset.ttl, min(r.minimum for r in rrset))
    return 0


class Resolver:
    """A dnspython resolver with our servers and timeout. Thread-safe; one per process.
    With cache_size > 0, answers are shared across messages for their TTL (TtlCache)."""

    def __init__(self, servers: tuple[tuple[str, int], ...] = (), timeout: float = 2.0, cache_size: int = 0,
                 clock: Callable[[], float] = time.monotonic):
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
        self.cache = TtlCache(cache_size, clock) if cache_size > 0 else None

    @classmethod
    def from_config(cls, dns_config, clock: Callable[[], float] = time.monotonic) -> "Resolver":
        return cls(dns_config.servers, dns_config.timeout, dns_config.cache_size, clock)

    def lookup(self, name: str, rdtype: str) -> Answer:
        if self.cache is None:
            return self._lookup(name, rdtype)[0]
        key = (name.lower(), rdtype)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        answer, ttl = self._lookup(name, rdtype)
        self.cache.put(key, answer, ttl)
        return answer

    def _lookup(self, name: str, rdtype: str) -> tuple[Answer, int]:
        """One query: (answer, seconds it may be cached). Failures raise DnsTempError."""
        try:
            qname = dns.name.from_text(name)
        except (dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.NameTooLong,
                dns.name.BadEscape, UnicodeError, ValueError):
            # A name DNS cannot carry has no records; each protocol treats it as nonexistent.
            return Answer(name, rdtype, False, ()), MAX_TTL
        try:
            ans = self._r.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            try:
                ttl = _negative_ttl(exc.response(qname))
            except Exception:          # no response kept for that name: do not cache
                ttl = 0
            return Answer(name, rdtype, False, ()), ttl
        except dns.resolver.YXDOMAIN:
            return Answer(name, rdtype, False, ()), 0
        except dns.resolver.NoNameservers as exc:        # SERVFAIL, REFUSED from every server
            raise DnsTempError(f"{rdtype} {name}: server failure") from exc
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"{rdtype} {name}: timeout after {self.timeout:g}s") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        cnames = []
        records: tuple = ()
        want = dns.rdatatype.from_text(rdtype)
        ttls = []
        for rrset in ans.response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                cnames.extend((rrset.name.to_text(True), r.target.to_text(True)) for r in rrset)
                ttls.append(rrset.ttl)
            elif rrset.rdtype == want:
                records += tuple(_convert(rdtype, r) for r in rrset)
                ttls.append(rrset.ttl)
        ttl = min(ttls) if records else _negative_ttl(ans.response)
        return Answer(name, rdtype, True, records, tuple(cnames)), ttl

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
