"""Trusted ARC forwarders (milter/arc_override.py): when may a valid ARC chain lift a DMARC policy?

The rules as values first (pure), then real messages: an author's DKIM-signed message forwarded
by a list that tags the Subject and adds a footer (the author's signature breaks) and ARC-seals
it with dkimpy, verified by authenticate() against keys on the loopback DNS server; then what the
A-R header says, what the event reads back, what the reject policy does and what `agentmx auth`
explains. The end-to-end run through Postfix and the milter process is test_e2e_arc_override.py.
"""
from __future__ import annotations

import re

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from e2e_helpers import RsaKey
from support.arclist import authored, list_forward, seal

from agentmx.config import ConfigError, PolicyConfig, parse_config
from agentmx.deliver.authread import read_auth
from agentmx.milter import arc_override, arheader, policy
from agentmx.milter.authenticate import Envelope, authenticate
from agentmx.milter.results import ArcResult, DmarcRecord, DmarcResult

TRUSTED = ("lists.test",)
SEEN = "spf=pass smtp.mailfrom=alice@author.test; dkim=pass header.d=author.test; dmarc=pass header.from=author.test"
AAR = f"i=1; lists.test; {SEEN}"


def failing(**kw) -> DmarcResult:
    base = DmarcResult("fail", from_domain="author.test", record_domain="author.test",
                       record=DmarcRecord(raw="v=DMARC1; p=reject", p="reject"), policy="reject",
                       disposition="reject", reason="DKIM d=author.test fail (body hash did not verify)")
    return replace(base, **kw)


def chain(**kw) -> ArcResult:
    return replace(ArcResult("pass", instances=1, sealers=("lists.test",), earliest_aar=AAR), **kw)


# --- the rules, as values -----------------------------------------------------------------------

def test_a_trusted_sealer_whose_first_hop_saw_dmarc_pass_lifts_the_policy():
    dm = arc_override.apply(failing(), chain(), TRUSTED)
    assert dm.result == "fail"                                   # the DMARC result stays fail
    assert dm.disposition == "none"
    assert (dm.override.type, dm.override.sealer, dm.override.evaluated) == ("trusted_forwarder", "lists.test", "reject")
    assert arc_override.apply(failing(disposition="quarantine", policy="quarantine"), chain(), TRUSTED
                              ).override.evaluated == "quarantine"


@pytest.mark.parametrize("dmarc,arc,trusted,why", [
    (failing(), chain(), ("other.test",), "ARC sealer of i=1 (lists.test) is not trusted"),
    (failing(), chain(), (), "no trusted ARC sealers configured"),
    (failing(), chain(result="fail", reason="ARC-Seal[1] did not validate"), TRUSTED, "did not validate (arc=fail)"),
    (failing(), chain(result="none", sealers=(), earliest_aar=""), TRUSTED, "did not validate (arc=none)"),
    (failing(), chain(result="temperror"), TRUSTED, "did not validate (arc=temperror)"),
    (failing(), chain(earliest_aar=AAR.replace("dmarc=pass", "dmarc=fail")), TRUSTED,
     "earliest ARC-Authentication-Results says dmarc=fail"),
    (failing(), chain(earliest_aar="i=1; lists.test; spf=pass smtp.mailfrom=alice@author.test; "
                                   "dkim=pass header.d=author.test"), TRUSTED, "no single, readable dmarc result"),
    (failing(), chain(earliest_aar=AAR.replace("header.from=author.test", "header.from=lists.test")), TRUSTED,
     "is about lists.test, not author.test"),
    (failing(result="pass", disposition="none", reason="aligned DKIM d=author.test"), chain(), TRUSTED,
     "DMARC did not fail (pass)"),
    (failing(result="none", record=None), chain(), TRUSTED, "DMARC did not fail (none)"),
    (failing(result="temperror"), chain(), TRUSTED, "DMARC did not fail (temperror)"),
    (failing(disposition="none", policy="none"), chain(), TRUSTED, "the policy applied is none already"),
    (failing(each=(failing(), failing(from_domain="bank.test"))), chain(), TRUSTED, "several author domains"),
    # every sealer must be trusted: the newest alone is not enough, nor the first alone
    (failing(), chain(instances=2, sealers=("evil.test", "lists.test")), TRUSTED, "sealer of i=1 (evil.test)"),
    (failing(), chain(instances=2, sealers=("lists.test", "evil.test")), TRUSTED, "sealer of i=2 (evil.test)"),
])
def test_no_override(dmarc, arc, trusted, why):
    found, reason = arc_override.check(dmarc, arc, trusted)
    assert found is None and why in reason
    assert arc_override.apply(dmarc, arc, trusted) == dmarc


def test_two_trusted_sealers_report_the_newest():
    dm = arc_override.apply(failing(), chain(instances=2, sealers=("lists.test", "groups.test")),
                            ("groups.test", "lists.test"))
    assert dm.override.sealer == "groups.test"


@pytest.mark.parametrize("aar", [
    # the words dmarc=pass where a parser that reads text, not results, would find them
    "i=1; lists.test; dmarc=fail (dmarc=pass header.from=author.test) header.from=author.test",
    'i=1; lists.test; spf=fail reason="dmarc=pass header.from=author.test" smtp.mailfrom=x@lists.test',
    "i=1; lists.test; x-dmarc=pass header.from=author.test",
    # two dmarc verdicts: which one? neither
    "i=1; lists.test; dmarc=pass header.from=author.test; dmarc=fail header.from=author.test",
    "i=1; lists.test; dmarc=pass header.from=author.test; dmarc=pass header.from=author.test",
    # not the earliest instance, or no instance at all
    "i=2; lists.test; dmarc=pass header.from=author.test",
    "lists.test; dmarc=pass header.from=author.test",
    "i=1 lists.test dmarc=pass header.from=author.test",
    # broken syntax, and a From domain smuggled in beside the real one
    "i=1; lists.test; dmarc=pass (header.from=author.test",
    'i=1; lists.test; dmarc=pass header.from="author.test lists.test"',
    "i=1; lists.test; dmarc=pass header.from=author.test.evil.test",
    "i=1; lists.test; dmarc=pass header.from=",
    "i=1; lists.test; dmarc=pass",
    "i=1; lists.test; dmarc=pass header.from=AUTHOR.TEST\x00",
    "i=1; " + "(" * 2000 + "lists.test; dmarc=pass header.from=author.test",
    "",
])
def test_hostile_earliest_aar_values_never_override(aar):
    started = time.process_time()
    found, why = arc_override.check(failing(), chain(earliest_aar=aar), TRUSTED)
    assert found is None, why
    assert time.process_time() - started < 0.5


def test_case_and_folding_of_a_real_aar_do_not_matter():
    aar = "i=1;  Lists.Test ;\r\n\tDMARC=PASS (p=REJECT sp=REJECT dis=NONE)\r\n header.from=Author.Test"
    assert arc_override.check(failing(), chain(earliest_aar=aar), TRUSTED)[0] is not None


# --- real messages: an author's mail through a list that breaks DKIM and ARC-seals ---------------

@pytest.fixture(scope="module")
def keys():
    return {"author": RsaKey(), "list": RsaKey(), "other": RsaKey()}


@pytest.fixture
def world(zone, keys):
    return zone({
        "author.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "_dmarc.author.test": {"TXT": ["v=DMARC1; p=reject"]},
        "s1._domainkey.author.test": {"TXT": [keys["author"].txt]},
        "lists.test": {"TXT": ["v=spf1 ip4:198.51.100.7 -all"]},
        "arc._domainkey.lists.test": {"TXT": [keys["list"].txt]},
        "otherlist.test": {"TXT": ["v=spf1 ip4:198.51.100.7 -all"]},
        "arc._domainkey.otherlist.test": {"TXT": [keys["other"].txt]},
    })


LIST_ENV = Envelope(client_ip="198.51.100.7", helo="mail.lists.test", mail_from="team-bounces@lists.test")


def forwarded(keys, list_domain="lists.test", key="list", seen=SEEN) -> bytes:
    raw = authored("Alice <alice@author.test>", "team@lists.test", "author.test", "s1", keys["author"])
    return list_forward(raw, list_domain, keys[key], seen)


def run(raw, lookups, trusted=TRUSTED):
    return authenticate(raw, LIST_ENV, lookups, arc_trusted_sealers=trusted)


def test_a_list_forward_from_a_trusted_list(world, keys, lookups):
    res = run(forwarded(keys), lookups)
    assert res.dkim[0].result == "fail" and res.spf.result == "pass" and res.arc.result == "pass"
    assert res.arc.sealers == ("lists.test",)
    assert (res.dmarc.result, res.dmarc.disposition, res.dmarc.override.sealer) == ("fail", "none", "lists.test")
    assert policy.decide(res, PolicyConfig(reject_dmarc=True)).action == "accept"

    header = arheader.render("mx.agentmx.test", res)
    # RFC 9989's comment (no pct; where the walk found the record), then the override
    assert re.search(r"dmarc=fail \(p=reject sp=reject dis=none( record=\S+)?( org=\S+)? "
                     r"override=trusted_forwarder arc.sealer=lists.test\)", " ".join(header.split())), header
    assert "policy.override-reason=trusted_forwarder policy.evaluated-disposition=reject" in header
    auth = read_auth([("Authentication-Results", arheader.fold(header)[1:])], "mx.agentmx.test")
    assert auth["dmarc"] == "fail" and auth["arc"] == "pass"
    assert auth["details"]["dmarc"]["disposition"] == "none"
    assert auth["details"]["dmarc"]["override"] == {"type": "trusted_forwarder", "sealer": "lists.test",
                                                    "evaluatedDisposition": "reject"}


def test_the_same_forward_from_an_untrusted_list_is_rejected_as_before(world, keys, lookups):
    res = run(forwarded(keys, "otherlist.test", "other"), lookups)
    assert res.arc.result == "pass" and res.arc.sealers == ("otherlist.test",)
    assert (res.dmarc.result, res.dmarc.disposition, res.dmarc.override) == ("fail", "reject", None)
    assert policy.decide(res, PolicyConfig(reject_dmarc=True)).code == "550"
    header = arheader.render("mx.agentmx.test", res)
    assert "override" not in header
    auth = read_auth([("Authentication-Results", header)], "mx.agentmx.test")
    assert auth["details"]["dmarc"]["override"] is None


def test_without_trusted_sealers_nothing_changes(world, keys, lookups):
    res = run(forwarded(keys), lookups, trusted=())
    assert (res.dmarc.disposition, res.dmarc.override) == ("reject", None)


def test_a_message_changed_after_the_seal_breaks_the_chain(world, keys, lookups):
    raw = forwarded(keys).replace(b"Can we meet on Tuesday?", b"Wire 5000 EUR today.  ")
    res = run(raw, lookups)
    assert res.arc.result == "fail"
    assert (res.dmarc.disposition, res.dmarc.override) == ("reject", None)


def test_the_list_saw_dmarc_fail(world, keys, lookups):
    seen = "spf=fail smtp.mailfrom=alice@author.test; dkim=none; dmarc=fail header.from=author.test"
    res = run(forwarded(keys, seen=seen), lookups)
    assert res.arc.result == "pass" and res.dmarc.override is None


def test_an_untrusted_first_hop_vouching_through_a_trusted_list(world, keys, lookups):
    """An attacker's own sealer writes dmarc=pass at i=1 for a message it forged, then sends it
    through the trusted list, which seals i=2 (its own AAR saw dmarc=fail): no override."""
    forged = authored("Alice <alice@author.test>", "team@lists.test", "otherlist.test", "arc", keys["other"])
    hop1 = seal(b"Authentication-Results: otherlist.test; dmarc=pass header.from=author.test\r\n" + forged,
                "otherlist.test", keys["other"])
    hop2 = seal(b"Authentication-Results: lists.test; arc=pass; dmarc=fail header.from=author.test\r\n" + hop1,
                "lists.test", keys["list"])
    res = run(hop2, lookups, trusted=("lists.test",))
    assert res.arc.result == "pass" and res.arc.sealers == ("otherlist.test", "lists.test")
    assert res.dmarc.override is None and res.dmarc.disposition == "reject"


def test_a_message_that_passes_dmarc_is_left_alone(world, keys, lookups):
    raw = seal(b"Authentication-Results: lists.test; " + SEEN.encode() + b"\r\n"
               + authored("Alice <alice@author.test>", "team@lists.test", "author.test", "s1", keys["author"]),
               "lists.test", keys["list"])
    res = run(raw, lookups)
    assert (res.dmarc.result, res.dmarc.override) == ("pass", None)


# --- config and `agentmx auth` ----------------------------------------------------------------------

MIN = '[server]\nauthserv_id = "mx.example.com"\n'


def test_config_key():
    cfg = parse_config(MIN + '[milter]\narc_trusted_sealers = ["Lists.Example.org.", "lists.example.org", "xn--bcher-kva.example"]\n',
                       Path("/etc/agentmx/agentmx.toml"))
    assert cfg.milter.arc_trusted_sealers == ("lists.example.org", "xn--bcher-kva.example")
    assert parse_config(MIN, Path("/x.toml")).milter.arc_trusted_sealers == ()
    for bad in ('"lists.example.org"', '["lists example.org"]', '["@lists.example.org"]', '["localhost"]',
                '["bücher.example"]', '[1]', '["-x.example"]', str(["l%d.example" % i for i in range(101)])):
        with pytest.raises(ConfigError, match=r"/etc/agentmx/agentmx.toml: \[milter\] arc_trusted_sealers: must be"):
            parse_config(MIN + f"[milter]\narc_trusted_sealers = {bad}\n", Path("/etc/agentmx/agentmx.toml"))


def test_agentmx_auth_explains_the_override(world, keys, tmp_path):
    path = tmp_path / "forwarded.eml"
    path.write_bytes(forwarded(keys))
    agentmx = str(Path(sys.executable).with_name("agentmx"))
    base = [agentmx, "auth", str(path), "--client-ip", LIST_ENV.client_ip, "--helo", LIST_ENV.helo,
            "--mail-from", LIST_ENV.mail_from, "--dns", f"127.0.0.1:{world.port}", "--timeout", "1"]
    env = {"PATH": "/usr/bin:/bin", "AGENTMX_CONFIG": "/nonexistent/agentmx.toml"}
    out = subprocess.run(base + ["--arc-trusted-sealer", "lists.test"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "  policy override: trusted_forwarder: the ARC chain validates, every sealer is trusted (newest: " \
           "lists.test)" in out.stdout
    assert "the policy's reject is not applied (applies: none); the DMARC result stays fail" in out.stdout
    out = subprocess.run(base + ["--arc-trusted-sealer", "groups.test"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert "  no ARC override: ARC sealer of i=1 (lists.test) is not trusted" in out.stdout
    out = subprocess.run(base + ["--arc-trusted-sealer", "not a domain"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2 and "--arc-trusted-sealer wants a domain" in out.stderr
