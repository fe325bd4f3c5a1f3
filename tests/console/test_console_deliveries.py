"""The console's deliveries, sends and agent pages over real HTTP (real serve, real store, a push
route's endpoint as a real local HTTP server, the agent worker against a scripted model server):
what each lists, a retry that really POSTs again and shows its new attempt, hostile texts shown
escaped, another key's items invisible (404), and CSRF on the retry."""
from __future__ import annotations

import json
import re

import pytest
import requests

from agentmx import agentloop, sendevents
from agentmx.api.server import start
from agentmx.config import parse_config
from agentmx.deliver.core import deliver
from agentmx.deliver.outcome import Envelope
from agentmx.store import open_store
from agentmx.store.model import DeliveryState, JobState, SendEventType, SendRecord, SendState
from console.test_console_http import csrf_of, sign_in
from support.model import ModelServer
from support.receiver import Receiver

KEY_A = "console-deliv-key-a-0123456789abcdef"
KEY_B = "console-deliv-key-b-0123456789abcdef"
ADMIN = "console-deliv-admin-0123456789abcdef"
HOSTILE_ANSWER = b'<script>alert("answer")</script><img src=x onerror=alert(1)>'


def mail(subject: str, to: str) -> bytes:
    return (f"From: Bob <bob@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, to)))}@remote.test>\r\n\r\nHello.\r\n").encode()


@pytest.fixture
def world(tmp_path):
    receiver, model = Receiver(), ModelServer()
    cfg = parse_config(f'''[server]
authserv_id = "mx.agents.test"
data_dir = "{tmp_path}"
listen = "127.0.0.1:0"
url_secret = "console-url-secret-0123456789"
admin_key = "{ADMIN}"
[agent]
base_url = "{model.url}"
model = "scripted-1"
max_rounds = 3
max_attempts = 3
retry_base = 0.1
[[routes]]
match = "@push.test"
mode = "push"
endpoint = "{receiver.url}"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
timeout = 5
[[routes]]
match = "@pull.test"
mode = "pull"
[[routes]]
match = "@agent.test"
action = "agent"
prompt = "You answer briefly."
[[routes]]
match = "@other.test"
mode = "pull"
[[api_keys]]
name = "a"
key = "{KEY_A}"
allow = ["@push.test", "@pull.test", "@agent.test"]
[[api_keys]]
name = "b"
key = "{KEY_B}"
allow = ["@other.test"]
''', tmp_path / "agentmx.toml")
    store = open_store(cfg)
    running = start(cfg)
    yield {"url": running.url, "cfg": cfg, "store": store, "receiver": receiver, "model": model}
    running.stop()
    store.close()
    receiver.stop()
    model.stop()


def put(w, subject: str, rcpt: str, queue_id: str = "Q1") -> str:
    out = deliver(mail(subject, rcpt), Envelope(sender="bob@remote.test", recipient=rcpt, queue_id=queue_id),
                  w["cfg"], store=w["store"])
    assert out.exit_code in (0, 75), out
    return out.event_id


def signed_in(w, key: str) -> requests.Session:
    s, r = sign_in(w["url"], key)
    assert r.status_code == 303, r.text
    return s


def attempt_rows(html: str) -> list[str]:
    table = re.search(r'<table id="attempts".*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return re.findall(r"<tr>(.*?)</tr>", table, re.S)


# --- deliveries ---------------------------------------------------------------------------------------

def test_deliveries_list_and_attempts_with_a_hostile_answer_escaped(world):
    w = world
    w["receiver"].script = [(503, 0.0)]
    w["receiver"].answer = HOSTILE_ANSWER
    pushed = put(w, "pushed one", "agent@push.test")
    pulled = put(w, "pulled one", "agent@pull.test", "Q2")
    hidden = put(w, "not a's", "x@other.test", "Q3")
    assert w["store"].delivery(pushed).state is DeliveryState.DEFERRED
    s = signed_in(w, KEY_A)
    page = s.get(f"{w['url']}/console/deliveries", timeout=5)
    assert page.status_code == 200 and 'href="/console/deliveries"' in page.text     # in the navigation
    ids = re.findall(r'<tr data-id="([^"]+)"', page.text)
    assert ids == [pulled, pushed]                                                   # newest first; not b's
    row = re.search(rf'<tr data-id="{pushed}">(.*?)</tr>', page.text, re.S).group(1)
    assert "deferred" in row and "<td>1</td>" in row and "HTTP 503" in row and "@push.test" in row
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    # the filter by state
    only = s.get(f"{w['url']}/console/deliveries?state=stored", timeout=5)
    assert re.findall(r'<tr data-id="([^"]+)"', only.text) == [pulled]
    assert s.get(f"{w['url']}/console/deliveries?state=nonsense", timeout=5).status_code == 400
    # one delivery: every attempt as the JSON API gives them, the answer escaped, a link to the message
    detail = s.get(f"{w['url']}/console/deliveries/{pushed}", timeout=5)
    assert detail.status_code == 200
    rows = attempt_rows(detail.text)
    api = requests.get(f"{w['url']}/api/deliveries/{pushed}/attempts", headers={"authorization": f"Bearer {KEY_A}"},
                       timeout=5).json()["attempts"]
    assert len(rows) == len(api) == 1 and api[0]["at"] in rows[0] and "HTTP 503" in rows[0]
    assert f"{api[0]['durationMs']} ms" in rows[0] and "deferred" in rows[0]
    assert '&lt;script&gt;alert(&#34;answer&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;' in rows[0]
    assert "<script>" not in detail.text and "<img src=x" not in detail.text
    assert f'href="/console/messages/{pushed}"' in detail.text and 'id="retry"' in detail.text
    assert s.get(f"{w['url']}/console/deliveries/{hidden}", timeout=5).status_code == 404


def test_retry_posts_again_and_shows_the_new_attempt(world):
    w = world
    w["receiver"].script = [(503, 0.0)]
    pushed = put(w, "retry me", "agent@push.test")
    assert len(w["receiver"].requests) == 1
    s = signed_in(w, KEY_A)
    page = s.get(f"{w['url']}/console/deliveries/{pushed}", timeout=5)
    csrf = csrf_of(page.text)
    # without the session's CSRF token, or from another site: refused, nothing POSTed
    r = s.post(f"{w['url']}/console/deliveries/{pushed}/retry", data={"csrf": "nope"}, timeout=5, allow_redirects=False)
    assert r.status_code == 403 and "csrf" in r.text
    r = s.post(f"{w['url']}/console/deliveries/{pushed}/retry", data={"csrf": csrf},
               headers={"origin": "https://evil.example"}, timeout=5, allow_redirects=False)
    assert r.status_code == 403
    r = requests.post(f"{w['url']}/console/deliveries/{pushed}/retry", data={"csrf": csrf}, timeout=5,
                      allow_redirects=False)                                         # no session at all
    assert r.status_code == 303 and "/console/signin" in r.headers["location"]
    assert len(w["receiver"].requests) == 1
    # the retry: a real POST to the endpoint, with the original webhook-id, and its attempt shown
    r = s.post(f"{w['url']}/console/deliveries/{pushed}/retry", data={"csrf": csrf}, timeout=10, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/console/deliveries/{pushed}?done=retry")
    assert len(w["receiver"].requests) == 2
    first, again = w["receiver"].requests
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == pushed and again.status == 200
    after = s.get(f"{w['url']}{r.headers['location']}", timeout=5)
    notice = re.search(r'<p id="notice" class="(\w+)"[^>]*>(.*?)</p>', after.text, re.S)
    assert notice and notice.group(1) == "ok" and "HTTP 200" in notice.group(2) and "delivered" in notice.group(2)
    rows = attempt_rows(after.text)
    assert len(rows) == 2 and "HTTP 200" in rows[0] and "delivered" in rows[0] and "HTTP 503" in rows[1]
    assert 'id="state" class="verdict delivered"' in after.text
    assert w["store"].delivery(pushed).state is DeliveryState.DELIVERED and w["store"].delivery(pushed).attempts == 2


def test_another_key_can_neither_see_nor_retry_a_delivery(world):
    w = world
    pushed = put(w, "a's only", "agent@push.test")
    b = signed_in(w, KEY_B)
    listing = b.get(f"{w['url']}/console/deliveries", timeout=5)
    assert listing.status_code == 200 and pushed not in listing.text and "No deliveries" in listing.text
    assert b.get(f"{w['url']}/console/deliveries/{pushed}", timeout=5).status_code == 404
    csrf = csrf_of(listing.text)
    r = b.post(f"{w['url']}/console/deliveries/{pushed}/retry", data={"csrf": csrf}, timeout=5, allow_redirects=False)
    assert r.status_code == 404 and len(w["receiver"].requests) == 1
    for bad in ("nope", "msg_" + "x" * 200, "msg_0000000000000000"):
        assert b.get(f"{w['url']}/console/deliveries/{bad}", timeout=5).status_code == 404
    admin = signed_in(w, ADMIN)                                     # the admin sees every key's
    assert pushed in admin.get(f"{w['url']}/console/deliveries", timeout=5).text


def test_pull_and_agent_routes_have_nothing_to_post(world):
    w = world
    pulled = put(w, "pulled", "agent@pull.test")
    queued = put(w, "for the agent", "agent@agent.test", "Q2")
    s = signed_in(w, KEY_A)
    for event_id, word in ((pulled, "pull route"), (queued, "runs agentmx&#39;s agent")):
        page = s.get(f"{w['url']}/console/deliveries/{event_id}", timeout=5)
        assert page.status_code == 200 and 'id="no-retry"' in page.text and word in page.text
        assert 'id="retry"' not in page.text
        r = s.post(f"{w['url']}/console/deliveries/{event_id}/retry", data={"csrf": csrf_of(page.text)}, timeout=5,
                   allow_redirects=False)
        assert r.status_code == 409 and word in r.text
    assert w["receiver"].requests == []


# --- sends --------------------------------------------------------------------------------------------

def a_send(w, n: str, sender: str, recipients: tuple[str, ...], **kw) -> SendRecord:
    rec = SendRecord("snd_" + n * 26, kw.pop("key", "a"), sender, recipients, f"<{n}@push.test>", "QS" + n, None, None,
                     None, kw.pop("state", SendState.QUEUED), w["store"].clock() - 60 + len(n), **kw)
    w["store"].put_send(rec)
    if rec.state is SendState.QUEUED:
        w["store"].put_send_event(sendevents.make(rec, SendEventType.SENT, rec.created, w["cfg"], "queued"))
    return rec


def test_sends_list_and_a_timeline_with_the_bounce_diagnostic(world):
    w = world
    sent = a_send(w, "a", "Agent+Tag@push.test", ("ok@remote.test", "gone@remote.test"))
    store, cfg = w["store"], w["cfg"]
    store.put_send_event(sendevents.make(sent, SendEventType.DELIVERED, sent.created + 5, cfg, "dsn1",
                                         "ok@remote.test", status="2.0.0", remoteMta="mx.remote.test"))
    store.put_send_event(sendevents.make(sent, SendEventType.DELAYED, sent.created + 6, cfg, "dsn2",
                                         "gone@remote.test", status="4.4.1"))
    store.put_send_event(sendevents.make(sent, SendEventType.BOUNCED, sent.created + 9, cfg, "dsn3",
                                         "gone@remote.test", status="5.1.1", permanent=True,
                                         diagnosticCode='smtp; 550 <script>alert("bounce")</script> no such user'))
    parked = a_send(w, "b", "agent@agent.test", ("later@remote.test",), state=SendState.SCHEDULED,
                    scheduled_at=store.clock() + 3600, request=json.dumps({"subject": "Later <b>bold</b>"}),
                    key="agent:@agent.test")
    theirs = a_send(w, "c", "x@other.test", ("bob@remote.test",), key="b")
    s = signed_in(w, KEY_A)
    page = s.get(f"{w['url']}/console/sends", timeout=5)
    assert page.status_code == 200
    assert re.findall(r'<tr data-id="([^"]+)"', page.text) == [parked.id, sent.id]       # newest first; not b's
    row = re.search(rf'<tr data-id="{sent.id}">(.*?)</tr>', page.text, re.S).group(1)
    assert "Agent+Tag@push.test" in row and "ok@remote.test, gone@remote.test" in row and "bounced" in row
    later = re.search(rf'<tr data-id="{parked.id}">(.*?)</tr>', page.text, re.S).group(1)
    assert "Later &lt;b&gt;bold&lt;/b&gt;" in later and "scheduled" in later
    # one send: each recipient's timeline as GET /v1/send/{id} gives it, the diagnostic escaped
    detail = s.get(f"{w['url']}/console/sends/{sent.id}", timeout=5)
    assert detail.status_code == 200
    api = requests.get(f"{w['url']}/v1/send/{sent.id}", headers={"authorization": f"Bearer {KEY_A}"}, timeout=5).json()
    lines = dict(re.findall(r'<table class="list timeline" data-recipient="([^"]+)">(.*?)</table>', detail.text, re.S))
    assert set(lines) == set(api["timeline"]) == {"ok@remote.test", "gone@remote.test"}
    for recipient, events in api["timeline"].items():
        words = re.findall(r'<tr class="event (\w+)">', lines[recipient])
        assert words == [e["type"].removeprefix("email.") for e in events]
    assert re.findall(r'<tr class="event (\w+)">', lines["gone@remote.test"]) == ["sent", "delayed", "bounced"]
    assert "5.1.1" in lines["gone@remote.test"] and "permanent" in lines["gone@remote.test"]
    assert 'smtp; 550 &lt;script&gt;alert(&#34;bounce&#34;)&lt;/script&gt; no such user' in lines["gone@remote.test"]
    assert "<script>" not in detail.text and "mx.remote.test" in lines["ok@remote.test"]
    # another's send: 404, to a and to b alike; the agent route's send is a's (its sender is a's)
    assert s.get(f"{w['url']}/console/sends/{theirs.id}", timeout=5).status_code == 404
    assert s.get(f"{w['url']}/console/sends/{parked.id}", timeout=5).status_code == 200
    b = signed_in(w, KEY_B)
    assert b.get(f"{w['url']}/console/sends/{sent.id}", timeout=5).status_code == 404
    assert re.findall(r'<tr data-id="([^"]+)"', b.get(f"{w['url']}/console/sends", timeout=5).text) == [theirs.id]
    assert b.get(f"{w['url']}/console/sends?before=nonsense", timeout=5).status_code == 400


# --- the agent ----------------------------------------------------------------------------------------

def test_agent_jobs_and_a_transcript_escaped_and_bounded(world):
    w = world
    store, cfg, model = w["store"], w["cfg"], w["model"]
    done = put(w, "Opening hours?", "agent@agent.test")
    failing = put(w, "Second <i>one</i>", "agent@agent.test", "Q2")
    model.script = [{"role": "assistant", "content": '<script>alert("model")</script>' + "x" * 5000,
                     "tool_calls": [{"id": "call_1", "type": "function",
                                     "function": {"name": "done", "arguments": json.dumps({"summary": "<b>ok</b>"})}}]},
                    (500, 0.0)]
    effects = agentloop.send_effects(cfg, store)
    chat = agentloop.chat_client(cfg.agent)
    assert agentloop.process_one(cfg, store, chat, effects) == done
    assert agentloop.process_one(cfg, store, chat, effects) == failing
    assert store.job(done).state is JobState.DONE and store.job(failing).state is JobState.QUEUED
    s = signed_in(w, KEY_A)
    page = s.get(f"{w['url']}/console/agent", timeout=5)
    assert page.status_code == 200
    assert re.findall(r'<tr data-id="([^"]+)"', page.text) == [failing, done]
    row = re.search(rf'<tr data-id="{failing}">(.*?)</tr>', page.text, re.S).group(1)
    assert "queued" in row and "<td>1</td>" in row and "500" in row and "Second &lt;i&gt;one&lt;/i&gt;" in row
    only = s.get(f"{w['url']}/console/agent?state=done", timeout=5)
    assert re.findall(r'<tr data-id="([^"]+)"', only.text) == [done]
    detail = s.get(f"{w['url']}/console/agent/{done}", timeout=5)
    assert detail.status_code == 200 and "<script>" not in detail.text
    assert "&lt;script&gt;alert(&#34;model&#34;)&lt;/script&gt;" in detail.text
    assert "x" * 3000 in detail.text and "x" * 4990 not in detail.text and "more characters not shown" in detail.text
    assert "calls <code>done</code>" in detail.text and "&lt;b&gt;ok&lt;/b&gt;" in detail.text
    assert "You answer briefly." in detail.text                      # the system turn: the route's prompt
    assert f'href="/console/messages/{done}"' in detail.text
    failed = s.get(f"{w['url']}/console/agent/{failing}", timeout=5)
    assert failed.status_code == 200 and 'class="error"' in failed.text and "500" in failed.text
    # another key: no jobs, and a 404 for this one
    b = signed_in(w, KEY_B)
    assert "No agent jobs" in b.get(f"{w['url']}/console/agent", timeout=5).text
    assert b.get(f"{w['url']}/console/agent/{done}", timeout=5).status_code == 404
    pulled = put(w, "not a job", "agent@pull.test", "Q3")
    assert s.get(f"{w['url']}/console/agent/{pulled}", timeout=5).status_code == 404


# --- paging -------------------------------------------------------------------------------------------

def test_each_list_pages_by_its_cursor(world, monkeypatch):
    from agentmx.api.console import agent, deliveries, sends
    w = world
    for module in (agent, deliveries, sends):
        monkeypatch.setattr(module, "PAGE", 2)                 # serve runs in this process
    events = [put(w, f"pull {n}", "agent@pull.test", f"Q{n}") for n in range(3)]
    jobs = [put(w, f"job {n}", "agent@agent.test", f"J{n}") for n in range(3)]
    sent = [a_send(w, n, "agent@push.test", ("bob@remote.test",)) for n in ("d", "dd", "ddd")]
    s = signed_in(w, KEY_A)
    for path, _table, newest_first in (("deliveries?state=stored", "deliveries", events[::-1]),
                                      ("agent", "jobs", jobs[::-1]), ("sends", "sends", [r.id for r in sent[::-1]])):
        page = s.get(f"{w['url']}/console/{path}", timeout=5)
        assert re.findall(r'<tr data-id="([^"]+)"', page.text) == newest_first[:2], path
        older = re.search(r'<a id="older" href="([^"]+)"', page.text).group(1).replace("&amp;", "&")
        rest = s.get(f"{w['url']}{older}", timeout=5)
        assert re.findall(r'<tr data-id="([^"]+)"', rest.text) == newest_first[2:], path
        assert 'id="older"' not in rest.text
        bad = s.get(f"{w['url']}/console/{path.partition('?')[0]}?before=12x", timeout=5)
        assert bad.status_code == 400 and "before" in bad.text and "Traceback" not in bad.text
