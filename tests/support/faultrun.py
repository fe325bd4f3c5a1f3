"""One fault run, shared by tests/e2e/test_faults.py and tests/e2e/test_store_faults.py: a batch of signed
messages offered over SMTP (as an MTA's sending side does: a 4xx or a refused connection is
retried shortly), one fault applied while they flow, then Postfix's queue flushed until every
accepted message reached the endpoint. The world `w` has: pf (PostfixInstance), receiver
(support.receiver.Receiver), authserv (the authserv-id our milter writes).

    counts = run_fault(w, key, "name", start, stop, hold=3.0)
        hold: seconds between start() and stop(), or a callable run between them (what the
        test checks while the fault lasts).

Every accepted message must arrive with a 2xx, every copy of one message with the same
webhook-id, every event with our own verification. The counts are printed and reported: sent,
accepted, delivered, duplicates, lost."""
from __future__ import annotations

import email.policy
import json
import os
import queue
import smtplib
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from conftest import report
from e2e_helpers import sign

from .postfix import wait_for

BATCH = int(os.environ.get("AGENTMX_FAULT_BATCH", "100"))
SENDERS = 6
RECIPIENT = "agent@faults.test"


def sender_zone(key) -> dict:
    """DNS for the sending domain: SPF for 127.0.0.1, DMARC p=reject, `key` as DKIM selector s1."""
    return {
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mail.sender.test": {"A": ["127.0.0.1"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        "s1._domainkey.sender.test": {"TXT": [key.txt]},
    }


def take_many_clients(pf) -> None:
    """smtpd answers the senders' many connections and retries without slowing them down."""
    pf.postconf("smtpd_client_connection_rate_limit = 0", "smtpd_error_sleep_time = 0",
                "smtpd_soft_error_limit = 1000", "smtpd_hard_error_limit = 1000")


def make_message(key, tag: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@sender.test>"
    msg["To"] = RECIPIENT
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
        for tag in messages:
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
                    refused = s.sendmail("alice@sender.test", [RECIPIENT], self.messages[tag])
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


def run_fault(w, key, name: str, start, stop, hold=3.0, batch: int = BATCH) -> dict:
    """Send `batch` messages; apply `start` once a quarter are accepted, `stop` after `hold`;
    then flush until every accepted message is delivered. Returns the counts, and the events."""
    pf, receiver = w["pf"], w["receiver"]
    receiver.requests.clear()
    receiver.script.clear()
    receiver.default = (200, 0.0)
    messages = {f"{name}-{i:04d}": make_message(key, f"{name}-{i:04d}") for i in range(batch)}
    sender = Sender(pf.port, messages)
    thread = threading.Thread(target=sender.run, args=(time.monotonic() + 240,), daemon=True)
    thread.start()
    wait_for(lambda: len(sender.accepted) >= batch // 4 or not thread.is_alive(), timeout=120,
             what=f"{batch // 4} messages accepted before the fault")
    start()
    try:
        if callable(hold):
            hold()
        else:
            time.sleep(hold)
    finally:
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
    counts = {"sent": batch, "accepted": len(sender.accepted), "smtp retries": sender.temporary,
              "posts": len(ours), "delivered": len(got), "duplicates": len(ours) - len(ids_by_subject),
              "lost": len(sender.accepted - got)}
    line = f"fault {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    print(line)
    report(line)
    assert counts["lost"] == 0 and counts["accepted"] == batch, line
    assert all(len(ids) == 1 for ids in ids_by_subject.values()), "a retry carried another webhook-id"
    for r in ours:
        if 200 <= r.status < 300:
            auth = json.loads(r.body)["auth"]
            assert auth["authservId"] == w["authserv"] and auth["details"]["note"] is None, auth   # our header was there
            assert auth["dkim"] in ("pass", "temperror") and auth["dkim"] != "fail", auth
    counts["events"] = [json.loads(r.body) for r in ours if 200 <= r.status < 300]
    counts["requests"] = ours
    return counts
