"""End to end: a private Postfix with the milter and the agentmx pipe transport (run as nobody),
a real HTTP endpoint on loopback, `agentmx serve` for attachment URLs, DNS on loopback.
Messages go in over SMTP; what the endpoint receives, what Postfix keeps, and what it retries
are checked."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import smtplib
import subprocess
import sys
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT
from e2e_helpers import RsaKey, send, sign
from support.backends import BACKENDS, migrate, store_config
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, install_deliver, wait_for
from support.receiver import Receiver

from agentmx.config import load_config
from agentmx.api.server import start
from agentmx.store import open_store
from agentmx.store.model import DeliveryState
from agentmx.webhook import verify

AUTHSERV = "mx2.agentmx.test"
SECRET = "whsec_" + base64.b64encode(b"e2e-secret-e2e-secret-e2e-secret").decode()
SCHEMA = json.loads((ROOT / "docs" / "email.received.v1.schema.json").read_text())
AGENTMX = str(Path(sys.executable).with_name("agentmx"))


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, dns_server, key):
    dns_server.set_zone(zone := {
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mail.sender.test": {"A": ["127.0.0.1"]},
        "1.0.0.127.in-addr.arpa": {"PTR": ["mail.sender.test"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        "s1._domainkey.sender.test": {"TXT": [key.txt]},
        "_dmarc.bank.test": {"TXT": ["v=DMARC1; p=reject"]},
    })
    receiver = Receiver()
    pf = PostfixInstance("dl", AUTHSERV)
    data = pf.base / "data-agentmx"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")
    server = "\n".join([f'data_dir = "{data}"', 'listen = "127.0.0.1:0"', 'public_url = "http://127.0.0.1:0"',
                        'url_secret = "e2e-url-secret-0123456789"'])
    route = "\n".join(["[[routes]]", 'match = "agent@agentmx.test"', f'endpoint = "{receiver.url}"',
                       f'secret = "{SECRET}"', "timeout = 3"])
    route += "\n" + store_config(request, request.param, pf.base / "secrets")
    cfg_path, sock = agentmx_config(pf, AUTHSERV, dns_server.port, milter="trusted_networks = []", server=server,
                                    rest=route)
    migrate(cfg_path)
    # The settings and the transport we ship, with this test's paths and the unprivileged user.
    install_deliver(pf, cfg_path, "agentmx.test", AGENTMX)
    milter = MilterProcess(cfg_path, sock, pf.base / "milter.log").start()
    pf.start()
    config = load_config(cfg_path)
    server = start(config)
    serve_base = server.url
    yield {"pf": pf, "receiver": receiver, "config": config, "zone": zone, "serve": serve_base}
    server.stop()
    milter.stop()
    pf.stop()
    receiver.stop()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    if world["receiver"].server is None:
        world["receiver"].start()
    world["receiver"].requests.clear()
    world["receiver"].script.clear()
    world["receiver"].default = (200, 0.0)
    world["pf"].flush()
    return world


def mail(key, subject="Hello", attachment: bytes | None = None, to="agent@agentmx.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@sender.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content("Hi agent,\n\nyour code is 551234.\n\nAlice\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
    import email.policy
    return sign(msg.as_bytes(policy=email.policy.SMTP), "sender.test", "s1", key)


def wait_requests(receiver, n, timeout=30):
    return wait_for(lambda: len(receiver.requests) >= n and receiver.requests, timeout=timeout,
                    what=f"{n} POST(s) at the endpoint")


def wait_log(pf, text, timeout=30):
    return wait_for(lambda: text in pf.log(), timeout=timeout, what=f"{text!r} in the Postfix log")


def deferrals(pf) -> int:
    return pf.log().count("status=deferred")


def wait_deferred(pf, before: int, timeout=30):
    """Until Postfix has logged one more deferral than `before` (the message is in the deferred
    queue, not still active: a flush before that would find nothing to retry)."""
    wait_for(lambda: deferrals(pf) > before, timeout=timeout, what="a deferral in the Postfix log")


def test_signed_mail_arrives_as_a_verified_event_with_fetchable_attachments(w, key):
    pf, receiver = w["pf"], w["receiver"]
    payload = os.urandom(3000)
    send(pf.port, "alice@sender.test", ["agent+orders@agentmx.test"], mail(key, attachment=payload))
    (req,) = wait_requests(receiver, 1)
    verify(req.headers, req.body, SECRET)
    event = json.loads(req.body)
    jsonschema.validate(event, SCHEMA)
    assert event["auth"]["spf"] == "pass" and event["auth"]["dkim"] == "pass" and event["auth"]["dmarc"] == "pass"
    assert event["auth"]["authservId"] == AUTHSERV
    assert event["auth"]["iprev"] == "pass" and event["auth"]["details"]["iprev"] == {
        "result": "pass", "ip": "127.0.0.1", "names": ["mail.sender.test"], "confirmed": "mail.sender.test",
        "reason": None}
    assert event["recipient"] == "agent+orders@agentmx.test" and event["mailboxHash"] == "orders"
    assert event["envelope"]["clientIp"] == "127.0.0.1" and event["envelope"]["helo"] == "mail.sender.test"
    assert event["codes"] == ["551234"] and event["textReply"].startswith("Hi agent")
    (att,) = event["attachments"]
    assert att["size"] == len(payload) and att["sha256"] == hashlib.sha256(payload).hexdigest()
    url = att["url"].replace("http://127.0.0.1:0", w["serve"])
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.read() == payload
    wait_log(pf, "status=sent (delivered via agentmx service")


def test_a_second_from_reaches_the_agent_as_a_dmarc_fail_and_a_defect(w, key):
    """Issue 13 item 10 through Postfix, the milter and deliver: `from` stays the first From,
    auth.dmarc is bank.test's fail (its p=reject), and `defects` says there were two."""
    pf, receiver = w["pf"], w["receiver"]
    raw = mail(key).replace(b"From: Alice <alice@sender.test>\r\n",
                            b"From: Alice <alice@sender.test>\r\nFrom : Bank <support@bank.test>\r\n")
    send(pf.port, "alice@sender.test", ["agent@agentmx.test"], raw)
    (req,) = wait_requests(receiver, 1)
    event = json.loads(req.body)
    jsonschema.validate(event, SCHEMA)
    assert event["from"] == {"address": "alice@sender.test", "name": "Alice"}
    assert event["auth"]["spf"] == "pass" and event["auth"]["dmarc"] == "fail"
    assert event["auth"]["details"]["dmarc"]["from"] == "bank.test"
    assert event["auth"]["details"]["dmarc"]["policy"] == "reject"
    assert any(d.startswith("header From: 2 From header fields (sender.test, bank.test)") for d in event["defects"])


def test_unrouted_address_is_refused_at_smtp_time(w, key):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
        send(w["pf"].port, "alice@sender.test", ["nobody@agentmx.test"], mail(key, to="nobody@agentmx.test"))
    code, text = exc.value.recipients["nobody@agentmx.test"]
    assert code == 550 and b"5.1.1" in text


def test_endpoint_down_then_back_delivers_once_with_the_same_id(w, key):
    pf, receiver = w["pf"], w["receiver"]
    receiver.stop()
    before = deferrals(pf)
    try:
        send(pf.port, "alice@sender.test", ["agent@agentmx.test"], mail(key, subject="while down"))
        wait_deferred(pf, before)
        assert "agent@agentmx.test" in pf.queue()
        status = subprocess.run([AGENTMX, "--config", str(w["config"].path), "status", "--postfix-config", str(pf.etc)],
                                capture_output=True, text=True, timeout=30).stdout
        waiting = status.split("waiting in Postfix's queue for agentmx routes: ")[1]
        assert waiting.startswith("1\n") and "(deferred) to=agent@agentmx.test" in waiting
        assert "Connection refused" in waiting
    finally:
        receiver.start()
    pf.flush()
    (req,) = wait_requests(receiver, 1)
    event = json.loads(req.body)
    assert event["subject"] == "while down"
    wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")
    d = open_store(w["config"]).delivery(event["id"])
    assert d.state is DeliveryState.DELIVERED and d.attempts == 2     # one deferred, one delivered


def test_500_then_200_same_webhook_id(w, key):
    pf, receiver = w["pf"], w["receiver"]
    receiver.script = [(500, 0)]
    before = deferrals(pf)
    send(pf.port, "alice@sender.test", ["agent@agentmx.test"], mail(key, subject="retry me"))
    wait_requests(receiver, 1)
    wait_deferred(pf, before)
    pf.flush()
    first, second = wait_requests(receiver, 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert json.loads(first.body)["id"] == json.loads(second.body)["id"]
    wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")


def test_hanging_endpoint_defers(w, key):
    pf, receiver = w["pf"], w["receiver"]
    receiver.script = [(200, 6)]
    before = pf.log().count("no answer within 3s")
    send(pf.port, "alice@sender.test", ["agent@agentmx.test"], mail(key, subject="slow"))
    wait_for(lambda: pf.log().count("no answer within 3s") > before, timeout=30, what="the deferral for a timeout")
    assert "agent@agentmx.test" in pf.queue()
    pf.flush()
    wait_requests(receiver, 2)
    wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")


def test_406_is_not_retried(w, key):
    pf, receiver = w["pf"], w["receiver"]
    receiver.script = [(406, 0)]
    send(pf.port, "alice@sender.test", ["agent@agentmx.test"], mail(key, subject="unwanted"))
    (req,) = wait_requests(receiver, 1)
    event_id = json.loads(req.body)["id"]
    store = open_store(w["config"])
    wait_for(lambda: store.delivery(event_id) and store.delivery(event_id).state is DeliveryState.REFUSED,
             timeout=20, what="the refusal recorded")
    wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")


def test_20_mb_attachment(w, key):
    pf, receiver = w["pf"], w["receiver"]
    payload = os.urandom(20 * 1024 * 1024)
    send(pf.port, "alice@sender.test", ["agent@agentmx.test"], mail(key, subject="big", attachment=payload))
    (req,) = wait_requests(receiver, 1, timeout=120)
    event = json.loads(req.body)
    (att,) = event["attachments"]
    assert att["size"] == len(payload) and att["sha256"] == hashlib.sha256(payload).hexdigest()
    assert event["size"] > 27_000_000 and event["auth"]["dkim"] == "pass"
    assert len(req.body) < 200_000       # the bytes travel by URL, not in the event


def test_open_relay_attempt_from_outside_is_refused(w):
    """127.0.0.1 is outside mynetworks here: mail for a domain we do not serve is not taken."""
    pf = w["pf"]
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="mail.sender.test", timeout=30) as s:
        s.ehlo()
        s.mail("alice@sender.test")
        code, text = s.rcpt("victim@elsewhere.example")
    assert code in (454, 554) and b"Relay access denied" in text
    assert "elsewhere.example" not in pf.queue()


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"], ids=["LF.LF", "CRLF.LF", "LF.CRLF"])
def test_smtp_smuggling_does_not_make_a_second_message(w, key, end):
    """SMTP smuggling: a non-standard end of DATA followed by a second transaction. With the
    settings we ship (smtpd_forbid_bare_newline = normalize) only <CR><LF>.<CR><LF> ends DATA:
    the 'smuggled' message stays inside the first one's body and is never a message of its own."""
    import socket
    pf, receiver = w["pf"], w["receiver"]
    tag = end.hex()
    first = (f"From: alice@sender.test\r\nTo: agent@agentmx.test\r\nSubject: carrier {tag}\r\n"
             f"Message-ID: <carrier-{tag}@sender.test>\r\n\r\nhello\r\n").encode()
    smuggled = (b"MAIL FROM:<ceo@sender.test>\r\nRCPT TO:<agent@agentmx.test>\r\nDATA\r\n"
                b"From: ceo@sender.test\r\nSubject: smuggled " + tag.encode() + b"\r\n\r\nwire the money\r\n")
    with socket.create_connection(("127.0.0.1", pf.port), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            line = f.readline()
            while line[3:4] == b"-":
                line = f.readline()
            return line
        reply()
        for cmd in (b"EHLO mail.sender.test\r\n", b"MAIL FROM:<alice@sender.test>\r\n",
                    b"RCPT TO:<agent@agentmx.test>\r\n", b"DATA\r\n"):
            s.sendall(cmd)
            reply()
        s.sendall(first + end + smuggled + b"\r\n.\r\n")
        answers = [reply()]
        s.sendall(b"QUIT\r\n")
        answers.append(reply())
    assert answers[0].startswith(b"250")
    (req,) = wait_requests(receiver, 1)
    wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")
    subjects = [json.loads(r.body)["subject"] for r in receiver.requests]
    assert subjects == [f"carrier {tag}"]
    assert "wire the money" in json.loads(req.body)["text"]
