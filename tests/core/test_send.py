"""agentmx/send.py's pure stages, without a mail server: parse_request (JSON to a SendRequest, every
field's 400), check_request (what a request made by a door of ours must be too) and build (the
message: threading headers, Auto-Submitted, the list headers a caller may add, attachments). What
the send path takes from an inbound message is also in test_send_build.py; the doors in
test_sendpath.py; Postfix in tests/e2e/test_e2e_send.py."""
from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agentmx import send
from agentmx.config import Config, SendConfig
from agentmx.send import Attachment, Mailbox, SendError, SendRequest

pytestmark = pytest.mark.unit

CONFIG = Config(path=Path("agentmx.toml"), authserv_id="mx.agents.test")
AGENT = "agent@agents.test"


def parse(**fields) -> SendRequest:
    return send.parse_request({"from": AGENT, "to": "bob@remote.test", "text": "Hi.", **fields})


def refused(code: str, status: int = 400, **fields) -> SendError:
    with pytest.raises(SendError) as info:
        parse(**fields)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value


def built(req: SendRequest, original: dict | None = None, config: Config = CONFIG):
    out = send.build(req, original, config, now=1_800_000_000.0)
    return out, email.message_from_bytes(out.message.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)


def original(**kw) -> dict:
    return {"id": "msg_eeeeeeeeeeeeeeee", "from": {"address": "bob@remote.test", "name": "Bob"}, "replyTo": [],
            "subject": "Hello", "messageId": "<m2@remote.test>", "references": ["<m1@remote.test>"],
            "autoSubmitted": None, **kw}


# --- parse_request ---------------------------------------------------------------------------------


def test_a_request_parses_into_its_values():
    req = parse(to=["Bob <bob@remote.test>", {"address": "carol@remote.test", "name": "Carol"}],
                cc="dan@remote.test", bcc=["eve@remote.test"], replyTo="help@agents.test", subject="Hi there",
                html="<p>Hi.</p>", force=True)
    assert req.sender == Mailbox(AGENT)
    assert req.to == (Mailbox("bob@remote.test", "Bob"), Mailbox("carol@remote.test", "Carol"))
    assert req.cc == (Mailbox("dan@remote.test"),) and req.bcc == (Mailbox("eve@remote.test"),)
    assert req.reply_to == (Mailbox("help@agents.test"),)
    assert (req.subject, req.text, req.html, req.force) == ("Hi there", "Hi.", "<p>Hi.</p>", True)
    assert req.auto_submitted is None and req.scheduled_at is None


@pytest.mark.parametrize("body,code,status", [
    ([], "bad_request", 400),
    ({"from": AGENT, "to": "bob@remote.test", "text": "x", "templateId": "t1"}, "not_supported", 501),
    ({"from": AGENT, "to": "bob@remote.test", "text": "x", "bodyText": "x"}, "unknown_field", 400),
    ({"to": "bob@remote.test", "text": "x"}, "missing_field", 400),
    ({"from": AGENT, "to": "bob@remote.test"}, "missing_field", 400),          # neither text nor html
])
def test_the_shape_of_a_request_is_checked_first(body, code, status):
    with pytest.raises(SendError) as info:
        send.parse_request(body)
    assert (info.value.status, info.value.code) == (status, code)


@pytest.mark.parametrize("value", ["not an address", "bob@", "@remote.test", "bob@remote", "bob@-x.test",
                                   {"address": 5}, {"address": "bob@remote.test", "name": 5}, 5,
                                   "bób@remote.test", ["bob@remote.test"] * 101])
def test_an_address_that_is_not_one_is_a_400(value):
    refused("bad_address", to=value)


@pytest.mark.parametrize("brk", list("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"))
def test_a_line_break_in_any_header_field_is_header_injection(brk):
    refused("header_injection", subject=f"Hi{brk}Bcc: x@evil.test")
    refused("header_injection", to={"address": "bob@remote.test", "name": f"Bob{brk}"})
    refused("header_injection", headers={"X-Tag": f"a{brk}b"})


def test_a_lone_surrogate_anywhere_is_refused_by_where_it_is():
    err = refused("bad_text", text="caf\udce9")
    assert "text" in err.message


def test_the_list_headers_and_x_headers_may_be_added_under_their_own_spelling():
    req = parse(headers={"list-unsubscribe": "<https://agents.test/u/1>", "List-Unsubscribe-Post":
                         "List-Unsubscribe=One-Click", "LIST-ID": "<news.agents.test>", "X-Campaign": "c1"})
    assert req.headers == (("List-Unsubscribe", "<https://agents.test/u/1>"),
                           ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                           ("List-Id", "<news.agents.test>"), ("X-Campaign", "c1"))
    _, msg = built(req)
    assert msg["List-Unsubscribe"] == "<https://agents.test/u/1>" and msg["X-Campaign"] == "c1"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and msg["List-Id"] == "<news.agents.test>"


@pytest.mark.parametrize("headers", [
    {"Received": "from x"}, {"DKIM-Signature": "v=1"}, {"From": "ceo@agents.test"}, {"X-": "a"},
    {"X-Tag": 5}, {"X-Tag": "a\x07b"}, {"X-Tag": "a\x9bb"}, {"X-Tag": "a" * (send.MAX_HEADER_VALUE + 1)},
    {"X-A": "1", "x-a": "2"},                                         # twice, whatever the case
    {f"X-H{i}": "v" for i in range(send.MAX_HEADERS + 1)}, ["X-Tag", "v"],
])
def test_any_other_header_or_value_is_bad_header(headers):
    refused("bad_header", headers=headers)


@pytest.mark.parametrize("value", ["msg_" + "a" * 16, "<m1@remote.test>"])
def test_in_reply_to_is_an_event_id_or_a_message_id(value):
    assert parse(inReplyTo=value).in_reply_to == value


@pytest.mark.parametrize("value", ["msg_short", "m1@remote.test", "<m1>", "<a b@remote.test>", "msg_" + "A" * 16])
def test_anything_else_in_in_reply_to_is_refused(value):
    refused("bad_in_reply_to", inReplyTo=value)


def test_attachments_by_content_take_defaults_and_by_url_keep_their_url():
    data = b"%PDF-1.7 \x00\xff"
    req = parse(attachments=[{"content": base64.b64encode(data).decode()},
                             {"content": "aGk=", "filename": "hi.txt", "contentType": "Text/Plain"},
                             {"url": "https://files.remote.test/a.pdf"}])
    assert req.attachments[0] == Attachment("attachment-1", "application/octet-stream", data)
    assert req.attachments[1] == Attachment("hi.txt", "text/plain", b"hi")
    assert req.attachments[2] == Attachment("", "", b"", url="https://files.remote.test/a.pdf")


@pytest.mark.parametrize("attachments", [
    [{"content": "aGk="}] * (send.MAX_ATTACHMENTS + 1),
    {"content": "aGk="},
    [{}], [{"content": "aGk=", "url": "https://files.remote.test/a"}],          # neither, both
    [{"content": "not base64!"}], [{"content": 5}],
    [{"content": "aGk=", "contentType": "text"}], [{"content": "aGk=", "contentType": "text/plain; x=1"}],
    [{"url": "ftp://files.remote.test/a"}], [{"url": "https://files.remote.test/a b"}],
    [{"url": "https://files.remote.test/" + "a" * send.MAX_URL}], [{"url": "https://fïles.test/a"}],
])
def test_attachment_limits_and_shapes(attachments):
    refused("bad_attachment", attachments=attachments)


def test_an_attachment_name_with_a_line_break_is_header_injection():
    refused("header_injection", attachments=[{"content": "aGk=", "filename": "a\r\nb.txt"}])


def test_scheduled_at_is_an_rfc_3339_time_with_a_zone():
    at = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc).timestamp()
    assert parse(scheduledAt="2026-12-05T09:00:00Z").scheduled_at == at
    assert parse(scheduledAt="2026-12-05 10:00:00+01:00").scheduled_at == at
    assert parse(scheduledAt="2026-12-05T09:00:00.123456789z").scheduled_at == pytest.approx(at + 0.123456)


@pytest.mark.parametrize("value", ["2026-12-05T09:00:00", "2026-12-05", "tomorrow", 1800000000, "2026-13-05T09:00:00Z"])
def test_a_scheduled_at_without_a_zone_or_not_a_time_is_refused(value):
    refused("bad_scheduled_at", scheduledAt=value)


# --- check_request: a request a door of ours made ---------------------------------------------------


@pytest.mark.parametrize("change,code", [
    ({"text": None}, "missing_field"),
    ({"subject": "a\nb"}, "header_injection"),
    ({"text": "\ud800"}, "bad_text"),
    ({"to": (Mailbox("bob@remote.test", "Bob\r\nBcc: x"),)}, "header_injection"),
    ({"to": (Mailbox("not an address"),)}, "bad_address"),
    ({"cc": (Mailbox("bób@remote.test"),)}, "bad_address"),
])
def test_check_request_holds_a_request_made_in_code_to_the_same_rules(change, code):
    req = SendRequest(sender=Mailbox(AGENT), to=(Mailbox("bob@remote.test"),), text="Hi.")
    req = dataclasses.replace(req, **change)
    with pytest.raises(SendError) as info:
        send.check_request(req)
    assert (info.value.status, info.value.code) == (400, code)


# --- build -------------------------------------------------------------------------------------------


def test_a_new_message_starts_its_own_thread():
    out, msg = built(parse(to=["Bob <bob@remote.test>", "BOB@remote.test"], cc="carol@remote.test",
                           bcc="dan@remote.test", subject="Hi"))
    assert msg["From"] == AGENT and msg["Subject"] == "Hi" and "dan@" not in str(msg)
    assert msg["In-Reply-To"] is None and msg["References"] is None and msg["Auto-Submitted"] is None
    assert out.message_id == msg["Message-ID"] and out.message_id.endswith("@agents.test>")
    assert out.thread_id == out.message_id and out.in_reply_to is None
    assert out.recipients == ("bob@remote.test", "BOB@remote.test", "carol@remote.test", "dan@remote.test")
    assert out.correspondents == ("bob@remote.test", "bob@remote.test", "carol@remote.test", "dan@remote.test")
    assert out.envelope_from == AGENT and out.envid is None


def test_a_reply_to_an_event_threads_under_it_and_answers_its_sender():
    out, msg = built(send.parse_request({"from": AGENT, "text": "Thanks.", "inReplyTo": "msg_eeeeeeeeeeeeeeee"}),
                     original())
    assert msg["To"] == "Bob <bob@remote.test>" and msg["Subject"] == "Re: Hello"
    assert msg["In-Reply-To"] == "<m2@remote.test>"
    assert msg["References"] == "<m1@remote.test> <m2@remote.test>"
    assert out.thread_id == "<m1@remote.test>" and out.in_reply_to == "<m2@remote.test>"
    assert msg["Auto-Submitted"] == "auto-replied"


def test_a_reply_goes_to_the_reply_to_addresses_when_the_original_set_them():
    out, _ = built(SendRequest(sender=Mailbox(AGENT), to=(), text="x"),
                   original(replyTo=[{"address": "help@remote.test", "name": None}, {"address": "desk@remote.test"}]))
    assert out.recipients == ("help@remote.test", "desk@remote.test")


@pytest.mark.parametrize("subject,expected", [("Re: Hello", "Re: Hello"), ("AW: Hallo", "AW: Hallo"),
                                              ("sv:hej", "sv:hej"), (None, "Re:"), ("Hi\r\nthere", "Re: Hi there")])
def test_a_reply_subject_gets_one_re(subject, expected):
    _, msg = built(SendRequest(sender=Mailbox(AGENT), to=(), text="x"), original(subject=subject))
    assert msg["Subject"] == expected


def test_a_reply_to_a_message_id_alone_threads_under_it():
    out, msg = built(parse(inReplyTo="<m9@remote.test>"))
    assert msg["In-Reply-To"] == "<m9@remote.test>" and msg["References"] == "<m9@remote.test>"
    assert out.thread_id == "<m9@remote.test>"


def test_ids_that_cannot_be_repeated_unchanged_are_dropped_from_the_threading_headers():
    _, msg = built(SendRequest(sender=Mailbox(AGENT), to=(), text="x"),
                   original(messageId="<a b@remote.test>", references=["<ok@remote.test>", "<bad\x00@x>", 5]))
    assert msg["In-Reply-To"] is None and msg["References"] == "<ok@remote.test>"


def test_automatic_mail_is_not_answered_unless_forced():
    req = SendRequest(sender=Mailbox(AGENT), to=(), text="x")
    with pytest.raises(SendError) as info:
        built(req, original(autoSubmitted="auto-replied"))
    assert (info.value.status, info.value.code) == (409, "loop_risk")
    _, msg = built(dataclasses.replace(req, force=True), original(autoSubmitted="auto-replied"))
    assert msg["To"] == "Bob <bob@remote.test>"


def test_auto_submitted_follows_the_config_and_a_doors_own_keyword():
    req = SendRequest(sender=Mailbox(AGENT), to=(), text="x")
    quiet = dataclasses.replace(CONFIG, send=SendConfig(auto_submitted=False))
    assert built(req, original(), quiet)[1]["Auto-Submitted"] is None
    forward = dataclasses.replace(req, to=(Mailbox("owner@agents.test"),), auto_submitted="auto-generated")
    assert built(forward, original(), quiet)[1]["Auto-Submitted"] == "auto-generated"
    assert built(forward, None)[1]["Auto-Submitted"] == "auto-generated"


def test_without_recipients_or_an_original_to_answer_there_is_no_message():
    with pytest.raises(SendError) as info:
        built(SendRequest(sender=Mailbox(AGENT), to=(), text="x"))
    assert (info.value.status, info.value.code) == (400, "missing_field")


def test_an_original_whose_address_cannot_be_answered_asks_for_to():
    with pytest.raises(SendError) as info:
        built(SendRequest(sender=Mailbox(AGENT), to=(), text="x"), original(**{"from": {"address": "bob@\r\nx"}}))
    assert info.value.code == "bad_original_address"


@pytest.mark.parametrize("fields,parts", [
    ({"text": "Hi."}, ["text/plain"]),
    ({"text": None, "html": "<p>Hi.</p>"}, ["text/html"]),
    ({"html": "<p>Hi.</p>"}, ["multipart/alternative", "text/plain", "text/html"]),
    ({"attachments": [{"content": "aGk=", "filename": "hi.txt", "contentType": "text/plain"}]},
     ["multipart/mixed", "text/plain", "text/plain"]),
])
def test_the_body_parts(fields, parts):
    _, msg = built(parse(**fields))
    assert [p.get_content_type() for p in msg.walk()] == parts
    if "attachments" in fields:
        att = list(msg.iter_attachments())[0]
        assert att.get_filename() == "hi.txt" and att.get_content() == "hi"


def test_an_attachment_by_url_must_be_resolved_before_build():
    with pytest.raises(RuntimeError):
        built(parse(attachments=[{"url": "https://files.remote.test/a.pdf"}]))
