"""End to end, outbound: mail submitted locally (sendmail(1), non_smtpd_milters) from an address
of [signing] local_from passes the milter in sign mode and leaves DKIM-signed with its From
domain's RSA and ed25519 keys; the delivered copy verifies against the records `agentmx dns`
prints, served by DNS on loopback. (Who else is signed: test_e2e_signscope.py.)"""
from __future__ import annotations

import email
import subprocess

import pytest

from e2e_helpers import message
from support.dnszone import zone_from_records
from support.postfix import MilterProcess, PostfixInstance, agentmx_config

from agentmx import dkimkeys, dnsrecords
from agentmx.config import load_config
from agentmx.milter.authenticate import Envelope, authenticate
from agentmx.milter.dkim_check import verify_dkim


@pytest.fixture(scope="module")
def signer(dns_server):
    pf = PostfixInstance("sg", "mx.agents.example", relay_domains="example.org",
                         main={"transport_maps": "inline:{ example.org=sink: }"})
    key_dir = pf.base / "keys"
    dkimkeys.write(key_dir, dkimkeys.generate("agents.example", "s1", "rsa"))
    dkimkeys.write(key_dir, dkimkeys.generate("agents.example", "s1e", "ed25519"))
    cfg, sock = agentmx_config(pf, "mx.agents.example", dns_server.port, server=f'key_dir = "{key_dir}"',
                               rest='[domains."agents.example"]\ndkim_selectors = ["s1", "s1e"]\n'
                                    '[signing]\nlocal_from = ["agent@agents.example", "@nokeys.example"]')
    milter = MilterProcess(cfg, sock, pf.base / "milter.log").start()
    pf.start()
    config = load_config(cfg)
    zone = zone_from_records(dnsrecords.records(config, "agents.example"), {"mx.agents.example": {"A": ["127.0.0.1"]}})
    yield pf, milter, zone
    milter.stop()
    pf.stop()


def submit(pf, sender: str, raw: bytes) -> None:
    subprocess.run(["sendmail", "-C", str(pf.etc), "-f", sender, "bob@example.org"], input=raw, check=True, timeout=30)


def test_local_submission_is_signed_with_both_keys(signer, dns_server, resolver):
    pf, milter, zone = signer
    dns_server.set_zone(zone)
    submit(pf, "agent@agents.example", message("Agent <agent@agents.example>", "bob@example.org", subject="Re: hi"))
    (path,) = pf.wait_delivered(1)
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sigs = email.message_from_bytes(raw).get_all("DKIM-Signature")
    assert len(sigs) == 2
    results = verify_dkim(raw, resolver.session(20))
    assert sorted((r.result, r.selector) for r in results) == [("pass", "s1"), ("pass", "s1e")]
    # as a receiving MX would judge it (our own verifier), with the records we told the operator to publish
    res = authenticate(raw, Envelope("127.0.0.1", "mx.agents.example", "agent@agents.example"), resolver.session(40))
    assert res.dmarc.result == "pass" and res.dmarc.dkim_aligned == "agents.example"
    assert "signed d=agents.example s=s1,s1e" in milter.log()


def test_a_domain_without_keys_is_passed_unsigned_and_logged(signer, dns_server):
    pf, milter, zone = signer
    for p in pf.delivered():
        p.unlink()
    submit(pf, "x@nokeys.example", message("X <x@nokeys.example>", "bob@example.org"))
    (path,) = pf.wait_delivered(1)
    assert b"DKIM-Signature" not in path.read_bytes()
    assert "not signed: no DKIM key for nokeys.example" in milter.log()
