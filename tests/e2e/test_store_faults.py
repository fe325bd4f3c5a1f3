"""Faults of the postgres backend's servers, nothing lost (issue 14, "Faults, nothing lost").

A private Postfix with the real milter and the shipped pipe transport (deliver as nobody), a real
HTTP endpoint, and `agentmx serve` as a process of its own, on the postgres backend with a
PostgreSQL cluster and a SeaweedFS S3 server OF THIS MODULE's own (stopping them does not disturb
the session's servers the other tests share). While a batch of signed messages flows:

  postgresql-down   PostgreSQL is stopped (fast shutdown: connections cut), then started again
  s3-down           the S3 server is stopped (SIGTERM, then SIGKILL), then started again

Every message waits in Postfix's queue meanwhile (deliver exits 75: status=deferred, the log says
the store), and once the server is back and the queue flushed each reaches the endpoint exactly
once, with one webhook-id: its event id, which no retry changes. Meanwhile serve answers the
inbox and event requests (blobs, for S3) with 503 {"error": ..., "code": "store_unavailable"}:
never a dropped connection, never a traceback; and it recovers by itself, the same process."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e2e_helpers import RsaKey, send
from support import reaper
from support.backends import migrate
from support.faultrun import RECIPIENT, make_message, run_fault, sender_zone, take_many_clients
from support.pg import PgServer
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, free_tcp_port, install_deliver, wait_for
from support.receiver import Receiver
from support.s3 import S3Server
from support.stores import store_section

AUTHSERV = "mx.storefaults.test"
SECRET = "whsec_" + base64.b64encode(b"store-faults-secret-store-faults").decode()
URL_SECRET = "store-fault-url-secret-0123456789"
KEY = "amx_store_faults_key_0123456789abcdef"
AGENTMX = str(Path(sys.executable).with_name("agentmx"))
BATCH = int(os.environ.get("AGENTMX_STORE_FAULT_BATCH", "40"))


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture(scope="module")
def servers():
    """A PostgreSQL cluster and an S3 server for this module alone."""
    pg, s3 = PgServer(), S3Server(bucket="agentmx-store-faults")
    try:
        pg.start()
        s3.start()
        yield pg, s3
    finally:
        s3.close()
        pg.close()


class Serve:
    """`agentmx serve` as a process of its own, as user nobody (the services' user), logging to a file."""

    def __init__(self, cfg: Path, port: int, log: Path):
        self.cfg, self.port, self.log_path = cfg, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Serve":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([AGENTMX, "--config", str(self.cfg), "serve"], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, user="nobody",
                                         group="nogroup", extra_groups=[], start_new_session=True)
        wait_for(self._ready, timeout=30, what=f"agentmx serve on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agentmx serve exited ({self.proc.returncode}): {self.log()[-3000:]}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        reaper.stop_group(self.proc, grace=15)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def get(self, path: str, method: str = "GET", timeout: float = 20) -> tuple[int, dict, bytes]:
        """One request on a connection of its own; a dropped connection raises (OSError or
        http.client's RemoteDisconnected), which the tests do not catch."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers={"authorization": f"Bearer {KEY}", "accept": "text/event-stream"})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def world(servers, dns_server, key):
    pg, s3 = servers
    zone = sender_zone(key)
    dns_server.set_zone(zone)
    receiver = Receiver()
    pf = PostfixInstance("sfaults", AUTHSERV)
    data = pf.base / "data-agentmx"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")
    port = free_tcp_port()
    server = "\n".join([f'data_dir = "{data}"', f'listen = "127.0.0.1:{port}"',
                        f'public_url = "http://127.0.0.1:{port}"', f'url_secret = "{URL_SECRET}"'])
    rest = "\n".join(["[[routes]]", f'match = "{RECIPIENT}"', f'endpoint = "{receiver.url}"', f'secret = "{SECRET}"',
                      "timeout = 2", "[[api_keys]]", 'name = "agent"', f'key = "{KEY}"', f'allow = ["{RECIPIENT}"]',
                      store_section("postgres", pf.base / "secrets", pg, s3, owner="nobody")])
    cfg_path, sock = agentmx_config(pf, AUTHSERV, dns_server.port, milter="trusted_networks = []", server=server,
                                    rest=rest, dns_timeout=0.5)
    migrate(cfg_path)
    install_deliver(pf, cfg_path, "faults.test", AGENTMX)
    take_many_clients(pf)
    milter = MilterProcess(cfg_path, sock, pf.base / "milter.log").start()
    pf.start()
    serve = Serve(cfg_path, port, pf.base / "serve.log").start()
    w = {"pf": pf, "receiver": receiver, "milter": milter, "serve": serve, "pg": pg, "s3": s3, "zone": zone,
         "authserv": AUTHSERV}
    try:
        yield w
    finally:
        serve.stop()
        milter.stop()
        pf.stop()
        receiver.stop()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    return world


def store_deferrals(pf, what: str) -> int:
    """Postfix's deferrals whose reason names the store's server `what` (deliver's exit 75)."""
    return sum(1 for line in pf.log().splitlines() if "status=deferred" in line and what in line)


def assert_unavailable(answer: tuple[int, dict, bytes], what: str) -> None:
    status, headers, body = answer
    assert status == 503, (what, status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (what, headers)
    error = json.loads(body)
    assert error["code"] == "store_unavailable" and error["error"], (what, error)
    assert "Traceback" not in body.decode() and "127.0.0.1" not in body.decode(), (what, body)   # no detail told
    assert headers.get("retry-after"), (what, headers)


def arrived_once(w, counts: dict, name: str) -> None:
    """Every message of the run reached the endpoint exactly once (one 2xx POST, and no other POST
    at all: no message was sent twice), with its event id as webhook-id; the inbox has each once."""
    posts: dict[str, list] = {}
    for r in counts["requests"]:
        posts.setdefault(json.loads(r.body)["subject"], []).append(r)
    assert len(posts) == BATCH and all(len(p) == 1 for p in posts.values()), \
        {s: len(p) for s, p in posts.items() if len(p) != 1}
    for subject, (r,) in posts.items():
        assert 200 <= r.status < 300 and r.headers["webhook-id"] == json.loads(r.body)["id"], subject
    listed = wait_for(lambda: _subjects(w, name), timeout=30, what="the run's messages in the inbox API")
    assert sorted(listed) == sorted(posts), "the inbox lists each message once"


def _subjects(w, name: str) -> list[str]:
    subjects, cursor = [], ""
    while True:
        status, _, body = w["serve"].get(f"/v1/messages?subject={name}&limit=100" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        page = json.loads(body)
        subjects += [m["subject"] for m in page["messages"]]
        cursor = page.get("nextCursor")
        if not cursor:
            return subjects


class StreamReader:
    """An event-stream client as the API asks for one: it reads /v1/events, and when the stream
    ends it connects again with Last-Event-ID after its `retry:` time. Every event it saw, in order."""

    def __init__(self, serve: Serve):
        self.serve = serve
        self.events: list[dict] = []
        self.connects = 0
        self.answers: list[int] = []
        self.last_id = ""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.connects += 1
            conn = http.client.HTTPConnection("127.0.0.1", self.serve.port, timeout=60)
            headers = {"authorization": f"Bearer {KEY}", "accept": "text/event-stream", **({"last-event-id": self.last_id} if self.last_id else {})}
            try:
                conn.request("GET", "/v1/events", headers=headers)
                resp = conn.getresponse()
                self.answers.append(resp.status)
                for raw in resp if resp.status == 200 else ():
                    line = raw.decode().rstrip("\n")
                    if line.startswith("id: "):                  # as EventSource: the last id seen
                        self.last_id = line[4:]
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                    if self.stopped.is_set():
                        return
                if resp.status != 200:
                    resp.read()                            # a 503 while PostgreSQL is down: again later
            except (OSError, http.client.HTTPException):
                self.answers.append(-1)                    # a dropped connection: the test fails on it
            finally:
                conn.close()
            time.sleep(2.0)

    def stop(self) -> None:
        self.stopped.set()


def test_postgresql_stopped_mid_run_everything_waits_and_arrives_once(w, key):
    pf, pg, serve = w["pf"], w["pg"], w["serve"]
    status, _, body = serve.get("/v1/messages?limit=1")
    assert status == 200, body
    pid = serve.proc.pid
    stream = StreamReader(serve)                       # open across the outage
    wait_for(lambda: stream.answers, timeout=10, what="the event stream open")
    before = store_deferrals(pf, "PostgreSQL")
    seen: dict[str, tuple] = {}

    def while_down():
        # Messages keep coming in (the milter needs no store) and wait in Postfix's queue.
        wait_for(lambda: store_deferrals(pf, "PostgreSQL") >= before + 5, timeout=60,
                 what="deliver deferring messages for the store (PostgreSQL down)")
        probes = {path: (path, "GET") for path in (
            "/v1/messages", "/v1/messages?unread=true&limit=5", "/v1/messages/wait?timeout=2", "/v1/events",
            "/v1/threads/some-thread", "/v1/messages/mid-run-not-there",
            # A stream resumed with Last-Event-ID starts (200) and ends at once: the client comes
            # back after `retry:` (an EventSource gives up on a non-200 answer).
            "/v1/events?after=1")}
        probes["POST ack"] = ("/v1/messages/mid-run-not-there/ack", "POST")
        with concurrent.futures.ThreadPoolExecutor(len(probes)) as pool:      # at once: each may wait
            for what, answer in zip(probes, pool.map(lambda p: serve.get(*p), probes.values())):  # for the pool
                seen["resume" if what.endswith("after=1") else what] = answer
        assert "agent@faults.test" in pf.queue()

    counts = run_fault(w, key, "pg-down", pg.stop, pg.start, hold=while_down, batch=BATCH)
    resume = seen.pop("resume")
    assert resume[0] == 200 and resume[2] == b"retry: 2000\nid: 1\n\n", resume
    for what, answer in seen.items():
        assert_unavailable(answer, what)
    try:
        ours = lambda: [e["subject"] for e in stream.events if e["subject"].startswith("pg-down")]  # noqa: E731
        try:
            wait_for(lambda: len(set(ours())) == BATCH, timeout=30, what="every message on the event stream")
        except TimeoutError:
            pytest.fail(f"{len(set(ours()))} of {BATCH} messages on the event stream; its answers {stream.answers}")
        assert len(ours()) == BATCH, "an event came twice on the stream"
        assert -1 not in stream.answers and set(stream.answers) <= {200, 503}, stream.answers
    finally:
        stream.stop()
    assert serve.proc.pid == pid and serve.proc.poll() is None        # recovered by itself: no restart
    arrived_once(w, counts, "pg-down")
    assert store_deferrals(pf, "PostgreSQL") >= before + 5 and "status=bounced" not in pf.log()


def test_s3_stopped_mid_run_everything_waits_and_arrives_once(w, key):
    pf, s3, serve = w["pf"], w["s3"], w["serve"]
    pid = serve.proc.pid
    send(pf.port, "alice@sender.test", [RECIPIENT], make_message(key, "ahead of the S3 fault"))
    event = wait_for(lambda: [e for e in w["receiver"].events() if e.get("subject") == "ahead of the S3 fault"], timeout=30,
                     what="a message before the fault")[0]
    blob = event["raw"]["url"].split(str(serve.port), 1)[1]           # its raw message, a signed URL of serve's
    assert serve.get(blob)[0] == 200
    before = store_deferrals(pf, "S3")
    seen: dict[str, tuple] = {}

    def while_down():
        wait_for(lambda: store_deferrals(pf, "S3") >= before + 5, timeout=90,
                 what="deliver deferring messages for the store (S3 down)")
        seen["blob"] = serve.get(blob)
        seen["list"] = serve.get("/v1/messages?limit=5")       # the index is in PostgreSQL: still there

    counts = run_fault(w, key, "s3-down", s3.stop, s3.start, hold=while_down, batch=BATCH)
    assert_unavailable(seen["blob"], "a blob while S3 is down")
    assert seen["list"][0] == 200, seen["list"]
    assert serve.proc.pid == pid and serve.proc.poll() is None
    arrived_once(w, counts, "s3-down")
    status, _, body = serve.get(blob)                                       # and the blob is back
    assert status == 200 and b"Subject: ahead of the S3 fault" in body, body[:200]
    assert "status=bounced" not in pf.log()


@pytest.mark.parametrize("pool_size", [1, 4], ids=["one-connection", "pool"])
def test_the_first_call_after_a_quick_postgresql_restart_succeeds(servers, pool_size):
    """A restart between two calls (no call while it was down) left the one connection deliver's
    resident front-ends and serve keep looking alive until used: the next call failed with
    StoreUnavailable (a message deferred, a 503) though PostgreSQL was back. A transaction whose
    BEGIN fails has run nothing: it is tried again at once on a new connection."""
    from agentmx.store.base import StoreUnavailable
    from agentmx.store.postgres import PostgresStore
    from agentmx.store.s3 import BlobStore, S3Client
    pg, s3 = servers
    name = f"quick_restart_{pool_size}"
    url = pg.create_database(name)
    client = S3Client(s3.endpoint, s3.bucket, s3.region, s3.access_key, s3.secret_key, timeout=5)
    store = PostgresStore(url, BlobStore(client, root=f"{name}/"), pool_size=pool_size)
    try:
        store.migrate()
        assert store.last_seq() == 0
        pg.stop()
        pg.start()
        assert store.last_seq() == 0                     # at once: not StoreUnavailable
        pg.stop()
        try:
            with pytest.raises(StoreUnavailable, match="PostgreSQL"):   # down: StoreUnavailable, no psycopg error
                store.last_seq()
        finally:
            pg.start()
        assert wait_for(lambda: _answers(store), timeout=15, what="the store working again")
    finally:
        store.close()


def _answers(store) -> bool:
    from agentmx.store.base import StoreUnavailable
    try:
        return store.last_seq() == 0
    except StoreUnavailable:
        return False


def test_serve_answers_at_once_after_a_quick_postgresql_restart(w):
    serve, pg = w["serve"], w["pg"]
    assert serve.get("/v1/messages?limit=1")[0] == 200
    pg.stop()
    pg.start()
    for _ in range(3):
        status, _, body = serve.get("/v1/messages?limit=1")
        assert status == 200, body


def test_serve_answers_every_request_in_seconds_while_postgresql_does_not_answer(w):
    """PostgreSQL's host gone silent (connections accepted by the kernel, never answered: a
    firewall, a hung server): each request waits for its connection at most the connect timeout,
    and they wait side by side. serve kept ONE connection behind a lock although the docs say a
    pool: requests queued for it, each waiting out a 5 s connect in turn (the 6th took ~30 s)."""
    import socket
    serve, pg = w["serve"], w["pg"]
    assert serve.get("/v1/messages?limit=1")[0] == 200
    pg.stop()
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", pg.port))
    hole.listen(64)                                    # accepted by the kernel, never answered
    try:
        def timed(path: str) -> tuple[float, int]:
            t = time.monotonic()
            status = serve.get(path, timeout=120)[0]
            return time.monotonic() - t, status
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(timed, [f"/v1/messages?limit={n}" for n in range(1, 7)]))
    finally:
        hole.close()
        pg.start()
    assert all(status == 503 for _, status in answers), answers
    assert max(took for took, _ in answers) < 15, answers
    assert wait_for(lambda: serve.get("/v1/messages?limit=1")[0] == 200, timeout=20, what="serve answering again")


def test_serve_logged_no_traceback_and_no_secret(w):
    log = w["serve"].log() + w["pf"].log() + w["milter"].log()
    assert "503 for" in w["serve"].log()                     # the store errors were logged, one line each
    assert "Traceback" not in w["serve"].log(), w["serve"].log()[-3000:]
    for secret in (SECRET, KEY, URL_SECRET, w["pg"].password, w["s3"].secret_key, w["s3"].access_key):
        assert secret not in log
    assert re.search(r"status=deferred .*PostgreSQL", w["pf"].log())
