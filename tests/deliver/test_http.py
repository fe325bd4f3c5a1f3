"""deliver/http.py: the residents' kept-alive connections to the endpoint (issue 18), against a
real HTTP/1.1 endpoint on loopback (tests/support/receiver.py): one connection for many
messages; an idle connection the endpoint closed is not used; a connection closed in the instant
a POST went out is retried once, fresh (the same webhook-id: docs/decisions.md); nothing else is
retried; answers too long to read whole, deadlines and timeouts as for a one-off POST."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from agentmx.config import Service, load_config
from agentmx.deliver import frontend
from agentmx.deliver import http as http_module
from agentmx.deliver.http import MAX_ANSWER, Connections, post
from support.postfix import wait_for
from support.receiver import Receiver
from test_cli_deliver import MESSAGE

from test_frontend import write_config


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def _post(c: Connections, url: str, n: int, **kw):
    return c.post(url, json.dumps({"n": n}).encode(), {"webhook-id": f"msg_{n}"}, 2, **kw)


def test_a_resident_posts_every_message_on_one_connection(tmp_path, receiver):
    """Through the front-ends' own run(): a resident keeps one connection to the endpoint for
    every message (before: one TCP connection, and its handshake, per message)."""
    cfg = write_config(tmp_path, receiver.url)
    current = frontend.Current.resident(load_config(cfg, Service.APP))
    for n in range(5):
        env = frontend.envelope_from_lmtp("bob@example.org", ["agent@agentmx.test"], {"IDENT": f"4KEEP{n}"})
        raw = MESSAGE.replace(b"Message-ID: <", b"Message-ID: <keep%d." % n)
        result = frontend.run("lmtp", lambda: (env, raw), current, logging.getLogger("test"))
        assert result.exit_code == 0 and result.state == "delivered", result
    assert len(receiver.requests) == 5
    assert receiver.connections == 1


def test_the_pipe_closes_its_one_connection(tmp_path, receiver):
    assert frontend.Current(tmp_path / "agentmx.toml").post() is None     # the pipe: http.post
    for _ in range(2):
        assert post(receiver.url, b"{}", {}, 2).status == 200
    assert receiver.connections == 2
    wait_for(lambda: not receiver._open, timeout=10, what="the pipe's connections closed")   # by us, after each answer


def test_an_idle_connection_the_endpoint_closed_is_not_used(receiver, monkeypatch):
    """Found closed before use: no POST is tried on it (with it used, the POST failed there and
    went again on a fresh connection: the same requests and connections seen, one exchange more)."""
    exchanges = []
    real = http_module._exchange
    monkeypatch.setattr(http_module, "_exchange", lambda conn, *a, **kw: exchanges.append(conn) or real(conn, *a, **kw))
    c = Connections()
    assert _post(c, receiver.url, 1).status == 200
    receiver.stop()                    # closes the kept connection too
    receiver.start()
    time.sleep(0.1)
    assert _post(c, receiver.url, 2).status == 200
    assert [json.loads(r.body)["n"] for r in receiver.requests] == [1, 2]      # no second copy
    assert c.opened == 2
    assert len(exchanges) == 2 and exchanges[0] is not exchanges[1], "a POST was tried on the closed connection"


def test_a_kept_connection_closed_without_an_answer_is_retried_once_fresh(receiver):
    """The endpoint read the POST and closed the connection without a word (as in the race with
    its idle timeout): once more on a fresh connection, with the same webhook-id."""
    c = Connections()
    assert _post(c, receiver.url, 1).status == 200
    receiver.script = [(0, 0.0), (200, 0.0)]
    assert _post(c, receiver.url, 2).status == 200
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["msg_1", "msg_2", "msg_2"]
    assert c.opened == 2
    # Twice in a row: one retry only, then deferred (Postfix retries later).
    receiver.script = [(0, 0.0), (0, 0.0), (200, 0.0)]
    resp = _post(c, receiver.url, 3)
    assert resp.status == 0 and "RemoteDisconnected" in resp.error
    assert len(receiver.requests) == 5


def test_a_fresh_connection_closed_without_an_answer_is_not_retried(receiver):
    c = Connections()
    receiver.script = [(0, 0.0), (200, 0.0)]
    resp = _post(c, receiver.url, 1)
    assert resp.status == 0 and len(receiver.requests) == 1


def test_no_retry_after_an_answer_or_a_timeout(receiver):
    c = Connections()
    assert _post(c, receiver.url, 1).status == 200
    receiver.script = [(503, 0.0)]
    resp = _post(c, receiver.url, 2)
    assert resp.status == 503 and resp.retry_after == "120"
    receiver.script = [(200, 3.0)]                 # past the 2 s timeout
    resp = _post(c, receiver.url, 3)
    assert resp.status == 0 and "no answer within 2s" in resp.error
    assert [json.loads(r.body)["n"] for r in receiver.requests] == [1, 2, 3]
    time.sleep(1.2)
    assert _post(c, receiver.url, 4).status == 200      # the timed-out connection was not kept


def test_an_answer_longer_than_what_is_read_does_not_keep_the_connection(receiver):
    c = Connections()
    receiver.answer = b"x" * (MAX_ANSWER + 10)
    resp = _post(c, receiver.url, 1)
    assert resp.status == 200 and len(resp.body) == MAX_ANSWER
    receiver.answer = None
    assert _post(c, receiver.url, 2).status == 200
    assert receiver.connections == 2 and c.opened == 2


def test_the_deadline_holds_on_a_kept_connection():
    """An endpoint that drips its answer is cut at the deadline on a reused connection too."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(40):
            time.sleep(0.1)
            try:
                conn.sendall(b" ")
            except OSError:
                return
    threading.Thread(target=serve, daemon=True).start()
    try:
        c = Connections()
        url = f"http://127.0.0.1:{port}/hook"
        assert _post(c, url, 1, deadline=1.0).status == 200
        started = time.monotonic()
        resp = _post(c, url, 2, deadline=1.0)
        assert resp.status == 0 and "no whole answer within 1s" in resp.error
        assert time.monotonic() - started < 2.5 and c.opened == 1
    finally:
        listener.close()


def test_a_kept_connection_does_not_wait_on_delayed_acks(receiver):
    """The test receiver is Python's http.server: headers and body in two writes, without
    TCP_NODELAY, so the body waits for our ACK of the headers; past a connection's first
    exchanges Linux delays that ACK (40 ms), and every kept-alive POST took 40 ms more (found by
    bench/deliver-cost --inprocess: 46 ms of wall time a message). ACKed at once now."""
    c = Connections()
    for n in range(5):                         # past the connection's quick-ACK start
        assert _post(c, receiver.url, n).status == 200
    started = time.monotonic()
    for n in range(20):
        assert _post(c, receiver.url, 100 + n).status == 200
    took = time.monotonic() - started
    assert c.opened == 1 and took < 20 * 0.02, f"{took / 20 * 1000:.1f} ms a POST"
