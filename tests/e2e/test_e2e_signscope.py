"""End to end, whose mail is signed: a private Postfix with SMTP AUTH (Cyrus SASL, a sasldb of its
own), the send API's submission service (postfix/master.cf.submit.fragment) and local submission,
the real milter, keys for a.example and b.example. The milter signs a message only when its From
address is allowed for whoever submitted it: a SASL login by [[signing.sasl]], the send API by the
API keys (and agent routes), local submission and trusted_networks clients by [signing]
local_from. Everything else leaves unsigned, and the milter's log says why.

The Postfix here also has smtpd_helo_required = yes: the send path must say EHLO first."""
from __future__ import annotations

import email
import smtplib
import subprocess
import time

import pytest

from e2e_helpers import message
from support.dnszone import zone_from_records
from support.postfix import (MilterProcess, PostfixInstance, agentmx_config, enable_sasl, install_submit,
                             wait_for)

from agentmx import dkimkeys, dnsrecords, send
from agentmx.config import load_config
from agentmx.milter.dkim_check import verify_dkim

KEY = "amx_signscope_key_0123456789abcdef"


@pytest.fixture(scope="module")
def world(dns_server):
    pf = PostfixInstance("ss", "mx.sign.test", relay_domains="example.org",
                         main={"transport_maps": "inline:{ example.org=sink: }", "smtpd_helo_required": "yes"})
    enable_sasl(pf, {"alice": "alice-password-1", "mallory": "mallory-password-1"})
    socket_path = install_submit(pf)
    key_dir = pf.base / "keys"
    for domain in ("a.example", "b.example"):
        dkimkeys.write(key_dir, dkimkeys.generate(domain, "s1", "rsa"))
    cfg, sock = agentmx_config(pf, "mx.sign.test", dns_server.port, server=f'key_dir = "{key_dir}"', rest=f"""
[domains."a.example"]
dkim_selectors = ["s1"]
[domains."b.example"]
dkim_selectors = ["s1"]
[send]
submit = "unix:{socket_path}"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@b.example"]
[signing]
local_from = ["noreply@a.example"]
[[signing.sasl]]
login = "alice"
allow = ["alice@a.example"]
""")
    milter = MilterProcess(cfg, sock, pf.base / "milter.log").start()
    pf.start()
    config = load_config(cfg)
    zone = {"mx.sign.test": {"A": ["127.0.0.1"]}}
    for domain in ("a.example", "b.example"):
        zone_from_records(dnsrecords.records(config, domain), zone)
    yield {"pf": pf, "milter": milter, "config": config, "zone": zone}
    milter.stop()
    pf.stop()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    return world


def marked(from_addr: str) -> tuple[str, bytes]:
    marker = f"signscope-{time.time_ns()}"
    return marker, message(from_addr, "bob@example.org", subject=marker)


def delivered(w, marker: str) -> bytes:
    def find():
        for p in w["pf"].delivered():
            data = p.read_bytes()
            if marker.encode() in data:
                return data
        return None
    return wait_for(find, timeout=30, what=f"{marker} delivered\n{w['pf'].log()[-2000:]}")


def signed_domains(raw: bytes) -> list[str]:
    sigs = email.message_from_bytes(raw).get_all("DKIM-Signature") or []
    return [dict(t.strip().split("=", 1) for t in " ".join(s.split()).split(";") if "=" in t)["d"] for s in sigs]


def by_sasl(w, login: str, password: str, raw: bytes, mail_from: str) -> None:
    with smtplib.SMTP("127.0.0.1", w["pf"].port, local_hostname="client.sign.test", timeout=30) as s:
        s.login(login, password)
        assert s.sendmail(mail_from, ["bob@example.org"], raw) == {}


def by_api(w, from_addr: str, marker: str) -> str:
    req = send.parse_request({"from": from_addr, "to": ["bob@example.org"], "subject": marker, "text": marker})
    return send.submit(send.build(req, None, w["config"]), w["config"])


def by_sendmail(w, raw: bytes, mail_from: str) -> None:
    subprocess.run(["sendmail", "-C", str(w["pf"].etc), "-f", mail_from, "bob@example.org"], input=raw,
                   check=True, timeout=30)


def test_sasl_login_is_signed_only_for_its_own_addresses(w, resolver):
    marker, raw = marked("Alice <alice@a.example>")
    by_sasl(w, "alice", "alice-password-1", raw, "alice@a.example")
    copy = delivered(w, marker)
    assert signed_domains(copy) == ["a.example"]
    crlf = copy.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert [r.result for r in verify_dkim(crlf, resolver.session(20))] == ["pass"]

    marker, raw = marked("The CEO <ceo@b.example>")
    by_sasl(w, "alice", "alice-password-1", raw, "alice@a.example")
    assert signed_domains(delivered(w, marker)) == []
    assert "not signed: SASL login 'alice' may not send as ceo@b.example (allowed: alice@a.example)" in w["milter"].log()


def test_a_sasl_login_without_an_entry_signs_nothing(w):
    marker, raw = marked("alice@a.example")
    by_sasl(w, "mallory", "mallory-password-1", raw, "alice@a.example")
    assert signed_domains(delivered(w, marker)) == []
    assert "not signed: SASL login 'mallory' has no [[signing.sasl]] entry (From alice@a.example)" in w["milter"].log()


def test_the_send_api_service_is_signed_for_what_the_api_keys_allow(w):
    """Through the submission service (send.submit, as serve and the agent worker do), on a Postfix
    that requires HELO/EHLO: an address an API key allows is signed; one no key allows is not,
    even when the send API's own check is bypassed."""
    marker = f"signscope-api-{time.time_ns()}"
    assert by_api(w, "agent@b.example", marker)
    assert signed_domains(delivered(w, marker)) == ["b.example"]
    marker = f"signscope-api-{time.time_ns()}"
    assert by_api(w, "ceo@a.example", marker)
    assert signed_domains(delivered(w, marker)) == []
    log = w["milter"].log()
    assert "not signed: the send API (service agentmx-api) may not send as ceo@a.example" in log
    assert "signed d=b.example s=s1: the send API (service agentmx-api) may send as agent@b.example" in log


def test_local_submission_is_signed_only_for_local_from(w):
    marker, raw = marked("noreply@a.example")
    by_sendmail(w, raw, "noreply@a.example")
    assert signed_domains(delivered(w, marker)) == ["a.example"]
    marker, raw = marked("ceo@b.example")
    by_sendmail(w, raw, "ceo@b.example")
    assert signed_domains(delivered(w, marker)) == []
    assert "not signed: local submission may not send as ceo@b.example (allowed: noreply@a.example)" in w["milter"].log()


def test_a_trusted_network_client_is_signed_only_for_local_from(w):
    """SMTP from 127.0.0.1 (in the default trusted_networks), no login."""
    for from_addr, expected in (("noreply@a.example", ["a.example"]), ("alice@a.example", [])):
        marker, raw = marked(from_addr)
        with smtplib.SMTP("127.0.0.1", w["pf"].port, local_hostname="client.sign.test", timeout=30) as s:
            s.sendmail(from_addr, ["bob@example.org"], raw)
        assert signed_domains(delivered(w, marker)) == expected
    assert "not signed: a trusted_networks client may not send as alice@a.example" in w["milter"].log()


def test_two_from_addresses_are_never_signed(w):
    marker, raw = marked("alice@a.example, noreply@a.example")
    by_sasl(w, "alice", "alice-password-1", raw, "alice@a.example")
    assert signed_domains(delivered(w, marker)) == []
    assert "not signed: not exactly one From address" in w["milter"].log()


def test_the_send_path_says_ehlo_first(w):
    """smtpd_helo_required = yes on the submission service: MAIL FROM without EHLO is refused (503)."""
    marker = f"signscope-ehlo-{time.time_ns()}"
    assert by_api(w, "agent@b.example", marker)
    delivered(w, marker)
    assert "send HELO/EHLO first" not in w["pf"].log()
