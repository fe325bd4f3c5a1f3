"""Operator commands on a real data directory: replay (same webhook-id), gc (retention), status."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.receiver import Receiver

from agentmx import ops
from agentmx.config import parse_config
from agentmx.deliver.core import Envelope, deliver
from agentmx.store import open_store
from agentmx.store.model import DeliveryState
from agentmx.webhook import verify

SECRET = "whsec_" + base64.b64encode(b"ops-secret-ops-secret-ops-secret").decode()
AGENTMX = str(Path(sys.executable).with_name("agentmx"))


def make_config(tmp_path: Path, endpoint: str, ack: str = "lenient"):
    text = (f'[server]\nauthserv_id = "mx.agentmx.test"\ndata_dir = "{tmp_path / "data"}"\n'
            f'url_secret = "ops-url-secret-0123456"\nretention_days = 10\n'
            f'[[routes]]\nmatch = "@agentmx.test"\nendpoint = "{endpoint}"\nsecret = "{SECRET}"\ntimeout = 2\n'
            f'ack = "{ack}"\n')
    path = tmp_path / "agentmx.toml"
    path.write_text(text)
    return parse_config(text, path)


def message(n: int, attachment: bytes = b"") -> bytes:
    body = (f"From: bob@example.org\r\nTo: agent@agentmx.test\r\nSubject: m{n}\r\nMessage-ID: <m{n}@example.org>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
            f"hello {n}\r\n--b\r\nContent-Type: application/octet-stream; name=a.bin\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(attachment or bytes([n]) * 10).decode()}\r\n--b--\r\n")
    return body.encode()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_replay_sends_the_stored_event_again_with_its_id(tmp_path, receiver):
    cfg = make_config(tmp_path, receiver.url)
    out = deliver(message(1), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q1"), cfg)
    cli = subprocess.run([AGENTMX, "--config", str(cfg.path), "replay", out.event_id], capture_output=True,
                         text=True, timeout=30)
    assert cli.returncode == 0 and f"{out.event_id}: HTTP 200" in cli.stdout
    first, second = receiver.requests
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"] == out.event_id
    verify(second.headers, second.body, SECRET)
    store = open_store(cfg)
    assert store.delivery(out.event_id).state is DeliveryState.DELIVERED
    first_try, replayed = store.attempts(out.event_id)
    assert (replayed.status, replayed.webhook_id) == (200, out.event_id) and store.delivery(out.event_id).attempts == 2
    assert store.delivery(out.event_id).reason == "replayed: accepted"
    missing = subprocess.run([AGENTMX, "--config", str(cfg.path), "replay", "msg_aaaaaaaaaaaaaaaaaaaaaaaaaa"],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "no stored event" in missing.stderr


def test_replay_to_an_endpoint_that_fails(tmp_path, receiver):
    cfg = make_config(tmp_path, receiver.url)
    out = deliver(message(2), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q2"), cfg)
    receiver.default = (500, 0)
    store = open_store(cfg)
    assert ops.replay(cfg, store, out.event_id) == (500, "replay failed: HTTP 500")
    assert store.delivery(out.event_id).state is DeliveryState.DELIVERED     # nothing retries a replay
    assert store.attempts(out.event_id)[-1].status == 500


@pytest.mark.parametrize("answer,state", [(b'{"status":"drop"}', DeliveryState.DROPPED),
                                          (b'{"status":"spam"}', DeliveryState.SPAM)])
def test_replay_honours_control_answers(tmp_path, receiver, answer, state):
    """A replay answered {"status": "drop"} is dropped, not "delivered" (the issue: it was)."""
    cfg = make_config(tmp_path, receiver.url, ack="control")
    receiver.default = (500, 0)
    out = deliver(message(2), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q2"), cfg)
    receiver.default, receiver.answer = (200, 0), answer
    store = open_store(cfg)
    status, reason = ops.replay(cfg, store, out.event_id)
    assert status == 200 and str(state) in reason
    assert store.delivery(out.event_id).state is state and store.inbox_row(out.event_id).state is state
    assert store.metrics().by_state[state] == 1 and store.metrics().by_state[DeliveryState.DELIVERED] == 0


def test_replay_applies_drop_and_block_sender_like_deliver(tmp_path, receiver):
    """`agentmx replay` and deliver share one function for an answer's consequences
    (deliver/control.py apply): a replay answered drop deletes the stored copy; block-sender blocks."""
    from agentmx import blocklist
    cfg = make_config(tmp_path, receiver.url, ack="control")
    receiver.answer = b'{"status":"ok"}'
    ours = b"Authentication-Results: mx.agentmx.test; spf=pass smtp.mailfrom=bob@example.org\r\n"  # the milter's
    out = deliver(ours + message(5), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q5"), cfg)
    raw_sha = json.loads(receiver.requests[0].body)["raw"]["sha256"]
    store = open_store(cfg)
    receiver.answer = b'{"status":"ok","actions":[{"type":"block-sender"}]}'
    assert ops.replay(cfg, store, out.event_id)[0] == 200
    assert [(b.sender, b.scope, b.event_id) for b in store.blocks()] == [("bob@example.org", "@agentmx.test",
                                                                        out.event_id)]
    assert blocklist.Snapshot(blocklist.path_in(cfg.data_dir), cfg.routes).blocked("bob@example.org", "x@agentmx.test")
    receiver.answer = b'{"status":"drop"}'
    assert ops.replay(cfg, store, out.event_id) == (200, "replayed: the agent's answer dropped it; the stored copy "
                                                         "deleted, not retried")
    assert store.get_event(out.event_id) is None and store.get_blob(raw_sha) is None
    assert store.delivery(out.event_id).state is DeliveryState.DROPPED
    with pytest.raises(LookupError, match="dropped"):
        ops.replay(cfg, store, out.event_id)


def test_gc_removes_old_mail_and_keeps_what_is_referenced(tmp_path, receiver):
    cfg = make_config(tmp_path, receiver.url)
    shared = b"the same attachment in an old and a new message"
    now = [time.time() - 20 * 86400]
    clock = lambda: now[0]   # noqa: E731
    store = open_store(cfg, clock)
    old = deliver(message(3, shared), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q3"), cfg,
                  store=store, clock=clock)
    store.put_transcript(old.event_id, {"id": old.event_id, "attempts": []})
    now[0] = time.time()
    new = deliver(message(4, shared), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q4"), cfg,
                  store=store, clock=clock)
    old_event = json.loads(store.get_event(old.event_id))
    dry = subprocess.run([AGENTMX, "--config", str(cfg.path), "gc", "--dry-run"], capture_output=True, text=True)
    assert "would remove 1 event(s) and 1 blob(s)" in dry.stdout and "1 transcripts" in dry.stdout, dry.stdout
    assert store.get_event(old.event_id) is not None
    report = ops.gc(cfg, store, cfg.retention_days)
    assert (report.events, report.blobs) == (1, 1)        # the old raw message; the shared attachment stays
    assert report.other["transcripts"] == report.other["deliveries"] == 1
    assert store.get_event(old.event_id) is None and store.get_transcript(old.event_id) is None
    assert store.inbox_row(old.event_id) is None and store.delivery(old.event_id) is None
    assert store.get_event(new.event_id) is not None
    assert store.get_blob(old_event["raw"]["sha256"]) is None
    assert store.get_blob(old_event["attachments"][0]["sha256"]) is not None


def test_status_lists_recent_deliveries(tmp_path, receiver):
    cfg = make_config(tmp_path, receiver.url)
    deliver(message(5), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q5"), cfg)
    receiver.default = (503, 0)
    deliver(message(6), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q6"), cfg)
    out = subprocess.run([AGENTMX, "--config", str(cfg.path), "status", "--postfix-config", "/nonexistent"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert "deferred" in lines[1] and "queue=Q6" in lines[1] and "HTTP 503, Retry-After 120" in lines[1]
    assert "delivered" in lines[2] and "queue=Q5" in lines[2]


def test_metrics_on_serve(tmp_path, receiver):
    import urllib.error
    import urllib.request
    from agentmx.api.server import start
    cfg = make_config(tmp_path, receiver.url)
    text = cfg.path.read_text().replace("[server]\n", '[server]\nlisten = "127.0.0.1:0"\n'
                                        'metrics_token = "metrics-token-0123456789"\n', 1)
    cfg.path.write_text(text)
    cfg = parse_config(text, cfg.path)
    for n in (7, 8):
        deliver(message(n), Envelope("bob@example.org", "agent@agentmx.test", queue_id=f"Q{n}"), cfg)
    receiver.default = (500, 0)
    deliver(message(9), Envelope("bob@example.org", "agent@agentmx.test", queue_id="Q9"), cfg)
    server = start(cfg)
    try:
        for token in (None, "wrong-token-0123456789"):          # /metrics needs the token
            req = urllib.request.Request(f"{server.url}/metrics",
                                         headers={"authorization": f"Bearer {token}"} if token else {})
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(req, timeout=5)
            assert exc.value.code == 401 and json.loads(exc.value.read())["code"] == "unauthorized"
        req = urllib.request.Request(f"{server.url}/metrics",
                                     headers={"authorization": "Bearer metrics-token-0123456789"})
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read().decode()
            assert r.headers["content-type"].startswith("text/plain")
    finally:
        server.stop()
    assert 'agentmx_messages{state="delivered"} 2' in body and 'agentmx_messages{state="deferred"} 1' in body
    for state in DeliveryState:                          # every state, not 4 of them (the issue)
        assert f'agentmx_messages{{state="{state}"}} ' in body
    assert "agentmx_messages_received 3" in body
    assert "agentmx_delivery_attempts_total 3" in body
    assert 'agentmx_auth_results{check="dmarc",result="none"} 3' in body
    assert "agentmx_delivery_latency_seconds_count 2" in body
    assert 'agentmx_delivery_latency_seconds_bucket{le="+Inf"} 2' in body
