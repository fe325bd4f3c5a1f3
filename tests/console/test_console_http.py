"""The web console over real HTTP, without a browser: sign-in, the session cookie's attributes,
CSRF, the sign-in limit, scopes, and how a message's own HTML is served (tests/console/
test_console_browser.py drives the same pages in Chromium)."""
from __future__ import annotations

import re
import time

import pytest
import requests

from agentmx.api.server import start
from agentmx.config import parse_config
from agentmx.deliver.core import deliver
from agentmx.deliver.outcome import Envelope
from agentmx.store import open_store

KEY_A = "console-key-a-0123456789abcdef"
KEY_B = "console-key-b-0123456789abcdef"
ADMIN = "console-admin-key-0123456789abcdef"

HOSTILE = b"""From: Mallory <mallory@remote.test>
To: a@agents.test
Subject: <script>alert(1)</script> hello
Message-ID: <hostile@remote.test>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><h1>hi</h1><script>document.title='pwned'</script>
<img src="http://127.0.0.1:9/pixel.png" onerror="document.title='err'">
<a href="javascript:alert(2)">click</a></body></html>
"""


def _config(tmp_path, extra: str = ""):
    return parse_config(f'''[server]
authserv_id = "mx.agents.test"
data_dir = "{tmp_path}"
listen = "127.0.0.1:0"
url_secret = "console-url-secret-0123456789"
admin_key = "{ADMIN}"
{extra}
[[routes]]
match = "@agents.test"
mode = "pull"
[[routes]]
match = "@other.test"
mode = "pull"
[[api_keys]]
name = "a"
key = "{KEY_A}"
allow = ["a@agents.test"]
[[api_keys]]
name = "b"
key = "{KEY_B}"
allow = ["@other.test"]
''', tmp_path / "agentmx.toml")


@pytest.fixture
def served(tmp_path):
    cfg = _config(tmp_path)
    store = open_store(cfg)
    running = start(cfg)
    yield running.url, cfg, store
    running.stop()
    store.close()


def put(cfg, store, raw: bytes, rcpt: str, queue_id: str = "Q1") -> str:
    out = deliver(raw, Envelope(sender="mallory@remote.test", recipient=rcpt, queue_id=queue_id), cfg, store=store)
    assert out.exit_code == 0, out
    return store.inbox_query((rcpt,), limit=1)[0].id


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(base: str, key: str) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    page = s.get(f"{base}/console/signin", timeout=5)
    r = s.post(f"{base}/console/signin", data={"key": key, "csrf": csrf_of(page.text), "next": "/console/inbox"},
               timeout=5, allow_redirects=False)
    return s, r


def test_no_session_is_sent_to_sign_in_and_a_key_opens_one(served):
    base, cfg, store = served
    r = requests.get(f"{base}/console/inbox?q=x", timeout=5, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/signin?next=%2Fconsole%2Finbox")
    s, r = sign_in(base, KEY_A)
    assert r.status_code == 303 and r.headers["location"] == "/console/inbox"
    cookie = r.headers["set-cookie"]
    assert "agentmx_console=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/console" in cookie and "Secure" not in cookie          # plain http here: see the next test
    page = s.get(f"{base}/console/inbox", timeout=5)
    assert page.status_code == 200 and "key a" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["cache-control"] == "no-store" and page.headers["x-content-type-options"] == "nosniff"


def test_the_cookie_is_secure_behind_tls(tmp_path):
    cfg = _config(tmp_path, 'public_url = "https://mx.agents.test"')
    running = start(cfg)
    try:
        page = requests.get(f"{running.url}/console/signin", timeout=5)
        assert "Secure" in page.headers["set-cookie"]
        pre = page.cookies["agentmx_console_pre"]         # a client over http would not send it back: by hand
        r = requests.post(f"{running.url}/console/signin", data={"key": KEY_A, "csrf": csrf_of(page.text)},
                          cookies={"agentmx_console_pre": pre}, timeout=5, allow_redirects=False)
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
    finally:
        running.stop()


def test_a_bad_key_a_forged_or_foreign_cookie_and_a_form_without_csrf(served):
    base, cfg, store = served
    s, r = sign_in(base, "not-a-key-at-all-0000000000000")
    assert r.status_code == 401 and 'class="error"' in r.text and "agentmx_console=" not in r.headers.get("set-cookie", "")
    for cookie in ("x.y", "a" * 700, "eyJ.eyJ", ""):
        r = requests.get(f"{base}/console/inbox", cookies={"agentmx_console": cookie}, timeout=5, allow_redirects=False)
        assert r.status_code == 303
    s, r = sign_in(base, KEY_A)
    # sign-out without the session's token: refused; with it: the cookie is cleared
    r = s.post(f"{base}/console/signout", data={"csrf": "nope"}, timeout=5, allow_redirects=False)
    assert r.status_code == 403 and "csrf" in r.text
    r = s.post(f"{base}/console/signout", data={"csrf": csrf_of(s.get(f"{base}/console/inbox").text)},
               headers={"origin": "https://evil.example"}, timeout=5, allow_redirects=False)
    assert r.status_code == 403                          # another site's Origin
    r = s.post(f"{base}/console/signout", data={"csrf": "nope"}, headers={"origin": "null"}, timeout=5,
               allow_redirects=False)
    assert r.status_code == 403                          # Origin null (a sandboxed frame's): the token decides
    # the sign-in form without its pre-session token: login CSRF refused
    r = requests.post(f"{base}/console/signin", data={"key": KEY_A}, timeout=5, allow_redirects=False)
    assert r.status_code == 403 and "agentmx_console=" not in r.headers.get("set-cookie", "")


def test_sign_in_attempts_are_limited_per_client(served):
    base, cfg, store = served
    s = requests.Session()
    codes = []
    for _ in range(12):
        page = s.get(f"{base}/console/signin", timeout=5)
        r = s.post(f"{base}/console/signin", data={"key": "wrong-key-000000000000000000", "csrf": csrf_of(page.text)},
                   timeout=5, allow_redirects=False)
        codes.append(r.status_code)
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    assert "too many" in r.text and r.headers["retry-after"].isdigit()
    _, r = sign_in(base, KEY_A)                           # the right key too, from this address, for now
    assert r.status_code == 429


def test_each_key_sees_its_own_mail_and_the_admin_all(served):
    base, cfg, store = served
    mine = put(cfg, store, HOSTILE.replace(b"hostile@", b"for-a@"), "a@agents.test")
    theirs = put(cfg, store, HOSTILE.replace(b"hostile@", b"for-b@").replace(b"To: a@agents.test", b"To: x@other.test"),
                 "x@other.test", "Q2")
    a, _ = sign_in(base, KEY_A)
    page = a.get(f"{base}/console/inbox", timeout=5).text
    assert mine in page and theirs not in page
    assert a.get(f"{base}/console/messages/{theirs}", timeout=5).status_code == 404
    assert a.get(f"{base}/console/messages/{theirs}/raw", timeout=5).status_code == 404
    assert a.get(f"{base}/console/inbox?to=x@other.test", timeout=5).status_code == 403
    admin, _ = sign_in(base, ADMIN)
    page = admin.get(f"{base}/console/inbox", timeout=5).text
    assert mine in page and theirs in page and "admin (every key)" in page


def test_a_message_is_escaped_and_its_html_served_only_sandboxed(served):
    base, cfg, store = served
    event_id = put(cfg, store, HOSTILE, "a@agents.test")
    s, _ = sign_in(base, KEY_A)
    page = s.get(f"{base}/console/messages/{event_id}", timeout=5)
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "document.title='pwned'" not in page.text.split('id="event"')[0]    # the HTML is not in our page
    assert 'href="javascript:' not in page.text
    assert re.search(r'<iframe id="html-frame"[^>]* sandbox[ >]', page.text)
    frame = s.get(f"{base}/console/messages/{event_id}/html", timeout=5)
    csp = frame.headers["content-security-policy"]
    assert csp.startswith("sandbox;") and "default-src 'none'" in csp and "img-src data:;" in csp
    assert "script-src" not in csp                       # default-src 'none': no script at all
    # remote images: only with the token the page's own button carries (this session, this message);
    # remote=1, which a link in the message could set by navigating its own frame, does nothing
    forged = s.get(f"{base}/console/messages/{event_id}/html?remote=1", timeout=5)
    assert "http:" not in forged.headers["content-security-policy"]
    button = re.search(r'id="load-remote" class="button" href="([^"#]+)', page.text).group(1)
    token = button.split("remote=")[1]
    remote = s.get(f"{base}/console/messages/{event_id}/html?remote={token}", timeout=5)
    assert "img-src data: http: https:" in remote.headers["content-security-policy"]
    other, _ = sign_in(base, KEY_A)                           # another session of the same key: not its token
    assert "http:" not in other.get(f"{base}/console/messages/{event_id}/html?remote={token}",
                                    timeout=5).headers["content-security-policy"]
    raw = s.get(f"{base}/console/messages/{event_id}/raw", timeout=5)
    assert raw.content == HOSTILE and raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["content-disposition"].startswith("attachment")
    assert requests.get(f"{base}/console/messages/{event_id}/html", timeout=5, allow_redirects=False).status_code == 303


def test_bad_input_gets_a_page_not_a_traceback(served):
    base, cfg, store = served
    s, _ = sign_in(base, KEY_A)
    for path, status in (("/console/messages/msg_nope", 404), ("/console/messages/%00%ff", 404),
                         ("/console/inbox?before=abc", 400), ("/console/inbox?q=" + "x" * 300, 400),
                         ("/console/messages/msg_x/attachments/99", 404)):
        r = s.get(base + path, timeout=5)
        assert r.status_code == status, path
        assert "text/html" in r.headers["content-type"] and "Traceback" not in r.text
    token = csrf_of(s.get(f"{base}/console/inbox", timeout=5).text)
    r = s.post(f"{base}/console/signout", data=f"csrf={token}&x=".encode() + b"\xff\xfe",
               headers={"content-type": "application/x-www-form-urlencoded"}, timeout=5)
    assert r.status_code == 400 and "could not be read" in r.text and "Traceback" not in r.text


def test_behind_a_proxy_each_forwarded_client_has_its_own_sign_in_limit(tmp_path):
    """[server] proxy_hops = 1: serve believes its TLS proxy's X-Forwarded-For; without it every
    client of the proxy would share one limit, and one stranger's wrong keys would lock everyone out."""
    cfg = _config(tmp_path, "proxy_hops = 1")
    running = start(cfg)
    try:
        def attempt(client: str, key: str) -> int:
            s = requests.Session()
            page = s.get(f"{running.url}/console/signin", headers={"x-forwarded-for": client}, timeout=5)
            return s.post(f"{running.url}/console/signin", data={"key": key, "csrf": csrf_of(page.text)},
                          headers={"x-forwarded-for": client}, timeout=5, allow_redirects=False).status_code
        assert [attempt("203.0.113.9", "wrong-key-000000000000000000") for _ in range(11)][-1] == 429
        assert attempt("198.51.100.7", KEY_A) == 303              # another person, through the same proxy
        assert attempt("198.51.100.7, 203.0.113.9", KEY_A) == 429  # only the proxy's own hop is believed
    finally:
        running.stop()


def test_the_consoles_live_streams_never_take_the_agents_stream_slots(tmp_path):
    cfg = _config(tmp_path, "max_streams_per_key = 1")
    running = start(cfg)
    try:
        s, _ = sign_in(running.url, KEY_A)
        with s.get(f"{running.url}/console/live", stream=True, timeout=5) as live:
            lines = live.iter_lines()                            # kept: a dropped iterator closes the stream
            assert live.status_code == 200 and next(lines).startswith(b"retry:")
            with requests.get(f"{running.url}/v1/events", headers={"authorization": f"Bearer {KEY_A}",
                                                                  "accept": "text/event-stream"},
                              stream=True, timeout=5) as agent:
                assert agent.status_code == 200                  # the agent's one slot is still its own
            again = s.get(f"{running.url}/console/live", stream=True, timeout=5)
            assert again.status_code == 429                      # the console's own cap
            again.close()
    finally:
        running.stop()


def test_a_burst_of_queue_pages_is_refused_at_once_not_queued(served, monkeypatch):
    """Each queue page runs postqueue (up to 10 s): a third one while two run is a 503 at once, so
    that waiting pages never hold all of serve's request slots."""
    import threading
    from agentmx import ops
    base, cfg, store = served
    gate, inside = threading.Event(), threading.Semaphore(0)

    def slow(*args, **kw):
        inside.release()
        gate.wait(10)
        return ops.QueueRead(error="test: no queue")
    monkeypatch.setattr(ops, "read_queue", slow)
    s, _ = sign_in(base, KEY_A)
    results = []
    readers = [threading.Thread(target=lambda: results.append(s.get(f"{base}/console/queue", timeout=15).status_code))
               for _ in range(2)]
    for t in readers:
        t.start()
    try:
        assert inside.acquire(timeout=5) and inside.acquire(timeout=5)     # both pages are reading the queue
        started = time.monotonic()
        r = s.get(f"{base}/console/queue", timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and "try again" in r.text
        assert time.monotonic() - started < 2                              # at once, not after a wait
    finally:
        gate.set()
        for t in readers:
            t.join(15)
    assert results == [200, 200]


def test_a_refused_form_keeps_the_connection_for_the_next_request(served):
    """A form refused before its body was read (another site's Origin, signed in) was answered
    while the client was still sending it, and serve then closed the kept-alive connection under
    the client's next request (seen as RemoteDisconnected in a full run under load). Here the body
    follows the head late, as it does on a loaded machine."""
    import socket
    base, cfg, store = served
    s, _ = sign_in(base, KEY_A)
    host, port = base.removeprefix("http://").split(":")
    body = b"csrf=" + b"x" * 20000
    head = (f"POST /console/signout HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: https://evil.example\r\n"
            f"Cookie: agentmx_console={s.cookies['agentmx_console']}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        time.sleep(0.3)                                   # the body comes late
        sock.sendall(body + f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        got = b""
        while b"ok\n" not in got:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 403") and got.endswith(b"ok\n"), got[-300:]
