"""`agentmx serve`: signed blob URLs over real HTTP. Forged, altered or expired: 403."""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from agentmx import urls
from agentmx.config import parse_config
from agentmx.api.server import start
from agentmx.store import open_store

KEY = "serve-test-secret-0123456789"


@pytest.fixture
def served(tmp_path):
    cfg = parse_config(f'[server]\nauthserv_id = "mx.test"\ndata_dir = "{tmp_path}"\nlisten = "127.0.0.1:0"\n'
                       f'url_secret = "{KEY}"\n', tmp_path / "c.toml")
    running = start(cfg)
    store = open_store(cfg)
    yield running.url, store
    running.stop()


def get(url) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_valid_url_serves_the_blob_with_a_safe_disposition(served):
    base, store = served
    sha = store.put_blob(b"%PDF-1.4 hello")
    url = urls.sign_url(base, KEY, sha, "application/pdf", '../../etc/passwd"\x00.pdf', 60)
    status, body, headers = get(url)
    assert (status, body) == (200, b"%PDF-1.4 hello")
    assert headers["content-type"] == "application/pdf"
    cd = headers["content-disposition"]
    assert cd.startswith('attachment; filename="../../etc/passwd_?.pdf"') or "filename*=UTF-8''" in cd
    assert "\x00" not in cd and '"\x00' not in cd
    assert headers["x-content-type-options"] == "nosniff"


def _tamper(url: str, **changes) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return parts._replace(query=urlencode(q)).geturl()


@pytest.mark.parametrize("change", [
    {"name": "other.pdf"}, {"type": "text/html"}, {"exp": "99999999999"}, {"sig": "0" * 64}, {"sig": ""},
])
def test_altered_url_is_403(served, change):
    base, store = served
    sha = store.put_blob(b"secret bytes")
    url = urls.sign_url(base, KEY, sha, "application/pdf", "a.pdf", 60)
    status, body, _ = get(_tamper(url, **change))
    assert status == 403 and b"secret" not in body


def test_expired_forged_and_other_paths(served):
    base, store = served
    sha = store.put_blob(b"x")
    assert get(urls.sign_url(base, KEY, sha, "text/plain", "a.txt", -1))[0] == 403          # expired
    assert get(urls.sign_url(base, "not-the-key-000000000", sha, "text/plain", "a.txt", 60))[0] == 403
    other = store.put_blob(b"y")
    assert get(urls.sign_url(base, KEY, sha, "text/plain", "a.txt", 60).replace(sha, other))[0] == 403
    assert get(f"{base}/v1/blobs/..%2F..%2Fetc%2Fpasswd?exp=9&type=&name=&sig=")[0] in (403, 404)
    assert get(urls.sign_url(base, KEY, "0" * 64, "text/plain", "gone.txt", 60))[0] == 404  # valid, not stored
    assert get(f"{base}/healthz")[:2] == (200, b"ok\n")
    assert get(f"{base}/etc/passwd")[0] == 404


def test_url_signature_fields_cannot_trade_text():
    """The signature covers an unambiguous encoding: with the old newline-joined one, type
    "a/b" + name "x\\ny" and type "a/b\\nx" + name "y" had the same MAC."""
    sha = "a" * 64
    assert urls._mac(KEY, sha, 9, "text/plain", "x\ny") != urls._mac(KEY, sha, 9, "text/plain\nx", "y")
    good = urls.sign_url("http://h", KEY, sha, "text/plain", "a.txt", 60)
    q = {k: v[0] for k, v in parse_qs(urlsplit(good).query, keep_blank_values=True).items()}
    assert urls.check(KEY, sha, q["exp"], q["type"], q["name"], q["sig"]) == ""
    assert urls.check(KEY, sha, q["exp"], "text/plain\r\nx-evil: 1", q["name"], q["sig"]) == "bad type"
    assert urls.check(KEY, sha, q["exp"], q["type"], "a.txt\r\nSet-Cookie: x=1", q["sig"]) == "bad name"
    assert urls.check(KEY, sha, q["exp"], q["type"], q["name"], "é" * 64) == "bad signature"   # no TypeError


def test_signing_makes_type_and_name_safe_for_headers():
    url = urls.sign_url("http://h", KEY, "b" * 64, "text/html\r\nx-evil: 1", "a\r\nb\u2028c.txt", 60)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}
    assert q["type"] == "application/octet-stream" and q["name"] == "a__b_c.txt"
    assert urls.check(KEY, "b" * 64, q["exp"], q["type"], q["name"], q["sig"]) == ""


def test_a_crlf_in_a_signed_url_never_reaches_a_response_header(served):
    base, store = served
    sha = store.put_blob(b"%PDF")
    url = urls.sign_url(base, KEY, sha, "application/pdf", "r.pdf", 60)
    status, _, headers = get(_tamper(url, name="r.pdf\r\nSet-Cookie: owned=1", type="text/html\r\nX-A: 1"))
    assert status == 403 and "Set-Cookie" not in headers and "X-A" not in headers


def test_a_store_that_fails_is_a_503_and_serve_recovers_by_itself(tmp_path):
    """The store breaks under a running serve (here: its file is not a database): every request
    that needs it gets a JSON 503 `store_unavailable` with Retry-After, nothing else; once the
    store is usable again, the next request is served, without a restart."""
    import json
    from agentmx.api.app import create_app
    from agentmx.api.context import Context
    from agentmx.api.server import start_app
    data = tmp_path / "data"
    cfg = parse_config(f'[server]\nauthserv_id = "mx.test"\ndata_dir = "{data}"\nlisten = "127.0.0.1:0"\n'
                       f'url_secret = "{KEY}"\n[[routes]]\nmatch = "@agents.test"\nmode = "pull"\n'
                       f'[[api_keys]]\nname = "a"\nkey = "amx_store_test_key_0123456789"\nallow = ["@agents.test"]\n',
                       tmp_path / "c.toml")
    data.mkdir()
    (data / "agentmx.sqlite").write_bytes(b"not a database" * 100)
    running = start_app(create_app(Context.for_config(cfg)), cfg.listen, cfg.limits)
    try:
        def messages():
            req = urllib.request.Request(f"{running.url}/v1/messages",
                                         headers={"authorization": "Bearer amx_store_test_key_0123456789"})
            return get(req)
        status, body, headers = messages()
        assert status == 503 and json.loads(body) == {"error": "the store is unavailable; try again shortly",
                                                    "code": "store_unavailable"}
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "5" and str(data) not in body.decode()
        sha = "0" * 64
        assert get(urls.sign_url(running.url, KEY, sha, "text/plain", "a.txt", 60))[0] == 404   # blobs: no SQLite
        (data / "agentmx.sqlite").unlink()
        status, body, _ = messages()
        assert status == 200 and json.loads(body) == {"messages": [], "nextCursor": None}
    finally:
        running.stop()


def test_serve_stopping_never_closes_the_store_under_a_running_call(tmp_path):
    """serve stops while a store call runs in its thread pool (an event stream's query): the store
    is closed only after the call has returned. Closing an SQLite connection another thread runs a
    statement on crashed the test process once (a segfault in a full run)."""
    import http.client
    import threading
    import time
    from agentmx.api.app import create_app
    from agentmx.api.context import Context
    from agentmx.api.server import start_app
    cfg = parse_config(f'[server]\nauthserv_id = "mx.test"\ndata_dir = "{tmp_path}"\nlisten = "127.0.0.1:0"\n'
                       f'url_secret = "{KEY}"\n[[routes]]\nmatch = "@agents.test"\nmode = "pull"\n'
                       f'[[api_keys]]\nname = "a"\nkey = "amx_store_test_key_0123456789"\nallow = ["@agents.test"]\n',
                       tmp_path / "c.toml")
    ctx = Context.for_config(cfg)
    store = ctx.store
    running_calls, closed_under_a_call, entered = [0], [], threading.Event()
    query, close = store.inbox_query, store.close

    def slow_query(*a, **kw):               # the real query, slowly, counted while it runs
        running_calls[0] += 1
        entered.set()
        try:
            time.sleep(6.5)                 # past Hypercorn's graceful timeout (5 s): the stream is cancelled
            return query(*a, **kw)
        finally:
            running_calls[0] -= 1

    def watched_close():
        closed_under_a_call.append(running_calls[0])
        close()
    store.inbox_query, store.close = slow_query, watched_close
    running = start_app(create_app(ctx), cfg.listen, cfg.limits)
    req = urllib.request.Request(f"{running.url}/v1/events", headers={
        "authorization": "Bearer amx_store_test_key_0123456789", "accept": "text/event-stream"})

    def listen():
        try:
            get(req)
        except (OSError, http.client.HTTPException):   # the stream ends with serve
            pass
    threading.Thread(target=listen, daemon=True).start()
    assert entered.wait(10)
    running.stop(timeout=20)
    assert closed_under_a_call == [0]

def _postgres_config(request, tmp_path):
    """serve on the postgres backend (the refresh of blocks.json is for several MX hosts)."""
    from support.backends import store_config
    return parse_config(f'[server]\nauthserv_id = "mx.test"\ndata_dir = "{tmp_path}"\nlisten = "127.0.0.1:0"\n'
                        f'url_secret = "{KEY}"\n[[routes]]\nmatch = "agent@agents.test"\nmode = "pull"\n'
                        '[[routes]]\nmatch = "@agents.test"\nmode = "pull"\n'
                        + store_config(request, "postgres", tmp_path / "secrets", owner="root"),
                        tmp_path / "c.toml")


def test_serve_writes_the_block_list_from_the_store_on_every_host(request, tmp_path, monkeypatch):
    """The milter cannot open the store (no PostgreSQL password): serve writes the store's blocks
    to <data_dir>/blocks.json at start and every blocklist.REFRESH seconds, so a block taken by
    another MX host sharing the store (here: written to the store alone) reaches this host's milter."""
    from agentmx import blocklist
    from support.postfix import wait_for
    monkeypatch.setattr(blocklist, "REFRESH", 0.2)
    cfg = _postgres_config(request, tmp_path)
    store = open_store(cfg)
    store.migrate()
    first, later = f"first{time.time_ns()}@x.test", f"later{time.time_ns()}@y.test"
    store.add_block(first, "agent@agents.test", "msg_1")
    running = start(cfg)
    try:
        snapshot = blocklist.Snapshot(blocklist.path_in(tmp_path), cfg.routes)
        wait_for(lambda: snapshot.blocked(first, "agent@agents.test"), timeout=10, what="the block at start")
        store.add_block(later, "@agents.test", "msg_2")                        # as another host's deliver does
        wait_for(lambda: snapshot.blocked(later, "any@agents.test"), timeout=10, what="the later block")
    finally:
        running.stop()
        store.close()


def test_serve_closes_the_store_only_after_a_block_list_refresh_is_done(request, tmp_path, monkeypatch):
    """The refresh runs in a thread: serve, stopping, waits for it before closing the store (a
    store closed under a running query crashed the process: SIGSEGV, with SQLite)."""
    from agentmx.api import blocks
    from agentmx.store.postgres import PostgresStore
    from support.postfix import wait_for
    seen = []

    def slow_publish(store, data_dir):
        seen.append("publish")
        time.sleep(0.5)
        seen.append("published")
        return False
    close = PostgresStore.close
    monkeypatch.setattr(blocks, "publish", slow_publish)
    monkeypatch.setattr(PostgresStore, "close", lambda self: (seen.append("close"), close(self))[1])
    cfg = _postgres_config(request, tmp_path)
    open_store(cfg).migrate()
    running = start(cfg)
    wait_for(lambda: "publish" in seen, timeout=10, what="the first refresh")
    running.stop()
    assert seen[:3] == ["publish", "published", "close"]
