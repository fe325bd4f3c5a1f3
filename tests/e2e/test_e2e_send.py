"""End to end, replies: an event is stored by deliver; the agent answers it through POST /v1/send;
our Postfix (the send API's submission service, milter in sign mode) relays it to a second
Postfix, the remote MX, whose own agentmx milter verifies it. The reply must arrive with
dkim=pass and dmarc=pass, for an RSA and for an ed25519 domain, in the same thread as the
original. Plus the API's refusals: keys, loops, header injection, rate limits."""
from __future__ import annotations

import base64
import email
import email.policy
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from e2e_helpers import our_results, verdicts
from support.dnszone import zone_from_records
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, install_submit, settled
from support.receiver import Receiver

from agentmx import dkimkeys, dnsrecords
from agentmx.client import ApiError, Client
from agentmx.config import load_config
from agentmx.deliver.core import Envelope, build_event, deliver
from agentmx.api.server import start
from agentmx.store.model import DeliveryState

KEY_A = "amx_key_for_the_agent_0123456789"
KEY_B = "amx_key_for_someone_else_0123456"
WEBHOOK = "whsec_" + base64.b64encode(b"send-test-send-test-send-test-12").decode()


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def world(dns_server):
    receiver = Receiver()
    example_port = free_port()
    rx = PostfixInstance("rx", "mx.remote.test", relay_domains="remote.test",
                         main={"transport_maps": "inline:{ remote.test=sink: }"})
    ox = PostfixInstance("ox", "mx.agents.test", main={"mynetworks": "127.0.0.0/8",
                                                       "transport_maps": f"inline:{{ remote.test=smtp:[127.0.0.1]:{rx.port} }}"})
    key_dir = ox.base / "keys"
    dkimkeys.write(key_dir, dkimkeys.generate("rsa.agents.test", "s1", "rsa"))
    dkimkeys.write(key_dir, dkimkeys.generate("ed.agents.test", "s1", "ed25519"))

    def milter_for(pf, authserv, extra, milter=""):
        server = "\n".join([f'data_dir = "{pf.base / "data"}"', f'key_dir = "{key_dir}"',
                            'url_secret = "send-test-url-secret-01"', 'listen = "127.0.0.1:0"'])
        cfg, sock = agentmx_config(pf, authserv, dns_server.port, rest=extra, milter=milter, server=server)
        return MilterProcess(cfg, sock, pf.base / "milter.log").start(), cfg

    # the remote MX verifies what comes from 127.0.0.1 (our Postfix) like any outside client
    rx_milter, _ = milter_for(rx, "mx.remote.test", "", milter="trusted_networks = []")
    ox_milter, ox_cfg = milter_for(ox, "mx.agents.test", f"""
[domains."rsa.agents.test"]
dkim_selectors = ["s1"]
[domains."ed.agents.test"]
dkim_selectors = ["s1"]
[send]
submit = "unix:{install_submit(ox)}"
per_thread_per_hour = 3
[[routes]]
match = "helpdesk@rsa.agents.test"
endpoint = "http://127.0.0.1:{example_port}/"
secret = "{WEBHOOK}"
[[routes]]
match = "@rsa.agents.test"
endpoint = "{receiver.url}"
secret = "{WEBHOOK}"
[[routes]]
match = "@ed.agents.test"
endpoint = "{receiver.url}"
secret = "{WEBHOOK}"
[[api_keys]]
name = "agent"
key = "{KEY_A}"
allow = ["agent@rsa.agents.test", "agent@ed.agents.test", "helpdesk@rsa.agents.test"]
[[api_keys]]
name = "other"
key = "{KEY_B}"
allow = ["other@rsa.agents.test"]
""")
    rx.start()
    ox.start()
    config = load_config(ox_cfg)
    zone = {"mx.agents.test": {"A": ["127.0.0.1"]}, "remote.test": {"TXT": ["v=spf1 -all"]}}
    for domain in ("rsa.agents.test", "ed.agents.test"):
        zone_from_records(dnsrecords.records(config, domain), zone)
    dns_server.set_zone(zone)
    server = start(config)
    api = server.url
    yield {"rx": rx, "ox": ox, "config": config, "api": api, "zone": zone, "receiver": receiver,
           "example_port": example_port}
    server.stop()
    for m in (ox_milter, rx_milter):
        m.stop()
    for pf in (ox, rx):
        pf.stop()
    receiver.stop()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    return world


def inbound_event(w, to: str, subject: str = "Hello", extra: str = "") -> dict:
    """An inbound message, delivered by deliver() (stored, POSTed): the event an agent answers."""
    n = time.time_ns()
    raw = (f"From: Bob <bob@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Message-ID: <orig-{n}@remote.test>\r\nReferences: <root-{n}@remote.test>\r\n{extra}"
           f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\nCan you help?\r\n").encode()
    out = deliver(raw, Envelope("bob@remote.test", to, queue_id=f"Q{n}"), w["config"])
    assert out.state is DeliveryState.DELIVERED
    return json.loads(w["receiver"].requests[-1].body)


def delivered_reply(w, message_id: str) -> bytes:
    rx = w["rx"]
    def find():
        for p in rx.delivered():
            data = p.read_bytes()
            if message_id.encode() in data:
                return data
        return None
    from support.postfix import wait_for
    return wait_for(find, timeout=30, what=f"the reply {message_id} at the remote MX\n{w['ox'].log()[-2000:]}")


@pytest.mark.parametrize("domain,algorithm", [("rsa.agents.test", "rsa-sha256"), ("ed.agents.test", "ed25519-sha256")])
def test_reply_arrives_signed_aligned_and_threaded(w, domain, algorithm):
    original = inbound_event(w, f"agent+help@{domain}")
    result = Client(w["api"], KEY_A).reply(original, text="Sure, here is how.")
    assert result["queueId"] and result["inReplyTo"] == original["messageId"]
    assert result["threadId"] == original["threadId"]
    raw = delivered_reply(w, result["messageId"])
    (header,) = our_results(raw, "mx.remote.test")
    v = verdicts(header)
    (dkim,) = v["dkim"]
    assert (dkim.result, dkim.header_d, dkim.header_a) == ("pass", domain, algorithm)
    assert v["dmarc"][0].result == "pass" and v["spf"][0].result == "pass"
    msg = email.message_from_bytes(raw)
    assert msg["From"] == f"agent@{domain}" and msg["To"] == "Bob <bob@remote.test>"
    assert msg["Subject"] == "Re: Hello" and msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == original["messageId"]
    # what the remote agent would see: the same thread
    event, _ = build_event(raw, Envelope(f"agent@{domain}", "bob@remote.test"), w["config"], None, time.time(), None)
    assert event["threadId"] == original["threadId"] and event["subject"] == "Re: Hello"


def post(w, payload: dict, key: str | None = KEY_A) -> tuple[int, dict, dict]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(w["api"] + "/v1/send", data=json.dumps(payload).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_keys_may_send_only_as_their_own_addresses(w):
    msg = {"from": "agent@rsa.agents.test", "to": ["bob@remote.test"], "subject": "x", "text": "x"}
    assert post(w, msg, key=None)[0] == 401
    assert post(w, msg, key="amx_wrong_key_000000000000000000")[0] == 401
    status, body, _ = post(w, msg, key=KEY_B)
    assert status == 403 and body["code"] == "forbidden_sender" and "other@rsa.agents.test" in body["error"]
    status, body, _ = post(w, {**msg, "from": "agent@elsewhere.test"})
    assert status == 403
    original = inbound_event(w, "agent@rsa.agents.test")
    status, body, _ = post(w, {"from": "other@rsa.agents.test", "inReplyTo": original["id"], "text": "x"}, key=KEY_B)
    assert status == 403 and body["code"] == "forbidden_event"


def test_a_reply_to_an_auto_reply_is_refused_unless_forced(w):
    original = inbound_event(w, "agent@rsa.agents.test", subject="Out of office", extra="Auto-Submitted: auto-replied\r\n")
    assert original["autoSubmitted"] == "auto-replied"
    status, body, _ = post(w, {"from": "agent@rsa.agents.test", "inReplyTo": original["id"], "text": "x"})
    assert status == 409 and body["code"] == "loop_risk"
    status, body, _ = post(w, {"from": "agent@rsa.agents.test", "inReplyTo": original["id"], "text": "x", "force": True})
    assert status == 200 and body["queueId"]


@pytest.mark.parametrize("payload,code", [
    ({"subject": "hi\r\nBcc: victim@remote.test"}, "header_injection"),
    ({"to": ["bob@remote.test\r\nBcc: victim@remote.test"]}, "header_injection"),
    ({"to": [{"address": "bob@remote.test", "name": "Bob\nBcc: x@y"}]}, "header_injection"),
    ({"headers": {"Bcc": "victim@remote.test"}}, "bad_header"),
    ({"headers": {"X-Tag": "a\r\nBcc: victim@remote.test"}}, "header_injection"),
    ({"to": ["not an address"]}, "bad_address"),
    ({"attachments": [{"filename": "a.txt", "content": "@@@"}]}, "bad_attachment"),
    ({"inReplyTo": "<x@y>\r\nBcc: v@remote.test"}, "header_injection"),
    ({"surprise": 1}, "unknown_field"),
])
def test_bad_requests_are_400_and_nothing_is_sent(w, payload, code):
    since = time.time()
    marker = f"must-not-arrive-{time.time_ns()}"
    base = {"from": "agent@rsa.agents.test", "to": ["bob@remote.test"], "subject": "x", "text": marker}
    status, body, _ = post(w, {**base, **payload})
    assert (status, body["code"]) == (400, code)
    settled(w["ox"], w["rx"], since=since)
    assert not any(marker.encode() in p.read_bytes() for p in w["rx"].delivered())
    assert marker not in w["ox"].log()


def test_thread_rate_limit(w):
    original = inbound_event(w, "agent@ed.agents.test", subject="Chatty")
    codes = [post(w, {"from": "agent@ed.agents.test", "inReplyTo": original["id"], "text": f"reply {i}"})
             for i in range(4)]
    assert [c[0] for c in codes] == [200, 200, 200, 429]
    assert codes[3][1]["code"] == "rate_limited" and int(codes[3][2]["retry-after"]) > 3000


def test_send_with_attachment_and_cli(w, tmp_path):
    import subprocess
    import sys
    att = tmp_path / "report.txt"
    att.write_text("numbers")
    out = subprocess.run([str(Path(sys.executable).with_name("agentmx")), "send", "--url", w["api"],
                          "--from", "agent@rsa.agents.test", "--to", "bob@remote.test", "--subject", "Report",
                          "--text", "attached", "--attach", str(att)],
                         capture_output=True, text=True, timeout=60, env={"AGENTMX_API_KEY": KEY_A, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    raw = delivered_reply(w, result["messageId"])
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert [p.get_filename() for p in msg.iter_attachments()] == ["report.txt"]
    assert msg["Auto-Submitted"] is None                # not a reply to an event
    with pytest.raises(ApiError) as exc:
        Client(w["api"], KEY_B).send(from_="agent@rsa.agents.test", to=["bob@remote.test"], text="x")
    assert exc.value.status == 403


def test_the_example_agent_answers_authenticated_mail(w):
    """examples/receiver.py with an API key: it verifies the event and replies through the API."""
    import os
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "receiver.py"), "--port", str(w["example_port"])],
                            env={**os.environ, "AGENTMX_WEBHOOK_SECRET": WEBHOOK, "AGENTMX_API_KEY": KEY_A,
                                 "AGENTMX_URL": w["api"]}, stdout=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stdout.readline()
        n = time.time_ns()
        # As our milter writes it, above the Received line of our Postfix: DMARC passed.
        raw = (f"Authentication-Results: mx.agents.test; spf=pass smtp.mailfrom=bob@remote.test;"
               f" dkim=pass header.d=remote.test; dmarc=pass header.from=remote.test\r\n"
               f"Received: from mx.remote.test by mx.agents.test (Postfix) with ESMTPS id Q{n};"
               f" Fri, 27 Nov 2026 10:00:01 +0000\r\n"
               f"From: Bob <bob@remote.test>\r\nTo: helpdesk@rsa.agents.test\r\nSubject: Printer\r\n"
               f"Message-ID: <help-{n}@remote.test>\r\n\r\nThe printer is on fire.\r\n").encode()
        out = deliver(raw, Envelope("bob@remote.test", "helpdesk@rsa.agents.test", queue_id=f"Q{n}"), w["config"])
        assert out.state is DeliveryState.DELIVERED
        assert "(authenticated)" in proc.stdout.readline()
        replied = proc.stdout.readline()
        assert replied.startswith("replied snd_"), replied
        raw_reply = delivered_reply(w, f"<help-{n}@remote.test>")
        msg = email.message_from_bytes(raw_reply)
        assert msg["Subject"] == "Re: Printer" and msg["From"] == "helpdesk@rsa.agents.test"
        assert verdicts(our_results(raw_reply, "mx.remote.test")[0])["dkim"][0].result == "pass"
        # what became of its reply reaches it too, and it tells that event from mail (type)
        import select
        noted = []
        while not any("email.sent" in line for line in noted) and select.select([proc.stdout], [], [], 30)[0]:
            noted.append(proc.stdout.readline())
        assert any(f"email.sent (send {replied.split()[1]})" in line for line in noted), noted
    finally:
        proc.kill()
        proc.wait()
