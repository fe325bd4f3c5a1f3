"""RFC 9989's DNS Tree Walk (milter/dmarc_check.py, agentmx/orgdomain.py), against a real DNS server
on loopback: the names it asks and how many, the shortened walk for long names, psd, np, t, the
Organizational Domain for relaxed alignment, and temperror on every DNS failure on the way."""
from __future__ import annotations

import pytest

from agentmx.config import DmarcMode
from agentmx.milter import dmarc_check
from agentmx.milter.results import DkimResult, SpfResult
from agentmx.orgdomain import MAX_WALK_QUERIES, org_from_walk, walk_names

NO_SPF = SpfResult("none", "mailfrom", "", "")
LONG = "a.b.c.d.e.f.g.h.i.j.k.example.com"          # 13 labels


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", "mailfrom", domain, f"bounce@{domain}")


def dmarc_asked(dns_server) -> list[str]:
    return [name for name, qtype in dns_server.resolver.asked if name.startswith("_dmarc.")]


def run(resolver, from_domain, spf=NO_SPF, dkim=(), mode=DmarcMode.RFC9989, lookups=None):
    """One message's DMARC verdict, in a DNS session of its own (its cache must not outlive a zone)."""
    lookups = lookups if lookups is not None else resolver.session(100)
    return dmarc_check.evaluate(lookups, [f"user@{from_domain}"], spf, list(dkim), mode=mode)


# --- the names a walk asks ------------------------------------------------------------------------

@pytest.mark.parametrize("domain,names", [
    ("com", ["com"]),
    ("example.com", ["example.com", "com"]),
    ("a.mail.example.com", ["a.mail.example.com", "mail.example.com", "example.com", "com"]),
    # 8 labels: x >= 8, shortened to 7 (the same as one label less)
    ("a.b.c.d.e.f.example.com", ["a.b.c.d.e.f.example.com", "b.c.d.e.f.example.com", "c.d.e.f.example.com",
                                 "d.e.f.example.com", "e.f.example.com", "f.example.com", "example.com", "com"]),
    # RFC 9989 4.10's own example: 13 labels, straight to 7 after the first query
    ("a.b.c.d.e.f.g.h.i.j.mail.example.com",
     ["a.b.c.d.e.f.g.h.i.j.mail.example.com", "g.h.i.j.mail.example.com", "h.i.j.mail.example.com",
      "i.j.mail.example.com", "j.mail.example.com", "mail.example.com", "example.com", "com"]),
])
def test_walk_names(domain, names):
    assert walk_names(domain) == names


def test_walk_names_never_exceed_eight():
    for n in range(1, 130):
        names = walk_names(".".join(["x"] * n))
        assert len(names) == min(n, MAX_WALK_QUERIES)
        assert names[-1] == "x" and [name.count(".") for name in names] == sorted(
            {name.count(".") for name in names}, reverse=True)


def test_org_from_walk_choices():
    start = "a.mail.example.com"
    assert org_from_walk(start, []) == start
    assert org_from_walk(start, [("mail.example.com", "u"), ("example.com", "u")]) == "example.com"
    assert org_from_walk(start, [("mail.example.com", "n")]) == "mail.example.com"
    assert org_from_walk(start, [("com", "y")]) == "example.com"
    assert org_from_walk(start, [("mail.example.com", "u"), ("example.com", "y")]) == "mail.example.com"
    assert org_from_walk("example.com", [("example.com", "y")]) == "example.com"   # a PSD's own record


# --- the walk over DNS: query count, the exact sequence, the shortened walk -----------------------

def test_a_long_author_costs_eight_queries_in_the_rfc_order(zone, dns_server, resolver):
    zone({})
    lookups = resolver.session(100)
    res = run(resolver, LONG, lookups=lookups)
    assert res.result == "none"
    assert dmarc_asked(dns_server)[-8:] == [f"_dmarc.{n}" for n in walk_names(LONG)]
    assert lookups.count == 8


def test_a_hostile_author_of_120_labels_still_costs_eight_queries(zone, dns_server, resolver):
    zone({})
    before = dns_server.resolver.queries
    author = ".".join(["x"] * 119) + ".example"     # _dmarc.<it> is 252 octets: DNS carries it
    assert len(author) < 254
    res = run(resolver, author, spf_pass(author), [DkimResult("pass", author)])
    assert res.result == "none", res
    assert dmarc_asked(dns_server)[-8:] == [f"_dmarc.{n}" for n in walk_names(author)]
    assert dns_server.resolver.queries - before == 8, list(dns_server.resolver.asked)[-15:]


def test_the_shortened_walk_skips_a_record_between(zone, resolver):
    """RFC 9989 5.1.x's example: a psd=n record at the 8-label b.c.d.e.f.g.example.com is never
    asked for a longer author (the walk goes straight to 7 labels); one at 7 labels is."""
    zone({"_dmarc.b.c.d.e.f.g.example.com": {"TXT": ["v=DMARC1; p=none; psd=n"]},
          "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}})
    for author in ("mail.a.b.c.d.e.f.g.example.com", "a.b.c.d.e.f.g.example.com"):
        res = run(resolver, author)
        assert (res.result, res.record_domain, res.org_domain, res.policy) == ("fail", "example.com",
                                                                                "example.com", "reject")
    res = run(resolver, "b.c.d.e.f.g.example.com")
    assert (res.record_domain, res.org_domain, res.policy) == ("b.c.d.e.f.g.example.com", "b.c.d.e.f.g.example.com",
                                                               "none")
    zone({"_dmarc.c.d.e.f.g.example.com": {"TXT": ["v=DMARC1; p=none; psd=n"]},
          "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}})
    res = run(resolver, "mail.a.b.c.d.e.f.g.example.com")
    assert (res.record_domain, res.org_domain, res.policy) == ("c.d.e.f.g.example.com", "c.d.e.f.g.example.com", "none")


def test_the_author_record_applies_and_the_walk_goes_on_for_the_org(zone, dns_server, resolver):
    zone({"_dmarc.mail.example.com": {"TXT": ["v=DMARC1; p=quarantine"]},
          "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}})
    res = run(resolver, "mail.example.com", dkim=[DkimResult("pass", "other.example.com")])
    assert (res.result, res.record_domain, res.policy) == ("pass", "mail.example.com", "quarantine")
    assert res.org_domain == "example.com" and res.dkim_aligned == "other.example.com"
    assert res.walk == ("mail.example.com", "example.com")


# --- psd -------------------------------------------------------------------------------------------

def test_psd_n_makes_an_organizational_domain_that_splits_alignment(zone, resolver):
    zone({"_dmarc.dept.example.com": {"TXT": ["v=DMARC1; p=reject; psd=n"]},
          "_dmarc.example.com": {"TXT": ["v=DMARC1; p=none"]}})
    dkim = [DkimResult("pass", "example.com")]
    res = run(resolver, "mail.dept.example.com", dkim=dkim)
    assert (res.result, res.record_domain, res.org_domain, res.policy) == ("fail", "dept.example.com",
                                                                            "dept.example.com", "reject")
    assert res.walk == ("dept.example.com psd=n",)
    # the public suffix list knows nothing of it: example.com is the org, and they align
    old = run(resolver, "mail.dept.example.com", dkim=dkim, mode=DmarcMode.RFC7489)
    assert (old.result, old.record_domain, old.org_domain) == ("pass", "example.com", "example.com")
    # below the psd=n domain, identifiers align with each other
    res = run(resolver, "mail.dept.example.com", dkim=[DkimResult("pass", "bounces.dept.example.com")])
    assert res.result == "pass"


def test_psd_y_policy_applies_to_an_org_without_a_record(zone, resolver):
    zone({"_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; psd=y"]},
          "giant.bank.example": {"A": ["192.0.2.1"]}})
    res = run(resolver, "giant.bank.example")
    assert (res.result, res.record_domain, res.org_domain, res.policy) == ("fail", "bank.example",
                                                                            "giant.bank.example", "quarantine")
    # identifiers under another registrant of the PSD do not align, under the same one they do
    res = run(resolver, "giant.bank.example", spf=spf_pass("mail.giant.bank.example"),
              dkim=[DkimResult("pass", "mail.mega.bank.example")])
    assert (res.result, res.spf_aligned, res.dkim_aligned) == ("pass", "mail.giant.bank.example", None)


def test_psd_policy_is_not_used_when_the_org_publishes(zone, resolver):
    zone({"_dmarc.foo.example": {"TXT": ["v=DMARC1; p=none"]},
          "_dmarc.example": {"TXT": ["v=DMARC1; p=reject; psd=y"]}})
    res = run(resolver, "mail.foo.example")
    assert (res.record_domain, res.org_domain, res.policy) == ("foo.example", "foo.example", "none")


# --- np, sp and the existence of the author domain --------------------------------------------------

RECORD = {"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; np=reject"]}}


@pytest.mark.parametrize("names,policy", [
    ({}, "reject"),                                           # NXDOMAIN: np
    ({"sub.example.com": {"MX": [[10, "mx.example.com"]]}}, "quarantine"),   # exists (NODATA for TXT): sp
    ({"sub.example.com": {"TXT": ["hello"]}}, "quarantine"),
])
def test_np_for_a_subdomain_that_does_not_exist(zone, resolver, names, policy):
    zone({**RECORD, **names})
    res = run(resolver, "sub.example.com")
    assert (res.result, res.policy, res.disposition) == ("fail", policy, policy)


def test_np_absent_falls_back_to_sp_then_p(zone, resolver):
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=none"]}})
    assert run(resolver, "ghost.example.com").policy == "none"
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=quarantine"]}})
    assert run(resolver, "ghost.example.com").policy == "quarantine"


def test_np_is_ignored_in_rfc7489_mode(zone, resolver):
    zone(RECORD)
    res = run(resolver, "sub.example.com", mode=DmarcMode.RFC7489)
    assert res.policy == "quarantine"


def test_np_invalid_without_rua_is_no_record(zone, resolver):
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; np=bogus"]}})
    assert run(resolver, "example.com").result == "none"
    assert run(resolver, "example.com", mode=DmarcMode.RFC7489).result == "fail"    # 7489 knows no np


# --- t=y -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("record,policy", [
    ("v=DMARC1; p=reject; t=y", "quarantine"),
    ("v=DMARC1; p=quarantine; t=y", "none"),
    ("v=DMARC1; p=none; t=y", "none"),
    ("v=DMARC1; p=reject; t=n", "reject"),
    ("v=DMARC1; p=reject; t=Y", "quarantine"),
    ("v=DMARC1; p=reject; t=maybe", "reject"),                 # a syntax error takes the default, n
])
def test_t_y_is_one_step_down(zone, resolver, record, policy):
    zone({"_dmarc.example.com": {"TXT": [record]}})
    res = run(resolver, "example.com")
    assert (res.result, res.policy, res.disposition) == ("fail", policy, policy)


def test_t_y_steps_down_np_too(zone, resolver):
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=none; np=reject; t=y"]}})
    assert run(resolver, "ghost.example.com").policy == "quarantine"


def test_pct_is_ignored(zone, resolver):
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; pct=0"]}})
    res = dmarc_check.evaluate(resolver.session(50), ["u@example.com"], NO_SPF, [], sample=0.99)
    assert (res.policy, res.disposition) == ("reject", "reject")
    res = dmarc_check.evaluate(resolver.session(50), ["u@example.com"], NO_SPF, [], sample=0.99,
                               mode=DmarcMode.RFC7489)
    assert (res.policy, res.disposition) == ("reject", "quarantine")


# --- several records -------------------------------------------------------------------------------

def test_several_records_at_the_author_is_none_above_it_passed_over(zone, resolver):
    zone({"_dmarc.mail.example.com": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
          "_dmarc.example.com": {"TXT": ["v=DMARC1; p=quarantine"]}})
    assert run(resolver, "mail.example.com").result == "none"
    res = run(resolver, "a.mail.example.com")
    assert (res.result, res.record_domain, res.policy) == ("fail", "example.com", "quarantine")


def test_a_version_not_exactly_dmarc1_is_passed_over(zone, resolver):
    zone({"_dmarc.mail.example.com": {"TXT": ["v=dmarc1; p=reject"]},
          "_dmarc.example.com": {"TXT": ["v=DMARC1; p=quarantine"]}})
    res = run(resolver, "mail.example.com")
    assert (res.record_domain, res.policy) == ("example.com", "quarantine")


# --- every DNS failure on the way is temperror ------------------------------------------------------

@pytest.mark.parametrize("failing", walk_names("a.b.mail.example.com"))
def test_a_failure_anywhere_in_the_policy_walk_is_temperror(zone, resolver, failing):
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}, f"_dmarc.{failing}": {"TXT": "TIMEOUT"}})
    res = run(resolver, "a.b.mail.example.com")
    assert res.result == "temperror" and "record lookup failed" in res.reason


def test_a_failure_above_the_author_record_is_temperror_only_when_alignment_needs_it(zone, resolver):
    zone({"_dmarc.mail.example.com": {"TXT": ["v=DMARC1; p=reject"]}, "_dmarc.example.com": {"TXT": "TIMEOUT"}})
    # the same name aligns without an Organizational Domain
    assert run(resolver, "mail.example.com", dkim=[DkimResult("pass", "mail.example.com")]).result == "pass"
    res = run(resolver, "mail.example.com", dkim=[DkimResult("pass", "example.com")])
    assert res.result == "temperror" and "DKIM d=example.com" in res.reason
    assert res.org_domain == "" and res.record_domain == "mail.example.com"
    # strict alignment needs no walk: a plain fail
    zone({"_dmarc.mail.example.com": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
          "_dmarc.example.com": {"TXT": "TIMEOUT"}})
    assert run(resolver, "mail.example.com", dkim=[DkimResult("pass", "example.com")]).result == "fail"


def test_a_failure_in_an_identifiers_walk_is_temperror(zone, resolver):
    zone({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}, "_dmarc.news.example.com": {"TXT": "TIMEOUT"}})
    res = run(resolver, "example.com", dkim=[DkimResult("pass", "news.example.com")])
    assert res.result == "temperror" and "could not check DKIM d=news.example.com" in res.reason
    # another identifier that aligns: pass; one that cannot align needs no walk: fail
    res = run(resolver, "example.com", spf=spf_pass("example.com"), dkim=[DkimResult("pass", "news.example.com")])
    assert res.result == "pass"
    assert run(resolver, "example.com", dkim=[DkimResult("pass", "news.example.net")]).result == "fail"


def test_a_failure_of_the_existence_query_is_temperror(zone, resolver):
    zone({**RECORD, "sub.example.com": {"TXT": "TIMEOUT"}})
    res = run(resolver, "sub.example.com")
    assert res.result == "temperror" and "exists" in res.reason


def test_a_dead_server_is_temperror(zone, dns_server, resolver):
    zone(RECORD)
    dns_server.resolver.silent = True
    assert run(resolver, "example.com").result == "temperror"
