"""deliver(): one message, one recipient, one exit code; a real HTTP endpoint on loopback and a
real data directory. (End to end through Postfix: test_e2e_deliver.py.)"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jsonschema
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import ROOT
from support.receiver import Receiver

from agentmx.config import parse_config
from agentmx.deliver.core import EX_OK, EX_TEMPFAIL, Envelope, deliver
from agentmx.store.embedded import EmbeddedStore
from agentmx.store.model import DeliveryState as S
from agentmx.webhook import verify, verify_mailkite

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SCHEMA = json.loads((ROOT / "docs" / "email.received.v1.schema.json").read_text())
AUTHSERV = "mx.agentmx.test"

OUR_AR = (f"Authentication-Results: {AUTHSERV}; spf=pass smtp.mailfrom=alice@sender.test;\r\n"
          f"\tspf=none smtp.helo=mail.sender.test; dkim=pass header.d=sender.test header.s=s1 header.a=rsa-sha256;\r\n"
          f"\tarc=none; dmarc=pass (p=reject sp=reject pct=100 dis=none) header.from=sender.test policy.dmarc=reject\r\n")
RECEIVED = ("Received: from mail.sender.test (unknown [192.0.2.1])\r\n\tby mx.agentmx.test (Postfix) with ESMTPS id"
            " 4ABC\r\n\tfor <agent@agentmx.test>; Fri, 27 Nov 2026 19:42:03 +0000 (UTC)\r\n")
BODY = ("From: Alice <alice@sender.test>\r\nTo: agent@agentmx.test\r\nSubject: Hi\r\n"
        "Message-ID: <m1@sender.test>\r\nDate: Fri, 27 Nov 2026 19:40:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello agent\r\n--b\r\n"
        "Content-Type: application/pdf; name=\"r\xc3\xa9sum\xc3\xa9.pdf\"\r\nContent-Disposition: attachment;"
        " filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")


def raw(ours: bool = True) -> bytes:
    return ((OUR_AR if ours else "") + RECEIVED + BODY).encode("latin-1")


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def config(tmp_path: Path, endpoint: str, **route) -> "object":
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in route.items())
    return parse_config(f"""
[server]
authserv_id = "{AUTHSERV}"
data_dir = "{tmp_path / 'data'}"
public_url = "http://127.0.0.1:8025"
url_secret = "0123456789abcdef0123"
[[routes]]
match = "agent@agentmx.test"
endpoint = "{endpoint}"
secret = "{SECRET}"
timeout = 2
{extra}
[[routes]]
match = "@agentmx.test"
endpoint = "{endpoint}"
secret = "{SECRET}"
trust = "require-dmarc"
""", tmp_path / "agentmx.toml")


ENV = Envelope(sender="alice@sender.test", recipient="agent@agentmx.test", queue_id="4ABC",
               client_address="192.0.2.1", client_helo="mail.sender.test")


def test_2xx_delivers_a_signed_schema_valid_event(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    out = deliver(raw(), ENV, cfg)
    assert (out.exit_code, out.state, out.status) == (EX_OK, S.DELIVERED, 200)
    (req,) = receiver.requests
    event = json.loads(req.body)
    jsonschema.validate(event, SCHEMA)
    assert req.headers["webhook-id"] == event["id"] == out.event_id
    verify(req.headers, req.body, SECRET)
    assert Webhook(SECRET).verify(req.body, req.headers)["id"] == event["id"]
    assert event["auth"]["dmarc"] == "pass" and event["auth"]["dkim"] == "pass"
    assert event["auth"]["details"]["dkim"][0]["domain"] == "sender.test"
    assert event["envelope"] == {"mailFrom": "alice@sender.test", "rcptTo": "agent@agentmx.test",
                                 "clientIp": "192.0.2.1", "helo": "mail.sender.test", "tls": True}
    assert event["createdAt"] == "2026-11-27T19:42:03Z"
    (att,) = event["attachments"]
    assert att["filename"] == "résumé.pdf" and att["size"] == 9 and att["id"] == f"{event['id']}:0"
    store = EmbeddedStore(cfg.data_dir)
    assert store.get_blob(att["sha256"]) == b"%PDF-1.4\n"
    assert store.get_blob(event["raw"]["sha256"]) == raw()
    assert store.delivery(event["id"]).state is S.DELIVERED
    (attempt,) = store.attempts(event["id"])
    assert (attempt.outcome, attempt.status, attempt.webhook_id, attempt.queue_id) == (S.DELIVERED, 200, event["id"], "4ABC")
    assert attempt.excerpt == '{"ok":true}' and 0 <= attempt.duration_ms < 2000


def test_retries_carry_the_same_webhook_id(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    receiver.script = [(500, 0), (200, 0)]
    first = deliver(raw(), ENV, cfg)
    assert (first.exit_code, first.state, first.status) == (EX_TEMPFAIL, S.DEFERRED, 500)
    second = deliver(raw(), ENV, cfg)
    assert (second.exit_code, second.state) == (EX_OK, S.DELIVERED)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[0] == ids[1] == first.event_id == second.event_id
    store = EmbeddedStore(cfg.data_dir)
    assert store.delivery(first.event_id).attempts == 2
    assert [(a.outcome, a.status) for a in store.attempts(first.event_id)] == [(S.DEFERRED, 500), (S.DELIVERED, 200)]
    other = deliver(raw(), Envelope(**{**ENV.__dict__, "recipient": "agent+news@agentmx.test"}), cfg)
    assert other.event_id != first.event_id
    assert receiver.events()[-1]["mailboxHash"] == "news"


def test_406_is_a_refusal_kept_and_not_retried(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    receiver.default = (406, 0)
    out = deliver(raw(), ENV, cfg)
    assert (out.exit_code, out.state, out.status) == (EX_OK, S.REFUSED, 406)
    store = EmbeddedStore(cfg.data_dir)
    assert store.delivery(out.event_id).state is S.REFUSED
    assert json.loads(store.get_event(out.event_id))["id"] == out.event_id


@pytest.mark.parametrize("status", [301, 400, 401, 404, 409, 429, 500, 502, 503])
def test_anything_else_is_a_tempfail(tmp_path, receiver, status):
    receiver.default = (status, 0)
    out = deliver(raw(), ENV, config(tmp_path, receiver.url))
    assert (out.exit_code, out.state, out.status) == (EX_TEMPFAIL, S.DEFERRED, status)
    if status == 503:
        assert "Retry-After 120" in out.reason


def test_endpoint_hanging_past_the_timeout(tmp_path, receiver):
    receiver.default = (200, 5)
    started = time.monotonic()
    out = deliver(raw(), ENV, config(tmp_path, receiver.url))
    assert (out.exit_code, out.status) == (EX_TEMPFAIL, 0) and "no answer within 2s" in out.reason
    assert time.monotonic() - started < 4.5


def test_endpoint_down(tmp_path, receiver):
    url = receiver.url
    receiver.stop()
    out = deliver(raw(), ENV, config(tmp_path, url))
    assert (out.exit_code, out.state, out.status) == (EX_TEMPFAIL, S.DEFERRED, 0)


def test_require_dmarc_keeps_the_rest_aside(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    env = Envelope(**{**ENV.__dict__, "recipient": "billing@agentmx.test"})
    held = deliver(raw(ours=False), env, cfg)
    assert (held.exit_code, held.state) == (EX_OK, S.HELD) and receiver.requests == []
    assert EmbeddedStore(cfg.data_dir).get_event(held.event_id)
    passed = deliver(raw(), env, cfg)
    assert passed.state is S.DELIVERED and len(receiver.requests) == 1


def test_forged_results_below_received_are_not_trusted(tmp_path, receiver):
    forged = (RECEIVED + OUR_AR + BODY).encode("latin-1")
    deliver(forged, ENV, config(tmp_path, receiver.url))
    auth = receiver.events()[0]["auth"]
    assert (auth["spf"], auth["dkim"], auth["dmarc"]) == ("none", "none", "none")
    assert "not verified" in auth["details"]["note"]


def test_flag_policy_marks_unauthenticated_mail(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url, trust="flag")
    deliver(raw(ours=False), ENV, cfg)
    deliver(raw(), Envelope(**{**ENV.__dict__, "queue_id": "5DEF"}), cfg)
    assert [e["flagged"] for e in receiver.events()] == [True, False]


def test_inline_attachments_and_mailkite_header(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url, attachments="inline", inline_max_bytes=100, mailkite_signature=True)
    deliver(raw(), ENV, cfg)
    (req,) = receiver.requests
    verify_mailkite(req.headers, req.body, SECRET)
    (att,) = json.loads(req.body)["attachments"]
    assert base64.b64decode(att["content"]) == b"%PDF-1.4\n"


def test_no_route_and_unwritable_store_keep_the_message(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    out = deliver(raw(), Envelope(**{**ENV.__dict__, "recipient": "x@elsewhere.test"}), cfg)
    assert out.exit_code == EX_TEMPFAIL and "no route" in out.reason
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    out = deliver(raw(), ENV, cfg, store=EmbeddedStore(blocker))
    assert out.exit_code == EX_TEMPFAIL and "data directory" in out.reason
    assert receiver.requests == []


@pytest.mark.parametrize("junk", [b"", b"\x00\x01\x02 not a message at all \xff\xfe",
                                  b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Transfer-Encoding:"
                                  b" base64\r\n\r\n!!!not base64!!!\r\n"])
def test_unparseable_input_is_still_delivered(tmp_path, receiver, junk):
    out = deliver(junk, ENV, config(tmp_path, receiver.url))
    assert out.exit_code == EX_OK
    event = receiver.events()[0]
    jsonschema.validate(event, SCHEMA)
    assert event["size"] == len(junk)
    assert EmbeddedStore(tmp_path / "data").get_blob(event["raw"]["sha256"]) == junk


def test_the_event_is_stored_before_the_agent_sees_it(tmp_path):
    """An agent may answer (inReplyTo the event id) before its 200 is even read: the send API
    must find the event then."""
    seen = {}

    def post(url, body, headers, timeout):
        from agentmx.deliver.http import Response
        seen["stored"] = EmbeddedStore(tmp_path / "data").get_event(headers["webhook-id"])
        return Response(200)
    out = deliver(raw(), ENV, config(tmp_path, "http://127.0.0.1:9/"), post=post)
    assert out.state is S.DELIVERED and seen["stored"] is not None and json.loads(seen["stored"])["id"] == out.event_id


OK, DROP, SPAM, BLOCK = (b'{"status":"ok"}', b'{"status":"drop"}', b'{"status":"spam"}',
                         b'{"status":"ok","actions":[{"type":"block-sender"}]}')
DEEP = b'{"status":' + b"[" * 50000 + b"]" * 50000 + b"}"      # a hostile answer: too deep for json


@pytest.mark.parametrize("ack,status,answer,state", [
    # lenient (the default, as MailKite's): any 2xx, the body not read
    (None, 200, DROP, S.DELIVERED), (None, 204, b"", S.DELIVERED), (None, 200, b"not json", S.DELIVERED),
    # ack: only {"status": "ok"} is delivered; any other 2xx is retried
    ("ack", 200, OK, S.DELIVERED), ("ack", 200, b'{"ok":true}', S.DEFERRED), ("ack", 200, b"", S.DEFERRED),
    ("ack", 200, DROP, S.DEFERRED),
    # control: the body decides; a 2xx that is no control answer is retried; only a 2xx is read
    ("control", 200, OK, S.DELIVERED), ("control", 200, DROP, S.DROPPED), ("control", 200, b'{"status": "spam"}', S.SPAM),
    ("control", 200, b'{"status":"other"}', S.DEFERRED), ("control", 200, b"[1,2]", S.DEFERRED),
    ("control", 200, DEEP, S.DEFERRED), ("control", 200, b'{"status":' + b'"x' * 40000 + b'"}', S.DEFERRED),
    ("control", 422, DROP, S.DEFERRED),
    # 406 is a refusal in every mode
    (None, 406, DROP, S.REFUSED), ("ack", 406, b"", S.REFUSED), ("control", 406, OK, S.REFUSED)])
def test_ack_modes(tmp_path, receiver, ack, status, answer, state):
    """The route's ack mode reads the answer as MailKite's ackMode does (deliver/control.py)."""
    receiver.default, receiver.answer = (status, 0), answer
    out = deliver(raw(), ENV, config(tmp_path, receiver.url, **({"ack": ack} if ack else {})))
    assert (out.exit_code, out.state) == (EX_TEMPFAIL if state is S.DEFERRED else EX_OK, state)
    store = EmbeddedStore(tmp_path / "data")
    assert store.delivery(out.event_id).state is state and store.inbox_row(out.event_id).state is state
    assert store.attempts(out.event_id)[0].excerpt == answer[:200].decode()


def test_ack_mode_takes_the_x_mailkite_ack_header(tmp_path, receiver):
    receiver.answer, receiver.answer_headers = b"", {"x-mailkite-ack": "ok"}
    assert deliver(raw(), ENV, config(tmp_path, receiver.url, ack="ack")).state is S.DELIVERED


def test_drop_deletes_the_stored_copy_and_a_retry_is_not_delivered_again(tmp_path, receiver):
    """{"status": "drop"} in control mode: the event body, raw message and attachment are gone;
    the delivery record stays dropped, so a copy of the message (another queue id, another MX
    host) is not POSTed again. (The issue: drop kept everything.)"""
    cfg = config(tmp_path, receiver.url, ack="control")
    receiver.answer = DROP
    out = deliver(raw(), ENV, cfg)
    assert (out.exit_code, out.state) == (EX_OK, S.DROPPED)
    event = json.loads(receiver.requests[0].body)
    store = EmbeddedStore(tmp_path / "data")
    assert store.get_event(out.event_id) is None
    assert store.get_blob(event["raw"]["sha256"]) is None and store.get_blob(event["attachments"][0]["sha256"]) is None
    assert store.delivery(out.event_id).state is S.DROPPED and store.inbox_row(out.event_id).subject == ""
    receiver.answer = OK
    again = deliver(raw(), Envelope(**{**ENV.__dict__, "queue_id": "5DEF"}), cfg)    # the same message again
    assert (again.exit_code, again.event_id) == (EX_OK, out.event_id) and "dropped" in again.reason
    assert len(receiver.requests) == 1 and store.get_event(out.event_id) is None


def test_drop_keeps_a_blob_another_event_shares(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url, ack="control")
    receiver.answer = OK
    kept = deliver(raw(), Envelope(**{**ENV.__dict__, "recipient": "agent@agentmx.test", "queue_id": "1AAA"}), cfg)
    receiver.answer = DROP
    other = raw().replace(b"Hello agent", b"Hello again")            # another message, the same attachment
    out = deliver(other, Envelope(**{**ENV.__dict__, "queue_id": "2BBB"}), cfg)
    assert (kept.state, out.state) == (S.DELIVERED, S.DROPPED)
    store = EmbeddedStore(tmp_path / "data")
    shared = json.loads(store.get_event(kept.event_id))["attachments"][0]["sha256"]
    assert store.get_blob(shared) == b"%PDF-1.4\n"


def test_a_blob_a_drop_deleted_before_the_event_was_kept_is_put_again(tmp_path, receiver):
    """The race: a message's attachment is put, then another event that shares it is dropped
    (its blobs deleted: nothing refers to them yet) before this event is kept. deliver puts
    again what is gone once its event refers to it (before issue 18: every blob again)."""
    cfg = config(tmp_path, receiver.url, ack="control")
    store = EmbeddedStore(tmp_path / "data")
    receiver.answer = OK
    first = deliver(raw(), Envelope(**{**ENV.__dict__, "queue_id": "1AAA"}), cfg, store=store)
    assert first.state is S.DELIVERED

    class DropInBetween(EmbeddedStore):
        def put_event(self, *args, **kw):         # the drop lands between build_event and put_event
            assert self.drop_event(first.event_id)
            return super().put_event(*args, **kw)
    racing = DropInBetween(tmp_path / "data")
    other = raw().replace(b"Hello agent", b"Hello again")            # another message, the same attachment
    out = deliver(other, Envelope(**{**ENV.__dict__, "queue_id": "2BBB"}), cfg, store=racing)
    assert out.state is S.DELIVERED
    event = json.loads(store.get_event(out.event_id))
    assert store.get_blob(event["attachments"][0]["sha256"]) == b"%PDF-1.4\n"
    assert store.get_blob(event["raw"]["sha256"]) is not None
    assert store.get_event(first.event_id) is None


def test_block_sender_blocks_the_envelope_sender_for_the_route(tmp_path, receiver):
    """block-sender in control mode: kept in the store with its event, written to blocks.json for
    the milter, and the next message from that sender to the route is kept aside, not POSTed."""
    from agentmx import blocklist
    cfg = config(tmp_path, receiver.url, ack="control")
    receiver.answer = BLOCK
    out = deliver(raw(), ENV, cfg)
    assert (out.exit_code, out.state) == (EX_OK, S.DELIVERED) and "block-sender asked" in out.reason
    store = EmbeddedStore(tmp_path / "data")
    (block,) = store.blocks()
    assert (block.sender, block.scope, block.event_id) == ("alice@sender.test", "agent@agentmx.test", out.event_id)
    snapshot = blocklist.Snapshot(blocklist.path_in(tmp_path / "data"), cfg.routes)
    assert snapshot.blocked("Alice@Sender.test", "agent+x@agentmx.test") == "agent@agentmx.test"
    assert snapshot.blocked("alice@sender.test", "other@agentmx.test") is None       # not that route's
    later = deliver(raw().replace(b"m1@", b"m2@"), Envelope(**{**ENV.__dict__, "queue_id": "6XYZ"}), cfg)
    assert (later.exit_code, later.state) == (EX_OK, S.HELD) and "blocked" in later.reason
    assert len(receiver.requests) == 1


def test_a_domain_block_holds_only_mail_its_route_takes(tmp_path, receiver):
    """A block taken through the catch-all route (@agentmx.test) holds the mail that route takes,
    not mail for agent@, which has a route (another agent) of its own: that agent never saw the
    sender's mail, and the milter's rule is the same (blocklist.Snapshot.blocked: the route that takes it; found by review)."""
    cfg = config(tmp_path, receiver.url)
    store = EmbeddedStore(tmp_path / "data")
    store.migrate()
    store.add_block("alice@sender.test", "@agentmx.test", "msg_catchall")
    out = deliver(raw(), Envelope(**{**ENV.__dict__, "recipient": "Agent+x@agentmx.test"}), cfg)
    assert (out.exit_code, out.state) == (EX_OK, S.DELIVERED) and len(receiver.requests) == 1
    out = deliver(raw().replace(b"m1@", b"m3@"), Envelope(**{**ENV.__dict__, "recipient": "sales@agentmx.test",
                                                           "queue_id": "7XYZ"}), cfg)
    assert (out.exit_code, out.state) == (EX_OK, S.HELD) and "by msg_catchall" in out.reason
    assert len(receiver.requests) == 1


def test_block_sender_needs_an_authenticated_mail_from(tmp_path, receiver):
    """A forged MAIL FROM (SPF did not pass) must not get the real correspondent it names blocked:
    block-sender is then ignored, said in the log line, and the answer's state stands (review)."""
    cfg = config(tmp_path, receiver.url, ack="control")
    receiver.answer = BLOCK
    forged = raw().replace(b"spf=pass smtp.mailfrom=alice@sender.test", b"spf=fail smtp.mailfrom=alice@sender.test")
    out = deliver(forged, ENV, cfg)
    assert out.state is S.DELIVERED and EmbeddedStore(tmp_path / "data").blocks() == []


def test_block_sender_never_blocks_the_null_sender(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url, ack="control")
    receiver.answer = BLOCK
    out = deliver(raw(), Envelope(**{**ENV.__dict__, "sender": ""}), cfg)
    assert out.state is S.DELIVERED and EmbeddedStore(tmp_path / "data").blocks() == []


def test_pull_route_keeps_the_event_and_posts_nothing(tmp_path, receiver):
    cfg = parse_config(f'[server]\nauthserv_id = "{AUTHSERV}"\ndata_dir = "{tmp_path / "data"}"\n'
                       'url_secret = "0123456789abcdef0123"\n[[routes]]\nmatch = "agent@agentmx.test"\nmode = "pull"\n',
                       tmp_path / "agentmx.toml")
    out = deliver(raw(), ENV, cfg)
    assert (out.exit_code, out.state) == (EX_OK, S.STORED) and receiver.requests == []
    store = EmbeddedStore(tmp_path / "data")
    row = store.inbox_row(out.event_id)
    assert row.state is S.STORED and row.address == "agent@agentmx.test" and not row.read
    (attempt,) = store.attempts(out.event_id)
    assert (attempt.outcome, attempt.status) == (S.STORED, None)                # no POST
    store.close()
    for p in (tmp_path / "data").glob("agentmx.sqlite*"):
        p.unlink()
    (tmp_path / "data" / "agentmx.sqlite").write_bytes(b"not a database" * 100)   # the store is broken
    again = deliver(raw().replace(b"Subject: Hi", b"Subject: Other"), ENV, cfg)
    assert again.exit_code == EX_TEMPFAIL and "store" in again.reason          # Postfix keeps it


def test_several_from_fields_are_not_hidden_from_the_agent(tmp_path, receiver):
    """`from` stays the first From (DESIGN.md); that there were others is in `defects`, and the
    milter's verdict for the domain whose policy applies is in auth (RFC 9989 11.5)."""
    ar = (f"Authentication-Results: {AUTHSERV}; spf=pass smtp.mailfrom=alice@sender.test;\r\n"
          f"\tdmarc=fail reason=\"2 From header fields (sender.test, bank.test); bank.test fails\"\r\n"
          f"\t(p=reject sp=reject pct=100 dis=reject) header.from=bank.test policy.dmarc=reject\r\n")
    body = BODY.replace("From: Alice <alice@sender.test>\r\n",
                        "From: Alice <alice@sender.test>\r\nFrom : Bank <security@bank.test>\r\n")
    deliver((ar + RECEIVED + body).encode("latin-1"), ENV, config(tmp_path, receiver.url))
    (event,) = receiver.events()
    jsonschema.validate(event, SCHEMA)
    assert event["from"] == {"address": "alice@sender.test", "name": "Alice"}
    assert [v for n, v in event["headers"] if n == "From"] == ["Alice <alice@sender.test>", "Bank <security@bank.test>"]
    assert "header From: 2 From header fields (sender.test, bank.test): `from` is only the first of " \
           "alice@sender.test, security@bank.test" in event["defects"]
    assert event["auth"]["dmarc"] == "fail" and event["auth"]["details"]["dmarc"]["from"] == "bank.test"


def test_a_dmarc_pass_for_another_domain_than_from_is_said(tmp_path, receiver):
    body = BODY.replace("From: Alice <alice@sender.test>", "From: Bank <security@bank.test>")
    deliver((OUR_AR + RECEIVED + body).encode("latin-1"), ENV, config(tmp_path, receiver.url))
    (event,) = receiver.events()
    assert event["auth"]["dmarc"] == "pass" and event["from"]["address"] == "security@bank.test"
    assert "auth: DMARC passed for sender.test, but `from` is in bank.test" in event["defects"]


# --- one event per message: the same message taken twice (two MX hosts, or one under two queue ids) ---

RECEIVED_B = ("Received: from mail.sender.test (unknown [192.0.2.1])\r\n\tby mx2.agentmx.test (Postfix) with ESMTPS id"
              " 5DEF\r\n\tfor <agent@agentmx.test>; Fri, 27 Nov 2026 19:47:10 +0000 (UTC)\r\n")
ENV_B = Envelope(sender="alice@sender.test", recipient="agent@agentmx.test", queue_id="5DEF",
                 client_address="192.0.2.1", client_helo="mail.sender.test")


def copy_at_b(body: str = BODY, ours: bool = True, lf: bool = True) -> bytes:
    """The same message as host B hands it over: its own trace headers and queue id, LF line ends
    (the pipe) where host A's copy has CRLF."""
    text = (OUR_AR.replace(";", " (from mx2);", 1) if ours else "") + RECEIVED_B + body
    data = text.encode("latin-1")
    return data.replace(b"\r\n", b"\n") if lf else data


def test_a_copy_of_a_delivered_message_is_not_posted_again(tmp_path, receiver, caplog):
    cfg = config(tmp_path, receiver.url)
    first = deliver(raw(), ENV, cfg)
    assert (first.exit_code, first.state) == (EX_OK, S.DELIVERED)
    with caplog.at_level("INFO", logger="agentmx.deliver"):
        second = deliver(copy_at_b(), ENV_B, cfg)
    assert (second.exit_code, second.state, second.event_id) == (EX_OK, S.DELIVERED, first.event_id)
    assert f"duplicate of {first.event_id}" in second.reason and f"duplicate of {first.event_id}" in caplog.text
    assert len(receiver.requests) == 1                                   # no second POST
    store = EmbeddedStore(cfg.data_dir)
    assert len(store.inbox_query(("agent@agentmx.test",))) == 1 and store.delivery(first.event_id).attempts == 1
    store.close()


def pull_config(tmp_path: Path, endpoint: str):
    return parse_config(f'[server]\nauthserv_id = "{AUTHSERV}"\ndata_dir = "{tmp_path / "data"}"\n'
                        'url_secret = "0123456789abcdef0123"\n[[routes]]\nmatch = "agent@agentmx.test"\nmode = "pull"\n',
                        tmp_path / "agentmx.toml")


@pytest.mark.parametrize("state, make", [(S.REFUSED, config), (S.STORED, pull_config)])
def test_a_copy_of_a_message_refused_or_stored_is_not_kept_again(tmp_path, receiver, state, make):
    cfg = make(tmp_path, receiver.url)
    receiver.script = [(406, 0)]
    first = deliver(raw(), ENV, cfg)
    assert first.state is state
    second = deliver(copy_at_b(), ENV_B, cfg)
    assert (second.exit_code, second.state, second.event_id) == (EX_OK, state, first.event_id)
    store = EmbeddedStore(cfg.data_dir)
    assert len(store.inbox_query(("agent@agentmx.test",))) == 1
    store.close()


def test_a_copy_of_a_deferred_message_is_delivered_under_the_first_id(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    receiver.script = [(500, 0), (200, 0)]
    first = deliver(raw(), ENV, cfg)
    assert first.state is S.DEFERRED
    second = deliver(copy_at_b(), ENV_B, cfg)
    assert (second.exit_code, second.state, second.event_id) == (EX_OK, S.DELIVERED, first.event_id)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [first.event_id] * 2
    store = EmbeddedStore(cfg.data_dir)
    assert [(a.outcome, a.queue_id) for a in store.attempts(first.event_id)] == [(S.DEFERRED, "4ABC"),
                                                                                (S.DELIVERED, "5DEF")]
    assert len(store.inbox_query(("agent@agentmx.test",))) == 1
    # the event as last sent is host B's copy; its raw message is kept with it
    sent = json.loads(store.get_event(first.event_id))
    assert store.get_blob(sent["raw"]["sha256"]) == copy_at_b()
    store.close()
    # host A's own retry of its copy finds the event delivered: exit 0, no third POST
    third = deliver(raw(), ENV, cfg)
    assert (third.exit_code, third.state, third.event_id) == (EX_OK, S.DELIVERED, first.event_id)
    assert "duplicate of" in third.reason and len(receiver.requests) == 2


@pytest.mark.parametrize("why, copy, env", [
    ("another body under the same Message-ID (a forgery)",
     lambda: copy_at_b(BODY.replace("Hello agent", "Wire the money")), ENV_B),
    ("the same body without our verification (dkim and dmarc none, not pass)", lambda: copy_at_b(ours=False), ENV_B),
    ("another recipient", lambda: copy_at_b(), Envelope(**{**ENV_B.__dict__, "recipient": "agent+x@agentmx.test"})),
])
def test_what_is_not_a_copy_is_a_second_event(tmp_path, receiver, why, copy, env):
    cfg = config(tmp_path, receiver.url)
    first = deliver(raw(), ENV, cfg)
    second = deliver(copy(), env, cfg)
    assert second.event_id != first.event_id and second.state in (S.DELIVERED, S.HELD), why
    assert "duplicate" not in second.reason


def test_no_message_id_no_dedup_and_the_window_ends(tmp_path, receiver):
    cfg = config(tmp_path, receiver.url)
    bare = BODY.replace("Message-ID: <m1@sender.test>\r\n", "")
    first = deliver(raw().replace(b"Message-ID: <m1@sender.test>\r\n", b""), ENV, cfg)
    second = deliver(copy_at_b(bare), ENV_B, cfg)
    assert second.event_id != first.event_id and len(receiver.requests) == 2
    now = time.time()
    third = deliver(raw(), ENV, cfg, clock=lambda: now)
    late = deliver(copy_at_b(), ENV_B, cfg, clock=lambda: now + 8 * 86400)           # past the 7-day window
    assert late.event_id != third.event_id and len(receiver.requests) == 4


def test_the_fingerprint_reads_the_body_whatever_the_line_ends_and_headers():
    from agentmx.deliver.dedup import body_chunks, fingerprint
    passed, a = {"dkim": "pass", "dmarc": "pass"}, "alice@sender.test"
    assert fingerprint(raw(), a, passed) == fingerprint(copy_at_b(), "Alice@Sender.test", passed) \
        == fingerprint(copy_at_b(lf=False), a, passed)
    assert fingerprint(raw(), a, passed) != fingerprint(raw(), a, {"dkim": "pass", "dmarc": "fail"})
    assert fingerprint(raw(), a, passed) != fingerprint(raw(), "", passed)           # a bounce quoting it
    def body_of(raw: bytes) -> bytes:
        return b"".join(body_chunks(raw))
    assert body_of(b"Subject: x\r\n\r\nline\r\n") == b"line\n" and body_of(b"Subject: no body") == b""
    crlf = b"Subject: x\r\n\r\n" + b"ab\r\n" * 1000
    for size in (2, 3, 4, 7, 4096):                  # a CRLF split across pieces is still one line end
        assert b"".join(body_chunks(crlf, size)) == b"ab\n" * 1000 == body_of(crlf.replace(b"\r\n", b"\n")), size
    assert b"".join(body_chunks(b"S: x\n\nends in CR\r", 3)) == b"ends in CR\r"


def test_dmarc_details_say_what_applies_and_what_the_walk_found(tmp_path, receiver):
    """authres drops result comments: dis= (and the RFC 9989 record=, org=) were never read into
    auth.details.dmarc, whose disposition was always null. A quoted reason cannot fake them."""
    ar = (f"Authentication-Results: {AUTHSERV}; spf=fail smtp.mailfrom=alice@sender.test\r\n"
          f"\treason=\"x; dmarc=pass (dis=none record=evil.test org=evil.test)\";\r\n"
          f"\tdmarc=fail reason=\"no aligned pass\" (p=reject sp=reject np=quarantine t=y\r\n"
          f"\tdis=quarantine record=sender.test org=sender.test) header.from=mail.sender.test\r\n"
          f"\tpolicy.dmarc=quarantine\r\n")
    deliver((ar + RECEIVED + BODY).encode("latin-1"), ENV, config(tmp_path, receiver.url))
    (event,) = receiver.events()
    jsonschema.validate(event, SCHEMA)
    dmarc = event["auth"]["details"]["dmarc"]
    assert (dmarc["result"], dmarc["policy"], dmarc["disposition"]) == ("fail", "quarantine", "quarantine")
    assert (dmarc["recordDomain"], dmarc["orgDomain"]) == ("sender.test", "sender.test")
