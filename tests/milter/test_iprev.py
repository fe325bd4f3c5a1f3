"""iprev (RFC 8601 section 3) on the loopback DNS server: the check, its bounds, its place in
authenticate(), the A-R header it writes and the event deliver reads from that header."""
from __future__ import annotations

import time

import pytest
from e2e_helpers import message

from agentmx.deliver.authread import read_auth
from agentmx.milter import arheader, iprev_check
from agentmx.milter.authenticate import Envelope, authenticate
from agentmx.milter.results import IprevResult

IP = "192.0.2.10"
REV = "10.2.0.192.in-addr.arpa"
IP6 = "2001:db8::25"
REV6 = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


def test_pass_when_the_ptr_name_maps_back(zone, lookups):
    zone({REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": ["198.51.100.1", IP]}})
    assert iprev_check.check(lookups, IP) == IprevResult("pass", IP, ("mail.example.org",), "mail.example.org")


def test_the_second_name_may_confirm(zone, lookups):
    zone({REV: {"PTR": ["other.example.org", "mail.example.org"]},
          "other.example.org": {"A": ["198.51.100.1"]}, "mail.example.org": {"A": [IP]}})
    res = iprev_check.check(lookups, IP)
    assert (res.result, res.confirmed) == ("pass", "mail.example.org")
    assert set(res.names) == {"other.example.org", "mail.example.org"}


@pytest.mark.parametrize("forward", [
    {"mail.example.org": {"A": ["198.51.100.1"]}},          # maps to another address
    {"mail.example.org": {"AAAA": ["2001:db8::1"]}},        # no A at all (NODATA)
    {},                                                     # NXDOMAIN
])
def test_fail_when_no_ptr_name_maps_back(zone, lookups, forward):
    zone({REV: {"PTR": ["mail.example.org"]}, **forward})
    res = iprev_check.check(lookups, IP)
    assert (res.result, res.names, res.confirmed) == ("fail", ("mail.example.org",), "")
    assert res.reason == f"no PTR name maps back to {IP}"


@pytest.mark.parametrize("reverse", [{}, {REV: {"TXT": ["not a PTR"]}}], ids=["nxdomain", "nodata"])
def test_no_ptr_is_permerror(zone, lookups, reverse):
    """RFC 8601 2.7.3: no PTR data published (NXDOMAIN, or NOERROR without answers) is permerror."""
    zone(reverse)
    res = iprev_check.check(lookups, IP)
    assert (res.result, res.names, res.reason) == ("permerror", (), f"no PTR record for {IP}")


def test_timeout_on_the_ptr_is_temperror_never_fail(zone, dns_server, resolver):
    zone({REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [IP]}})
    dns_server.resolver.silent = True              # a server that does not answer at all
    started = time.monotonic()
    res = iprev_check.check(resolver.session(50), IP)
    assert res.result == "temperror" and "timeout" in res.reason
    assert time.monotonic() - started < 3 * resolver.timeout


def test_timeout_on_the_forward_lookup_is_temperror(zone, dns_server, lookups):
    zone({REV: {"PTR": ["slow.example.org", "mail.example.org"]}, "slow.example.org": {"A": "TIMEOUT"},
          "mail.example.org": {"A": ["198.51.100.1"]}})
    dns_server.resolver.timeout_mode = "drop"
    res = iprev_check.check(lookups, IP)
    assert res.result == "temperror" and "timeout" in res.reason and res.confirmed == ""


def test_servfail_is_temperror(zone, lookups):
    zone({REV: {"PTR": "TIMEOUT"}})                # timeout_mode "servfail": an immediate SERVFAIL
    assert iprev_check.check(lookups, IP).result == "temperror"


def test_ipv6_asks_aaaa(zone, dns_server, lookups):
    zone({REV6: {"PTR": ["mail6.example.org"]}, "mail6.example.org": {"A": [IP], "AAAA": ["2001:DB8:0::25"]}})
    dns_server.resolver.asked.clear()
    res = iprev_check.check(lookups, IP6)
    assert (res.result, res.ip, res.confirmed) == ("pass", IP6, "mail6.example.org")
    assert ("mail6.example.org", "AAAA") in dns_server.resolver.asked
    assert ("mail6.example.org", "A") not in dns_server.resolver.asked


def test_ipv6_name_with_only_an_a_record_fails(zone, lookups):
    zone({REV6: {"PTR": ["mail6.example.org"]}, "mail6.example.org": {"A": [IP]}})
    assert iprev_check.check(lookups, IP6).result == "fail"


def test_ipv4_mapped_address_is_checked_as_ipv4(zone, lookups):
    zone({REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [IP]}})
    res = iprev_check.check(lookups, "::ffff:" + IP)
    assert (res.result, res.ip) == ("pass", IP)


def test_at_most_ten_names_and_only_host_names(zone, dns_server, lookups):
    """A hostile PTR set: 30 names, some no host names; at most 10 forward lookups are made."""
    bad = ["under_score.example.org", "-dash.example.org", "single", "bang!.example.org"]
    many = [f"n{i}.example.org" for i in range(26)]
    zone({REV: {"PTR": bad + many}})
    dns_server.resolver.asked.clear()
    res = iprev_check.check(lookups, IP)
    assert res.result == "fail" and len(res.names) == 10
    assert not set(bad) & set(res.names)
    forward = [q for q in dns_server.resolver.asked if q[1] == "A"]
    assert len(forward) == 10 and all(name in res.names for name, _ in forward)


def test_ptr_names_that_are_no_host_names_fail(zone, dns_server, lookups):
    zone({REV: {"PTR": ["under_score.example.org"]}, "under_score.example.org": {"A": [IP]}})
    dns_server.resolver.asked.clear()
    res = iprev_check.check(lookups, IP)
    assert (res.result, res.names) == ("fail", ())
    assert ("under_score.example.org", "A") not in dns_server.resolver.asked


def test_not_an_ip_is_permerror(lookups):
    assert iprev_check.check(lookups, "unknown").result == "permerror"


ENV = Envelope(client_ip=IP, helo="mail.example.org", mail_from="news@example.org")


def test_authenticate_runs_iprev_last_within_the_budget(zone, resolver):
    zone({REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [IP]},
          "example.org": {"TXT": [f"v=spf1 ip4:{IP} -all"]}})
    res = authenticate(message("News <news@example.org>", "agent@agentmx.test"), ENV, resolver.session(200))
    assert (res.iprev.result, res.iprev.confirmed) == ("pass", "mail.example.org")
    # With a budget that SPF, DKIM and DMARC use up, iprev (last) is the one that says temperror.
    session = resolver.session(4)
    res = authenticate(message("News <news@example.org>", "agent@agentmx.test"), ENV, session)
    assert res.spf.result == "pass" and res.dmarc.result != "temperror"
    assert res.iprev.result == "temperror" and "budget" in res.iprev.reason


def _header(iprev: IprevResult, zone_, lookups_) -> str:
    zone_({})
    res = authenticate(message("News <news@example.org>", "agent@agentmx.test"),
                       Envelope(client_ip="", helo="", mail_from=""), lookups_)
    from dataclasses import replace
    return arheader.render("mx.agentmx.test", replace(res, iprev=iprev))


@pytest.mark.parametrize("iprev,text,details", [
    (IprevResult("pass", IP, ("other.example.org", "mail.example.org"), "mail.example.org"),
     f"iprev=pass policy.iprev={IP} (mail.example.org other.example.org)",
     {"result": "pass", "ip": IP, "names": ["mail.example.org", "other.example.org"],
      "confirmed": "mail.example.org", "reason": None}),
    (IprevResult("fail", IP6, ("mail6.example.org",), reason=f"no PTR name maps back to {IP6}"),
     f'iprev=fail reason="no PTR name maps back to {IP6}" policy.iprev="{IP6}" (mail6.example.org)',
     {"result": "fail", "ip": IP6, "names": ["mail6.example.org"], "confirmed": None,
      "reason": f"no PTR name maps back to {IP6}"}),
    (IprevResult("permerror", IP, reason=f"no PTR record for {IP}"),
     f'iprev=permerror reason="no PTR record for {IP}" policy.iprev={IP}',
     {"result": "permerror", "ip": IP, "names": [], "confirmed": None, "reason": f"no PTR record for {IP}"}),
])
def test_the_header_says_it_and_the_event_reads_it(zone, lookups, iprev, text, details):
    value = _header(iprev, zone, lookups)
    assert f"; {text}; " in value
    folded = arheader.fold(value)
    auth = read_auth([("Authentication-Results", folded), ("Received", "from x")], "mx.agentmx.test")
    assert auth["iprev"] == details["result"] and auth["details"]["iprev"] == details


def test_a_message_without_our_header_says_none():
    auth = read_auth([("Received", "from x")], "mx.agentmx.test")
    assert auth["iprev"] == "none" and auth["details"]["iprev"] is None
