"""`agentmx serve` under hostile callers, over real sockets: the key before the body, size and time
limits, idle and slow clients dropped, bounded concurrency, caps on open waits and streams that are
woken by deliver's notification (not by polling) and end when the client goes, every failure JSON."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from support.postfix import wait_for

from agentmx.api.app import create_app
from agentmx.api.context import Context
from agentmx.api.server import start_app
from agentmx.client import Client
from agentmx.config import parse_config
from agentmx.deliver.core import Envelope, deliver
from agentmx.store.model import DeliveryState

KEY = "amx_limits_key_for_the_agent_0123"
OTHER = "amx_limits_key_for_someone_else_01"
DOMAIN = "pull.agents.test"


def config_text(data, **server) -> str:
    server = {"listen": "127.0.0.1:0", **server}
    extra = "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in server.items())
    return f"""[server]
authserv_id = "mx.agents.test"
data_dir = "{data}"
url_secret = "limits-test-url-secret-0123"
{extra}
[[routes]]
match = "@{DOMAIN}"
mode = "pull"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}"]
[[api_keys]]
name = "other"
key = "{OTHER}"
allow = ["other@{DOMAIN}"]
"""


class Served:
    def __init__(self, tmp_path, **server):
        self.config = parse_config(config_text(tmp_path, **server), tmp_path / "agentmx.toml")
        self.ctx = Context.for_config(self.config)
        self.queries = 0
        query = self.ctx.store.inbox_query

        def counted(*a, **kw):
            self.queries += 1
            return query(*a, **kw)
        self.ctx.store.inbox_query = counted
        self.running = start_app(create_app(self.ctx), self.config.listen, self.config.limits)
        self.url, self.port = self.running.url, self.running.port

    def deliver(self, subject: str, to: str = f"agent@{DOMAIN}") -> str:
        n = time.time_ns()
        raw = (f"From: Shop <noreply@shop.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{n}@shop.test>\r\n\r\nYour code is 424242.\r\n").encode()
        out = deliver(raw, Envelope("noreply@shop.test", to, queue_id=f"Q{n}"), self.config)
        assert out.state is DeliveryState.STORED
        return out.event_id


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path, read_timeout=2, request_timeout=2, max_requests=3, max_streams_per_key=2)
    yield s
    s.running.stop()


def raw_request(port: int, data: bytes, read_for: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
        return out


def read_response(s: socket.socket) -> bytes:
    """One whole response with a Content-Length, read off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:]
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return status, json.loads(body)


def test_the_key_is_checked_before_any_body_is_read(served):
    # 30 MB announced, not one byte sent: the answer is 401 at once.
    t0 = time.monotonic()
    out = raw_request(served.port, b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 29000000\r\n\r\n", read_for=3)
    assert time.monotonic() - t0 < 2.5
    status, body = status_and_json(out)
    assert status == 401 and body["code"] == "unauthorized"


def test_sizes_are_refused_before_they_are_read(served):
    big = served.config.send.max_request_bytes + 1
    out = raw_request(served.port, b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                      + b"\r\nContent-Length: " + str(big).encode() + b"\r\n\r\n", read_for=3)
    assert status_and_json(out)[0] == 413
    # no Content-Length, chunked: counted as it arrives (every other route takes at most 64 KB)
    chunk = b"x" * 70000
    out = raw_request(served.port, b"POST /v1/messages/msg_aaaaaaaaaaaaaaaaaaaaaaaaaa/ack HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: Bearer " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n", read_for=3)
    assert status_and_json(out)[0] in (404, 413)      # ack reads no body: refused or never read
    # a Content-Length that is no number never reaches us: the HTTP server answers 400 and closes
    out = raw_request(served.port, b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", read_for=3)
    assert out.startswith(b"HTTP/1.1 400")


def test_a_slow_body_gets_408_within_the_request_timeout(served):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 1000\r\n\r\n{\"from\": ")
        out = read_response(s)
    assert 1.5 < time.monotonic() - t0 < 5
    status, body = status_and_json(out)
    assert status == 408 and body["code"] == "timeout"


def test_300_idle_connections_neither_block_an_agent_nor_stay(served):
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(300)]
    drip = socket.create_connection(("127.0.0.1", served.port), timeout=10)     # a head a byte at a time
    drip.sendall(b"GET /v1/messages HTTP/1.1\r\n")
    try:
        served.deliver("while idle")
        t0 = time.monotonic()
        listed = Client(served.url, KEY, timeout=5).messages()
        took = time.monotonic() - t0
        assert [m["subject"] for m in listed["messages"]] == ["while idle"]
        assert took < 1.0, took
        for _ in range(3):
            drip.sendall(b"X")
            time.sleep(0.5)
        deadline = time.monotonic() + served.config.limits.read_timeout + 3
        closed = sum(_closed_by(s, deadline) for s in idle + [drip])
        assert closed == 301
        from conftest import report
        report(f"serve: authorized list answered in {took * 1000:.0f} ms with 300 idle connections open; "
               f"all 301 idle/slow ones closed within read_timeout ({served.config.limits.read_timeout:g}s)")
    finally:
        for s in idle + [drip]:
            s.close()


def _until_closed(s: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before it closed the connection; None if it is still open at deadline."""
    data = b""
    while True:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            return None
        if not chunk:
            return data
        data += chunk


def _closed_by(s: socket.socket, deadline: float) -> bool:
    s.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_concurrency_is_bounded_and_the_rest_get_503(served):
    held = []
    for _ in range(3):                      # max_requests = 3: three bodies that never finish
        s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 100\r\n\r\n{")
        held.append(s)
    time.sleep(0.3)
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(f"{served.url}/v1/messages",
                                                          headers={"authorization": f"Bearer {KEY}"}), timeout=5)
        assert exc.value.code == 503 and exc.value.headers["retry-after"] == "1"
        assert json.loads(exc.value.read())["code"] == "busy"
    finally:
        for s in held:
            s.close()
    time.sleep(2.5)                         # their 408s free the slots
    assert Client(served.url, KEY).messages()["messages"] == []


@pytest.mark.parametrize("request_bytes,status,code", [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
    (b"DELETE /v1/send HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"GET /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n", 401, "unauthorized"),
    (b"GET /v1/messages?limit=abc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n",
     400, "bad_limit"),
    (b"GET /v1/blobs/" + b"0" * 64 + b"?exp=9999999999&type=text/plain&name=a&sig=%C3%A9" + b"0" * 62
     + b" HTTP/1.1\r\nHost: x\r\n\r\n", 403, "forbidden"),
    (b"GET /v1/blobs/%C3%A9?exp=1&type=&name=&sig= HTTP/1.1\r\nHost: x\r\n\r\n", 403, "forbidden"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 403, "metrics_off"),
    (b"GET /v1/blobs/" + b"0" * 64 + b"?exp=%C2%B2&type=a/b&name=a&sig=" + b"0" * 64
     + b" HTTP/1.1\r\nHost: x\r\n\r\n", 403, "forbidden"),           # "\u00b2".isdigit() is True
])
def test_every_failure_is_json_on_a_kept_connection(served, request_bytes, status, code):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(request_bytes)
        head = read_response(s)
        got_status, body = status_and_json(head)
        assert (got_status, body["code"]) == (status, code)
        assert b"Traceback" not in head and b"content-type: application/json" in head.lower()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")       # the connection still serves
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("payload,code", [
    ({"from": "agënt@pull.agents.test", "to": ["bob@remote.test"], "text": "x"}, "bad_address"),
    ({"from": f"agent@{DOMAIN}", "to": ["bob@remote.test"], "text": "x", "headers": ["X-A: b"]}, "bad_header"),
    ({"from": f"agent@{DOMAIN}", "to": 5, "text": "x"}, "bad_address"),
    ([1, 2], "bad_request"),
])
def test_bad_send_requests_are_json_400s(served, payload, code):
    req = urllib.request.Request(f"{served.url}/v1/send", data=json.dumps(payload).encode(), method="POST",
                                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert (exc.value.code, json.loads(exc.value.read())["code"]) == (400, code)


def test_a_wait_is_woken_by_deliver_not_by_polling(served):
    got = {}

    def waiter():
        t0 = time.monotonic()
        got["message"] = Client(served.url, KEY).wait(to=f"agent@{DOMAIN}", timeout=30)
        got["took"] = time.monotonic() - t0
    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(4)                           # an idle wait: no query per 100 ms any more
    idle_queries = served.queries
    t0 = time.monotonic()
    served.deliver("ring ring")
    thread.join(10)
    assert got["message"]["subject"] == "ring ring"
    assert got["took"] - 4 < 1.0 and time.monotonic() - t0 < 1.0
    assert idle_queries <= 2, idle_queries  # the first look; maybe one fallback check on news


def test_two_waiters_with_ack_never_get_the_same_message(served):
    results = []

    def waiter():
        results.append(Client(served.url, KEY).wait(to=f"agent@{DOMAIN}", timeout=3, ack=True))
    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    served.deliver("only one")
    for t in threads:
        t.join(10)
    got = [r for r in results if r is not None]
    assert len(results) == 2 and len(got) == 1 and got[0]["subject"] == "only one" and got[0]["inbox"]["read"]


def test_open_waits_are_capped_per_key_and_end_when_the_client_goes(served):
    socks = []
    for _ in range(2):                      # max_streams_per_key = 2
        s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        s.sendall(b"GET /v1/messages/wait?timeout=60 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + KEY.encode() + b"\r\n\r\n")
        socks.append(s)
    time.sleep(0.5)
    assert served.ctx.streams.open == {"agent": 2}
    with pytest.raises(ApiErrorFromClient) as exc:
        call(lambda: Client(served.url, KEY).wait(timeout=1))
    assert exc.value.args == (429, "too_many_streams")
    assert Client(served.url, OTHER).wait(timeout=0) is None       # another key has its own slots
    events = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    events.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer "
                   + OTHER.encode() + b"\r\n\r\n")
    assert events.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    assert served.ctx.streams.open == {"agent": 2, "other": 1}
    for s in socks + [events]:
        s.close()
    deadline = time.monotonic() + 20
    while served.ctx.streams.open and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.ctx.streams.open == {}, "waits and streams must end when their client goes"


class ApiErrorFromClient(Exception):
    pass


def call(fn):
    from agentmx.client import ApiError
    try:
        return fn()
    except ApiError as exc:
        raise ApiErrorFromClient(exc.status, exc.code) from None


def test_ipv6_listen(tmp_path):
    s = Served(tmp_path, listen="[::1]:0")
    try:
        assert s.url.startswith("http://[::1]:")
        with urllib.request.urlopen(f"{s.url}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
    finally:
        s.running.stop()


def test_no_http2_a_preface_or_h2c_never_holds_a_connection(served):
    """Hypercorn switched a cleartext connection to HTTP/2 on a `PRI *` preface, and an HTTP/2
    connection that opens no stream was never timed out (the review held 260 for good and ran
    serve out of file descriptors); `Upgrade: h2c` answered 101. serve speaks HTTP/1.1 only."""
    prefaced = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        prefaced.append(s)
    deadline = time.monotonic() + served.config.limits.read_timeout + 3
    answers = [_until_closed(s, deadline) for s in prefaced]
    assert all(a is not None and not a.startswith(b"HTTP/1.1 101") for a in answers), answers[:2]
    for s in prefaced:
        s.close()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                  b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")


def test_content_length_and_transfer_encoding_together_are_refused_and_closed(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        out = read_response(s)
        assert out.startswith(b"HTTP/1.1 400") and b"connection: close" in out.lower()
        s.settimeout(3)
        assert s.recv(1) == b""


def test_a_client_that_stops_reading_holds_neither_a_slot_nor_the_connection(tmp_path):
    """Downloads nobody reads: after write_timeout the kernel drops them (TCP_USER_TIMEOUT), and
    while they wait they hold no request slot (max_requests = 2 here)."""
    import os
    import subprocess
    from agentmx import urls
    s = Served(tmp_path, read_timeout=2, write_timeout=2, max_requests=2)
    try:
        sha = s.ctx.store.put_blob(os.urandom(8_000_000))
        url = urls.sign_url("", s.config.url_secret, sha, "application/octet-stream", "a.bin", 3600)
        stalled = []
        for _ in range(3):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", s.port))
            c.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            stalled.append(c)
        time.sleep(1)
        assert Client(s.url, KEY).messages()["messages"] == []      # slots free for everyone else

        def established() -> int:
            out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{s.port} )"],
                                 capture_output=True, text=True).stdout
            return len(out.splitlines())
        deadline = time.monotonic() + 20
        while established() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert established() == 0, "unread downloads must not be kept"
        for c in stalled:
            c.close()
    finally:
        s.running.stop()


def test_mcp_has_the_same_bounds_as_the_api(tmp_path):
    """MCP at /mcp on the API's port behind the same guard (it had a port of its own, and before
    that no guard: a body trickled in was held for good): a slow body is 408, a large one 413."""
    s = Served(tmp_path, read_timeout=2, request_timeout=2)
    try:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                      + KEY.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"jsonrpc\"")
            out = read_response(c)
        assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 6
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
            assert read_response(c).startswith(b"HTTP/1.1 413")
    finally:
        s.running.stop()


def test_a_request_path_cannot_write_a_log_line(served, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="agentmx.serve"):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
            s.sendall(b"GET /x%0aPOST%20/v1/send%20200 HTTP/1.1\r\nHost: x\r\n\r\n")
            read_response(s)
        # the access line is written after the answer: wait for it, then look at every line
        wait_for(lambda: any("/x\\x0aPOST /v1/send 200" in r.getMessage() for r in caplog.records
                             if r.name == "agentmx.serve"), timeout=10, what="serve's line for the request")
    lines = [r.getMessage() for r in caplog.records if r.name == "agentmx.serve"]
    assert any("/x\\x0aPOST /v1/send 200" in line for line in lines)
    assert not any("\n" in line for line in lines)


def test_a_last_event_id_that_is_no_number_starts_the_stream_now(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nLast-Event-ID: \xc2\xb2\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head


def test_a_message_costs_serve_one_read_not_one_per_open_waiter(tmp_path):
    """Every delivered message wakes every open wait and event stream. Each used to query the
    store when woken, so a message cost serve one query per open waiter, for mail none of them was
    waiting for (1,000 waiters: ~120 ms of serve's CPU per message; bench/longpoll).
    Now one read of the new rows serves all of them (api/news.py), and only a waiter that a new
    row may be for queries the index; every one of those still gets its message."""
    s = Served(tmp_path, max_streams_per_key=20)
    socks = []
    try:
        for _ in range(10):
            w = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            w.sendall(f"GET /v1/messages/wait?to=agent@{DOMAIN}&timeout=30 HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {KEY}\r\n\r\n".encode())
            socks.append(w)
        streams = []
        for _ in range(2):
            e = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            e.sendall(f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                      f"Authorization: Bearer {KEY}\r\n\r\n".encode())
            assert e.recv(4096).startswith(b"HTTP/1.1 200")
            streams.append(e)
        socks += streams
        deadline = time.monotonic() + 10
        while s.ctx.streams.count < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        before = s.queries
        for n in range(5):                  # for a key none of the 12 holds
            s.deliver(f"not yours {n}", to=f"other@{DOMAIN}")
            time.sleep(0.2)
        time.sleep(1)
        unrelated = s.queries - before
        # One read per wake-up (a fallback check may add one or two); it was 12 per message.
        assert unrelated <= 5 + 2, f"{unrelated} queries for 5 messages with 12 waiters"
        event_id = s.deliver("yours")
        for w in socks[:10]:
            status, body = status_and_json(read_response(w))
            assert status == 200 and body["message"]["id"] == event_id, body
        for e in streams:
            got = b""
            while b"event: email.received" not in got:
                got += e.recv(65536)
            assert event_id.encode() in got and b"not yours" not in got
    finally:
        for w in socks:
            w.close()
        s.running.stop()
