"""authenticate() and the policy, on messages and DNS zones made here (DNS on loopback)."""
from __future__ import annotations

import pytest

from e2e_helpers import RsaKey, message, sign

from agentmx.config import PolicyConfig
from agentmx.milter import policy
from agentmx.milter.authenticate import Envelope, authenticate

ENV = Envelope(client_ip="192.0.2.10", helo="mail.example.org", mail_from="news@example.org")


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture
def example_zone(zone, key):
    return zone({
        "example.org": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "mail.example.org": {"A": ["192.0.2.10"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject; pct=50"]},
        "sel._domainkey.example.org": {"TXT": [key.txt]},
        "_dmarc.example.com": {"TXT": ["v=DMARC1; p=quarantine; sp=reject"]},
    })


def test_aligned_signature_passes(example_zone, lookups, key):
    raw = sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "sel", key)
    res = authenticate(raw, ENV, lookups)
    assert (res.spf.result, res.dkim_summary, res.dmarc.result) == ("pass", "pass", "pass")
    assert res.dmarc.dkim_aligned == "example.org" and res.dmarc.spf_aligned == "example.org"
    assert res.spf_helo.result == "none"   # mail.example.org publishes no SPF
    assert not res.notes and 0 < res.dns_lookups <= 10


@pytest.mark.parametrize("froms,reason", [
    ([], "no From header"),
    (["a@example.org", "b@example.org"], "2 From headers"),
    (["a@example.org, b@example.net"], "From has addresses in several domains"),
    (["undisclosed-recipients:;"], "From has no usable domain"),
])
def test_from_problems_are_dmarc_permerror(example_zone, lookups, froms, reason):
    head = "".join(f"From: {f}\r\n" for f in froms)
    raw = f"{head}To: agent@agentmx.test\r\nSubject: x\r\n\r\nbody\r\n".encode()
    res = authenticate(raw, ENV, lookups)
    assert res.dmarc.result == "permerror" and res.dmarc.reason == reason
    assert policy.decide(res, PolicyConfig(reject_dmarc=True)).action == "accept"


def test_pct_sampling_and_subdomain_policy(example_zone, resolver):
    spoof = message("Boss <boss@example.org>", "agent@agentmx.test")
    env = Envelope("198.51.100.1", "evil.test", "x@evil.test")
    sampled = authenticate(spoof, env, resolver.session(40), sample=0.2)
    assert (sampled.dmarc.result, sampled.dmarc.disposition) == ("fail", "reject")
    unsampled = authenticate(spoof, env, resolver.session(40), sample=0.7)
    assert (unsampled.dmarc.result, unsampled.dmarc.disposition) == ("fail", "quarantine")
    sub = authenticate(message("x <x@mail.example.com>", "a@b.test"), env, resolver.session(40))
    assert (sub.dmarc.record_domain, sub.dmarc.policy) == ("example.com", "reject")

    strict = PolicyConfig(reject_dmarc=True)
    assert policy.decide(sampled, strict) == policy.Decision(
        "reject", "550", "5.7.1", "Message rejected per DMARC policy of example.org")
    assert policy.decide(unsampled, strict).action == "accept"
    assert policy.decide(sampled, PolicyConfig()).action == "accept"


def test_budget_exhaustion_is_temperror(example_zone, resolver, key):
    raw = sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "sel", key)
    res = authenticate(raw, ENV, resolver.session(2))
    assert res.dkim_summary == "temperror" and res.dmarc.result == "temperror"
    assert "budget" in res.dkim[0].reason
    d = policy.decide(res, PolicyConfig(defer_temperror=True))
    assert (d.action, d.code, d.xcode) == ("defer", "451", "4.7.24")


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage without headers",
    b"From: \xff\xfe@\xc3(\r\nDKIM-Signature: v=1; d=\xff; s=\x00\r\n\r\n",
    b"ARC-Seal: i=1; cv=none; a=rsa-sha256\r\nFrom: a@example.org\r\n\r\nx",
    b"From: a@example.org\r\n" + b"X-Long: " + b"a" * 200000 + b"\r\n\r\nbody",
])
def test_hostile_input_never_raises(example_zone, lookups, raw):
    res = authenticate(raw, ENV, lookups)
    assert res.spf.result == "pass"
    assert res.dmarc.result in ("fail", "permerror", "none", "pass")


def test_combined_policy_is_the_most_lenient():
    strict, lax = PolicyConfig(reject_dmarc=True), PolicyConfig()
    assert policy.combine([strict, strict]).reject_dmarc
    assert not policy.combine([strict, lax]).reject_dmarc
    assert policy.combine([]).records_only
