"""Authentication-Results: our rendering parses back (authres), and forged ids are recognised."""
from __future__ import annotations

import authres
import pytest

from agentmx.authservid import authserv_id_of
from agentmx.authservid import claims_id as claims_our_id
from agentmx.milter.arheader import fold, render
from agentmx.milter.results import ArcResult, AuthResults, DkimResult, DmarcRecord, DmarcResult, SpfResult


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
