"""The milter's callbacks in process (milter/service.py AuthMilter): headers, then the body in
chunks of any size, then eom, against authenticate() on the whole message; DNS on loopback.
libmilter's side of the context (getsymval, addheader, chgheader, setreply) is recorded here:
the real socket protocol is test_e2e_milter.py's."""
from __future__ import annotations

import random
from pathlib import Path

import Milter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dkim
from e2e_helpers import RsaKey, message

from agentmx.config import parse_config
from agentmx.milter import dkim_check, service
from agentmx.milter.authenticate import Envelope, authenticate
from agentmx.resolver import Resolver


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture
def sender_zone(zone, key):
    return zone({
        "sender.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        "rsa._domainkey.sender.test": {"TXT": [key.txt]},
    })


def config(dns_port: int):
    return parse_config(f'[server]\nauthserv_id = "mx.agentmx.test"\n[dns]\nservers = ["127.0.0.1:{dns_port}"]\n'
                        f'cache_size = 0\n[milter]\nsocket = "/nonexistent/milter.sock"\ntrusted_networks = []\n',
                        Path("test.toml"))


class Recorded(service.AuthMilter):
    """The milter with libmilter's side of the context recorded."""

    def __init__(self, *args):
        super().__init__(*args)
        self._setctx(None)          # what libmilter's connect does first: no protocol options
        self.added: list[tuple[str, str]] = []

    def getsymval(self, name):
        return {"i": "QID1", "{daemon_name}": "smtpd"}.get(name)

    def addheader(self, name, value, idx=-1):
        self.added.append((name, value))

    def chgheader(self, name, idx, value):
        pass

    def setreply(self, *args):
        pass


def run(m: Recorded, raw: bytes, cuts: list[int]) -> str:
    head, body = raw.split(b"\r\n\r\n", 1)
    assert m.connect("mail.sender.test", 2, ("192.0.2.10", 40000)) == Milter.CONTINUE
    m.hello("mail.sender.test")
    m.envfrom("<alice@sender.test>")
    m.envrcpt("<agent@agentmx.test>")
    for field in head.replace(b"\r\n ", b"\n ").replace(b"\r\n\t", b"\n\t").split(b"\r\n"):
        name, _, value = field.partition(b":")
        m.header(name, value)
    m.eoh()
    start = 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]:
        if cut > start:
            m.body(body[start:cut])
        start = cut
    assert m.eom() == Milter.ACCEPT
    (ar,) = [v for n, v in m.added if n == "Authentication-Results"]
    return " ".join(ar.split())


def signed(key, body: str, canon: bytes, length: bool) -> bytes:
    raw = message("Alice <alice@sender.test>", "agent@agentmx.test", body=body)
    return dkim.sign(raw, b"rsa", b"sender.test", key.private, canonicalize=(canon, canon), length=length,
                     include_headers=[b"from", b"to", b"subject"], linesep=b"\r\n") + raw


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.text(st.sampled_from("ab \t\n."), max_size=300), cuts=st.lists(st.integers(0, 400), max_size=6),
       canon=st.sampled_from([b"simple", b"relaxed"]), length=st.booleans())
def test_chunks_of_any_size_verify_as_the_whole_message_does(sender_zone, dns_server, key, body, cuts, canon, length):
    raw = signed(key, body, canon, length)
    m = Recorded(config(dns_server.port), Resolver(dns_server.servers, timeout=1.0), random.Random(1))
    ar = run(m, raw, cuts)
    whole = authenticate(raw, Envelope("192.0.2.10", "mail.sender.test", "alice@sender.test", "mx.agentmx.test"),
                         Resolver(dns_server.servers, timeout=1.0).session(50))
    assert [d.result for d in whole.dkim] == ["pass"]
    assert "dkim=pass" in ar and m.body_buf is None, "verified from the streamed hashes, no body kept"


def test_if_the_signatures_cannot_be_read_the_body_is_kept_and_verified_at_the_end(
        sender_zone, dns_server, key, monkeypatch, caplog):
    def broken(head):
        raise RuntimeError("a bug of ours")
    monkeypatch.setattr(dkim_check, "body_wants", broken)
    m = Recorded(config(dns_server.port), Resolver(dns_server.servers, timeout=1.0), random.Random(1))
    ar = run(m, signed(key, "Hello  there\n\n", b"relaxed", False), [5, 9])
    assert "dkim=pass" in ar
    assert "the body is kept" in caplog.text and m.body_buf is not None


def test_a_bug_in_a_callback_postfix_does_not_wait_on_is_a_tempfail_at_the_end(sender_zone, dns_server, key,
                                                                                monkeypatch, caplog):
    """header, eoh and body send no reply (@Milter.noreply: one round trip less per header field):
    a bug of ours there is logged once and answered 451 at the end of the message, never a 5xx."""
    m = Recorded(config(dns_server.port), Resolver(dns_server.servers, timeout=1.0), random.Random(1))
    replies = []
    m.setreply = lambda *args: replies.append(args)
    monkeypatch.setattr(service, "claims_id", lambda *a: 1 / 0)
    # two header fields the bug is in: after the first, the rest of the message is not looked at
    raw = (b"Authentication-Results: mx.agentmx.test; spf=pass\r\n" * 2) + signed(key, "Hi\n", b"relaxed", False)
    head, body = raw.split(b"\r\n\r\n", 1)
    m.connect("mail.sender.test", 2, ("192.0.2.10", 40000))
    m.envfrom("<alice@sender.test>")
    for field in head.split(b"\r\n"):
        name, _, value = field.partition(b":")
        assert m.header(name, value) == Milter.CONTINUE
    assert m.eoh() == Milter.CONTINUE and m.body(body) == Milter.CONTINUE
    assert m.eom() == Milter.TEMPFAIL
    assert replies == [("451", "4.3.0", "Temporary local problem, try again later")]
    assert caplog.text.count("internal error in header") == 1, caplog.text
    assert caplog.text.count("ZeroDivisionError") >= 1
    assert not m.added, "nothing was added to a message we did not check"
    assert service.AuthMilter.protocol_mask() & Milter.P_NR_HDR == 0, "header asks for no reply"
    assert service.AuthMilter.protocol_mask() & Milter.P_NODATA == 0, "the DATA callback is not asked for"
