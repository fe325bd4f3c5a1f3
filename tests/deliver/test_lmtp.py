"""`agentmx lmtp`: deliver as an LMTP server. Driven by smtplib's LMTP client over the unix
socket (XFORWARD included, as Postfix sends it), then by a private Postfix with the transport
line we ship (postfix/master.cf.lmtp.fragment)."""
from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_helpers import send
from support import reaper
from support.postfix import PostfixInstance, agentmx_config, install_lmtp, wait_for
from support.receiver import Receiver
from test_cli_deliver import MESSAGE, SECRET, write_config

AGENTMX = str(Path(sys.executable).with_name("agentmx"))


class LmtpServer:
    def __init__(self, cfg: Path, sock: Path, processes: int = 2):
        self.sock = sock
        self.log = cfg.parent / "lmtp.log"
        self.proc = subprocess.Popen([AGENTMX, "--config", str(cfg), "lmtp", "--socket", str(sock),
                                      "--processes", str(processes)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), start_new_session=True)
        wait_for(lambda: sock.exists() or self.proc.poll() is not None, timeout=20, what="the LMTP socket")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self):
        reaper.stop_group(self.proc)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def lmtp_send(sock: Path, rcpts: list[str], data: bytes = MESSAGE, xforward: str | None = None):
    with smtplib.LMTP(str(sock)) as c:
        c.ehlo_or_helo_if_needed()
        assert "xforward" in c.esmtp_features
        if xforward:
            assert c.docmd("XFORWARD", xforward)[0] == 250
        code, _ = c.mail("bob@example.org")
        assert code == 250
        for r in rcpts:
            assert c.rcpt(r)[0] == 250
        c.putcmd("data")
        assert c.getreply()[0] == 354
        c.send(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        return c.getreply()


def test_lmtp_answers_with_deliver_outcome(tmp_path, receiver):
    cfg = write_config(tmp_path, receiver.url)
    srv = LmtpServer(cfg, tmp_path / "lmtp.sock")
    try:
        code, text = lmtp_send(srv.sock, ["agent@agentmx.test"],
                               xforward="NAME=mail.example.org ADDR=192.0.2.7 HELO=mail.example.org IDENT=4LMTP")
        assert code == 250 and text.startswith(b"2.0.0 delivered id=msg_"), text
        event = receiver.events()[-1]
        assert event["envelope"]["clientIp"] == "192.0.2.7" and event["envelope"]["helo"] == "mail.example.org"
        assert event["envelope"]["mailFrom"] == "bob@example.org" and event["codes"] == ["889911"]
        receiver.default = (503, 0)
        code, text = lmtp_send(srv.sock, ["agent@agentmx.test"], xforward="IDENT=4LMTP")
        assert code == 451 and b"HTTP 503" in text
        receiver.default = (406, 0)
        assert lmtp_send(srv.sock, ["agent@agentmx.test"], xforward="IDENT=4LMTP")[0] == 250
        assert lmtp_send(srv.sock, ["nobody@elsewhere.test"])[0] == 451
        assert lmtp_send(srv.sock, ["agent@agentmx.test", "x@support.agentmx.test"])[0] == 451
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
        assert "4LMTP: delivered to=agent@agentmx.test" in srv.log.read_text()
    finally:
        srv.stop()


def test_lmtp_never_answers_5xx_for_an_error_of_ours(tmp_path, receiver):
    """An exception in our LMTP code outside deliver (here a bare XFORWARD, which used to raise in
    its parser) was answered by aiosmtpd with "500 Error: ...": Postfix takes a 5xx to any command
    as permanent and bounces the message."""
    cfg = write_config(tmp_path, receiver.url)
    srv = LmtpServer(cfg, tmp_path / "lmtp.sock", processes=1)
    try:
        with smtplib.LMTP(str(srv.sock)) as c:
            c.ehlo_or_helo_if_needed()
            code, text = c.docmd("XFORWARD")
            assert code == 250, text
            assert c.docmd("XFORWARD", "ADDR=192.0.2.7 IDENT=4BARE")[0] == 250
            assert c.sendmail("bob@example.org", ["agent@agentmx.test"], MESSAGE) == {}
        assert receiver.events()[-1]["envelope"]["clientIp"] == "192.0.2.7"
        assert "4BARE: delivered to=agent@agentmx.test" in srv.log.read_text()
    finally:
        srv.stop()


@pytest.mark.e2e
def test_lmtp_behind_postfix(tmp_path, dns_server):
    dns_server.set_zone({})
    receiver = Receiver()
    pf = PostfixInstance("lm", "mx.agentmx.test")
    srv = None
    try:
        data = pf.base / "data-agentmx"
        data.mkdir()
        route = f'[[routes]]\nmatch = "agent@agentmx.test"\nendpoint = "{receiver.url}"\nsecret = "{SECRET}"\ntimeout = 2\n'
        sock = pf.base / "run" / "lmtp.sock"
        cfg, _ = agentmx_config(pf, "mx.agentmx.test", dns_server.port,
                                server=f'data_dir = "{data}"\nurl_secret = "lmtp-url-secret-0123456"',
                                rest=f'[worker]\nlmtp_socket = "{sock}"\nsocket_mode = "0666"\n{route}')
        pf.postconf("smtpd_milters =", "non_smtpd_milters =")
        install_lmtp(pf, cfg, "agentmx.test", sock, AGENTMX)
        srv = LmtpServer(cfg, sock)
        pf.start()
        long_line = b"x" * 5000
        for i in range(20):
            send(pf.port, "bob@example.org", ["agent@agentmx.test"],
                 MESSAGE.replace(b"Your code", b"Your code %d" % i).replace(b"<c1@", b"<c1-%d@" % i)
                 + long_line + b"\r\n")
        wait_for(lambda: len(receiver.requests) >= 20, timeout=60, what="20 events")
        wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")
        events = receiver.events()
        assert len({e["subject"] for e in events}) == 20
        assert all(e["envelope"]["clientIp"] == "127.0.0.1" and e["envelope"]["helo"] == "mail.sender.test"
                   for e in events)
        assert all(e["text"].rstrip().endswith("x" * 5000) for e in events)     # long lines arrive unbroken
        assert pf.log().count("status=sent (250 2.0.0 delivered id=msg_") == 20
        # The endpoint down: 451, the message stays, a flush later delivers it with the same id.
        receiver.stop()
        receiver.requests.clear()
        send(pf.port, "bob@example.org", ["agent@agentmx.test"], MESSAGE.replace(b"<c1@", b"<c1-down@"))
        wait_for(lambda: "status=deferred" in pf.log(), timeout=30, what="a deferral")
        assert "451 4.3.0" in pf.log() and "agent@agentmx.test" in pf.queue()
        receiver.start()
        pf.flush()
        (req,) = wait_for(lambda: receiver.requests, timeout=30, what="the retried event")
        assert json.loads(req.body)["messageId"] == "<c1-down@example.org>"
        wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")
    finally:
        if srv:
            srv.stop()
        pf.stop()
        receiver.stop()
