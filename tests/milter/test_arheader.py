"""Authentication-Results: our rendering parses back (authres), and forged ids are recognised."""
from __future__ import annotations

from dataclasses import replace

import authres
import pytest

from agentmx.authservid import authserv_id_of
from agentmx.authservid import claims_id as claims_our_id
from agentmx.milter.arheader import COMMENT_MAX, dmarc_comment, fold, render
from agentmx.milter.results import ArcResult, AuthResults, DkimResult, DmarcRecord, DmarcResult, SpfResult

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value,expected", [
    ("mx.example.com; spf=pass", "mx.example.com"),
    ("MX.Example.COM ; dkim=pass", "mx.example.com"),
    ("(forged) mx.example.com (x (nested)) 1; dkim=pass", "mx.example.com"),
    ("mx.example.com.; none", "mx.example.com"),
    ('"mx.example.com"; spf=pass', "mx.example.com"),
    ("other.example; spf=pass (mx.example.com)", "other.example"),
    ("", ""),
    ("; spf=pass", ""),
])
def test_authserv_id_of(value, expected):
    assert authserv_id_of(value) == expected


def test_claims_our_id_ignores_lookalikes():
    assert claims_our_id(" mx.example.com;\r\n\tspf=pass", "mx.example.com")
    assert not claims_our_id("mx.example.com.evil; spf=pass", "mx.example.com")
    assert not claims_our_id("evil-mx.example.com; spf=pass", "mx.example.com")


def sample(dkim=(DkimResult("pass", "example.com", "s1", "rsa-sha256", "abcdefgh"),)) -> AuthResults:
    return AuthResults(
        spf=SpfResult("fail", "mailfrom", "example.org", "bounce@example.org", 'SPF fail - "quoted" \\ reason'),
        spf_helo=SpfResult("none", "helo", "mail.example.org", "mail.example.org"),
        dkim=dkim,
        arc=ArcResult("none"),
        dmarc=DmarcResult("pass", from_domain="example.com", record_domain="example.com",
                          record=DmarcRecord(raw="v=DMARC1; p=reject", p="reject"), policy="reject",
                          dkim_aligned="example.com"),
    )


def test_render_parses_back_with_authres():
    value = render("mx.example.com", sample())
    parsed = authres.all_features().parse(f"Authentication-Results: {value}")
    assert parsed.authserv_id == "mx.example.com"
    methods = [r.method for r in parsed.results]
    assert methods == ["spf", "spf", "dkim", "arc", "dmarc"]
    spf = parsed.results[0]
    assert spf.result == "fail" and spf.smtp_mailfrom == "bounce@example.org"
    assert '"' not in spf.reason and "\\" not in spf.reason
    dkim = parsed.results[2]
    assert (dkim.result, dkim.header_d, dkim.header_s, dkim.header_a) == ("pass", "example.com", "s1", "rsa-sha256")
    dmarc = parsed.results[4]
    assert (dmarc.result, dmarc.header_from, dmarc.policy) == ("pass", "example.com", "reject")


def test_no_signature_renders_dkim_none():
    value = render("mx.example.com", sample(dkim=()))
    assert "dkim=none" in value


def test_fold_keeps_the_value_and_a_leading_space():
    value = render("mx.example.com", sample())
    folded = fold(value)
    assert folded.startswith(" mx.example.com;")
    assert all(len(line) <= 100 for line in folded.split("\n"))
    assert " ".join(folded.split()) == " ".join(value.split())


def _dmarc_fail(from_domain: str, org: str, reason: str) -> AuthResults:
    rec = DmarcRecord(raw="v=DMARC1; p=reject; np=quarantine; t=y", p="reject", np="quarantine", t="y")
    return replace(sample(), dmarc=DmarcResult("fail", from_domain=from_domain, record_domain=org, record=rec,
                                               policy="quarantine", disposition="quarantine", reason=reason,
                                               org_domain=org))


def test_rfc9989_comment_says_what_the_walk_found_and_folds_outside_quotes():
    reason = "2 From header fields (a.test, bank.test); bank.test fails: DKIM d=a.test passed but is not aligned"
    value = render("mx.example.com", _dmarc_fail("ghost.bank.test", "bank.test", reason))
    folded = fold(value)
    assert " ".join(folded.split()) == " ".join(value.split())
    assert all(len(line) <= 79 for line in folded.split("\n") if "reason=" not in line)
    dmarc = authres.all_features().parse(f"Authentication-Results:{folded}".replace("\n", "\r\n")).results[-1]
    assert dmarc.reason == reason
    assert "dmarc=fail (p=reject sp=reject np=quarantine t=y dis=quarantine record=bank.test org=bank.test)" in value


def test_rfc9989_comment_is_bounded():
    long = ".".join(["x" * 60] * 4)
    comment = dmarc_comment(_dmarc_fail(long, long, "r").dmarc)
    assert len(comment) <= COMMENT_MAX and comment.startswith("p=reject sp=reject np=quarantine t=y dis=quarantine")
    assert "org=" not in comment      # what does not fit whole is left out, never cut
    old = replace(_dmarc_fail("bank.test", "bank.test", "r").dmarc, mode="rfc7489")
    assert dmarc_comment(old) == "p=reject sp=reject pct=100 dis=quarantine"
