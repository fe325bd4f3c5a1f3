"""The DNS cache the milter shares across messages (agentmx.resolver.TtlCache), against the real
loopback DNS server: answers live for their TTL, negative answers for the SOA's negative TTL,
failures not at all; the clock is passed in."""
from __future__ import annotations

import pytest

from agentmx.resolver import DnsTempError, Resolver


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ttl_server(dns_server):
    dns_server.set_zone({"a.test": {"TXT": ["v=spf1 -all"]}, "b.test": {"A": ["192.0.2.1"]}})
    dns_server.resolver.ttl = 300
    yield dns_server
    dns_server.resolver.ttl = 0
    dns_server.resolver.silent = False
    dns_server.set_zone({})


def test_answers_live_for_their_ttl(ttl_server):
    clock = Clock()
    r = Resolver(ttl_server.servers, timeout=1.0, cache_size=100, clock=clock)
    before = ttl_server.resolver.queries
    first = r.lookup("a.test.", "TXT")
    again = r.lookup("A.TEST.", "TXT")
    assert again == first and first.records == ((b"v=spf1 -all",),)
    assert ttl_server.resolver.queries == before + 1
    clock.now += 299
    r.lookup("a.test.", "TXT")
    assert ttl_server.resolver.queries == before + 1
    clock.now += 2                        # expired: asked again, and sees the change
    ttl_server.set_zone({"a.test": {"TXT": ["v=spf1 +all"]}})
    assert r.lookup("a.test.", "TXT").records == ((b"v=spf1 +all",),)
    assert ttl_server.resolver.queries == before + 2


def test_negative_answers_use_the_soa_and_failures_are_not_kept(ttl_server):
    clock = Clock()
    r = Resolver(ttl_server.servers, timeout=0.5, cache_size=100, clock=clock)
    assert not r.lookup("nothing.a.test.", "TXT").exists
    assert r.lookup("b.test.", "TXT").records == ()        # NODATA
    ttl_server.resolver.silent = True                      # both still answered, from the cache
    assert not r.lookup("nothing.a.test.", "TXT").exists
    assert r.lookup("b.test.", "TXT").records == ()
    with pytest.raises(DnsTempError):
        r.lookup("c.test.", "TXT")                          # a timeout ...
    ttl_server.resolver.silent = False
    assert not r.lookup("c.test.", "TXT").exists           # ... was not cached


def test_the_cache_is_bounded(ttl_server):
    r = Resolver(ttl_server.servers, timeout=1.0, cache_size=2, clock=Clock())
    for name in ("a.test.", "b.test.", "x.test.", "y.test."):
        r.lookup(name, "TXT")
    assert len(r.cache) == 2


def test_zero_ttl_and_a_disabled_cache_keep_nothing(dns_server):
    dns_server.set_zone({"a.test": {"TXT": ["x"]}})
    r = Resolver(dns_server.servers, timeout=1.0, cache_size=100, clock=Clock())
    before = dns_server.resolver.queries
    r.lookup("a.test.", "TXT")
    r.lookup("a.test.", "TXT")
    assert dns_server.resolver.queries == before + 2 and len(r.cache) == 0
    assert Resolver(dns_server.servers, cache_size=0).cache is None
    dns_server.set_zone({})
