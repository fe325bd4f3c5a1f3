"""The verdicts as the console explains them (agentmx/api/console/explain.py): pure, from the
event's `auth` member as deliver writes it."""
from __future__ import annotations

import pytest

from agentmx.api.console.explain import explain

pytestmark = pytest.mark.unit

AUTH = {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none", "spam": "ham", "iprev": "pass",
        "authservId": "mx.agents.test",
        "details": {"spf": {"result": "pass", "reason": None, "mailFrom": "bob@remote.test", "domain": "remote.test"},
                    "spfHelo": None,
                    "dkim": [{"result": "pass", "domain": "remote.test", "selector": "s1", "algorithm": "rsa-sha256",
                              "reason": None}],
                    "dmarc": {"result": "pass", "from": "remote.test", "policy": "reject", "disposition": "none",
                              "reason": None, "override": None},
                    "arc": None, "iprev": {"result": "pass", "ip": "127.0.0.2", "names": ["mx.remote.test"],
                                           "confirmed": "mx.remote.test", "reason": None},
                    "note": None, "spam": None}}


def test_each_method_is_explained_as_agentmx_auth_prints_it():
    by = {e.method: e for e in explain(AUTH)}
    assert by["dkim"].line == "DKIM d=remote.test s=s1 a=rsa-sha256: pass"
    assert "remote.test vouches for this message" in by["dkim"].meaning and by["dkim"].badge == "dkim=pass"
    assert by["spf"].line == "SPF  MAIL FROM bob@remote.test: pass"
    assert by["dmarc"].line.startswith("DMARC From remote.test: pass; policy reject")
    assert "can be believed" in by["dmarc"].meaning
    assert by["iprev"].line == "iprev 127.0.0.2: pass (PTR mx.remote.test maps back to it)"


def test_a_dns_failure_is_explained_as_temporary_and_a_fail_as_a_warning():
    auth = {**AUTH, "dkim": "temperror", "dmarc": "fail",
            "details": {**AUTH["details"], "dkim": [{**AUTH["details"]["dkim"][0], "result": "temperror",
                                                     "reason": "DNS timeout"}],
                        "dmarc": {**AUTH["details"]["dmarc"], "result": "fail"}}}
    by = {e.method: e for e in explain(auth)}
    assert by["dkim"].line.endswith("temperror (DNS timeout)") and "temporary" in by["dkim"].meaning
    assert "may be forged" in by["dmarc"].meaning


def test_an_unverified_message_says_so_once_and_nothing_else():
    out = explain({"spf": "none", "dkim": "none", "dmarc": "none", "arc": "none", "spam": "unknown",
                   "details": {"note": "no Authentication-Results header of ours: not verified"}})
    assert [e.badge for e in out] == ["not verified"] and "Do not believe its From" in out[0].meaning


def test_hostile_shapes_do_not_break_it():
    for auth in ({}, {"details": None}, {"details": {"dkim": [{}], "dmarc": {}, "spf": {}}}, {"dmarc": "weird"}):
        assert explain(auth)


def test_the_helo_check_is_explained_as_the_helo_name_not_the_envelope_sender():
    auth = {**AUTH, "details": {**AUTH["details"], "spfHelo": {"result": "none", "reason": None, "helo": "mail.remote.test"}}}
    helo = next(e for e in explain(auth) if e.method == "spf-helo")
    assert helo.line == "SPF  HELO mail.remote.test: none"
    assert "HELO name mail.remote.test" in helo.meaning and "envelope sender" not in helo.meaning
