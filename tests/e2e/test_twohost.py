"""Two MX hosts on one store: PostgreSQL + S3 shared by two private Postfix instances.

Host A (mx1.two.test) delivers through the pipe (`agentmx deliver` per message, as nobody); host
B (mx2.two.test) through the LMTP front-end (`agentmx lmtp`, as nobody). Each has its own milter,
its own `agentmx serve` and `agentmx agent` processes (as nobody), and its own authserv-id; both
have the same [store] (one database, one key prefix in the bucket). What the issue asks of them:

  one inbox            mail taken by either host is listed by either serve
  wake-ups             a wait and an event stream on A wake within a second for mail taken by B
  agent jobs           each job is run by one of the two agent workers, never both
  limits               the send limits and the loop breaker count across both serves
  operations           `agentmx status` and `agentmx replay` from either host
  one event            the same message taken by both hosts is one event (deliver/dedup.py)
"""
from __future__ import annotations

import email.policy
import grp
import json
import pwd
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest

from conftest import report
from e2e_helpers import RsaKey, send, sign
from support import reaper
from support.model import ModelServer
from support.postfix import (MilterProcess, PostfixInstance, agentmx_config, free_tcp_port, install_deliver,
                             install_lmtp, install_submit, listening, wait_for)
from support.receiver import Receiver
from support.stores import store_section

from agentmx.client import ApiError, Client
from agentmx.config import Service, load_config
from agentmx.store import open_store
from agentmx.store.model import DeliveryState, JobState

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
DOMAIN = "two.test"
PUSH, PULL, BOT = f"agent@{DOMAIN}", f"inbox@{DOMAIN}", f"bot@{DOMAIN}"
KEY = "amx_twohost_key_for_the_agent_0123456"
SECRET = "whsec_" + "dHdvaG9zdC1zZWNyZXQtdHdvaG9zdC1zZWNyZXQh"
URL_SECRET = "twohost-url-secret-0123456789"     # the same on every host: either serve checks the other's URLs
HOSTS = {"a": ("mx1.two.test", "pipe"), "b": ("mx2.two.test", "lmtp")}


def as_nobody(argv: list[str]) -> list[str]:
    """The services' unprivileged user (postdrop: serve and the agent reach the submission socket)."""
    return ["setpriv", f"--reuid={pwd.getpwnam('nobody').pw_uid}", f"--regid={grp.getgrnam('nogroup').gr_gid}",
            f"--groups={grp.getgrnam('postdrop').gr_gid}", "--inh-caps=-all", "--no-new-privs", *argv]


class Proc:
    """A long-running agentmx process of one host, as nobody, its output in a log file."""

    def __init__(self, cfg: Path, *args: str, log: Path):
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(as_nobody([AGENTMX, "--config", str(cfg), *args]), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.log_path.name} exited: {self.log()[-2000:]}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        reaper.stop_group(self.proc)
        self._log.close()


def host_config(name: str, pf: PostfixInstance, dns_port: int, store: str, receiver: Receiver, model: ModelServer,
                lmtp_sock: Path | None) -> tuple[Path, Path, int]:
    authserv, _ = HOSTS[name]
    data = pf.base / "data-agentmx"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")
    keys = pf.base / "keys"
    keys.mkdir()
    port = free_tcp_port()
    server = "\n".join([f'data_dir = "{data}"', f'key_dir = "{keys}"', f'public_url = "http://127.0.0.1:{port}"',
                        f'url_secret = "{URL_SECRET}"', f'listen = "127.0.0.1:{port}"'])
    worker = f'[worker]\nlmtp_socket = "{lmtp_sock}"\nsocket_mode = "0666"\nprocesses = 1\n' if lmtp_sock else ""
    rest = f"""
[send]
submit = "unix:{install_submit(pf)}"
per_correspondent_per_hour = 3
per_thread_per_hour = 2
[agent]
base_url = "{model.url}"
model = "scripted-1"
api_key = "sk-test-model-key"
[[routes]]
match = "{PUSH}"
endpoint = "{receiver.url}"
secret = "{SECRET}"
timeout = 2
[[routes]]
match = "{PULL}"
mode = "pull"
[[routes]]
match = "{BOT}"
action = "agent"
prompt = "Read the message; do nothing."
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["{PUSH}", "{PULL}"]
{worker}{store}"""
    cfg, sock = agentmx_config(pf, authserv, dns_port, milter="trusted_networks = []", server=server, rest=rest,
                               dns_timeout=0.5)
    return cfg, sock, port


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture(scope="module")
def world(dns_server, pg_server, s3_server, key):
    zone = {
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mail.sender.test": {"A": ["127.0.0.1"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        "s1._domainkey.sender.test": {"TXT": [key.txt]},
    }
    dns_server.set_zone(zone)
    receiver, model = Receiver(), ModelServer()
    database = f"agentmx_twohost_{time.monotonic_ns() % 10**9}"
    pg_server.create_database(database)
    w: dict = {"receiver": receiver, "model": model, "zone": zone, "procs": [], "milters": [], "pfs": []}
    try:
        for name, (authserv, front) in HOSTS.items():
            pf = PostfixInstance(f"2{name}", authserv)
            w["pfs"].append(pf)
            store = store_section("postgres", pf.base / "secrets", pg_server, s3_server, database=database)
            lmtp_sock = pf.base / "run" / "lmtp.sock" if front == "lmtp" else None
            cfg, sock, port = host_config(name, pf, dns_server.port, store, receiver, model, lmtp_sock)
            others = "remote.test=sink: sender.test=sink:"
            if front == "pipe":
                install_deliver(pf, cfg, DOMAIN, AGENTMX, transport_maps=f"inline:{{ {DOMAIN}=agentmx: {others} }}")
            else:
                install_lmtp(pf, cfg, DOMAIN, lmtp_sock, AGENTMX,
                             transport_maps=f"inline:{{ {DOMAIN}=agentmx:unix:{lmtp_sock} {others} }}")
                shutil.chown(lmtp_sock.parent, "nobody", "nogroup")
            w[name] = {"pf": pf, "cfg": cfg, "port": port, "api": f"http://127.0.0.1:{port}", "authserv": authserv}
        migrate = subprocess.run(as_nobody([AGENTMX, "--config", str(w["a"]["cfg"]), "store", "migrate"]),
                                 capture_output=True, text=True, timeout=60)
        assert migrate.returncode == 0, migrate.stderr
        for name in HOSTS:
            h = w[name]
            base = h["pf"].base
            m = MilterProcess(h["cfg"], base / "milter" / "milter.sock", base / "milter.log").start()
            w["milters"].append(m)
            if name == "b":
                lmtp = h["lmtp"] = Proc(h["cfg"], "lmtp", log=base / "lmtp.log")
                w["procs"].append(lmtp)
                wait_for(lambda: lmtp.alive() and (base / "run" / "lmtp.sock").exists(), timeout=30, what="the LMTP socket")
            serve = Proc(h["cfg"], "serve", log=base / "serve.log")
            agent = Proc(h["cfg"], "agent", log=base / "agent.log")
            w["procs"] += [serve, agent]
            h.update(serve=serve, agent=agent, client=Client(h["api"], KEY, timeout=30))
            h["pf"].start()
        for name in HOSTS:
            h = w[name]
            wait_for(lambda: h["serve"].alive() and listening(h["port"]), timeout=30, what=f"serve of host {name}")
        w["store"] = open_store(load_config(w["a"]["cfg"], Service.APP))       # to look at what both wrote
        yield w
    finally:
        if "store" in w:
            w["store"].close()
        for p in w["procs"]:
            p.stop()
        for m in w["milters"]:
            m.stop()
        for pf in w["pfs"]:
            pf.stop()
        receiver.stop()
        model.stop()
        if pg_server.running:
            pg_server.drop_database(database)


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    world["receiver"].default = (200, 0.0)
    world["receiver"].script.clear()
    return world


def message(key, to: str, subject: str, message_id: str | None = None, body: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@sender.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = message_id or make_msgid(domain="sender.test")
    msg.set_content(body or f"{subject}.\nSome text for the body.\n")
    return sign(msg.as_bytes(policy=email.policy.SMTP), "sender.test", "s1", key)


def mail(w, host: str, key, to: str, subject: str, **kw) -> bytes:
    raw = message(key, to, subject, **kw)
    assert send(w[host]["pf"].port, "alice@sender.test", [to], raw) == {}
    return raw


def listed(w, host: str, subject: str) -> list[dict]:
    return [m for m in w[host]["client"].messages(to=PULL, limit=100)["messages"] if m["subject"] == subject]


def posts(w, subject: str) -> list:
    # the route also gets the send events of what its address sent (email.sent ...: no subject)
    return [r for r in list(w["receiver"].requests) if json.loads(r.body).get("subject") == subject]


# --- one inbox ----------------------------------------------------------------------------------------

def test_mail_taken_by_either_host_is_in_one_inbox(w, key):
    mail(w, "a", key, PULL, "taken by A")
    mail(w, "b", key, PULL, "taken by B")
    for host in ("a", "b"):
        wait_for(lambda: listed(w, host, "taken by A") and listed(w, host, "taken by B"), timeout=30,
                 what=f"both messages listed by serve {host}")
    (at_a,), (at_b,) = listed(w, "b", "taken by A"), listed(w, "a", "taken by B")
    assert at_a["auth"]["authservId"] == "mx1.two.test" and at_b["auth"]["authservId"] == "mx2.two.test"
    assert at_a["auth"]["dmarc"] == at_b["auth"]["dmarc"] == "pass"          # each host verified its own
    # B's event, its raw message in the bucket, by the URL B's deliver signed, asked of serve A (as
    # a proxy in front of both serves, at one public_url, would): one url_secret for all hosts.
    url = w["a"]["client"].message(at_b["id"])["raw"]["url"]
    assert url.startswith(w["b"]["api"])
    with urllib.request.urlopen(url.replace(w["b"]["api"], w["a"]["api"]), timeout=10) as resp:
        assert b"Subject: taken by B" in resp.read()


# --- wake-ups across hosts --------------------------------------------------------------------------

def test_a_wait_on_host_a_wakes_within_a_second_for_mail_taken_by_host_b(w, key):
    got: dict = {}

    def waiter():
        got["message"] = w["a"]["client"].wait(to=PULL, subject="wake A from B", timeout=60)
        got["at"] = time.time()
    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(1.0)                                    # the wait is parked at serve A
    mail(w, "b", key, PULL, "wake A from B")
    thread.join(90)
    row = w["store"].inbox_row(got["message"]["id"])
    latency = got["at"] - row.received                # stored at B (the store's clock) -> answered at A
    report(f"two hosts: a wait on A woke {latency * 1000:.0f} ms after B stored the message")
    # A functional requirement of the issue (LISTEN/NOTIFY, not polling: the fallback poll is 3 s),
    # not a benchmark: on this shared CI box the wake-up takes tens of milliseconds.
    assert latency < 1.0, latency


def test_an_event_stream_on_host_a_wakes_within_a_second_for_mail_taken_by_host_b(w, key):
    req = urllib.request.Request(w["a"]["api"] + "/v1/events", headers={"authorization": f"Bearer {KEY}",
                                                                     "accept": "text/event-stream"})
    seen: list = []

    def read():
        with urllib.request.urlopen(req, timeout=60) as resp:
            for raw in resp:
                if raw.startswith(b"data: "):
                    data = json.loads(raw[6:])
                    if data.get("subject") == "streamed from B":
                        seen.append((data, time.time()))
                        return
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(1.0)
    mail(w, "b", key, PULL, "streamed from B")
    thread.join(60)
    (data, at), = seen
    latency = at - w["store"].inbox_row(data["id"]).received
    report(f"two hosts: an event stream on A got B's message {latency * 1000:.0f} ms after it was stored")
    assert latency < 1.0, latency                      # the requirement (see the wait test)


# --- agent jobs -------------------------------------------------------------------------------------

def test_each_agent_job_is_run_by_one_of_the_two_workers(w, key):
    """`agentmx agent` runs on both hosts; jobs come from mail taken by both."""
    subjects = [f"job {i:02d}" for i in range(12)]
    threads = [threading.Thread(target=mail, args=(w, "ab"[i % 2], key, BOT, s)) for i, s in enumerate(subjects)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = w["store"]

    def done() -> list:
        rows = [r for r in store.inbox_query((BOT,), limit=100) if r.subject in subjects]
        return rows if len(rows) == len(subjects) and all(store.job(r.id).state is JobState.DONE for r in rows) else []
    rows = wait_for(done, timeout=60, what="every job done")
    asked = [json.dumps(r["body"]["messages"]) for r in list(w["model"].requests)]
    runs = {s: sum(s in a for a in asked) for s in subjects}
    assert all(n == 1 for n in runs.values()), runs                 # the model was asked once per job
    assert all(store.job(r.id).attempts == 0 for r in rows)           # none failed (attempts counts failures)
    by_host = {h: sum(r.id in w[h]["agent"].log() for r in rows) for h in HOSTS}
    assert sum(by_host.values()) == len(subjects), by_host             # each job in one worker's log
    report(f"two hosts: {len(subjects)} agent jobs, each run once; jobs per worker {by_host}")


# --- limits across hosts ----------------------------------------------------------------------------

def test_send_limits_count_across_both_serves(w):
    ok = []
    for host in ("a", "b", "a"):
        ok.append(w[host]["client"].send(from_=PUSH, to="bob@remote.test", subject=f"note from {host}", text="hi"))
    with pytest.raises(ApiError) as exc:                # the fourth in the hour, at either host
        w["b"]["client"].send(from_=PUSH, to="bob@remote.test", subject="one too many", text="hi")
    assert exc.value.status == 429 and exc.value.code == "rate_limited" and len(ok) == 3


def test_the_loop_breaker_counts_a_thread_across_both_serves(w, key):
    mail(w, "a", key, PULL, "a thread to answer")
    (event,) = wait_for(lambda: listed(w, "a", "a thread to answer"), timeout=30, what="the message")
    w["a"]["client"].reply(event, text="first answer")
    w["b"]["client"].reply(event, text="second answer")
    with pytest.raises(ApiError) as exc:
        w["a"]["client"].reply(event, text="third answer, a loop")
    assert exc.value.status == 429 and "thread" in exc.value.message


# --- operations from either host --------------------------------------------------------------------

def cli(w, host: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(as_nobody([AGENTMX, "--config", str(w[host]["cfg"]), *args]), capture_output=True,
                          text=True, timeout=60)


def test_status_and_replay_work_from_either_host(w, key):
    mail(w, "a", key, PUSH, "pushed via A")
    mail(w, "b", key, PUSH, "pushed via B")
    (via_a,), (via_b,) = (wait_for(lambda s=s: posts(w, s), timeout=30, what=s) for s in ("pushed via A", "pushed via B"))
    ids = {"a": via_a.headers["webhook-id"], "b": via_b.headers["webhook-id"]}
    for host, other in (("a", "b"), ("b", "a")):
        status = cli(w, host, "status", "--postfix-config", str(w[host]["pf"].etc))
        assert status.returncode == 0 and ids["a"] in status.stdout and ids["b"] in status.stdout, status
        replay = cli(w, host, "replay", ids[other])            # an event the other host delivered
        assert replay.returncode == 0 and "HTTP 200" in replay.stdout, replay
    subjects = [json.loads(r.body)["subject"] for r in posts(w, "pushed via A") + posts(w, "pushed via B")]
    assert sorted(subjects) == ["pushed via A", "pushed via A", "pushed via B", "pushed via B"]
    assert {r.headers["webhook-id"] for r in posts(w, "pushed via A")} == {ids["a"]}       # replayed as itself


# --- one event per message --------------------------------------------------------------------------

def test_the_same_message_taken_by_both_hosts_is_one_event(w, key):
    raw = mail(w, "a", key, PUSH, "sent to A, then again to B")
    (first,) = wait_for(lambda: posts(w, "sent to A, then again to B"), timeout=30, what="the first POST")
    event_id = first.headers["webhook-id"]
    assert send(w["b"]["pf"].port, "alice@sender.test", [PUSH], raw) == {}          # a sender retrying at B
    wait_for(lambda: f"duplicate of {event_id}, already delivered" in w["b"]["lmtp"].log(), timeout=30,
             what="B's deliver outcome")
    wait_for(w["b"]["pf"].queue_is_empty, timeout=30, what="B's queue empty")
    assert f"status=sent (250 2.0.0 delivered id={event_id})" in w["b"]["pf"].log()
    time.sleep(0.5)
    assert len(posts(w, "sent to A, then again to B")) == 1                          # no second POST
    assert w["store"].delivery(event_id).attempts == 1
    assert len([r for r in w["store"].inbox_query((PUSH,), limit=100) if r.subject == "sent to A, then again to B"]) == 1


def test_a_copy_at_b_of_a_message_a_deferred_is_delivered_under_a_s_id(w, key):
    """A's POST fails (A keeps the message); the sender's copy reaches B, which delivers it under
    A's event id; A's own retry then finds it delivered and does not POST again."""
    w["receiver"].script = [(500, 0.0)]
    subject = "deferred at A, delivered by B"
    raw = mail(w, "a", key, PUSH, subject)
    wait_for(lambda: "status=deferred" in w["a"]["pf"].log() or None, timeout=30, what="A's deferral")
    assert send(w["b"]["pf"].port, "alice@sender.test", [PUSH], raw) == {}
    wait_for(lambda: len(posts(w, subject)) == 2, timeout=30, what="B's POST")
    w["a"]["pf"].flush()
    wait_for(w["a"]["pf"].queue_is_empty, timeout=30, what="A's queue empty after its retry")
    time.sleep(0.5)
    got = posts(w, subject)
    assert [r.status for r in got] == [500, 200] and len({r.headers["webhook-id"] for r in got}) == 1
    attempts = w["store"].attempts(got[0].headers["webhook-id"])
    assert [a.outcome for a in attempts] == [DeliveryState.DEFERRED, DeliveryState.DELIVERED]


def test_the_same_message_at_both_hosts_at_once_is_one_event(w, key):
    raw = message(key, PULL, "at both hosts at once")
    threads = [threading.Thread(target=send, args=(w[h]["pf"].port, "alice@sender.test", [PULL], raw)) for h in HOSTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in HOSTS:
        wait_for(w[h]["pf"].queue_is_empty, timeout=30, what=f"{h}'s queue empty")
    assert len(listed(w, "a", "at both hosts at once")) == 1


def test_no_secret_in_any_log(w):
    logs = "".join(w[h]["pf"].log() for h in HOSTS) + "".join(p.log() for p in w["procs"]) \
        + "".join(m.log() for m in w["milters"])
    assert "two.test" in logs
    for secret in (SECRET, URL_SECRET, KEY, "sk-test-model-key"):
        assert secret not in logs
    for h in HOSTS:
        for name in ("database.url", "s3.secret"):
            value = (w[h]["pf"].base / "secrets" / name).read_text().strip()
            assert value.rsplit("@", 1)[0].rsplit(":", 1)[-1] not in logs      # the password / secret key
