"""The postgres backend (agentmx/store/postgres.py) and its S3 blob store (agentmx/store/s3.py),
against a private PostgreSQL cluster and SeaweedFS (tests/support/pg.py, s3.py): what is
postgres-specific (row locks, advisory locks across processes, LISTEN/NOTIFY across processes,
the servers going down and coming back) and the interface's semantics as this backend has them
until the shared contract tests (tests/store/test_contract.py) run on it too.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest

from agentmx.store import migrations
from agentmx.store.base import DuplicateEvent, SchemaMismatch, StoreError, StoreUnavailable
from agentmx.store.model import (Attempt, DeliveryState, JobState, PostState, SendRecord, SendState, Suppression,
                                  SuppressionReason)
from agentmx.store.s3 import BlobStore, S3Client

from store.test_contract import SEND, send_event

TESTS = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_event(n: int, recipient: str = "agent+tag@example.com", **extra) -> dict:
    event = {
        "id": f"msg_{n:026d}",
        "type": "email.received",
        "createdAt": "2027-01-15T08:00:00Z",
        "recipient": recipient,
        "from": {"address": f"Sender{n}@Other.example", "name": "S"},
        "subject": f"Hello {n}",
        "messageId": f"<m{n}@other.example>",
        "threadId": f"<t{n % 3}@other.example>",
        "auth": {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none"},
        "raw": {"sha256": hashlib.sha256(f"raw {n}".encode()).hexdigest(), "url": "x"},
        "attachments": [],
    }
    event.update(extra)
    return event


def put(store, n: int, state=DeliveryState.RECEIVED, route="agent@example.com", **extra) -> dict:
    event = make_event(n, **extra)
    assert store.put_event(event, json.dumps(event).encode(), route, state)
    return event


def python_child(code: str, *args: str, **kw) -> subprocess.Popen:
    """Another process (as deliver, or serve on a second host, would be), on the test's Python."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=str(TESTS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --- the test servers ----------------------------------------------------------------------------------

def test_pg_server_is_private_and_on_loopback(pg_server):
    assert pg_server.psql("SHOW listen_addresses").strip() == "127.0.0.1"
    assert pg_server.psql("SHOW fsync").strip() == "off"
    assert pg_server.psql("SHOW password_encryption").strip() == "scram-sha-256"
    assert str(pg_server.base) in pg_server.psql("SHOW unix_socket_directories")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.url_for("agentmx", password="wrong"), connect_timeout=5)


def test_s3_server_wants_signed_requests(s3_server):
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{s3_server.endpoint}/{s3_server.bucket}/anything", timeout=5)
    assert e.value.code == 403
    wrong = S3Client(s3_server.endpoint, s3_server.bucket, s3_server.region, s3_server.access_key, "not-the-key")
    with pytest.raises(StoreUnavailable, match="403 SignatureDoesNotMatch") as e:
        wrong.get("anything")
    assert "not-the-key" not in str(e.value)


# --- the S3 client against SeaweedFS ---------------------------------------------------------------------

@pytest.fixture
def blobs(s3_server):
    client = S3Client(s3_server.endpoint, s3_server.bucket, s3_server.region, s3_server.access_key,
                      s3_server.secret_key)
    store = BlobStore(client, root=f"client-{time.monotonic_ns()}/")
    yield store
    client.close()


def test_s3_put_get_stream_delete_list(blobs):
    big = os.urandom(3 * 1024 * 1024 + 17)
    small = b"raw message\r\n"
    sha_big, sha_small = blobs.put(big), blobs.put(small)
    assert sha_big == hashlib.sha256(big).hexdigest()
    assert blobs.get(sha_big) == big and blobs.get(sha_small) == small
    opened = blobs.open(sha_big)
    assert opened.size == len(big) and opened.sha256 == sha_big
    chunks = list(opened.chunks)
    assert len(chunks) > 1 and max(map(len, chunks)) <= 64 * 1024 and b"".join(chunks) == big
    assert sorted((s, n) for s, n, _ in blobs.list()) == sorted([(sha_big, len(big)), (sha_small, len(small))])
    assert all(abs(m - time.time()) < 300 for _, _, m in blobs.list())
    blobs.delete(sha_big)
    blobs.delete(sha_big)                                   # twice: fine
    assert blobs.get(sha_big) is None and blobs.open(sha_big) is None
    assert [s for s, _, _ in blobs.list()] == [sha_small]
    assert blobs.get("../../etc/passwd") is None and blobs.open("0" * 63) is None


def test_s3_put_is_once(blobs):
    data = b"the same bytes"
    sha = blobs.put(data)
    puts = []
    real = blobs.client.put
    blobs.client.put = lambda *a, **k: (puts.append(a), real(*a, **k))
    assert blobs.put(data) == sha
    assert puts == []                                       # there already: not sent again


def test_s3_list_pages(blobs):
    """ListObjectsV2 pages of 1000: more than one page comes back whole and in order."""
    client = blobs.client
    keys = [f"{blobs.root}many/{i:05d}" for i in range(1003)]
    errors = []

    def put_some(part):
        try:
            for k in part:
                client.put(k, b"x")
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=put_some, args=(keys[i::6],)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert [o.key for o in client.list(f"{blobs.root}many/")] == keys


def test_s3_streaming_abandoned_halfway_frees_the_connection(blobs):
    sha = blobs.put(os.urandom(1024 * 1024))
    chunks = blobs.open(sha).chunks
    next(chunks)
    chunks.close()                                          # the reader went away
    assert blobs.get(sha) is not None                       # the client still works


def test_s3_down_is_store_unavailable(s3_server, blobs):
    sha = blobs.put(b"kept")
    with s3_server.down():
        t = time.monotonic()
        for call in (lambda: blobs.put(b"new"), lambda: blobs.get(sha), lambda: blobs.open(sha),
                     lambda: blobs.delete(sha), lambda: list(blobs.list())):
            with pytest.raises(StoreUnavailable, match="S3"):
                call()
        assert time.monotonic() - t < 5                     # refused at once, not a hang
    assert blobs.get(sha) == b"kept"                        # back, with its data, on a new connection


def test_s3_timeout_is_store_unavailable():
    """A server that accepts and never answers: StoreUnavailable after the timeout."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    try:
        client = S3Client(f"http://127.0.0.1:{srv.getsockname()[1]}", "b", "us-east-1", "a", "s", timeout=0.5)
        t = time.monotonic()
        with pytest.raises(StoreUnavailable, match="timed out"):
            client.get("k")
        assert time.monotonic() - t < 3
    finally:
        srv.close()


def test_s3_5xx_is_store_unavailable():
    """Any 5xx (SlowDown, InternalError...) is StoreUnavailable with S3's code."""
    import http.server
    class H(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            body = b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(503)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = S3Client(f"http://127.0.0.1:{server.server_port}", "b", "us-east-1", "a", "s")
        with pytest.raises(StoreUnavailable, match="HTTP 503 SlowDown"):
            client.put("k", b"x")
    finally:
        server.shutdown()


def test_an_s3_answer_is_read_up_to_its_bound(monkeypatch):
    """The service's answer is input: an endless list answer (or an object larger than any blob
    we keep) is StoreUnavailable after the bound, not read into memory whole."""
    import http.server
    from agentmx.store import s3

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", str(10 << 20))
            self.end_headers()
            try:
                for _ in range(10 << 10):
                    self.wfile.write(b"x" * 1024)
            except OSError:
                pass

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(s3, "OBJECT_MAX", 64 << 10)
    try:
        client = S3Client(f"http://127.0.0.1:{server.server_port}", "b", "us-east-1", "a", "s")
        with pytest.raises(StoreUnavailable, match="an answer of more than 8388608 bytes"):
            next(client.list("blobs/"))
        with pytest.raises(StoreUnavailable, match="an answer of more than 65536 bytes"):
            client.get("blobs/x")
    finally:
        server.shutdown()


def test_sigv4_matches_aws_documented_example():
    """AWS's worked example (GET /test.txt with Range, examplebucket, 2013-05-24): our canonical
    request and signature reproduce the documented signature."""
    import datetime
    from unittest import mock
    client = S3Client("https://s3.amazonaws.com", "examplebucket", "us-east-1", "AKIAIOSFODNN7EXAMPLE",
                      "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    client.base_path = ""
    client.host_header = "examplebucket.s3.amazonaws.com"     # the example is virtual-hosted style
    fixed = datetime.datetime(2013, 5, 24, 0, 0, 0, tzinfo=datetime.timezone.utc)
    with mock.patch("agentmx.store.s3.datetime") as dt:
        dt.datetime.now.return_value = fixed
        dt.timezone = datetime.timezone
        headers = client._sign("GET", "/test.txt", "", {"Range": "bytes=0-9"},
                               hashlib.sha256(b"").hexdigest())
    assert headers["authorization"].endswith(
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in headers["authorization"]


# --- the store: lifecycle ------------------------------------------------------------------------------------

def test_migrate_is_idempotent_and_checked(postgres_store_factory, pg_server):
    store = postgres_store_factory()
    assert store.migrate() == store.migrate() == migrations.LATEST
    store.check_schema()
    name = f"agentmx_empty_{time.monotonic_ns()}"
    url = pg_server.create_database(name)
    try:
        from agentmx.store.postgres import PostgresStore
        bare = PostgresStore(url, store.blobs)
        with pytest.raises(SchemaMismatch, match="store migrate"):
            bare.check_schema()
        bare.close()
    finally:
        pg_server.drop_database(name)


def test_two_hosts_migrating_at_once_apply_each_version_once(postgres_store_factory, pg_server):
    from agentmx.store.postgres import PostgresStore
    store = postgres_store_factory()
    name = f"agentmx_race_{time.monotonic_ns()}"
    url = pg_server.create_database(name)
    try:
        stores = [PostgresStore(url, store.blobs) for _ in range(3)]
        results, errors = [], []

        def run(s):
            try:
                results.append(s.migrate())
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(s,)) for s in stores]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors and results == [migrations.LATEST] * 3
        stores[0].check_schema()
        [s.close() for s in stores]
    finally:
        pg_server.drop_database(name)


# --- events, deliveries, the inbox ---------------------------------------------------------------------------

def test_put_event_once_and_its_retry(postgres_store):
    s = postgres_store
    event = put(s, 1)
    row = s.inbox_row(event["id"])
    assert row.address == "agent@example.com" and row.recipient == "agent+tag@example.com"
    assert row.sender == "sender1@other.example" and row.state is DeliveryState.RECEIVED and not row.read
    assert s.ack(event["id"])
    s.record_attempt(event["id"], Attempt(at=s.clock(), outcome=DeliveryState.DEFERRED, status=500), "HTTP 500")
    put(s, 2)
    # The retry: False; same place, still read, state and attempts kept; the new body.
    body = json.dumps({**event, "subject": "retry"}).encode()
    assert s.put_event(event, body, "agent@example.com", DeliveryState.RECEIVED) is False
    again = s.inbox_row(event["id"])
    assert again.seq == row.seq and again.read and again.state is DeliveryState.DEFERRED   # kept, as its attempts
    assert s.delivery(event["id"]).attempts == 1
    assert s.get_event(event["id"]) == body
    assert s.last_seq() > row.seq
    assert s.get_event("msg_nope") is None


def test_record_attempt_and_recent(postgres_store):
    clock = Clock()
    s = postgres_store
    s.clock = clock
    e1, e2 = put(s, 1), put(s, 2)
    clock.now += 1
    s.record_attempt(e1["id"], Attempt(at=clock.now, outcome=DeliveryState.DEFERRED, status=0, duration_ms=5,
                                       excerpt="refused", webhook_id=e1["id"], queue_id="ABC"), "connect failed")
    clock.now += 1
    d = s.record_attempt(e1["id"], Attempt(at=clock.now, outcome=DeliveryState.DELIVERED, status=200,
                                           webhook_id=e1["id"]), "accepted")
    assert (d.state, d.attempts, d.status, d.reason, d.queue_id) == (DeliveryState.DELIVERED, 2, 200, "accepted", "ABC")
    assert [a.outcome for a in s.attempts(e1["id"])] == [DeliveryState.DEFERRED, DeliveryState.DELIVERED]
    assert s.attempts(e1["id"])[0].excerpt == "refused"
    assert s.inbox_row(e1["id"]).state is DeliveryState.DELIVERED
    assert [x.event_id for x in s.recent_deliveries(5)] == [e1["id"], e2["id"]]
    with pytest.raises(StoreError):
        s.record_attempt("msg_none", Attempt(at=1, outcome=DeliveryState.DELIVERED), "x")


def test_find_event_across_hosts(postgres_store_factory):
    a = postgres_store_factory()
    b = postgres_store_factory(like=a)                      # another MX host, the same database
    event = make_event(7, recipient="Agent@Example.com")
    assert a.put_event(event, json.dumps(event).encode(), "agent@example.com", DeliveryState.RECEIVED, "f" * 64, 0)
    assert b.find_event("agent@example.com", event["messageId"], "f" * 64, since=0) == event["id"]
    assert b.find_event("agent@example.com", event["messageId"], "f" * 64, since=time.time() + 60) is None
    assert b.find_event("other@example.com", event["messageId"], "f" * 64, since=0) is None
    copy = make_event(8, recipient="agent@example.com")
    copy["messageId"] = event["messageId"]
    with pytest.raises(DuplicateEvent) as info:             # host B storing its copy of the message
        b.put_event(copy, json.dumps(copy).encode(), "agent@example.com", DeliveryState.RECEIVED, "f" * 64, 0)
    assert info.value.first == event["id"]


def test_a_version_1_database_migrates_to_fingerprints(postgres_store_factory, pg_server, monkeypatch):
    from agentmx.store.postgres import PostgresStore
    store = postgres_store_factory()
    name = f"agentmx_v1_{time.monotonic_ns()}"
    url = pg_server.create_database(name)
    try:
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        monkeypatch.setattr(migrations, "LATEST", 1)
        old = PostgresStore(url, store.blobs)
        assert old.migrate() == 1
        old.close()
        monkeypatch.undo()
        new = PostgresStore(url, store.blobs)
        with pytest.raises(SchemaMismatch):
            new.check_schema()
        assert new.migrate() == migrations.LATEST
        new.check_schema()
        event = make_event(1)
        new.put_event(event, json.dumps(event).encode(), "agent@example.com", DeliveryState.RECEIVED, "f" * 64, 0)
        assert new.find_event(event["recipient"], event["messageId"], "f" * 64, 0) == event["id"]
        new.close()
    finally:
        pg_server.drop_database(name)


def test_inbox_query_filters(postgres_store):
    s = postgres_store
    put(s, 1, recipient="agent@example.com")
    put(s, 2, recipient="agent+x@example.com", subject="100% off_sale")
    put(s, 3, recipient="other@example.com")
    put(s, 4, recipient="agent@elsewhere.example")
    ids = lambda rows: [r.id[-1] for r in rows]
    assert ids(s.inbox_query(("agent@example.com",))) == ["2", "1"]
    assert ids(s.inbox_query(("@example.com",), oldest_first=True)) == ["1", "2", "3"]
    assert ids(s.inbox_query(("@example.com",), to="Agent+y@Example.com")) == ["2", "1"]
    assert ids(s.inbox_query(("@example.com",), subject="100% OFF")) == ["2"]
    assert ids(s.inbox_query(("@example.com",), subject="%")) == ["2"]      # escaped, not a wildcard
    assert ids(s.inbox_query(("@example.com",), sender="sender3@other.example")) == ["3"]
    assert ids(s.inbox_query(("@example.com",), sender="@Other.Example")) == ["3", "2", "1"]
    assert s.claim(s.inbox_query(("agent@example.com",))[0].id)
    assert ids(s.inbox_query(("@example.com",), unread=True)) == ["3", "1"]
    first = s.inbox_query(("@example.com",), oldest_first=True)[0].seq
    assert ids(s.inbox_query(("@example.com",), after_seq=first, oldest_first=True)) == ["2", "3"]
    assert ids(s.inbox_query(("@example.com",), before_seq=first + 1)) == ["1"]
    assert ids(s.inbox_query(("@example.com",), thread_id="<t1@other.example>")) == ["1"]
    assert ids(s.inbox_query(("@example.com",), limit=1)) == ["3"]
    assert s.inbox_query(()) == []
    assert ids(s.inbox_query(("agent@example.com", "@elsewhere.example"))) == ["4", "2", "1"]


def test_inbox_rows_commit_in_seq_order(postgres_store_factory):
    """While another host's put_event has drawn seq N and not committed, a put_event here waits
    for it: a reader that has seen N+1 can never later find N (an event stream resuming after
    N+1 would miss it)."""
    from agentmx.store.postgres import LOCK_INBOX, LOCK_NS
    s = postgres_store_factory()
    writer = postgres_store_factory(like=s)                 # deliver, in another process
    put(s, 1)
    done = threading.Event()
    with psycopg.connect(s.url) as other:                   # the other host, in its transaction
        other.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_INBOX))
        (drawn,) = other.execute("SELECT nextval('inbox_seq')").fetchone()
        t = threading.Thread(target=lambda: (put(writer, 2), done.set()))
        t.start()
        assert not done.wait(1.0)                           # waits behind the uncommitted seq
        assert [r.id[-1] for r in s.inbox_query(("agent@example.com",), after_seq=drawn - 1)] == []
    t.join(10)                                              # the other transaction ended
    assert done.is_set() and s.inbox_row(make_event(2)["id"]).seq > drawn



def test_send_events_commit_in_seq_order(postgres_store_factory):
    """As inbox rows: while another host's put_send_event has drawn seq N and not committed, one
    here waits for it (a /v1/events cursor past N+1 would never see N)."""
    from agentmx.store.postgres import LOCK_NS, LOCK_SEND_EVENTS
    s = postgres_store_factory()
    writer = postgres_store_factory(like=s)
    assert s.put_send_event(send_event("1"))
    done = threading.Event()
    with psycopg.connect(s.url) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_SEND_EVENTS))
        (drawn,) = other.execute("SELECT nextval('send_events_seq_seq')").fetchone()
        t = threading.Thread(target=lambda: (writer.put_send_event(send_event("2")), done.set()))
        t.start()
        assert not done.wait(1.0)
        assert s.list_send_events(("@agents.test",), after_seq=drawn - 1) == []
    t.join(10)
    assert done.is_set() and s.send_events(SEND)[-1].seq > drawn


def test_claim_send_events_skips_a_row_another_dispatcher_holds(postgres_store):
    """SKIP LOCKED: while another connection holds the oldest due event's row, a claim takes the
    next at once instead of waiting for it or taking the same."""
    s = postgres_store
    s.clock = Clock()
    for name in ("1", "2"):
        s.put_send_event(send_event(name, at=s.clock.now))
    with psycopg.connect(s.url) as other:
        other.execute("SELECT seq FROM send_events WHERE id = 'evt_1' FOR UPDATE")
        t = time.monotonic()
        assert [e.id for e in s.claim_send_events(60)] == ["evt_2"] and time.monotonic() - t < 1
        assert s.claim_send_events(60) == []
    assert [e.id for e in s.claim_send_events(60)] == ["evt_1"]


def test_hostile_text_in_send_events_and_suppressions_is_kept(postgres_store):
    """A report's recipient or an endpoint's answer with NUL or a lone surrogate (PostgreSQL text
    takes neither): kept, the character replaced, not refused."""
    s = postgres_store
    assert s.put_send_event(send_event("nul", recipient="bob\x00@remote.test"))
    s.send_event_posted("evt_nul", PostState.PENDING, "answer \ud800 \x00", 5.0)
    (e,) = s.send_events(SEND)
    assert (e.recipient, e.excerpt) == ("bob\ufffd@remote.test", "answer ? \ufffd")
    assert s.suppress(Suppression("agents.test", "bob\x00@remote.test", SuppressionReason.MANUAL, 0.0, "", "\ud800"))
    assert s.suppressed("agents.test", ["BOB\x00@remote.test"])[0].note == "?"

def test_claim_is_once_across_hosts(postgres_store_factory):
    a = postgres_store_factory(pool_size=4)
    b = postgres_store_factory(like=a, pool_size=4)
    event = put(a, 1)
    won = []
    barrier = threading.Barrier(8)

    def claim(store):
        barrier.wait()
        won.append(store.claim(event["id"]))
    threads = [threading.Thread(target=claim, args=(x,)) for x in (a, b) * 4]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(won) == [False] * 7 + [True]
    assert not a.claim("msg_none") and not a.ack("msg_none")


def test_hostile_text_is_kept_not_refused(postgres_store):
    """NUL and lone surrogates (PostgreSQL text takes neither) do not lose the message."""
    s = postgres_store
    event = make_event(9, subject="a\x00b \udc80 c", threadId="<x\x00y>")
    body = json.dumps(event).encode()
    assert s.put_event(event, body, "agent@example.com", DeliveryState.STORED)
    row = s.inbox_row(event["id"])
    assert row.subject == "a\ufffdb ? c" and s.get_event(event["id"]) == body
    s.record_attempt(event["id"], Attempt(at=1, outcome=DeliveryState.REFUSED, status=406, excerpt="no\x00pe"), "\x00")
    assert s.attempts(event["id"])[0].excerpt == "no\ufffdpe"


# --- sends, jobs, transcripts ----------------------------------------------------------------------------------

def test_sends_and_transcripts(postgres_store):
    s = postgres_store
    rec = SendRecord(id="snd_1", key="agent:a@x", sender="a@x", recipients=("b@y", "c@z"), message_id="<m@x>",
                     queue_id=None, thread_id="<t@x>", in_reply_to=None, reply_to_event="msg_1",
                     state=SendState.QUEUED, created=5.0)
    s.put_send(rec)
    assert s.get_send("snd_1") == rec
    s.put_send(rec.__class__(**{**rec.__dict__, "queue_id": "Q1"}))
    assert s.get_send("snd_1").queue_id == "Q1" and s.get_send("snd_2") is None
    record = {"rounds": [{"role": "user", "text": "hé \u2028"}], "z": 1, "a": 2}
    s.put_transcript("msg_1", record)
    assert s.get_transcript("msg_1") == record and list(s.get_transcript("msg_1")) == ["rounds", "z", "a"]
    assert s.get_transcript("msg_2") is None


def test_job_lifecycle(postgres_store):
    clock = Clock()
    s = postgres_store
    s.clock = clock
    assert s.put_job("msg_a") and not s.put_job("msg_a")
    job = s.claim_job(lease=60)
    assert job.id == "msg_a" and job.state is JobState.RUNNING and s.claim_job(lease=60) is None
    s.job_did("msg_a", "replied")
    assert s.job_failed("msg_a", "model timeout", max_attempts=2, retry_base=30) is JobState.QUEUED
    j = s.job("msg_a")
    assert (j.attempts, j.actions, j.last_error, j.next_at) == (1, ("replied",), "model timeout", clock.now + 30)
    assert s.claim_job(lease=60) is None                    # not due yet
    clock.now += 30
    assert s.claim_job(lease=60).id == "msg_a"
    assert s.job_failed("msg_a", "again", max_attempts=2, retry_base=30) is JobState.PARKED
    assert {k: v for k, v in s.job_counts().items() if v} == {JobState.PARKED: 1}
    assert s.job_requeue("msg_a") and not s.job_requeue("msg_a")
    assert s.job("msg_a").attempts == 0
    job = s.claim_job(lease=60)
    clock.now += 61                                         # the worker died: its lease ran out
    assert s.claim_job(lease=60).id == job.id
    s.job_postpone(job.id, clock.now + 100)
    assert s.job(job.id).state is JobState.QUEUED and s.claim_job(lease=60) is None
    clock.now += 100
    s.claim_job(lease=60)
    s.job_done(job.id)
    assert {k: v for k, v in s.job_counts().items() if v} == {JobState.DONE: 1} and s.job("msg_none") is None


def test_claim_job_skips_a_row_another_worker_holds(postgres_store):
    """SKIP LOCKED: while another connection holds the first job's row (a worker in the middle of
    claiming it), claim_job takes the next one at once instead of waiting or taking the same."""
    clock = Clock()
    s = postgres_store
    s.clock = clock
    s.put_job("msg_1")
    clock.now += 1
    s.put_job("msg_2")
    clock.now += 1
    with psycopg.connect(s.url) as other:
        other.execute("SELECT id FROM jobs WHERE id = 'msg_1' FOR UPDATE")
        t = time.monotonic()
        job = s.claim_job(lease=60)
        assert job.id == "msg_2" and time.monotonic() - t < 1
        assert s.claim_job(lease=60) is None
    assert s.claim_job(lease=60).id == "msg_1"


def test_each_job_is_run_once_by_workers_on_two_hosts(postgres_store_factory):
    a = postgres_store_factory()
    for i in range(40):
        a.put_job(f"msg_{i:03d}")
    code = """
        import sys, json
        sys.path.insert(0, ".")
        from agentmx.store.postgres import PostgresStore
        from agentmx.store.s3 import BlobStore, S3Client
        store = PostgresStore(sys.argv[1], BlobStore(S3Client("http://127.0.0.1:1", "b", "r", "a", "s")))
        got = []
        while (job := store.claim_job(lease=600)) is not None:
            got.append(job.id)
            store.job_done(job.id)
        print(json.dumps(got))
    """
    procs = [python_child(code, a.url) for _ in range(3)]
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        runs.append(json.loads(out))
    taken = [j for r in runs for j in r]
    assert sorted(taken) == [f"msg_{i:03d}" for i in range(40)]        # each exactly once
    assert {k: v for k, v in a.job_counts().items() if v} == {JobState.DONE: 40}


# --- take: limits across processes and hosts ------------------------------------------------------------------------

def test_take_and_give_back(postgres_store):
    clock = Clock()
    s = postgres_store
    s.clock = clock
    keys = [("to:b@y", 2), ("thread:t", 3)]
    assert s.take(keys, 3600) is None
    clock.now += 10
    assert s.take(keys, 3600) is None
    clock.now += 10
    assert s.take(keys, 3600) == ("to:b@y", 3580.0)        # full: the older of its 2 uses leaves in 3580 s
    assert s.take([("thread:t", 3)], 3600) is None          # all or none: the refused take counted nothing
    assert s.take([("thread:t", 3)], 3600) == ("thread:t", 3580.0)
    s.give_back(["thread:t"])
    assert s.take([("thread:t", 3)], 3600) is None
    clock.now += 3581
    assert s.take(keys, 3600) is None                       # the first uses left the window
    assert s.take([("k", 0)], 60) == ("k", 60.0)
    assert s.take([], 60) is None


def test_take_is_atomic_across_processes(postgres_store_factory):
    """Two processes (two hosts' serve) take the same key 40 times each as fast as they can: exactly
    the limit is granted, never more."""
    a = postgres_store_factory()
    code = """
        import sys, time
        sys.path.insert(0, ".")
        from agentmx.store.postgres import PostgresStore
        from agentmx.store.s3 import BlobStore, S3Client
        store = PostgresStore(sys.argv[1], BlobStore(S3Client("http://127.0.0.1:1", "b", "r", "a", "s")))
        store.last_seq()                                    # connected before the start line
        start = float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        print(sum(store.take([("to:x@y", 25), ("thread:" + sys.argv[3], 1000)], 3600) is None for _ in range(40)))
    """
    start = str(time.time() + 2)
    procs = [python_child(code, a.url, start, str(i)) for i in range(2)]
    granted = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        granted.append(int(out))
    assert sum(granted) == 25 and all(g > 0 for g in granted), granted
    with psycopg.connect(a.url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM uses WHERE key = 'to:x@y'").fetchone()[0] == 25


# --- wake-ups across processes ------------------------------------------------------------------------------------------

def test_notify_wakes_a_listener_from_another_process_within_a_second(postgres_store_factory):
    """deliver on another host stores an event: serve's listener here wakes at once (LISTEN/NOTIFY),
    long before its fallback check (set to a minute here) would have."""
    a = postgres_store_factory(pool_size=2)
    code = """
        import sys, json, time
        sys.path.insert(0, ".")
        from agentmx.store.postgres import PostgresStore
        from agentmx.store.model import DeliveryState
        from agentmx.store.s3 import BlobStore, S3Client
        store = PostgresStore(sys.argv[1], BlobStore(S3Client("http://127.0.0.1:1", "b", "r", "a", "s")))
        event = {"id": "msg_" + "9" * 26, "recipient": "agent@example.com", "subject": "s"}
        store.put_event(event, json.dumps(event).encode(), "agent@example.com", DeliveryState.STORED)
        print(time.time())
    """

    async def scenario():
        listener = a.listener(fallback=60.0)
        await listener.start()
        try:
            await asyncio.wait_for(listener.listening.wait(), 10)
            gen = listener.generation
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", textwrap.dedent(code), a.url,
                                                        cwd=str(TESTS), stdout=asyncio.subprocess.PIPE)
            waited = asyncio.create_task(listener.wait(gen, 30))
            out, _ = await proc.communicate()
            committed = float(out)
            new = await waited
            woke = time.time()
            return gen, new, woke - committed
        finally:
            await listener.stop()
    gen, new, delay = asyncio.run(scenario())
    assert new > gen
    assert delay < 1.0, delay
    assert a.inbox_row("msg_" + "9" * 26) is not None


def test_listener_comes_back_after_the_database_restarts(postgres_store_factory, pg_server):
    a = postgres_store_factory(pool_size=2)
    b = postgres_store_factory(like=a)

    async def scenario():
        listener = a.listener(fallback=60.0)
        await listener.start()
        try:
            await asyncio.wait_for(listener.listening.wait(), 10)
            await asyncio.to_thread(pg_server.stop)
            await asyncio.sleep(0.5)
            assert not listener.listening.is_set()
            await asyncio.to_thread(pg_server.start)
            await asyncio.wait_for(listener.listening.wait(), 20)
            gen = listener.generation
            waited = asyncio.create_task(listener.wait(gen, 30))
            t = time.monotonic()
            await asyncio.to_thread(put, b, 5)
            return gen, await waited, time.monotonic() - t
        finally:
            await listener.stop()
            if not pg_server.running:
                pg_server.start()
    gen, new, delay = asyncio.run(scenario())
    assert new > gen and delay < 1.0


# --- faults: the database and the bucket down, then back --------------------------------------------------------------

@pytest.mark.parametrize("pool_size", [1, 4])
def test_database_down_is_store_unavailable_then_recovers(postgres_store_factory, pg_server, pool_size):
    s = postgres_store_factory(pool_size=pool_size, timeout=2.0)
    event = put(s, 1)
    assert s.inbox_row(event["id"]) is not None
    with pg_server.down():
        for call in (lambda: s.inbox_row(event["id"]), lambda: put(s, 2), lambda: s.claim_job(60),
                     lambda: s.take([("k", 1)], 60), lambda: s.metrics(), lambda: s.put_blob(b"x")):
            t = time.monotonic()
            with pytest.raises(StoreUnavailable, match="PostgreSQL") as e:
                call()
            assert time.monotonic() - t < 8
            assert s.url.split(":")[2].split("@")[0] not in str(e.value)     # never the password
    # Back: the same store object works again by itself (broken connections replaced).
    deadline = time.monotonic() + 15
    while True:
        try:
            assert s.inbox_row(event["id"]) is not None
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.2)
    put(s, 3)
    assert [r.id[-1] for r in s.inbox_query(("agent@example.com",))] == ["3", "1"]


def test_bucket_down_is_store_unavailable_and_nothing_half_kept(postgres_store, s3_server):
    s = postgres_store
    sha = s.put_blob(b"raw one")
    with s3_server.down():
        with pytest.raises(StoreUnavailable, match="S3"):
            s.put_blob(b"raw two")
        with pytest.raises(StoreUnavailable, match="S3"):
            s.get_blob(sha)
    with psycopg.connect(s.url) as conn:                    # the failed put left no row behind
        assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1
    assert s.get_blob(sha) == b"raw one"
    assert s.put_blob(b"raw two") == hashlib.sha256(b"raw two").hexdigest()


# --- metrics and gc --------------------------------------------------------------------------------------------------------

def test_metrics_from_counters(postgres_store):
    clock = Clock(1_800_000_000.0)
    s = postgres_store
    s.clock = clock
    e1 = put(s, 1, createdAt="2027-01-15T08:00:00Z")      # latency counts from createdAt (acceptance)
    e2 = put(s, 2, auth={"spf": "fail", "dkim": "none", "dmarc": "fail", "arc": "none"})
    from datetime import datetime, timezone
    t0 = datetime(2027, 1, 15, 8, 0, 0, tzinfo=timezone.utc).timestamp()
    s.record_attempt(e1["id"], Attempt(at=t0 + 0.7, outcome=DeliveryState.DELIVERED, status=200), "ok")
    s.record_attempt(e2["id"], Attempt(at=t0 + 3, outcome=DeliveryState.DEFERRED, status=500), "500")
    s.record_attempt(e2["id"], Attempt(at=t0 + 40, outcome=DeliveryState.DELIVERED, status=200), "ok")
    s.record_attempt(e2["id"], Attempt(at=t0 + 50, outcome=DeliveryState.DELIVERED, status=200), "again")
    m = s.metrics()
    assert m.received == 2 and m.attempts == 4
    assert m.by_state.get(DeliveryState.DELIVERED) == 2 and not m.by_state.get(DeliveryState.RECEIVED)
    assert m.verdicts[("spf", "pass")] == 1 and m.verdicts[("spf", "fail")] == 1 and m.verdicts[("arc", "none")] == 2
    buckets = dict(m.latency_buckets)
    assert buckets[0.5] == 0 and buckets[1.0] == 1 and buckets[30.0] == 1 and buckets[60.0] == 2
    assert m.latency_count == 2 and abs(m.latency_sum - 40.7) < 1e-6


def test_gc_removes_old_records_and_unreferenced_blobs(postgres_store):
    clock = Clock(1_000.0)
    s = postgres_store
    s.clock = clock
    shared = s.put_blob(b"attachment both events carry")
    raw_old, raw_new = s.put_blob(b"old raw"), s.put_blob(b"new raw")
    loose = s.put_blob(b"put, never referenced")
    att = [{"sha256": shared}]
    old = put(s, 1, raw={"sha256": raw_old}, attachments=att)
    s.record_attempt(old["id"], Attempt(at=clock.now, outcome=DeliveryState.DELIVERED, status=200), "ok")
    s.put_job(old["id"])
    s.put_transcript(old["id"], {"x": 1})
    s.put_send(SendRecord(id="snd_old", key="k", sender="a@x", recipients=("b@y",), message_id="<m>", queue_id=None,
                          thread_id=None, in_reply_to=None, reply_to_event=None, state=SendState.QUEUED,
                          created=clock.now))
    s.take([("to:b@y", 5)], 3600)
    clock.now = 5_000.0
    new = put(s, 2, raw={"sha256": raw_new}, attachments=att)
    # An object in the bucket with no row (a gc that could not reach the bucket left it).
    orphan = hashlib.sha256(b"orphan").hexdigest()
    s.blobs.client.put(s.blobs.key(orphan), b"orphan")

    dry = s.gc(older_than=2_000.0, dry_run=True)
    assert (dry.events, dry.blobs) == (1, 2)               # raw_old and loose (the orphan is too new)
    assert s.get_event(old["id"]) is not None and s.get_blob(raw_old) is not None

    report = s.gc(older_than=2_000.0)
    assert (report.events, report.blobs) == (1, 2)
    assert report.bytes == len(b"old raw") + len(b"put, never referenced")
    assert report.other["attempts"] == 1 and report.other["deliveries"] == 1
    assert report.other["jobs"] == 1 and report.other["transcripts"] == 1 and report.other["sends"] == 1
    assert report.other["uses"] == 1
    assert s.get_event(old["id"]) is None and s.inbox_row(old["id"]) is None and s.delivery(old["id"]) is None
    assert s.attempts(old["id"]) == [] and s.job(old["id"]) is None and s.get_transcript(old["id"]) is None
    assert s.get_send("snd_old") is None
    assert s.get_blob(raw_old) is None and s.get_blob(loose) is None
    assert s.get_blob(shared) is not None and s.get_blob(raw_new) is not None   # still referenced
    assert s.get_event(new["id"]) is not None
    m = s.metrics()
    assert m.received == 1 and m.by_state.get(DeliveryState.DELIVERED, 0) == 0
    assert m.by_state[DeliveryState.RECEIVED] == 1 and m.verdicts[("spf", "pass")] == 1
    # The orphan object goes once it is older than the cut (its Last-Modified is real time).
    report = s.gc(older_than=time.time() + 60)
    assert s.get_blob(orphan) is None and report.blobs >= 1
