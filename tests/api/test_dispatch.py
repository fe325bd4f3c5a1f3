"""serve's dispatcher (agentmx/api/dispatch.py): send events kept in the store (as the send path and
deliver keep them: sendevents.make, then Store.put_send_event) reach the route of the sending
address over real HTTP, signed like every webhook, retried with backoff, refused by 406, given up
after [server] status_retry_hours; a pull route's events are kept for /v1/events; two serves on one
store POST each event once. `agentmx serve` runs in a thread of the test (server.start), or, for
two dispatchers, as two processes of its own; the agent is a real receiver on loopback."""
from __future__ import annotations

import json
import logging
import time
import urllib.request
from dataclasses import replace

import jsonschema
import pytest
from conftest import ROOT
from standardwebhooks.webhooks import Webhook

from support.backends import BACKENDS, store_config
from support.postfix import free_tcp_port, wait_for
from support.receiver import Receiver
from support.sendstatus import (DOMAIN, KEY, METRICS, SECRET, Serve, a_send, config_text, kept, posts_of,
                                served_world, settled, state_of)

from agentmx import sendevents, webhook
from agentmx.api import dispatch
from agentmx.api.server import start
from agentmx.config import parse_config
from agentmx.deliver.http import Response
from agentmx.store import open_store
from agentmx.store.model import PostState, SendEvent, SendEventType


@pytest.fixture(params=BACKENDS)
def served(request, tmp_path):
    with served_world(request, tmp_path, request.param) as world:
        yield world


def test_a_kept_event_is_posted_signed_and_verifies_with_ours_and_standardwebhooks(served, caplog):
    caplog.set_level(logging.INFO, logger="agentmx.serve.dispatch")
    store, cfg, receiver = served["store"], served["cfg"], served["receiver"]
    rec = a_send(store)
    event = kept(store, cfg, rec, SendEventType.BOUNCED, "bob@remote.test", source="sha-of-report", action="failed",
                 status="5.1.1", permanent=True, diagnosticCode="smtp; 550 5.1.1 no such user")
    assert event.state is PostState.PENDING
    done = settled(store, rec, event.id, PostState.DELIVERED)
    assert done.attempts == 1
    (req,) = posts_of(receiver, event.id)
    assert req.path == "/hooks/email" and req.body == event.body
    webhook.verify(req.headers, req.body, SECRET)                    # ours
    assert Webhook(SECRET).verify(req.body, req.headers)["type"] == "email.bounced"   # the receivers' library
    webhook.verify_mailkite(req.headers, req.body, SECRET)           # the route's MailKite header too
    doc = json.loads(req.body)
    jsonschema.validate(doc, json.loads((ROOT / "docs" / "send-event.v1.schema.json").read_text()))
    assert (doc["id"], doc["sendId"], doc["recipient"], doc["status"], doc["permanent"]) == \
        (event.id, rec.id, "bob@remote.test", "5.1.1", True)
    lines = [r.getMessage() for r in caplog.records if event.id in r.getMessage()]
    assert len(lines) == 1 and "HTTP 200" in lines[0] and "delivered" in lines[0]
    assert SECRET not in caplog.text and "whsec_" not in caplog.text and receiver.url not in caplog.text


def test_an_error_is_retried_with_backoff_and_ends_delivered_after_two_attempts(served):
    store, cfg, receiver = served["store"], served["cfg"], served["receiver"]
    receiver.script = [(500, 0.0), (200, 0.0)]
    rec = a_send(store)
    event = kept(store, cfg, rec)
    done = settled(store, rec, event.id, PostState.DELIVERED)
    first, second = posts_of(receiver, event.id)
    assert (first.status, second.status, done.attempts) == (500, 200, 2)
    assert second.at - first.at >= 0.3 - 0.05                       # status_first_retry, not at once
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.id and first.body == second.body


def test_406_is_refused_and_never_posted_again(served):
    store, cfg, receiver = served["store"], served["cfg"], served["receiver"]
    receiver.script = [(406, 0.0)]
    rec = a_send(store)
    event = kept(store, cfg, rec)
    refused = settled(store, rec, event.id, PostState.REFUSED)
    assert refused.attempts == 1 and "406" in refused.excerpt
    # A marker kept after it, answered 500 first: its retry comes after the time a retry of the
    # refused event would have come; once the marker is delivered, the refused one had its chance.
    receiver.script = [(500, 0.0)]
    marker = kept(store, cfg, rec, SendEventType.DELIVERED, "bob@remote.test", source="marker")
    settled(store, rec, marker.id, PostState.DELIVERED)
    assert len(posts_of(receiver, event.id)) == 1 and len(posts_of(receiver, marker.id)) == 2


def test_a_pull_routes_event_is_kept_not_posted_and_listed(served):
    store, cfg, receiver = served["store"], served["cfg"], served["receiver"]
    rec = a_send(store, sender=f"puller@{DOMAIN}")
    event = kept(store, cfg, rec)
    assert event.state is PostState.KEPT and event.route == f"puller@{DOMAIN}"
    marker = kept(store, cfg, a_send(store))                     # a pushed one after it: the dispatcher ran
    settled(store, rec, event.id, PostState.KEPT)
    wait_for(lambda: posts_of(receiver, marker.id), what="the marker's POST")
    assert posts_of(receiver, event.id) == [] and state_of(store, rec, event.id).attempts == 0
    req = urllib.request.Request(f"{served['api']}/v1/events?name=email.sent",
                                 headers={"authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        listed = json.loads(resp.read())["events"]
    assert event.id in [e["id"] for e in listed]


def test_metrics_count_status_posts_by_outcome(served):
    store, cfg, receiver = served["store"], served["cfg"], served["receiver"]
    receiver.script = [(500, 0.0), (200, 0.0)]
    rec = a_send(store)
    event = kept(store, cfg, rec)
    settled(store, rec, event.id, PostState.DELIVERED)

    def scrape():
        req = urllib.request.Request(f"{served['api']}/metrics", headers={"authorization": f"Bearer {METRICS}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()
    text = scrape()
    assert 'agentmx_status_posts_total{outcome="delivered"} 1' in text
    assert 'agentmx_status_posts_total{outcome="retry"} 1' in text


# --- the outcome of one answer: pure -------------------------------------------------------------------

def _event(attempts: int = 0, at: float = 1000.0) -> SendEvent:
    return SendEvent("evt_x", "snd_x", SendEventType.SENT, "", at, "a@x", "a@x", b"{}", PostState.PENDING, attempts)


def test_outcome_backoff_doubles_up_to_an_hour_honours_retry_after_and_gives_up():
    out = dispatch.outcome
    assert out(_event(), Response(204), 1000, 30, 3600)[0] is PostState.DELIVERED
    assert out(_event(), Response(406), 1000, 30, 3600)[0] is PostState.REFUSED
    assert out(_event(0), Response(500), 1000, 30, 10**6)[:2] == (PostState.PENDING, 1030)
    assert out(_event(1), Response(0, error="refused"), 1000, 30, 10**6)[:2] == (PostState.PENDING, 1060)
    assert out(_event(3), Response(302), 1000, 30, 10**6)[1] == 1240
    assert out(_event(40), Response(500), 1000, 30, 10**6)[1] == 1000 + 3600           # at most an hour apart
    assert out(_event(0), Response(503, "120"), 1000, 30, 10**6)[1] == 1120            # Retry-After honoured
    assert out(_event(0), Response(503, "999999"), 1000, 30, 10**6)[1] == 1000 + 3600  # ... within bounds
    assert out(_event(0), Response(503, "0"), 1000, 30, 10**6)[1] == 1001
    assert out(_event(0), Response(503, "Thu, 01 Jan 1970 00:00:00 GMT"), 1000, 30, 10**6)[1] == 1001
    assert out(_event(0), Response(503, "Thu, 01 Jan 1970 00:20:00 GMT"), 1000, 30, 10**6)[1] == 1200
    assert out(_event(0), Response(503, "soon" * 100), 1000, 30, 10**6)[1] == 1030     # unreadable: backoff
    gone = out(_event(5, at=0), Response(500), 3600, 30, 3600)
    assert gone[0] is PostState.FAILED and "given up" in gone[2]


def test_an_old_event_is_given_up_after_status_retry_hours(request, tmp_path):
    receiver = Receiver()
    receiver.default = (500, 0.0)
    cfg = parse_config(config_text(tmp_path / "data", receiver.url, extra="status_retry_hours = 0.0005"),
                       tmp_path / "agentmx.toml")          # 1.8 s
    store = open_store(cfg)
    running = start(cfg)
    try:
        rec = a_send(store)
        event = kept(store, cfg, rec)
        failed = settled(store, rec, event.id, PostState.FAILED)
        assert failed.attempts >= 2 and "given up" in failed.excerpt
    finally:
        running.stop()
        store.close()
        receiver.stop()


def test_an_event_whose_route_left_the_config_fails_with_that_reason(tmp_path):
    receiver = Receiver()
    cfg = parse_config(config_text(tmp_path / "data", receiver.url), tmp_path / "agentmx.toml")
    store = open_store(cfg)
    rec = a_send(store, sender=f"gone@{DOMAIN}")
    # kept while a route for gone@ was in the config: the route is the one its producer chose then
    event = replace(sendevents.make(rec, SendEventType.SENT, time.time(), cfg, "queued"), route=f"gone@{DOMAIN}",
                    state=PostState.PENDING)
    assert store.put_send_event(event)
    running = start(cfg)
    try:
        failed = settled(store, rec, event.id, PostState.FAILED)
        assert "no longer in the config" in failed.excerpt and posts_of(receiver, event.id) == []
    finally:
        running.stop()
        store.close()
        receiver.stop()


# --- two serves on one store ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_two_serves_on_one_store_post_each_event_once(request, tmp_path, backend):
    receiver = Receiver()
    receiver.default = (200, 0.05)                 # a little slow: the two dispatchers overlap
    store_toml = store_config(request, backend, tmp_path / "secrets", owner="root")
    serves, store = [], None
    try:
        for name in ("a", "b"):
            port = free_tcp_port()
            path = tmp_path / f"{name}.toml"
            path.write_text(config_text(tmp_path / "data", receiver.url, port=port, store=store_toml))
            if store is None:
                store = open_store(parse_config(path.read_text(), path))
                store.migrate()
            serves.append(Serve(path, port, tmp_path / f"serve-{name}.log"))
        cfg = parse_config((tmp_path / "a.toml").read_text(), tmp_path / "a.toml")
        rec = a_send(store, recipients=tuple(f"r{i}@remote.test" for i in range(40)))
        events = [kept(store, cfg, rec, SendEventType.DELIVERED, f"r{i}@remote.test", source=f"report{i}")
                  for i in range(40)]
        wait_for(lambda: all(e.state is PostState.DELIVERED for e in store.send_events(rec.id)), timeout=60,
                 what="every event delivered")
        marker = kept(store, cfg, rec, SendEventType.SENT)          # after them all: any second POST came first
        settled(store, rec, marker.id, PostState.DELIVERED)
        posted = [r.headers["webhook-id"] for r in list(receiver.requests)]
        assert sorted(posted) == sorted([e.id for e in events] + [marker.id])     # each once
        assert {e.attempts for e in store.send_events(rec.id)} == {1}
        logs = [s.log.read_text(errors="replace") for s in serves]
        assert all(SECRET not in text for text in logs)
        assert all(text.count("-> delivered") >= 1 for text in logs)          # both dispatchers took some
    finally:
        for s in serves:
            s.stop()
        if store is not None:
            store.close()
        receiver.stop()


def test_a_retry_after_of_non_ascii_digits_is_retried_not_an_internal_error_for_ever(served, caplog):
    # http.client reads headers as latin-1: "Retry-After: \xb2" is "²", which str.isdigit() takes and
    # float() refuses. The ValueError escaped outcome(): a traceback, no outcome kept, and the event
    # POSTed again at each lease's end for ever, never given up.
    caplog.set_level(logging.INFO, logger="agentmx.serve.dispatch")
    store, cfg, receiver = served["store"], served["cfg"], served["receiver"]
    receiver.script = [(500, 0.0), (200, 0.0)]
    receiver.answer_headers = {"retry-after": "\u00b2"}
    rec = a_send(store)
    event = kept(store, cfg, rec)
    done = settled(store, rec, event.id, PostState.DELIVERED)
    assert done.attempts == 2 and "internal error" not in caplog.text
    first, _ = posts_of(receiver, event.id)
    assert first.status == 500


def test_an_endpoint_that_drips_its_answer_holds_a_post_no_longer_than_its_deadline(tmp_path):
    # Each read within the route's timeout, one byte at a time, for ever: the POST never ended, its
    # lease (timeout + 60 s) ran out under it (another serve POSTs it again), and such a route's
    # events held the dispatcher's 8 slots: every other route's events waited, and stop() hung.
    import socket
    import threading
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def drip(conn):
        with conn:
            conn.settimeout(1.0)
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(0.5):
                    conn.sendall(b"x")
            except OSError:
                pass

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hooks/email"
    cfg = parse_config(config_text(tmp_path / "data", url), tmp_path / "agentmx.toml")      # timeout = 3
    store = open_store(cfg)
    running = start(cfg)
    try:
        rec = a_send(store)
        event = kept(store, cfg, rec)
        started = time.time()
        tried = wait_for(lambda: (lambda e: e if e.attempts >= 1 else None)(state_of(store, rec, event.id)),
                         timeout=20, what="the dripping POST ended")
        assert time.time() - started < 3 * 2 + 5
        assert tried.state is PostState.PENDING and "no whole answer within" in tried.excerpt
    finally:
        stop.set()
        listener.close()
        running.stop()
        store.close()
