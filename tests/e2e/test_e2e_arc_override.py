"""End to end: a trusted mailing list's ARC seal rescues its forward of a DMARC p=reject author.

A private Postfix on loopback with the real milter process (arc_trusted_sealers = ["lists.test"])
and real DNS on loopback. Alice's domain (author.test, p=reject, SPF for 192.0.2.10 only) signs
her message with DKIM; a list tags the Subject and adds a footer (her signature breaks), records
what it saw (dmarc=pass) and ARC-seals with its key published in the zone, then sends it on from
its own IP (127.0.0.1, in the list's SPF) with its own envelope. Mail to strict.agentmx.test is
under reject_dmarc = true.
"""
from __future__ import annotations

import re

import email
import email.policy
import json
import smtplib
import time

import jsonschema
import pytest

from conftest import ROOT

from e2e_helpers import RsaKey, our_results, send, verdicts
from support.arclist import authored, list_forward
from support.postfix import PostfixInstance, agentmx_config, running_with_milter, settled

from agentmx.deliver.authread import read_auth

AUTHSERV = "mx.agentmx.test"
AUTH_SCHEMA = json.loads((ROOT / "docs" / "email.received.v1.schema.json").read_text())["properties"]["auth"]
SEEN = "spf=pass smtp.mailfrom=alice@author.test; dkim=pass header.d=author.test; dmarc=pass header.from=author.test"


@pytest.fixture(scope="module")
def keys():
    return {"author": RsaKey(), "lists.test": RsaKey(), "otherlist.test": RsaKey()}


@pytest.fixture(scope="module")
def zone_data(keys):
    return {
        "author.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "_dmarc.author.test": {"TXT": ["v=DMARC1; p=reject"]},
        "s1._domainkey.author.test": {"TXT": [keys["author"].txt]},
        "lists.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mail.lists.test": {"A": ["127.0.0.1"], "TXT": ["v=spf1 a -all"]},
        "arc._domainkey.lists.test": {"TXT": [keys["lists.test"].txt]},
        "otherlist.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "arc._domainkey.otherlist.test": {"TXT": [keys["otherlist.test"].txt]},
    }


@pytest.fixture(scope="module")
def stack(dns_server, zone_data):
    dns_server.set_zone(zone_data)
    pf = PostfixInstance("arcmx", AUTHSERV, relay_domains="agentmx.test, strict.agentmx.test", main={
        "transport_maps": "inline:{ agentmx.test=sink:, strict.agentmx.test=sink: }",
    })
    config, sock = agentmx_config(pf, AUTHSERV, dns_server.port, dns_timeout=0.5,
                                  server=f'data_dir = "{pf.base / "data-agentmx"}"\nurl_secret = "e2e-arc-url-secret-0001"',
                                  milter='trusted_networks = []\narc_trusted_sealers = ["lists.test"]',
                                  rest='[domains."strict.agentmx.test"]\nreject_dmarc = true\n')
    with running_with_milter(pf, config, sock) as milter:
        yield pf, milter


@pytest.fixture
def mx(stack, dns_server, zone_data):
    """The module's Postfix, with the zone as the module set it and nothing delivered yet."""
    dns_server.set_zone(zone_data)
    for p in stack[0].delivered():
        p.unlink()
    return stack[0]


def forward(keys, list_domain: str) -> bytes:
    """To: stays the list's address, as on real list mail: the envelope names our recipient."""
    raw = authored("Alice <alice@author.test>", f"team@{list_domain}", "author.test", "s1", keys["author"])
    return list_forward(raw, list_domain, keys[list_domain], SEEN)


def ours(path):
    (header,) = our_results(path, AUTHSERV)
    return verdicts(header)


def event_auth(path) -> dict:
    """The event's auth field, read from the delivered copy as `agentmx deliver` reads it."""
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    auth = read_auth([(k, str(v)) for k, v in msg.items()], AUTHSERV)
    jsonschema.validate(auth, AUTH_SCHEMA)
    return auth


def test_a_trusted_lists_forward_is_not_rejected_and_says_why(mx, keys):
    send(mx.port, "team-bounces@lists.test", ["agent@strict.agentmx.test"],
         forward(keys, "lists.test"), helo="mail.lists.test")
    (path,) = mx.wait_delivered(1)
    assert b"Subject: [team] Hello" in path.read_bytes()
    v = ours(path)
    assert v["dkim"][0].result == "fail" and v["dkim"][0].header_d == "author.test"   # the list broke it
    assert v["spf"][0].result == "pass" and v["spf"][0].smtp_mailfrom == "team-bounces@lists.test"
    assert v["arc"][0].result == "pass"
    dm = v["dmarc"][0]
    assert (dm.result, dm.header_from, dm.policy) == ("fail", "author.test", "reject")
    props = {(p.type, p.name): p.value for p in dm.properties}
    assert props[("policy", "override-reason")] == "trusted_forwarder"
    assert props[("policy", "arc-sealer")] == "lists.test"
    assert props[("policy", "evaluated-disposition")] == "reject"
    text = " ".join(path.read_text().split())
    assert re.search(r"\(p=reject sp=reject dis=none( record=\S+)?( org=\S+)? "
                     r"override=trusted_forwarder arc.sealer=lists.test\)", " ".join(text.split())), text

    auth = event_auth(path)
    assert (auth["dmarc"], auth["arc"]) == ("fail", "pass")
    assert auth["details"]["dmarc"]["override"] == {"type": "trusted_forwarder", "sealer": "lists.test",
                                                    "evaluatedDisposition": "reject"}
    assert auth["details"]["dmarc"]["disposition"] == "none"


def test_an_untrusted_lists_forward_is_rejected_as_today(mx, keys, stack):
    since = time.time()
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mx.port, "team-bounces@otherlist.test", ["agent@strict.agentmx.test"],
             forward(keys, "otherlist.test"), helo="mail.lists.test")
    assert exc.value.smtp_code == 550 and b"5.7.1" in exc.value.smtp_error and b"author.test" in exc.value.smtp_error
    settled(mx, since=since)
    assert mx.delivered() == []

    # to a domain without the reject policy it is delivered, judged the same, with no override
    send(mx.port, "team-bounces@otherlist.test", ["agent@agentmx.test"],
         forward(keys, "otherlist.test"), helo="mail.lists.test")
    (path,) = mx.wait_delivered(1)
    v = ours(path)
    assert v["arc"][0].result == "pass" and v["dmarc"][0].result == "fail"
    assert "override" not in path.read_text()
    auth = event_auth(path)
    assert auth["details"]["dmarc"]["override"] is None
    _, milter = stack
    assert "action=reject" in milter.log()
