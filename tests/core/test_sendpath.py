"""The one send path (agentmx/sendpath.py) without a mail server: the store real (embedded, in
tmp_path), Postfix replaced by a submit function that keeps what it is given. Then each door
(POST /v1/send, a batch, a scheduled send parked and due, MCP, the agent's reply and forward)
shown to go through it: the same refusal with the same code, the same record."""
from __future__ import annotations

import base64
import email
import email.policy
import json
from dataclasses import replace

import anyio
import pytest

from agentmx import client, send, sendpath
from agentmx.agentloop import run_job, send_effects
from agentmx.api import batch, mcp, scheduling, sendnow, sending
from agentmx.config import AgentConfig
from agentmx.store.model import DeliveryState, SendEventType, SendState, Suppression, SuppressionReason
from agentmx.times import rfc3339
from api.test_scheduling import unit_context

pytestmark = pytest.mark.unit

KEY = "amx_sendpath_unit_test_key_0123456"
DOMAIN = "agents.test"
AGENT = f"support@{DOMAIN}"
HUMAN = "human@remote.test"
BOB = "bob@remote.test"


class Postfix:
    """send.submit's place: keeps what it is given, or refuses as Postfix would (`refuse`)."""

    def __init__(self):
        self.got: list[send.Outgoing] = []
        self.refuse: send.SendError | None = None

    def __call__(self, out: send.Outgoing, config) -> str:
        if self.refuse is not None:
            raise self.refuse
        self.got.append(out)
        return f"QID{len(self.got)}"


@pytest.fixture
def ctx(tmp_path):
    c = unit_context(tmp_path, KEY, f"@{DOMAIN}", f"""per_correspondent_per_hour = 3
per_thread_per_hour = 2
[agent]
base_url = "http://127.0.0.1:9/v1"
model = "m"
[[routes]]
match = "{AGENT}"
action = "agent"
prompt = "p"
forward_to = ["{HUMAN}"]
sends_per_hour = 5""")
    c.submit = Postfix()
    yield c
    c.store.close()


def box(ctx) -> sendpath.Outbox:
    return sendnow.outbox(ctx)


def key_caller(ctx) -> sendpath.Caller:
    return sendpath.Caller.api_key(ctx.config.api_keys[0])


def agent_caller(ctx, prepaid=lambda: ()) -> sendpath.Caller:
    return sendpath.Caller.agent(ctx.config.routes[0], prepaid)


def request(**kw) -> send.SendRequest:
    base = {"sender": send.Mailbox(AGENT), "to": (send.Mailbox(BOB),), "text": "hello"}
    return send.SendRequest(**{**base, **kw})


def put_event(ctx, event_id: str = "msg_" + "e" * 16, recipient: str = AGENT, **kw) -> dict:
    """An inbound event as deliver keeps it."""
    event = {"id": event_id, "recipient": recipient, "subject": "Opening hours?", "text": "when?",
             "messageId": f"<{event_id}@remote.test>", "references": [], "autoSubmitted": None,
             "from": {"address": BOB, "name": "Bob"}, "replyTo": [],
             "auth": {"spf": "pass", "dkim": "pass", "dmarc": "pass", "spam": "ham"}, "attachments": [], **kw}
    ctx.store.put_event(event, json.dumps(event).encode(), recipient, DeliveryState.RECEIVED)
    return event


def suppress(ctx, address: str = BOB) -> None:
    assert ctx.store.suppress(Suppression(DOMAIN, address, SuppressionReason.BOUNCED, ctx.clock(), "evt_test"))


def free(ctx, key: str, limit: int) -> int:
    """How many more a store key takes within `limit` in this hour (taking them, then giving them back)."""
    n = 0
    while ctx.store.take([(key, limit)], send.HOUR) is None:
        n += 1
    ctx.store.give_back([key] * n)
    return n


# --- the path ---------------------------------------------------------------------------------------


def test_a_send_is_built_counted_submitted_and_recorded_with_its_sent_event(ctx):
    sent = sendpath.send_message(box(ctx), key_caller(ctx), request(subject="Hi"))
    (out,) = ctx.submit.got
    assert out is sent.out and sent.queue_id == "QID1" and out.recipients == (BOB,)
    assert out.envid == sent.send_id and out.envelope_from != AGENT     # its own return path
    rec = ctx.store.get_send(sent.send_id)
    assert (rec.key, rec.sender, rec.state, rec.queue_id, rec.created) == ("agent", AGENT, SendState.QUEUED, "QID1",
                                                                          ctx.clock())
    (event,) = ctx.store.send_events(sent.send_id)
    assert event.type is SendEventType.SENT
    assert free(ctx, f"to:{BOB}", 3) == 2                   # counted under its correspondent


def test_the_order_no_fetch_for_a_forbidden_sender_nothing_counted_for_a_refused_one(ctx):
    resolved = []

    def resolve(req):
        resolved.append(req)
        return req
    with pytest.raises(send.SendError) as err:
        sendpath.send_message(box(ctx), key_caller(ctx), request(sender=send.Mailbox("x@elsewhere.test")),
                              resolve=resolve)
    assert (err.value.status, err.value.code) == (403, "forbidden_sender") and resolved == []
    suppress(ctx)
    with pytest.raises(send.SendError) as err:
        sendpath.send_message(box(ctx), key_caller(ctx), request(), resolve=resolve)
    assert (err.value.status, err.value.code) == (422, "suppressed") and len(resolved) == 1
    assert free(ctx, f"to:{BOB}", 3) == 3 and ctx.submit.got == []


def test_every_request_is_checked_however_it_was_made(ctx):
    """A model may write a lone surrogate (JSON allows one): a 400, never an exception of the
    email package in the middle of the path."""
    for bad, code in [(request(text="hi \udc41"), "bad_text"), (request(subject="a\r\nBcc: x@y.test"), "header_injection"),
                      (request(to=(send.Mailbox("not an address"),)), "bad_address"), (request(text=None), "missing_field")]:
        with pytest.raises(send.SendError) as err:
            sendpath.send_message(box(ctx), key_caller(ctx), bad)
        assert (err.value.status, err.value.code) == (400, code)
    assert ctx.submit.got == []


def test_a_reply_is_threaded_and_counted_in_its_thread(ctx):
    event = put_event(ctx)
    for _ in range(2):
        sent = sendpath.send_message(box(ctx), key_caller(ctx), request(in_reply_to=event["id"]))
    msg = sent.out.message
    assert msg["In-Reply-To"] == event["messageId"] and msg["Subject"] == "Re: Opening hours?"
    assert ctx.store.get_send(sent.send_id).reply_to_event == event["id"]
    with pytest.raises(send.RateLimited) as err:                              # the loop breaker: 2 per thread
        sendpath.send_message(box(ctx), key_caller(ctx), request(in_reply_to=event["id"], to=(send.Mailbox(HUMAN),)))
    assert err.value.key == f"thread:{event['messageId']}"
    assert free(ctx, f"to:{HUMAN}", 3) == 3                                   # all or none


def test_the_reply_scope_a_key_answers_only_its_own_mail(ctx):
    other = put_event(ctx, "msg_" + "f" * 16, recipient="someone@other.test")
    with pytest.raises(send.SendError) as err:
        sendpath.send_message(box(ctx), key_caller(ctx), request(in_reply_to=other["id"]))
    assert (err.value.status, err.value.code) == (403, "forbidden_event")
    with pytest.raises(send.SendError) as err:
        sendpath.send_message(box(ctx), key_caller(ctx), request(in_reply_to="msg_" + "0" * 16))
    assert (err.value.status, err.value.code) == (404, "unknown_event")


def test_another_addresss_mail_is_refused_before_the_reply_is_built_so_nothing_of_it_leaks(ctx):
    """Building a reply reads the original (Reply-To, From, Auto-Submitted): a key answering
    another address's mail must get 403 before any of that can answer 409 loop_risk or a 400
    quoting it (found by the review of the one send path)."""
    other = put_event(ctx, "msg_" + "a" * 16, recipient="someone@other.test", autoSubmitted="auto-replied")
    with pytest.raises(send.SendError) as err:
        sendpath.send_message(box(ctx), key_caller(ctx), request(in_reply_to=other["id"]))
    assert (err.value.status, err.value.code) == (403, "forbidden_event")
    assert "auto" not in err.value.message


def test_counts_are_given_back_when_the_return_path_cannot_be_made(ctx, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("return path")
    monkeypatch.setattr(send, "with_return_path", broken)
    with pytest.raises(RuntimeError):
        sendpath.send_message(box(ctx), key_caller(ctx), request())
    assert free(ctx, f"to:{BOB}", 3) == 3                                     # nothing kept


def test_the_reply_scope_an_agent_reaches_its_forward_to_and_the_authenticated_sender_alone(ctx):
    event = put_event(ctx)
    forged = put_event(ctx, "msg_" + "a" * 16, auth={"spf": "none", "dkim": "none", "dmarc": "fail"})
    agent = agent_caller(ctx)
    sendpath.send_message(box(ctx), agent, request(to=(send.Mailbox(HUMAN),)))              # forward_to
    sendpath.send_message(box(ctx), agent, request(in_reply_to=event["id"]))                # its sender
    for req, code in [(request(), "forbidden_recipient"),                                  # not answering
                      (request(in_reply_to=event["id"], cc=(send.Mailbox("eve@elsewhere.test"),)), "forbidden_recipient"),
                      (request(in_reply_to=forged["id"]), "unauthenticated_sender")]:
        with pytest.raises(send.SendError) as err:
            sendpath.send_message(box(ctx), agent, req)
        assert (err.value.status, err.value.code) == (403, code)
    with pytest.raises(send.SendError) as err:
        sendpath.send_message(box(ctx), agent, request(sender=send.Mailbox(f"sales@{DOMAIN}"), to=(send.Mailbox(HUMAN),)))
    assert err.value.code == "forbidden_sender"                               # only the route's address
    assert len(ctx.submit.got) == 2


def test_an_agent_send_spends_its_prepaid_count_and_postfix_refusing_gives_every_count_back(ctx):
    key = sendpath.route_key(ctx.config.routes[0])
    assert ctx.store.take([(key, 5)], send.HOUR) is None                     # the job's reserved send
    handed = []

    def prepaid():
        handed.append(key)
        return (key,)
    ctx.submit.refuse = send.SendError(502, "smtp_refused", "no")
    with pytest.raises(send.SendError):
        sendpath.send_message(box(ctx), agent_caller(ctx, prepaid), request(to=(send.Mailbox(HUMAN),)))
    assert handed == [key] and free(ctx, key, 5) == 5 and free(ctx, f"to:{HUMAN}", 3) == 3
    ctx.submit.refuse = None
    sent = sendpath.send_message(box(ctx), agent_caller(ctx), request(to=(send.Mailbox(HUMAN),)))
    assert free(ctx, key, 5) == 4                                              # not prepaid: taken
    assert ctx.store.get_send(sent.send_id).key == key


def test_a_scheduled_send_is_checked_by_prepare_and_counts_nothing(ctx):
    prep = sendpath.prepare(box(ctx), key_caller(ctx), request())
    assert prep.out.recipients == (BOB,) and ctx.submit.got == [] and free(ctx, f"to:{BOB}", 3) == 3


# --- every door goes through it ---------------------------------------------------------------------


def json_request(**kw) -> dict:
    return {"from": AGENT, "to": BOB, "text": "hello", **kw}


def via_send(ctx):
    return sending.send_for_key(ctx, ctx.config.api_keys[0], json.dumps(json_request()).encode())


def via_batch(ctx):
    body = {"from": AGENT, "text": "hello", "recipients": [{"to": BOB}]}
    (result,) = batch.batch_for_key(ctx, ctx.config.api_keys[0], json.dumps(body).encode())["results"]
    raise send.SendError(422 if result["code"] == "suppressed" else 0, result["code"], result["error"])


def via_park(ctx):
    return scheduling.park(ctx, ctx.config.api_keys[0], json_request(scheduledAt=rfc3339(ctx.clock() + 60)))


def via_due(ctx):
    """Parked before the suppression, refused when it is due: the send FAILED with the reason."""
    rec = ctx.store.get_send(ctx.parked)
    ctx.clock.now += 61
    assert scheduling.send_due(ctx, ctx.store.claim_scheduled(scheduling.LEASE)) is SendState.FAILED
    code, _, message = ctx.store.get_send(rec.id).error.partition(": ")
    raise send.SendError(422, code, message)


def via_mcp(ctx):
    async def call():
        return await mcp.LocalMailbox(ctx, None, ctx.config.api_keys[0]).send(json_request())
    try:
        return anyio.run(call)
    except client.ApiError as exc:
        raise send.SendError(exc.status, exc.code, exc.message) from None


def via_agent_reply(ctx):
    event = put_event(ctx)
    return send_effects(ctx.config, ctx.store, ctx.submit, ctx.clock).reply(event, ctx.config.routes[0], "hello")


def via_agent_forward(ctx):
    event = put_event(ctx)
    return send_effects(ctx.config, ctx.store, ctx.submit, ctx.clock).forward(event, ctx.config.routes[0], HUMAN, "")


DOORS = {"send": via_send, "batch": via_batch, "park": via_park, "due": via_due, "mcp": via_mcp,
         "agent_reply": via_agent_reply, "agent_forward": via_agent_forward}


@pytest.mark.parametrize("door", DOORS)
def test_every_door_refuses_a_suppressed_recipient_with_the_paths_422(ctx, door):
    if door == "due":
        ctx.parked = via_park(ctx)["id"]
    suppress(ctx, HUMAN if door == "agent_forward" else BOB)
    with pytest.raises(send.SendError) as err:
        DOORS[door](ctx)
    assert (err.value.status, err.value.code) == (422, "suppressed")
    assert err.value.message.startswith(f"{HUMAN if door == 'agent_forward' else BOB} is suppressed for {DOMAIN} since ")
    assert ctx.submit.got == []


@pytest.mark.parametrize("door", ["send", "mcp", "agent_reply", "agent_forward"])
def test_every_door_sends_through_the_path_and_records_the_send(ctx, door):
    DOORS[door](ctx)
    (out,) = ctx.submit.got
    rec = ctx.store.get_send(out.envid)
    assert rec is not None and rec.message_id == out.message_id and rec.queue_id == "QID1"
    assert [e.type for e in ctx.store.send_events(rec.id)] == [SendEventType.SENT]
    assert rec.key == ("agent" if door in ("send", "mcp") else f"agent:{AGENT}")


def test_the_agents_forward_is_built_by_the_path_with_the_original_attached(ctx):
    raw = b"From: Bob <bob@remote.test>\r\nSubject: x\r\n\r\nthe original\r\n"
    event = put_event(ctx, raw={"sha256": ctx.store.put_blob(raw)}, subject="Opening\r\nBcc: eve@elsewhere.test")
    effects = send_effects(ctx.config, ctx.store, ctx.submit, ctx.clock)
    message_id = effects.forward(event, ctx.config.routes[0], HUMAN, "have a look")
    (out,) = ctx.submit.got
    msg = email.message_from_bytes(out.message.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
    assert (msg["Message-ID"], msg["To"], msg["Subject"], msg["Auto-Submitted"]) == (
        message_id, HUMAN, "Fwd: Opening Bcc: eve@elsewhere.test", "auto-generated")
    assert msg["In-Reply-To"] is None and msg["Bcc"] is None and out.recipients == (HUMAN,)
    body, attached = list(msg.iter_parts())
    assert body.get_content().replace("\r\n", "\n").startswith("have a look\n\nForwarded by agentmx")
    assert attached.get_content_type() == "message/rfc822" and attached.get_filename() == "original.eml"
    assert attached["Content-Transfer-Encoding"] == "base64"               # as the hand-built forward had it
    (built,) = out.message.iter_attachments()
    assert base64.b64decode(built.get_payload()) == raw


def test_the_agents_route_cap_is_the_paths_limit_and_the_model_is_told(ctx):
    route = replace(ctx.config.routes[0], sends_per_hour=1)
    effects = send_effects(ctx.config, ctx.store, ctx.submit, ctx.clock)
    effects.forward(put_event(ctx), route, HUMAN, "")
    with pytest.raises(send.SendError) as err:
        effects.forward(put_event(ctx, "msg_" + "b" * 16), route, HUMAN, "")
    assert (err.value.status, err.value.code) == (429, "route_rate_limited")


def test_a_reply_the_model_wrote_with_a_lone_surrogate_is_a_tool_error_not_a_crashed_job(ctx):
    """Regression (issue 20): the agent's door built its request without the checks the API's
    JSON gets, and the email package's UnicodeEncodeError went up through the job: a failed
    attempt, the model asked again on every retry, then the mail parked. Now it is the path's
    400, told to the model, and the job goes on."""
    event = put_event(ctx)
    script = iter([{"tool_calls": [{"id": "1", "function": {"name": "reply",
                                                            "arguments": json.dumps({"text": "bad \udc41"})}}]},
                   {"tool_calls": [{"id": "2", "function": {"name": "done", "arguments": "{}"}}]}])
    effects = send_effects(ctx.config, ctx.store)                   # the real submit: never reached
    result = run_job(event, ctx.config.routes[0], AgentConfig(max_rounds=3), lambda m, t: next(script), effects)
    told = [m["content"] for m in result.transcript if m["role"] == "tool"]
    assert result.outcome == "done" and result.actions == []
    assert told[0].startswith("error: not sent: ") and "not valid Unicode" in told[0]

