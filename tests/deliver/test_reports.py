"""deliver/reports.py: a report to a send's own envelope sender becomes send events and
suppressions in a real embedded store; a forged one, one about no send, or one naming strangers
becomes nothing. (Through two Postfix instances: tests/e2e/test_bounces_e2e.py.)"""
from __future__ import annotations

import json

import pytest

from agentmx import verp
from agentmx.config import parse_config
from agentmx.deliver.core import EX_OK, EX_TEMPFAIL, Envelope, deliver
from agentmx.store import StoreUnavailable
from agentmx.store.embedded import EmbeddedStore
from agentmx.store.model import PostState, SendEventType, SendRecord, SendState, SuppressionReason

pytestmark = pytest.mark.unit

SECRET = "0123456789abcdef0123"
SEND = "snd_" + "a" * 26


@pytest.fixture
def cfg(tmp_path):
    return parse_config(f"""
[server]
authserv_id = "mx.agentmx.test"
data_dir = "{tmp_path / 'data'}"
url_secret = "{SECRET}"
[[routes]]
match = "agent@agentmx.test"
endpoint = "http://127.0.0.1:9/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[[routes]]
match = "@pull.agentmx.test"
mode = "pull"
""", "test.toml")


@pytest.fixture
def store(tmp_path):
    s = EmbeddedStore(tmp_path / "data", clock=lambda: 1796460000.0)
    s.migrate()
    s.put_send(SendRecord(SEND, "agent", "agent@agentmx.test", ("x@remote.test", "y@remote.test"),
                          "<m1@agentmx.test>", "Q1", "<m1@agentmx.test>", None, None, SendState.QUEUED, 1796459000.0))
    yield s
    s.close()


def address(send_id: str = SEND) -> str:
    return verp.address(send_id, "agentmx.test", verp.key_from(SECRET))


def dsn(*groups: tuple[str, str, str], envid: str = SEND, message_id: str = "<m1@agentmx.test>") -> bytes:
    per = "".join(f"\r\nFinal-Recipient: rfc822; {r}\r\nAction: {a}\r\nStatus: {s}\r\n"
                  f"Diagnostic-Code: smtp; {s[0]}50 {s} said no\r\n" for r, a, s in groups)
    return ("From: MAILER-DAEMON@mx.remote.test\r\nTo: bounces@agentmx.test\r\nSubject: Delivery Status\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nReport.\r\n"
            f"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n"
            f"Original-Envelope-Id: {envid}\r\n{per}\r\n"
            f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {message_id}\r\nSubject: hi\r\n\r\n"
            "--b--\r\n").encode()


def take(raw: bytes, cfg, store, rcpt: str | None = None):
    return deliver(raw, Envelope("", rcpt or address(), "QID1"), cfg, store=store, clock=lambda: 1796460000.0)


def test_a_dsn_becomes_one_event_per_recipient_and_a_hard_bounce_suppresses(cfg, store):
    out = take(dsn(("x@remote.test", "failed", "5.1.1"), ("y@remote.test", "delayed", "4.4.1")), cfg, store)
    assert out.exit_code == EX_OK, out
    events = store.send_events(SEND)
    assert [(e.type, e.recipient) for e in events] == [(SendEventType.BOUNCED, "x@remote.test"),
                                                        (SendEventType.DELAYED, "y@remote.test")]
    bounced = json.loads(events[0].body)
    assert bounced["permanent"] is True and bounced["suppressed"] is True and bounced["status"] == "5.1.1"
    assert events[0].state is PostState.PENDING and events[0].route == "agent@agentmx.test"   # the sender's route pushes
    (sup,) = store.suppressions()
    assert (sup.domain, sup.address, sup.reason, sup.event_id) == ("agentmx.test", "x@remote.test",
                                                                   SuppressionReason.BOUNCED, events[0].id)
    assert not json.loads(events[1].body)["suppressed"]


def test_the_same_report_twice_is_kept_once(cfg, store):
    raw = dsn(("x@remote.test", "failed", "5.1.1"))
    assert take(raw, cfg, store).exit_code == take(raw, cfg, store).exit_code == EX_OK
    assert len(store.send_events(SEND)) == 1


def test_a_transient_failure_bounces_without_suppressing(cfg, store):
    take(dsn(("x@remote.test", "failed", "4.2.2")), cfg, store)
    (event,) = store.send_events(SEND)
    assert event.type is SendEventType.BOUNCED and json.loads(event.body)["permanent"] is False
    assert store.suppressions() == []


@pytest.mark.parametrize("rcpt", [
    address()[:-len("@agentmx.test")][:-16] + "a" * 16 + "@agentmx.test",     # a forged signature
    "bounces+" + "b" * 26 + "-" + "c" * 16 + "@agentmx.test",
    "bounces+nonsense@agentmx.test",
])
def test_a_forged_token_keeps_nothing(cfg, store, rcpt, caplog):
    out = take(dsn(("x@remote.test", "failed", "5.1.1")), cfg, store, rcpt)
    assert out.exit_code == EX_OK and "not taken" in out.reason
    assert store.send_events(SEND) == [] and store.suppressions() == []
    assert any("not taken" in r.getMessage() for r in caplog.records)


def test_a_report_naming_someone_the_send_did_not_go_to_is_ignored(cfg, store):
    out = take(dsn(("ceo@victim.test", "failed", "5.1.1")), cfg, store)
    assert out.exit_code == EX_OK and out.reason == f"report about {SEND}: nothing kept"    # read, matched, refused
    assert store.send_events(SEND) == [] and store.suppressions() == []


def test_without_a_token_the_returned_message_id_names_the_send(cfg, store):
    take(dsn(("y@remote.test", "failed", "5.1.1")), cfg, store, "bounces@agentmx.test")
    assert [e.recipient for e in store.send_events(SEND)] == ["y@remote.test"]
    take(dsn(("x@remote.test", "failed", "5.1.1"), message_id="<other@agentmx.test>"), cfg, store,
         "bounces@agentmx.test")
    assert len(store.send_events(SEND)) == 1           # no send has that Message-ID


def test_a_send_gone_from_the_store_keeps_nothing(cfg, store):
    other = "snd_" + "b" * 26
    out = take(dsn(("x@remote.test", "failed", "5.1.1"), envid=other), cfg, store, address(other))
    assert out.exit_code == EX_OK and f"no send {other}" in out.reason
    assert store.send_events(SEND) == [] and store.suppressions() == []


def test_mail_that_is_no_report_is_taken_and_kept_nowhere(cfg, store):
    raw = b"From: someone@remote.test\r\nSubject: out of office\r\n\r\nI am away.\r\n"
    out = take(raw, cfg, store)
    assert out.exit_code == EX_OK and out.reason == f"not a delivery report (about {SEND})"
    assert store.send_events(SEND) == [] and store.suppressions() == []


def test_a_store_that_cannot_keep_the_events_defers_the_report(cfg, store, monkeypatch):
    def down(event):
        raise StoreUnavailable("database is locked")
    monkeypatch.setattr(store, "put_send_event", down)
    assert take(dsn(("x@remote.test", "delayed", "4.4.1")), cfg, store).exit_code == EX_TEMPFAIL


def test_an_alias_expanded_by_the_remote_is_matched_by_its_original_recipient(cfg, store):
    raw = dsn(("y.alias@mailhost.remote.test", "failed", "5.2.1")).replace(
        b"Final-Recipient: rfc822; y.alias@mailhost.remote.test\r\n",
        b"Original-Recipient: rfc822; y@remote.test\r\nFinal-Recipient: rfc822; y.alias@mailhost.remote.test\r\n")
    take(raw, cfg, store)
    assert [e.recipient for e in store.send_events(SEND)] == ["y@remote.test"]


# --- review of issue 16 (an attacker's view) -----------------------------------------------------------

ARF_WITHOUT_TOKEN = (
    "From: someone@thread.test\r\nTo: bounces@agentmx.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n"
    "--b\r\nContent-Type: text/plain\r\n\r\nAbuse report.\r\n"
    "--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n"
    "Original-Rcpt-To: <{rcpt}>\r\n\r\n"
    "--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <m1@agentmx.test>\r\nSubject: hi\r\n\r\n"
    "--b--\r\n")


@pytest.mark.parametrize("forged", ["dsn", "arf"])
def test_a_message_id_alone_names_no_send_a_third_party_in_the_thread_knows_it(cfg, store, forged):
    # The send's Message-ID is no secret: every reply quotes it (In-Reply-To, References), so anyone
    # later copied on the thread, or a list archive's reader, has it, and the recipients' addresses
    # with it. Without the token (or the send's ENVID, which only MTAs see) it must suppress no one.
    raw = (dsn(("x@remote.test", "failed", "5.1.1"), envid="") if forged == "dsn"
           else ARF_WITHOUT_TOKEN.format(rcpt="x@remote.test").encode())
    out = take(raw, cfg, store, "bounces@agentmx.test")
    assert out.exit_code == EX_OK and "not taken" in out.reason
    assert store.send_events(SEND) == [] and store.suppressions() == []


def test_one_recipient_keeps_a_bounded_number_of_events_however_many_reports_come(cfg, store):
    # Whoever has the token (every recipient) can send reports that differ by a byte, each a new
    # event, a webhook POST, and a line of GET /v1/send/{id}: without a bound, one send's timeline
    # grows as long as the sender keeps mailing.
    from agentmx.deliver import reports
    for i in range(reports.MAX_EVENTS_PER_RECIPIENT + 15):
        raw = dsn(("x@remote.test", "delayed", "4.4.1")).replace(b"Report.", f"Report {i}.".encode())
        assert take(raw, cfg, store).exit_code == EX_OK
    assert len(store.send_events(SEND)) == reports.MAX_EVENTS_PER_RECIPIENT
    take(dsn(("y@remote.test", "failed", "5.1.1")), cfg, store)     # another recipient's line is its own
    assert [e.recipient for e in store.send_events(SEND)][-1] == "y@remote.test"


@pytest.mark.parametrize("feedback_type", ["not-spam", "auth-failure"])
def test_a_feedback_report_that_is_no_complaint_suppresses_no_one(cfg, store, feedback_type):
    # RFC 6430 not-spam: the recipient took the message OUT of the spam folder; RFC 6591
    # auth-failure: a DMARC failure report about the message. Neither says the recipient complained.
    raw = ARF_WITHOUT_TOKEN.format(rcpt="x@remote.test").replace(
        "Feedback-Type: abuse\r\n", f"Feedback-Type: {feedback_type}\r\nOriginal-Mail-From: <{address()}>\r\n")
    out = take(raw.encode(), cfg, store, "bounces@agentmx.test")
    assert out.exit_code == EX_OK
    assert store.send_events(SEND) == [] and store.suppressions() == []
    take(ARF_WITHOUT_TOKEN.format(rcpt="x@remote.test").replace(     # the same with abuse: a complaint
        "Feedback-Type: abuse\r\n", f"Feedback-Type: abuse\r\nOriginal-Mail-From: <{address()}>\r\n").encode(),
        cfg, store, "bounces@agentmx.test")
    assert [e.type for e in store.send_events(SEND)] == [SendEventType.COMPLAINED] and store.suppressions()


def test_a_report_replayed_after_the_suppression_was_lifted_does_not_put_it_back(cfg, store):
    raw = dsn(("x@remote.test", "failed", "5.1.1"))
    take(raw, cfg, store)
    assert store.unsuppress("agentmx.test", "x@remote.test")      # the operator lifts it
    assert take(raw, cfg, store).exit_code == EX_OK                 # the same report, replayed
    assert store.suppressions() == [] and len(store.send_events(SEND)) == 1
