"""authenticate() and the policy, on messages and DNS zones made here (DNS on loopback)."""
from __future__ import annotations

import pytest

from e2e_helpers import RsaKey, message, sign

from agentmx.config import DmarcMode, PolicyConfig
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
        "_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject"]},
        "_dmarc.shop.example": {"TXT": ["v=DMARC1; p=quarantine"]},
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
    (["a@example.org", "b@example.org"], "2 From header fields (example.org); none fails (example.org pass)"),
    (["a@example.org, b@example.net"],
     "From has addresses in several domains (example.org, example.net); none fails (example.org pass, example.net none)"),
    (["undisclosed-recipients:;"], "From has no usable domain"),
])
def test_from_problems_are_dmarc_permerror(example_zone, lookups, froms, reason):
    head = "".join(f"From: {f}\r\n" for f in froms)
    raw = f"{head}To: agent@agentmx.test\r\nSubject: x\r\n\r\nbody\r\n".encode()
    res = authenticate(raw, ENV, lookups)
    assert res.dmarc.result == "permerror" and res.dmarc.reason == reason
    assert policy.decide(res, PolicyConfig(reject_dmarc=True)).action == "accept"


def _news(from_lines: bytes, key=None) -> bytes:
    """With ENV, a message that passes DMARC for example.org (SPF aligned; DKIM too when signed
    with `key`), with from_lines as its From field(s): an attacker's message from a domain that
    passes."""
    raw = (from_lines + b"To: agent@agentmx.test\r\nSubject: Reset your password\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nClick here.\r\n")
    return sign(raw, "example.org", "sel", key) if key else raw


def test_second_from_in_obsolete_syntax_is_not_hidden(example_zone, lookups, key):
    """The regression (issue 13 item 10): `From :` (white space before the colon, RFC 5322
    obs-from) was dropped by the header parser, and DMARC passed on the first From alone."""
    raw = _news(b"From: News <news@example.org>\r\nFrom : Bank <security@bank.example>\r\n", key)
    res = authenticate(raw, ENV, lookups)
    assert res.dkim_summary == "pass" and res.spf.result == "pass"
    assert (res.dmarc.result, res.dmarc.from_domain, res.dmarc.policy, res.dmarc.disposition) == \
        ("fail", "bank.example", "reject", "reject")
    assert res.dmarc.reason.startswith("2 From header fields (example.org, bank.example); bank.example fails")
    assert [(d.from_domain, d.result) for d in res.dmarc.each] == [("example.org", "pass"), ("bank.example", "fail")]
    assert policy.decide(res, PolicyConfig(reject_dmarc=True)) == policy.Decision(
        "reject", "550", "5.7.1", "Message rejected per DMARC policy of bank.example")


SPOOF = ("fail", "bank.example", "reject")     # bank.example's policy applies
GENUINE = ("pass", "example.org", "none")      # bank.example is named, but not as an author


@pytest.mark.parametrize("from_lines,verdict", [
    (b"From: news@example.org\r\nFROM: security@bank.example\r\n", SPOOF),
    (b"From: news@example.org\r\nfrom:security@bank.example\r\n", SPOOF),
    (b"From : security@bank.example\r\nFrom: news@example.org\r\n", SPOOF),
    (b"From: news@example.org\r\nX-A: b\r\nFrom\t  :security@bank.example\r\n", SPOOF),
    (b"From: news@example.org,\r\n security@bank.example\r\n", SPOOF),
    (b"From: news@example.org, security@bank.example\r\n", SPOOF),
    (b"From: news@example.org security@bank.example\r\n", SPOOF),
    (b"From: Staff: news@example.org, security@bank.example;\r\n", SPOOF),
    (b"From: news@example.org)<security@bank.example>\r\n", SPOOF),
    (b"From: news@example.org <security@bank.example>\r\n", SPOOF),
    (b"From: News <news@example.org> Bank <security@bank.example>\r\n", SPOOF),
    (b"From: news@example.org\rFrom: security@bank.example\r\n", SPOOF),
    (b'From: "security@bank.example" <news@example.org>\r\n', GENUINE),
    (b"From: =?utf-8?q?security=40bank.example?= <news@example.org>\r\n", GENUINE),
    (b"From: news@example.org (security@bank.example)\r\n", GENUINE),
    (b"From: news@example.org\x00security@bank.example\r\n", GENUINE),   # Postfix cuts at the NUL
    (b"From security@bank.example Mon Jan  1 00:00:00 2024\r\nFrom: news@example.org\r\n", GENUINE),
    (b"From: news@example.org\r\nReply-To: security@bank.example\r\nSender: security@bank.example\r\n", GENUINE),
])
def test_every_way_to_name_a_second_domain(example_zone, lookups, from_lines, verdict):
    res = authenticate(_news(from_lines), ENV, lookups)
    assert res.spf.result == "pass"
    assert (res.dmarc.result, res.dmarc.from_domain, res.dmarc.disposition) == verdict


def test_the_strictest_failing_policy_applies(example_zone, lookups):
    spoof = Envelope("198.51.100.1", "evil.test", "x@evil.test")
    raw = (b"From: a@shop.example\r\nFrom: b@bank.example\r\nFrom: c@nodmarc.example\r\n"
           b"Subject: x\r\n\r\nbody\r\n")
    res = authenticate(raw, spoof, lookups)
    assert (res.dmarc.result, res.dmarc.from_domain, res.dmarc.disposition) == ("fail", "bank.example", "reject")
    assert [d.result for d in res.dmarc.each] == ["fail", "fail", "none"]
    # rfc7489 mode: example.org asks reject for half (pct=50): unsampled, quarantine, as
    # shop.example's; on a tie of what applies, the stricter policy asked wins
    raw = b"From: a@shop.example, b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    res = authenticate(raw, spoof, lookups, sample=0.7, dmarc_mode=DmarcMode.RFC7489)
    assert (res.dmarc.from_domain, res.dmarc.policy, res.dmarc.disposition) == ("example.org", "reject", "quarantine")
    # rfc9989 (the default) ignores pct: example.org's reject applies
    res = authenticate(raw, spoof, lookups, sample=0.7)
    assert (res.dmarc.from_domain, res.dmarc.policy, res.dmarc.disposition) == ("example.org", "reject", "reject")


def test_author_domains_beyond_the_bound_are_not_checked(example_zone, lookups):
    from agentmx.milter.dmarc_check import MAX_AUTHOR_DOMAINS
    spoof = Envelope("198.51.100.1", "evil.test", "x@evil.test")
    others = b"".join(b"From: u@d%d.example\r\n" % i for i in range(MAX_AUTHOR_DOMAINS))
    late = authenticate(others + b"From: b@bank.example\r\n\r\nbody\r\n", spoof, lookups)
    assert late.dmarc.result == "permerror" and f"only the first {MAX_AUTHOR_DOMAINS} checked" in late.dmarc.reason
    assert len(late.dmarc.each) == MAX_AUTHOR_DOMAINS
    early = authenticate(b"From: b@bank.example\r\n" + others + b"\r\nbody\r\n", spoof, lookups)
    assert early.dmarc.result == "fail" and early.dmarc.from_domain == "bank.example"


def test_dns_failure_for_one_author_domain(zone, lookups):
    """No domain fails, one could not be checked: temperror. One fails: fail, whatever the rest."""
    zone({"_dmarc.slow.example": {"TXT": "TIMEOUT"}, "_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject"]}})
    spoof = Envelope("198.51.100.1", "evil.test", "x@evil.test")
    res = authenticate(b"From: a@slow.example, b@nodmarc.example\r\n\r\nbody\r\n", spoof, lookups)
    assert (res.dmarc.result, res.dmarc.from_domain) == ("temperror", "slow.example")
    assert policy.decide(res, PolicyConfig(defer_temperror=True)).action == "defer"
    res = authenticate(b"From: a@slow.example, b@bank.example\r\n\r\nbody\r\n", spoof, lookups)
    assert (res.dmarc.result, res.dmarc.from_domain) == ("fail", "bank.example")


def test_pct_sampling_and_subdomain_policy(example_zone, resolver):
    """pct samples in rfc7489 mode only; rfc9989 (the default) ignores it (RFC 9989 A.6)."""
    spoof = message("Boss <boss@example.org>", "agent@agentmx.test")
    env = Envelope("198.51.100.1", "evil.test", "x@evil.test")
    sampled = authenticate(spoof, env, resolver.session(40), sample=0.2, dmarc_mode=DmarcMode.RFC7489)
    assert (sampled.dmarc.result, sampled.dmarc.disposition) == ("fail", "reject")
    unsampled = authenticate(spoof, env, resolver.session(40), sample=0.7, dmarc_mode=DmarcMode.RFC7489)
    assert (unsampled.dmarc.result, unsampled.dmarc.disposition) == ("fail", "quarantine")
    bis = authenticate(spoof, env, resolver.session(40), sample=0.7)
    assert (bis.dmarc.result, bis.dmarc.disposition, bis.dmarc.mode) == ("fail", "reject", "rfc9989")
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


@pytest.mark.parametrize("head,domain", [
    (b"From: Agent <agent@agents.example>\r\n", "agents.example"),
    (b'From: "victim@bank.example" <agent@agents.example>\r\n', "agents.example"),
    (b"From: agent@agents.example\r\nFrom : victim@bank.example\r\n", None),    # was agents.example
    (b"From : victim@bank.example\r\nFrom: agent@agents.example\r\n", None),    # was agents.example
    (b"From: agent@agents.example, victim@bank.example\r\n", None),
    (b"From: agent@agents.example victim@bank.example\r\n", None),
    (b"From: agent@agents.example, x@[192.0.2.1]\r\n", None),
    (b"From: agent@agents.example)<victim@bank.example>\r\n", "bank.example"),
])
def test_the_signing_domain_is_read_as_dmarc_reads_from(head, domain):
    """Outbound (milter/sign.py): sign only for the one domain a receiver's DMARC will judge."""
    from agentmx.milter.authenticate import from_header_values
    from agentmx.milter.sign import from_domain
    assert from_domain(from_header_values(head + b"To: x@y.example\r\n\r\nbody\r\n")) == domain
