"""What the send path takes from an inbound message (the stored event) when it answers it: whom
(replies.reply_address for the agent and MCP, Reply-To semantics capped at 10 for the send API), and
the values that reach our headers (subject, ids, names), which must never break a header.
Pure functions: the end-to-end paths are in test_agent.py, test_pull.py and test_e2e_send.py."""
from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from agentmx import replies, send
from agentmx.config import Config

pytestmark = pytest.mark.unit

CONFIG = Config(path=Path("agentmx.toml"), authserv_id="mx.agents.test")
BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"


def event(**kw) -> dict:
    base = {"id": "msg_eeeeeeeeeeeeeeee", "recipient": "agent@agents.test", "from": {"address": "bob@mail.remote.test",
            "name": "Bob"}, "replyTo": [], "subject": "Hello", "messageId": "<m1@remote.test>", "references": [],
            "autoSubmitted": None, "auth": {"spf": "pass", "dkim": "pass", "dmarc": "pass", "spam": "ham"}}
    return {**base, **kw}


def reply(original: dict, to: tuple[send.Mailbox, ...] = ()) -> send.Outgoing:
    req = send.SendRequest(sender=send.Mailbox("agent@agents.test"), to=to, text="Thanks.", in_reply_to=original["id"])
    return send.build(req, original, CONFIG)


@pytest.mark.parametrize("reply_to", [
    [],
    [{"address": "help@remote.test", "name": "Help"}],                  # same org domain: still From
    [{"address": "alice@mail.remote.test", "name": None}],              # a shared provider's other user
    [{"address": "mallory@elsewhere.test", "name": None}],
])
def test_automatic_replies_go_to_the_from_address_alone(reply_to):
    assert replies.reply_address(event(replyTo=reply_to)).address == "bob@mail.remote.test"


SPF_BOB = {"result": "pass", "domain": "mail.remote.test", "mailFrom": "bob@mail.remote.test"}


@pytest.mark.parametrize("auth, answered", [
    ({"dmarc": "pass"}, True),
    ({"dmarc": "fail", "details": {"spf": SPF_BOB}}, False),          # the domain says: not this one
    ({"dmarc": "none", "details": {"spf": SPF_BOB, "dkim": []}}, True),   # no DMARC record, aligned SPF
    ({"dmarc": "none", "details": {"dkim": [{"result": "pass", "domain": "remote.test"}]}}, True),
    ({"dmarc": "none", "details": {"dkim": [{"result": "pass", "domain": "evil.test"}],
                                   "spf": {"result": "pass", "domain": "evil.test"}}}, False),   # not aligned
    ({"dmarc": "none", "details": {}}, False),
    ({"dmarc": "temperror"}, False),
    ({}, False),
])
def test_automatic_replies_answer_only_an_authenticated_from(auth, answered):
    """A forged From (no DMARC pass, nothing aligned) would have the agent send a DKIM-signed
    message to whoever the forger names."""
    original = event(auth=auth)
    if answered:
        assert replies.reply_address(original).address == "bob@mail.remote.test"
    else:
        with pytest.raises(send.SendError) as err:
            replies.reply_address(original)
        assert (err.value.status, err.value.code) == (403, "unauthenticated_sender")


def test_reply_address_never_takes_one_from_the_body_and_refuses_a_missing_from():
    original = event(text="Reply to mallory@elsewhere.test please", textReply="Reply to mallory@elsewhere.test")
    assert replies.reply_address(original) == send.Mailbox("bob@mail.remote.test", "Bob")
    with pytest.raises(send.SendError) as err:
        replies.reply_address(event(**{"from": None}))
    assert err.value.code == "bad_original_address"
    with pytest.raises(send.SendError):
        replies.reply_address(event(**{"from": {"address": "bob@remote.test\r\nBcc: x@y.test", "name": None}}))


def test_reply_address_cleans_the_display_name():
    mailbox = replies.reply_address(event(**{"from": {"address": "bob@remote.test", "name": "Bob\r\nBcc: x@y.test"}}))
    assert mailbox == send.Mailbox("bob@remote.test", "Bob Bcc: x@y.test")


def test_the_send_api_derives_at_most_ten_recipients_from_an_original():
    """A message naming 100 Reply-To addresses once made one API reply a mass mailing."""
    many = [{"address": f"r{i}@elsewhere.test", "name": None} for i in range(11)]
    with pytest.raises(send.SendError) as err:
        reply(event(replyTo=many))
    assert (err.value.status, err.value.code) == (400, "too_many_reply_recipients") and "`to`" in err.value.message
    assert len(reply(event(replyTo=many[:10])).recipients) == 10        # ordinary Reply-To semantics up to 10
    chosen = reply(event(replyTo=many), to=(send.Mailbox("r3@elsewhere.test"),))
    assert chosen.recipients == ("r3@elsewhere.test",)


@pytest.mark.parametrize("brk", list(BREAKS))
def test_no_value_from_the_original_breaks_a_header(brk):
    """Each line break str.splitlines() knows, and NUL, in the subject, the ids and the names."""
    original = event(subject=f"Hi{brk}Bcc: mallory@elsewhere.test",
                     messageId=f"<m{brk}1@remote.test>", references=["<r0@remote.test>", f"<r{brk}1@remote.test>"],
                     replyTo=[{"address": "help@remote.test", "name": f"Help{brk}Desk"}])
    out = reply(original)
    data = out.message.as_bytes(policy=email.policy.SMTP)
    head = data.split(b"\r\n\r\n")[0].decode()
    assert not any(c in head for c in BREAKS.replace("\r", "").replace("\n", ""))
    msg = email.message_from_bytes(data, policy=email.policy.SMTP)
    assert msg["Subject"] == "Re: Hi Bcc: mallory@elsewhere.test" and msg["Bcc"] is None
    assert msg["To"] == "Help Desk <help@remote.test>"
    assert msg["In-Reply-To"] is None and msg["References"] == "<r0@remote.test>"      # broken ids dropped, not mended
    assert out.thread_id == "<r0@remote.test>"


def test_ids_and_references_are_kept_as_they_were_and_bounded():
    refs = [f"<r{i}@remote.test>" for i in range(200)]
    out = reply(event(references=refs))
    kept = out.message["References"].split()
    assert kept[0] == "<r0@remote.test>" and kept[-1] == "<m1@remote.test>" and len(kept) == send.MAX_REFERENCES
    assert out.message["In-Reply-To"] == "<m1@remote.test>" and out.thread_id == "<r0@remote.test>"


def test_one_line():
    assert send.one_line("a\r\n\tb\x00c\u2028d\udc80") == "a \tb c d\ufffd"
    assert send.one_line(None) == "" and len(send.one_line("x" * 5000)) == 1000


def test_rate_limits_are_counted_by_every_process_together(tmp_path):
    """The limits lived in one serve process's memory: two serve processes (or the agent beside
    serve, or two hosts) each let per_thread_per_hour messages into one thread. Counted in the
    store, a second process is refused what the first one used, and gets it back when Postfix
    refuses a message."""
    import os
    from dataclasses import replace
    from agentmx.config import SendConfig
    from agentmx.store.embedded import EmbeddedStore
    config = replace(CONFIG, send=SendConfig(per_correspondent_per_hour=5, per_thread_per_hour=2))
    pid = os.fork()
    if pid == 0:                                          # the other process: two into the thread
        code = 1
        try:
            store = EmbeddedStore(tmp_path)
            send.take_limits(store, config, ("bob@remote.test",), "<t@remote.test>")
            send.take_limits(store, config, ("carol@remote.test",), "<t@remote.test>")
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    store = EmbeddedStore(tmp_path)
    with pytest.raises(send.SendError) as refused:
        send.take_limits(store, config, ("dave@remote.test",), "<t@remote.test>")
    assert (refused.value.status, refused.value.code) == (429, "rate_limited") and refused.value.retry_after > 3500
    assert "into this thread" in refused.value.message
    taken = send.take_limits(store, config, ("dave@remote.test",), "<other@remote.test>")    # all or none: dave's
    assert taken == ["to:dave@remote.test", "thread:<other@remote.test>"]                 # refused use not counted
    store.give_back(["thread:<t@remote.test>"])           # Postfix refused the other process's second one
    assert send.take_limits(store, config, ("erin@remote.test",), "<t@remote.test>")
