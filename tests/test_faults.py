"""Nothing is lost under faults: a batch of signed messages goes over SMTP into a private Postfix
with the agentmx milter and deliver, while one fault at a time hits the pipeline:

  endpoint-down        the endpoint refuses connections for a while
  endpoint-5xx         it answers 500
  endpoint-slow        it answers after the route's timeout
  endpoint-killed      it reads the POST and drops the connection without answering
  milter-killed        the milter is SIGKILLed under load and restarted
  postfix-restart      Postfix is stopped and started
  data-read-only       the data directory cannot be written
  dns-silent           dns-silent           DNS stops answering
  agentmx-missing      the agentmx program is gone (an upgrade replacing it, a broken install)

The sending side behaves as an MTA does: a 4xx or a refused connection is retried later. After
the fault is lifted and Postfix's queue flushed, every message Postfix accepted must have reached
the endpoint with a 2xx, every copy of one message must carry the same webhook-id, and every event
must carry our own verification (so nothing slipped in while the milter was down). The counts are
printed (and reported): sent, accepted, delivered, duplicates, lost.

AGENTMX_FAULT_BATCH sets the batch size (100 here; docs/hardening.md has a run of 500 each)."""
from __future__ import annotations

import base64
import email.policy
import json
import os
import queue
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest

from conftest import report
from e2e_helpers import RsaKey, sign
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, install_deliver, wait_for
from support.receiver import Receiver

AUTHSERV = "mx.faults.test"
SECRET = "whsec_" + base64.b64encode(b"fault-secret-fault-secret-fault!").decode()
URL_SECRET = "fault-url-secret-0123456789"
AGENTMX = str(Path(sys.executable).with_name("agentmx"))
BATCH = int(os.environ.get("AGENTMX_FAULT_BATCH", "100"))
SENDERS = 6


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture(scope="module")
def world(dns_server, key):
    zone = {
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mail.sender.test": {"A": ["127.0.0.1"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        "s1._domainkey.sender.test": {"TXT": [key.txt]},
    }
    dns_server.set_zone(zone)
    receiver = Receiver()
    pf = PostfixInstance("faults", AUTHSERV)
    data = pf.base / "data-agentmx"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")
    server = "\n".join([f'data_dir = "{data}"', 'public_url = "http://127.0.0.1:8025"', f'url_secret = "{URL_SECRET}"'])
    route = "\n".join(["[[routes]]", 'match = "agent@faults.test"', f'endpoint = "{receiver.url}"',
                       f'secret = "{SECRET}"', "timeout = 2"])
    cfg_path, sock = agentmx_config(pf, AUTHSERV, dns_server.port, milter="trusted_networks = []", server=server,
                                    rest=route, dns_timeout=0.5)
    # The transport runs agentmx through a link the "agentmx missing" fault can take away.
    link = pf.base / "bin" / "agentmx"
    link.parent.mkdir()
    link.symlink_to(AGENTMX)
    install_deliver(pf, cfg_path, "faults.test", str(link))
    # Retries come from the test's flushes, not from Postfix's timers; smtpd answers many clients.
    pf.postconf("smtpd_client_connection_rate_limit = 0", "smtpd_error_sleep_time = 0",
                "smtpd_soft_error_limit = 1000", "smtpd_hard_error_limit = 1000")
    milter = MilterProcess(cfg_path, sock, pf.base / "milter.log").start()
    pf.start()
    w = {"pf": pf, "receiver": receiver, "milter": milter, "data": data, "zone": zone, "dns": dns_server,
         "cfg": cfg_path, "link": link}
    yield w
    w["milter"].stop()
    pf.stop()
    receiver.stop()


def make_message(key, tag: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@sender.test>"
    msg["To"] = "agent@faults.test"
    msg["Subject"] = tag
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content(f"Message {tag}.\n" + "Some text for the body.\n" * 40)
    return sign(msg.as_bytes(policy=email.policy.SMTP), "sender.test", "s1", key)


class Sender:
    """An MTA's sending side in threads: each message is offered until Postfix answers 250;
    a 4xx, a dropped or refused connection means: try again shortly."""

    def __init__(self, port: int, messages: dict[str, bytes]):
        self.port = port
        self.todo: queue.Queue = queue.Queue()
        for tag, raw in messages.items():
            self.todo.put(tag)
        self.messages = messages
        self.accepted: set[str] = set()
        self.rejected: dict[str, str] = {}
        self.temporary = 0
        self.lock = threading.Lock()
        self.sent_count = 0

    def run(self, deadline: float) -> None:
        threads = [threading.Thread(target=self._work, args=(deadline,), daemon=True) for _ in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _work(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                tag = self.todo.get_nowait()
            except queue.Empty:
                return
            with self.lock:
                self.sent_count += 1
            try:
                with smtplib.SMTP("127.0.0.1", self.port, local_hostname="mail.sender.test", timeout=30) as s:
                    refused = s.sendmail("alice@sender.test", ["agent@faults.test"], self.messages[tag])
                if refused:
                    raise smtplib.SMTPRecipientsRefused(refused)
                with self.lock:
                    self.accepted.add(tag)
            except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
                code = getattr(exc, "smtp_code", None) or min(c for c, _ in exc.recipients.values())
                if 400 <= code < 500:
                    self._later(tag)
                else:
                    with self.lock:
                        self.rejected[tag] = str(exc)
            except (OSError, smtplib.SMTPException):
                self._later(tag)

    def _later(self, tag: str) -> None:
        with self.lock:
            self.temporary += 1
        time.sleep(0.3)
        self.todo.put(tag)


def run_fault(w, key, name: str, start, stop, hold: float = 3.0) -> dict:
    """Send BATCH messages; apply `start` once a quarter are accepted, `stop` `hold` seconds later;
    then flush until every accepted message is delivered. Returns the counts."""
    pf, receiver = w["pf"], w["receiver"]
    receiver.requests.clear()
    receiver.script.clear()
    receiver.default = (200, 0.0)
    messages = {f"{name}-{i:04d}": make_message(key, f"{name}-{i:04d}") for i in range(BATCH)}
    sender = Sender(pf.port, messages)
    thread = threading.Thread(target=sender.run, args=(time.monotonic() + 240,), daemon=True)
    thread.start()
    wait_for(lambda: len(sender.accepted) >= BATCH // 4 or not thread.is_alive(), timeout=120,
             what=f"{BATCH // 4} messages accepted before the fault")
    start()
    time.sleep(hold)
    stop()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the sender did not finish"
    assert not sender.rejected, f"permanently refused: {sender.rejected}"

    def delivered() -> set[str]:
        return {json.loads(r.body)["subject"] for r in list(receiver.requests)
                if 200 <= r.status < 300 and json.loads(r.body)["subject"].startswith(name)}

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not sender.accepted <= delivered():
        pf.flush()
        time.sleep(1.0)
    wait_for(lambda: pf.queue_is_empty() or not (sender.accepted <= delivered()), timeout=60, what="an empty queue")
    got = delivered()
    ours = [r for r in list(receiver.requests) if json.loads(r.body)["subject"].startswith(name)]
    ids_by_subject: dict[str, set] = {}
    for r in ours:
        ids_by_subject.setdefault(json.loads(r.body)["subject"], set()).add(r.headers["webhook-id"])
    counts = {"sent": BATCH, "accepted": len(sender.accepted), "smtp retries": sender.temporary,
              "posts": len(ours), "delivered": len(got), "duplicates": len(ours) - len(ids_by_subject),
              "lost": len(sender.accepted - got)}
    line = f"fault {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    print(line)
    report(line)
    assert counts["lost"] == 0 and counts["accepted"] == BATCH, line
    assert all(len(ids) == 1 for ids in ids_by_subject.values()), "a retry carried another webhook-id"
    for r in ours:
        if 200 <= r.status < 300:
            auth = json.loads(r.body)["auth"]
            assert auth["authservId"] == AUTHSERV and auth["details"]["note"] is None, auth   # our header was there
            assert auth["dkim"] in ("pass", "temperror") and auth["dkim"] != "fail", auth
    counts["events"] = [json.loads(r.body) for r in ours if 200 <= r.status < 300]
    return counts


def test_endpoint_down(world, key):
    r = world["receiver"]
    before = world["pf"].log().count("Connection refused")
    run_fault(world, key, "endpoint-down", r.stop, r.start)
    assert world["pf"].log().count("Connection refused") > before      # deliver deferred, saying why


def test_endpoint_5xx(world, key):
    r = world["receiver"]
    run_fault(world, key, "endpoint-5xx", lambda: setattr(r, "default", (500, 0.0)),
              lambda: setattr(r, "default", (200, 0.0)))


def test_endpoint_slow_past_the_timeout(world, key):
    r = world["receiver"]
    run_fault(world, key, "endpoint-slow", lambda: setattr(r, "default", (200, 3.0)),
              lambda: setattr(r, "default", (200, 0.0)), hold=4.0)


def test_endpoint_killed_in_the_middle_of_a_post(world, key):
    r = world["receiver"]
    counts = run_fault(world, key, "endpoint-killed", lambda: setattr(r, "default", (0, 0.0)),
                       lambda: setattr(r, "default", (200, 0.0)))
    assert counts["duplicates"] > 0      # the endpoint saw those POSTs; the retries carry the same id


def test_milter_killed_and_restarted_under_load(world, key):
    m = world["milter"]
    counts = run_fault(world, key, "milter-killed", m.kill, lambda: m.start())
    assert counts["smtp retries"] > 0    # while it was down, Postfix answered 4xx: nothing got in unverified


def test_postfix_stopped_and_started(world, key):
    pf = world["pf"]
    counts = run_fault(world, key, "postfix-restart", lambda: pf.stop(remove=False), pf.start)
    assert counts["smtp retries"] > 0


def test_data_directory_read_only(world, key):
    data = world["data"]

    def lock():
        subprocess.run(["chmod", "-R", "a-w", str(data)], check=True)

    def unlock():
        subprocess.run(["chmod", "-R", "u+w", str(data)], check=True)
    before = world["pf"].log().count("data directory")
    run_fault(world, key, "data-read-only", lock, unlock)
    assert world["pf"].log().count("data directory") > before     # deliver deferred, saying why


def test_dns_stops_answering(world, key):
    resolver = world["dns"].resolver
    counts = run_fault(world, key, "dns-silent", lambda: setattr(resolver, "silent", True),
                       lambda: setattr(resolver, "silent", False))
    unverifiable = [e for e in counts["events"] if "temperror" in (e["auth"]["spf"], e["auth"]["dkim"])]
    assert unverifiable                  # accepted with temperror while DNS was silent, never fail
    assert all(e["auth"]["dmarc"] != "fail" for e in unverifiable)


def test_agentmx_missing_during_an_upgrade(world, key):
    """pipe(8) bounces on an exit status outside sysexits; Python exits 2 when the program is
    gone. The shell wrapper in master.cf.fragment makes that 75: deferred, never bounced."""
    link = world["link"]
    before = world["pf"].log().count("agentmx: not found")

    def remove():
        link.unlink()

    def restore():
        link.symlink_to(AGENTMX)
    run_fault(world, key, "agentmx-missing", remove, restore)
    log = world["pf"].log()
    assert log.count("agentmx: not found") > before and "status=bounced" not in log    # sh said 127: deferred


def test_no_secret_in_any_log(world):
    logs = world["pf"].log() + world["milter"].log()
    assert "faults.test" in logs
    for secret in (SECRET, SECRET.removeprefix("whsec_"), URL_SECRET):
        assert secret not in logs
