"""End to end, `[milter] dmarc` in both modes: a private Postfix on loopback, the real milter
process, real DNS on loopback; a spoof from a subdomain that does not exist, of a domain whose
record has np, t and pct. The delivered copy's Authentication-Results is read as deliver reads it."""
from __future__ import annotations

import email

import pytest

from e2e_helpers import message, our_results, send, verdicts
from support.postfix import PostfixInstance, agentmx_config, running_with_milter

from agentmx.deliver.authread import read_auth

AUTHSERV = "mx.agentmx.test"
ZONE = {
    "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "A": ["127.0.0.1"]},
    "mail.sender.test": {"A": ["127.0.0.1"], "TXT": ["v=spf1 a -all"]},
    "bank.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.bank.test": {"TXT": ["v=DMARC1; p=none; sp=none; np=reject; t=y; pct=0"]},
}


@pytest.fixture(scope="module", params=["rfc9989", "rfc7489"])
def stack(request, dns_server, tmp_path_factory):
    mode = request.param
    dns_server.set_zone(ZONE)
    pf = PostfixInstance(f"mx{mode[-4:]}", AUTHSERV, relay_domains="agentmx.test",
                         main={"transport_maps": "inline:{ agentmx.test=sink: }"})
    config, sock = agentmx_config(pf, AUTHSERV, dns_server.port, dns_timeout=0.5,
                                  milter=f'trusted_networks = []\ndmarc = "{mode}"')
    with running_with_milter(pf, config, sock):
        yield mode, pf


def test_the_mode_decides_np_t_pct_and_what_the_header_says(stack, dns_server):
    mode, pf = stack
    dns_server.set_zone(ZONE)
    send(pf.port, "bounce@sender.test", ["agent@agentmx.test"],
         message("Bank <support@ghost.bank.test>", "agent@agentmx.test", subject="Reset your password"))
    (path,) = pf.wait_delivered(1)
    (header,) = our_results(path, AUTHSERV)
    dm = verdicts(header)["dmarc"][0]
    raw = path.read_bytes()
    value = " ".join(str(email.message_from_bytes(raw)["Authentication-Results"]).split())
    auth = read_auth(list(email.message_from_bytes(raw).items()), AUTHSERV)["details"]["dmarc"]
    assert dm.result == "fail" and dm.header_from == "ghost.bank.test"
    if mode == "rfc9989":
        # ghost.bank.test does not exist: np=reject, one step down for t=y; pct ignored
        assert dm.policy == "quarantine"
        assert "(p=none sp=none np=reject t=y dis=quarantine record=bank.test org=bank.test)" in value
        assert (auth["disposition"], auth["recordDomain"], auth["orgDomain"]) == ("quarantine", "bank.test",
                                                                                  "bank.test")
    else:
        # RFC 7489: sp=none for the subdomain; no np, no t; pct=0 samples nothing
        assert dm.policy == "none"
        assert "(p=none sp=none pct=0 dis=none)" in value
        assert (auth["disposition"], auth["recordDomain"], auth["orgDomain"]) == ("none", None, None)
