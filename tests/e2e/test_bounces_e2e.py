"""What became of what an agent sent, end to end, with two real Postfix instances.

Our Postfix (ox) signs and sends what `agentmx serve` submits, each send with its own envelope
sender (bounces+<token>@agents.test) and a DSN request, and takes the reports that come back to
that address through the agentmx pipe. The remote MX (rx) refuses nouser@ at RCPT (550 5.1.1),
tempfails later@ (450 4.2.0), accepts gone@ and bounces it afterwards itself (its transport exits
67, EX_NOUSER: an asynchronous DSN), and accepts ok@ with NOTIFY=SUCCESS (a "delivered" DSN back to us). rx
sends its reports to ox over SMTP, through ox's milter, as any remote MX would.

Each report becomes a send event in the store (the send's timeline), a permanent bounce and a
complaint a suppression; a report with a forged token becomes nothing; serve's dispatcher POSTs
the events to the sender's route (a webhook route here for hook@, pull for the rest).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from standardwebhooks.webhooks import Webhook

from e2e_helpers import send
from support.postfix import wait_for
from support.receiver import Receiver
from support.world import build

from agentmx import verp
from agentmx.store import open_store
from agentmx.store.model import SendEventType, SuppressionReason

DOMAIN = "agents.test"
KEY = "amx_bounce_key_for_the_agent_0123456"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def world(dns_server):
    hook = Receiver()
    w = build(dns_server, "b", DOMAIN, f"""
[[routes]]
match = "hook@{DOMAIN}"
endpoint = "{hook.url}"
secret = "{HOOK_SECRET}"
[[routes]]
match = "@{DOMAIN}"
mode = "pull"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}", "hook@{DOMAIN}"]
""")
    w["hook"] = hook
    rx, ox = w["rx"], w["ox"]
    gone = rx.base / "gone.sh"            # a mailbox that no longer exists, found after acceptance
    gone.write_text("#!/bin/sh\necho 'mailbox gone'\nexit 67\n")
    gone.chmod(0o755)
    rx.postconf_master(f"gone/unix = gone unix - n n - - pipe user=nobody argv={gone}")
    rx.postconf(f"transport_maps = inline:{{ gone@remote.test=gone:, remote.test=sink:, "
                f"elsewhere.test=sink:, {DOMAIN}=smtp:[127.0.0.1]:{ox.port} }}",
                "smtpd_recipient_restrictions = check_recipient_access inline:{ "
                "{nouser@remote.test=550 5.1.1 no such user here}, {later@remote.test=450 4.2.0 try again later} }, "
                "permit_mynetworks, reject_unauth_destination",
                "notify_classes =")
    rx.reload()
    # a delayed message is reported after delay_warning_time (test-sized) at its next attempt
    ox.postconf("delay_warning_time = 1s", "minimal_backoff_time = 1s", "maximal_backoff_time = 2s",
                "queue_run_delay = 1s")
    ox.reload()
    w["store"] = open_store(w["config"])
    yield w
    w["store"].close()
    w.close()
    hook.stop()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    return world


def api(w, path: str, payload: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(w["api"] + path, data=json.dumps(payload).encode() if payload else None,
                                 method="POST" if payload else "GET",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def api_send(w, to: str, subject: str, sender: str = f"agent@{DOMAIN}") -> tuple[int, dict]:
    return api(w, "/v1/send", {"from": sender, "to": to, "subject": subject, "text": "hello"})


def events_of(w, send_id: str, type_: SendEventType, timeout: float = 45) -> list:
    try:
        return wait_for(lambda: [e for e in w["store"].send_events(send_id) if e.type is type_], timeout=timeout,
                        what=f"{type_} for {send_id}")
    except TimeoutError:
        print("ox:", w["ox"].log()[-3000:], "\nrx:", w["rx"].log()[-3000:], sep="\n")
        raise


def test_the_envelope_sender_is_the_sends_own_and_asks_for_dsns(w):
    status, sent = api_send(w, "ok@remote.test", "envelope")
    assert status == 200, sent
    log = wait_for(lambda: (lambda text: text if sent["queueId"] in text and "dsn=2." in text else None)(
        w["ox"].log()), timeout=30, what="ox delivering the send")
    token = verp.address(sent["id"], DOMAIN, verp.key_from(w["config"].url_secret))
    assert f"{sent['queueId']}: from=<{token}>" in log
    (sent_event,) = events_of(w, sent["id"], SendEventType.SENT)
    doc = json.loads(sent_event.body)
    assert doc["type"] == "email.sent" and doc["sendId"] == sent["id"] and doc["queueId"] == sent["queueId"]
    assert doc["from"] == f"agent@{DOMAIN}" and doc["recipients"] == ["ok@remote.test"]


def test_accepted_remotely_is_delivered(w):
    _, sent = api_send(w, "ok@remote.test", "delivered")
    (event,) = events_of(w, sent["id"], SendEventType.DELIVERED)
    doc = json.loads(event.body)
    # rx's own report (it supports DSN: NOTIFY went along); its pipe delivery says "relayed"
    assert doc["recipient"] == "ok@remote.test" and doc["action"] in ("delivered", "relayed")
    assert doc["status"].startswith("2.") and doc["suppressed"] is False
    print("delivered:", doc["action"], doc["reportingMta"])


def test_refused_at_rcpt_bounces_with_its_diagnostic_and_suppresses(w):
    started = time.monotonic()
    _, sent = api_send(w, "nouser@remote.test", "bounce")
    (event,) = events_of(w, sent["id"], SendEventType.BOUNCED)
    took = time.monotonic() - started
    doc = json.loads(event.body)
    assert doc["recipient"] == "nouser@remote.test" and doc["status"] == "5.1.1" and doc["permanent"] is True
    assert doc["diagnosticCode"].startswith("smtp; 550 5.1.1") and "no such user here" in doc["diagnosticCode"]
    assert "127.0.0.1" in (doc["remoteMta"] or "") and "mx.agents.test" in (doc["reportingMta"] or "")
    assert doc["suppressed"] is True
    (sup,) = w["store"].suppressed(DOMAIN, ["nouser@remote.test"])
    assert sup.reason is SuppressionReason.BOUNCED and sup.event_id == event.id
    print(f"refused at RCPT -> email.bounced kept in {took:.1f}s")


def test_the_next_send_to_a_bounced_address_is_refused(w):
    w["store"].unsuppress(DOMAIN, "nouser@remote.test")        # the test before bounced it already
    _, sent = api_send(w, "nouser@remote.test", "bounce first")
    events_of(w, sent["id"], SendEventType.BOUNCED)
    status, answer = api_send(w, "nouser@remote.test", "bounce again")
    assert status == 422 and answer["code"] == "suppressed", answer
    assert "nouser@remote.test" in answer["error"]


def test_accepted_then_bounced_by_the_remote_itself(w):
    _, sent = api_send(w, "gone@remote.test", "async bounce")
    (event,) = events_of(w, sent["id"], SendEventType.BOUNCED)
    doc = json.loads(event.body)
    assert doc["recipient"] == "gone@remote.test" and doc["status"] == "5.1.1" and doc["permanent"] is True
    assert "mailbox gone" in doc["diagnosticCode"]
    assert "mx.remote.test" in (doc["reportingMta"] or "")     # rx's own report, sent to us over SMTP


def test_tempfailed_is_delayed(w):
    _, sent = api_send(w, "later@remote.test", "delay")

    def delayed():
        w["ox"].flush()                 # the next attempt, after delay_warning_time, sends the warning
        return [e for e in w["store"].send_events(sent["id"]) if e.type is SendEventType.DELAYED]
    (event,) = wait_for(delayed, timeout=45, interval=1.0, what="email.delayed")
    doc = json.loads(event.body)
    assert doc["recipient"] == "later@remote.test" and doc["action"] == "delayed" and doc["status"].startswith("4.")
    assert doc["suppressed"] is False and not w["store"].suppressed(DOMAIN, ["later@remote.test"])


ARF = """\
From: Feedback Loop <fbl@remote.test>
To: bounces@{domain}
Subject: FW: complaint
Message-ID: <arf{n}@remote.test>
Date: Sat, 05 Dec 2026 10:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b1"

--b1
Content-Type: text/plain

This is an email abuse report for a message received from your domain.

--b1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: remote-fbl/1.0
Version: 1
Original-Mail-From: <{mail_from}>
Original-Rcpt-To: <{rcpt}>
Arrival-Date: Sat, 05 Dec 2026 09:59:00 +0000

--b1
Content-Type: text/rfc822-headers

From: agent@{domain}
To: {rcpt}
Subject: complain
Message-ID: {message_id}

--b1--
"""


def test_a_feedback_report_is_a_complaint_and_suppresses(w):
    _, sent = api_send(w, "ok@remote.test", "complain")
    events_of(w, sent["id"], SendEventType.DELIVERED)
    mail_from = verp.address(sent["id"], DOMAIN, verp.key_from(w["config"].url_secret))
    report = ARF.format(domain=DOMAIN, n=time.time_ns(), mail_from=mail_from, rcpt="ok@remote.test",
                        message_id=sent["messageId"]).replace("\n", "\r\n").encode()
    send(w["ox"].port, "", [f"bounces@{DOMAIN}"], report, helo="mx.remote.test")
    (event,) = events_of(w, sent["id"], SendEventType.COMPLAINED)
    doc = json.loads(event.body)
    assert doc["recipient"] == "ok@remote.test" and doc["feedbackType"] == "abuse" and doc["suppressed"] is True
    (sup,) = w["store"].suppressed(DOMAIN, ["ok@remote.test"])
    assert sup.reason is SuppressionReason.COMPLAINED
    w["store"].unsuppress(DOMAIN, "ok@remote.test")     # the other tests send there


DSN = """\
From: Mail Delivery System <MAILER-DAEMON@mx.remote.test>
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn{n}@mx.remote.test>
Date: Sat, 05 Dec 2026 10:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b2"

--b2
Content-Type: text/plain

Your message could not be delivered.

--b2
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.remote.test
Original-Envelope-Id: {envid}

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--b2--
"""


def test_a_bounce_with_a_forged_token_is_no_event(w):
    _, sent = api_send(w, "ok@remote.test", "forged")
    events_of(w, sent["id"], SendEventType.DELIVERED)
    real = verp.address(sent["id"], DOMAIN, verp.key_from(w["config"].url_secret))
    forged = real.split("-")[0] + "-" + "a" * 16 + "@" + DOMAIN
    assert forged != real
    before = len(w["store"].send_events(sent["id"]))
    send(w["ox"].port, "", [forged], DSN.format(to=forged, n=time.time_ns(), envid=sent["id"], rcpt="ok@remote.test")
         .replace("\n", "\r\n").encode(), helo="mx.remote.test")
    # taken by deliver (exit 0: nothing left in ox's queue for it), and nothing kept
    wait_for(lambda: forged in w["ox"].log() and "status=sent" in w["ox"].log().split(forged)[-1], timeout=30,
             what="deliver taking the forged report")
    assert len(w["store"].send_events(sent["id"])) == before
    assert not w["store"].suppressed(DOMAIN, ["ok@remote.test"])


def test_a_bounce_reaches_the_senders_webhook_signed_and_the_sends_timeline(w):
    w["store"].unsuppress(DOMAIN, "nouser@remote.test")        # bounced by the tests before
    _, sent = api_send(w, "nouser@remote.test", "bounce to a webhook", sender=f"hook@{DOMAIN}")
    post = wait_for(lambda: next((r for r in w["hook"].requests if sent["id"].encode() in r.body
                                  and b"email.bounced" in r.body), None), timeout=45, what="email.bounced POSTed")
    doc = Webhook(HOOK_SECRET).verify(post.body, post.headers)      # the Standard Webhooks library verifies it
    assert doc["type"] == "email.bounced" and doc["recipient"] == "nouser@remote.test" and doc["status"] == "5.1.1"
    assert post.headers["webhook-id"] == doc["id"]
    status, shown = api(w, f"/v1/send/{sent['id']}")
    assert status == 200
    assert [e["type"] for e in shown["timeline"]["nouser@remote.test"]] == ["email.sent", "email.bounced"]
