"""The spam verdict: a real rspamd (Debian's, a private instance on loopback) asked by the milter.
GTUBE must come out spam, a plain message ham; rspamd down means unknown, at once; rspamd hanging
means unknown after the short timeout. End to end, the verdict is in our X-Agentmx-Spam header
(an incoming one is removed) and in the event's auth.spam."""
from __future__ import annotations

import smtplib
import socket
import threading
import time
from email.utils import formatdate

import pytest

from e2e_helpers import send
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, free_tcp_port
from support.rspamd import Rspamd

from agentmx.config import load_config
from agentmx.deliver.core import Envelope, build_event
from agentmx.milter.spam_check import SpamEnvelope, check

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
AUTHSERV = "mx.spam.test"


def message(body: str, subject: str = "Lunch tomorrow?") -> bytes:
    return (f"From: Alice <alice@sender.test>\r\nTo: Agent <agent@spam.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@sender.test>\r\nDate: {formatdate()}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


ENV = SpamEnvelope("127.0.0.1", "mail.sender.test", "mail.sender.test", "alice@sender.test", ("agent@spam.test",), "4SPAM")


@pytest.fixture(scope="module")
def rspamd(dns_server):
    r = Rspamd(dns_server.port).start()
    yield r
    r.stop()


def test_gtube_is_spam_and_a_plain_message_ham(rspamd):
    spam = check(rspamd.url, message(f"Hello\r\n{GTUBE}"), ENV, 10)
    assert (spam.verdict, spam.action) == ("spam", "reject") and spam.score >= spam.required
    ham = check(rspamd.url, message("Hi, shall we have lunch tomorrow at noon?\r\n\r\nAlice"), ENV, 10)
    assert ham.verdict == "ham" and ham.score < ham.required, ham


def test_rspamd_down_is_unknown_at_once():
    t0 = time.monotonic()
    res = check(f"http://127.0.0.1:{free_tcp_port()}", message("hi"), ENV, 2.0)
    assert res.verdict == "unknown" and "unreachable" in res.reason and time.monotonic() - t0 < 0.5


def test_rspamd_hanging_is_unknown_after_the_timeout():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    held = []
    threading.Thread(target=lambda: held.append(srv.accept()), daemon=True).start()
    try:
        t0 = time.monotonic()
        res = check(f"http://127.0.0.1:{srv.getsockname()[1]}", message("hi"), ENV, 0.5)
        assert res.verdict == "unknown" and "no answer within 0.5s" in res.reason
        assert 0.4 < time.monotonic() - t0 < 2.0
    finally:
        srv.close()


@pytest.mark.e2e
def test_milter_writes_the_verdict_and_deliver_reads_it(rspamd, dns_server):
    dns_server.set_zone({"sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
                         "mail.sender.test": {"A": ["127.0.0.1"]}})
    pf = PostfixInstance("sp", AUTHSERV, relay_domains="spam.test")
    cfg, sock = agentmx_config(pf, AUTHSERV, dns_server.port,
                               milter=f'trusted_networks = []\nrspamd_url = "{rspamd.url}"\nrspamd_timeout = 5')
    milter = MilterProcess(cfg, sock, pf.base / "milter.log").start()
    pf.start()
    try:
        forged = message(f"Buy now!\r\n{GTUBE}", subject="Buy now").replace(b"Subject:", b"X-Agentmx-Spam: mx.spam.test; verdict=ham\r\nSubject:")
        send(pf.port, "alice@sender.test", ["agent@spam.test"], forged)
        send(pf.port, "alice@sender.test", ["agent@spam.test"], message("Hi, shall we have lunch tomorrow at noon?"))
        copies = pf.wait_delivered(2, timeout=60)
        config = load_config(cfg)
        verdicts = {}
        for path in copies:
            raw = path.read_bytes()
            assert raw.count(b"X-Agentmx-Spam:") == 1           # ours only: the forged one is gone
            event, _ = build_event(raw, Envelope("alice@sender.test", "agent@spam.test"), config, None, time.time(), None)
            verdicts[event["subject"]] = (event["auth"]["spam"], event["auth"]["details"]["spam"])
        assert verdicts["Buy now"][0] == "spam" and verdicts["Buy now"][1]["action"] == "reject"
        assert verdicts["Lunch tomorrow?"][0] == "ham", verdicts
        assert verdicts["Lunch tomorrow?"][1]["score"] < verdicts["Lunch tomorrow?"][1]["required"]
        assert "removed 1 incoming X-Agentmx-Spam" in milter.log() and "spam=spam(" in milter.log()
    finally:
        milter.stop()
        pf.stop()


UTF8_ENV = SpamEnvelope("127.0.0.1", "почта.sender.test", "mail.sender.test", "álice@bücher.sender.test",
                       ("агент@spam.test", "agent@spam.test"), "4UTF8")


def test_smtputf8_envelopes_are_asked_about_not_crashed_on(rspamd):
    """An SMTPUTF8 sender, a UTF-8 recipient and HELO name: http.client encodes str header values
    as Latin-1, so asking rspamd raised UnicodeEncodeError (a tempfail on every retry, then a
    bounce). Now rspamd answers as for any other mail: a plain message is ham (rspamd 3.4 scores a
    UTF-8 envelope address as a broken header, 8 points: it is given A-labels, or not the address)."""
    lunch = message("Hi, shall we have lunch tomorrow at noon?\r\n\r\nAlice")
    ham = check(rspamd.url, lunch, UTF8_ENV, 10)
    assert ham.verdict == "ham" and ham.score is not None and ham.score < 5, ham
    idn = SpamEnvelope("127.0.0.1", "mail.bücher.test", "", "alice@bücher.sender.test", ("agent@spam.test",), None)
    assert check(rspamd.url, lunch, idn, 10).verdict == "ham"
    spam = check(rspamd.url, message(f"Hello\r\n{GTUBE}"), UTF8_ENV, 10)
    assert (spam.verdict, spam.action) == ("spam", "reject")
    odd = SpamEnvelope("127.0.0.1", "helo\r\nX-Injected: 1", "", "a\udcff@sender.test", ("b\x00@spam.test",), None)
    assert check(rspamd.url, message("Lunch?"), odd, 10).verdict in ("ham", "spam")   # asked, not raised


@pytest.mark.e2e
def test_an_smtputf8_sender_through_postfix_gets_a_verdict(rspamd, dns_server):
    """The envelope as Postfix (smtputf8_enable = yes) hands it to the milter."""
    dns_server.set_zone({"sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
                         "mail.sender.test": {"A": ["127.0.0.1"]}})
    pf = PostfixInstance("su", AUTHSERV, relay_domains="spam.test", main={"smtputf8_enable": "yes"})
    cfg, sock = agentmx_config(pf, AUTHSERV, dns_server.port,
                               milter=f'trusted_networks = []\nrspamd_url = "{rspamd.url}"\nrspamd_timeout = 5')
    milter = MilterProcess(cfg, sock, pf.base / "milter.log").start()
    pf.start()
    try:
        with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="mail.sender.test", timeout=60) as smtp:
            refused = smtp.sendmail("álice@sender.test", ["агент@spam.test"],
                                    message("Hi, shall we have lunch tomorrow at noon?"), mail_options=["SMTPUTF8"])
        assert refused == {}
        (copy,) = pf.wait_delivered(1, timeout=60)
        raw = copy.read_bytes()
        config = load_config(cfg)
        event, _ = build_event(raw, Envelope("álice@sender.test", "агент@spam.test"), config, None, time.time(), None)
        assert event["auth"]["spam"] == "ham", event["auth"]["details"]["spam"]
        assert "from=<álice@sender.test>" in pf.log() and "spam=ham(" in milter.log()
    finally:
        milter.stop()
        pf.stop()


def test_without_rspamd_the_event_says_unknown(tmp_path):
    from agentmx.config import parse_config
    config = parse_config(f'[server]\nauthserv_id = "{AUTHSERV}"\n', tmp_path / "a.toml")
    raw = b"X-Agentmx-Spam: evil.test; verdict=ham\r\n" + message("hi")        # not ours: ignored
    event, _ = build_event(raw, Envelope("a@b.test", "agent@spam.test"), config, None, time.time(), None)
    assert event["auth"]["spam"] == "unknown" and event["auth"]["details"]["spam"] is None
