"""The store's contract (agentmx/store/base.py), method by method, on every backend: what each
docstring promises, its edge cases, and the races two processes (here: two threads, each with
its own connection) must not win together."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
import time

import pytest

from agentmx.store import DuplicateEvent, SchemaMismatch, StoreError, migrations
from agentmx.store.embedded import EmbeddedStore
from agentmx.store.model import (EXCERPT, LATENCY_BUCKETS, Attempt, DeliveryState, JobState, PostState, SendEvent,
                                  SendEventType, SendRecord, SendState, Suppression, SuppressionReason, Upload)

pytestmark = pytest.mark.unit
DAY = 86400.0


def event(n: int, recipient: str = "agent@agents.test", sender: str = "bob@remote.test", subject: str | None = None,
          thread: str | None = None, message_id: str | None = None, auth: dict | None = None,
          blobs: tuple[str, ...] = (), created: str | None = "2026-11-27T19:42:03Z") -> dict:
    """An email.received event as deliver makes it (what the store reads of it)."""
    raw, *attachments = blobs or (hashlib.sha256(f"raw {n}".encode()).hexdigest(),)
    return {"id": f"msg_{n:016d}", "type": "email.received", "createdAt": created, "recipient": recipient,
            "from": {"address": sender, "name": "Bob"}, "subject": subject if subject is not None else f"subject {n}",
            "messageId": message_id or f"<{n}@remote.test>", "threadId": thread or f"<{n}@remote.test>",
            "auth": auth or {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none", "spam": "ham"},
            "raw": {"sha256": raw, "url": None}, "attachments": [{"id": f"msg_{n:016d}:{i}", "sha256": s}
                                                               for i, s in enumerate(attachments, 1)]}


def put(store, n: int, state: DeliveryState = DeliveryState.RECEIVED, route: str = "@agents.test",
        fingerprint: str | None = None, **kw) -> str:
    ev = event(n, **kw)
    assert store.put_event(ev, json.dumps(ev).encode(), route, state, fingerprint) is True
    return ev["id"]


def attempt(store, outcome: DeliveryState, status: int | None = 200, **kw) -> Attempt:
    return Attempt(at=store.clock(), outcome=outcome, status=status, **kw)


def ids(rows) -> list[str]:
    return [r.id for r in rows]


# --- lifecycle --------------------------------------------------------------------------------------

def test_migrate_is_idempotent_and_the_schema_checks(store):
    version = store.migrate()
    assert version >= 1 and store.migrate() == version
    store.check_schema()


# --- blobs ------------------------------------------------------------------------------------------

def test_blobs_are_content_addressed(store):
    data = os.urandom(1000)
    sha = store.put_blob(data)
    assert sha == hashlib.sha256(data).hexdigest() and store.put_blob(data) == sha
    assert store.get_blob(sha) == data
    assert store.put_blob(b"") == hashlib.sha256(b"").hexdigest() and store.get_blob(hashlib.sha256(b"").hexdigest()) == b""


def test_has_blob_says_whether_a_blob_is_kept(store):
    sha = store.put_blob(b"kept bytes")
    assert store.has_blob(sha) is True
    assert store.has_blob("0" * 64) is False
    for bad in ("../" * 10 + "etc/passwd", "A" * 64, "0" * 63, ""):
        assert store.has_blob(bad) is False


def test_missing_or_malformed_blob_names_are_none(store):
    assert store.get_blob("0" * 64) is None and store.open_blob("0" * 64) is None
    for bad in ("../" * 10 + "etc/passwd", "A" * 64, "0" * 63, "", "0" * 64 + "/"):
        assert store.get_blob(bad) is None and store.open_blob(bad) is None


def test_open_blob_streams_in_chunks(store):
    data = os.urandom(3 * 1024 * 1024 + 17)
    sha = store.put_blob(data)
    blob = store.open_blob(sha)
    assert (blob.sha256, blob.size) == (sha, len(data))
    chunks = list(blob.chunks)
    assert len(chunks) > 1 and b"".join(chunks) == data


# --- events -----------------------------------------------------------------------------------------

def test_put_event_keeps_the_event_its_inbox_row_and_its_delivery(store, clock):
    ev = event(1, recipient="Agent+News@Agents.test", sender="Bob@Remote.test", subject="Hello", thread="<t@x>")
    body = json.dumps(ev).encode()
    assert store.put_event(ev, body, "@agents.test", DeliveryState.RECEIVED) is True
    assert store.get_event(ev["id"]) == body
    row = store.inbox_row(ev["id"])
    assert (row.address, row.recipient, row.sender, row.subject, row.thread_id) == (
        "agent@agents.test", "agent+news@agents.test", "bob@remote.test", "Hello", "<t@x>")
    assert (row.state, row.read, row.received) == (DeliveryState.RECEIVED, False, clock.now)
    d = store.delivery(ev["id"])
    assert (d.event_id, d.route, d.recipient, d.state, d.attempts, d.created) == (
        ev["id"], "@agents.test", "agent+news@agents.test", DeliveryState.RECEIVED, 0, clock.now)
    assert store.get_event("msg_" + "9" * 16) is None and store.inbox_row("msg_" + "9" * 16) is None
    assert store.delivery("msg_" + "9" * 16) is None and store.attempts("msg_" + "9" * 16) == []


def test_a_second_put_keeps_place_read_flag_state_and_attempts(store, clock):
    first = put(store, 1)
    put(store, 2)
    store.record_attempt(first, attempt(store, DeliveryState.DEFERRED, 500), "HTTP 500")
    store.ack(first)
    seq = store.inbox_row(first).seq
    clock.advance(60)
    again = event(1)
    again["subject"] = "signed anew"
    assert store.put_event(again, json.dumps(again).encode(), "@agents.test", DeliveryState.RECEIVED) is False
    row = store.inbox_row(first)
    assert (row.seq, row.read, row.state) == (seq, True, DeliveryState.DEFERRED)
    assert store.delivery(first).attempts == 1 and len(store.attempts(first)) == 1
    assert json.loads(store.get_event(first))["subject"] == "signed anew"       # the body as last sent
    assert len(store.inbox_query(("@agents.test",))) == 2 and store.metrics().received == 2    # no second row


FP = "f" * 64


def test_find_event_by_recipient_message_id_and_fingerprint_within_since(store, clock):
    ev = event(1, recipient="agent@agents.test", message_id="<same@remote.test>")
    assert store.put_event(ev, json.dumps(ev).encode(), "@agents.test", DeliveryState.RECEIVED, FP) is True
    e = ev["id"]
    put(store, 2, message_id="<same@remote.test>")                      # kept without a fingerprint
    assert store.find_event("agent@agents.test", "<same@remote.test>", FP, clock.now - 60) == e
    assert store.find_event("Agent@Agents.test", "<same@remote.test>", FP, clock.now - 60) == e
    assert store.find_event("other@agents.test", "<same@remote.test>", FP, clock.now - 60) is None
    assert store.find_event("agent@agents.test", "<other@remote.test>", FP, clock.now - 60) is None
    assert store.find_event("agent@agents.test", "<same@remote.test>", "e" * 64, clock.now - 60) is None
    assert store.find_event("agent@agents.test", "<same@remote.test>", FP, clock.now + 1) is None
    assert store.find_event("agent@agents.test", "", FP, clock.now - 60) is None
    assert store.find_event("agent@agents.test", "<same@remote.test>", "", clock.now - 60) is None


def test_find_event_gives_the_first_of_several(store, clock):
    ids_ = []
    for n in (1, 2):
        ev = event(n, message_id="<same@remote.test>")
        store.put_event(ev, json.dumps(ev).encode(), "@agents.test", DeliveryState.RECEIVED, FP)   # no `since`: kept
        ids_.append(ev["id"])
        clock.advance(1)
    assert store.find_event("agent@agents.test", "<same@remote.test>", FP, clock.now - 60) == ids_[0]


def test_put_event_with_since_refuses_a_second_copy(store, clock):
    first = event(1, message_id="<same@remote.test>", blobs=("a" * 64,))
    assert store.put_event(first, json.dumps(first).encode(), "@agents.test", DeliveryState.RECEIVED, FP,
                           clock.now - DAY) is True
    copy = event(2, message_id="<same@remote.test>", blobs=("b" * 64,))
    with pytest.raises(StoreError) as info:
        store.put_event(copy, json.dumps(copy).encode(), "@agents.test", DeliveryState.RECEIVED, FP, clock.now - DAY)
    assert isinstance(info.value, DuplicateEvent) and info.value.first == first["id"]
    assert store.get_event(copy["id"]) is None and store.delivery(copy["id"]) is None     # nothing written
    assert len(store.inbox_query(("@agents.test",))) == 1 and store.metrics().received == 1
    # the first copy's own retry is a retry, not a duplicate
    assert store.put_event(first, json.dumps(first).encode(), "@agents.test", DeliveryState.RECEIVED, FP,
                           clock.now - DAY) is False
    # another body (a forgery with the same Message-ID), another recipient, or outside the window: kept
    for n, kw, fp, since in ((3, {}, "e" * 64, clock.now - DAY), (4, {"recipient": "other@agents.test"}, FP,
                                                                  clock.now - DAY), (5, {}, FP, clock.now + 1)):
        other = event(n, message_id="<same@remote.test>", **kw)
        assert store.put_event(other, json.dumps(other).encode(), "@agents.test", DeliveryState.RECEIVED, fp,
                               since) is True, n
    # no Message-ID: never a duplicate
    for n in (6, 7):
        bare = event(n)
        bare["messageId"] = None
        assert store.put_event(bare, json.dumps(bare).encode(), "@agents.test", DeliveryState.RECEIVED, FP,
                               clock.now - DAY) is True


def test_a_retry_under_the_first_id_adds_the_blobs_it_names(store, clock):
    raw_a, raw_b = store.put_blob(b"copy at host A"), store.put_blob(b"copy at host B")
    clock.advance(2 * DAY)
    ev = event(1, blobs=(raw_a,))
    store.put_event(ev, json.dumps(ev).encode(), "@agents.test", DeliveryState.RECEIVED)
    again = event(1, blobs=(raw_b,))              # host B's copy delivered under the first id
    assert store.put_event(again, json.dumps(again).encode(), "@agents.test", DeliveryState.RECEIVED) is False
    report = store.gc(clock.now - DAY)            # the blobs are old, the event is not
    assert (report.events, report.blobs) == (0, 0)
    assert store.get_blob(raw_b) == b"copy at host B" and store.get_blob(raw_a) == b"copy at host A"


def test_two_copies_put_at_once_keep_one_event(store, clock):
    """Two hosts (here: two threads, each with its own connection) storing one message at once."""
    for n in range(1, 11):
        barrier, results = threading.Barrier(2), []
        copies = [event(100 * n + k, message_id=f"<race-{n}@remote.test>") for k in (1, 2)]

        def put_copy(ev, barrier=barrier, results=results):
            barrier.wait()
            try:
                store.put_event(ev, json.dumps(ev).encode(), "@agents.test", DeliveryState.RECEIVED, FP,
                                clock.now - DAY)
                results.append(ev["id"])
            except DuplicateEvent as exc:
                results.append(("duplicate of", exc.first))
        threads = [threading.Thread(target=put_copy, args=(c,)) for c in copies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kept = [r for r in results if isinstance(r, str)]
        assert len(kept) == 1 and [r for r in results if r not in kept] == [("duplicate of", kept[0])], results


# --- deliveries and attempts ------------------------------------------------------------------------

def test_record_attempt_appends_and_sets_the_state(store, clock):
    e = put(store, 1)
    clock.advance(5)
    d = store.record_attempt(e, attempt(store, DeliveryState.DEFERRED, 503, duration_ms=120, excerpt="busy",
                                        webhook_id=e, queue_id="4ABC"), "HTTP 503, Retry-After 120")
    assert (d.state, d.attempts, d.status, d.reason, d.queue_id, d.updated) == (
        DeliveryState.DEFERRED, 1, 503, "HTTP 503, Retry-After 120", "4ABC", clock.now)
    clock.advance(5)
    d = store.record_attempt(e, attempt(store, DeliveryState.DELIVERED, 200, excerpt="x" * 1000, webhook_id=e,
                                        queue_id=None), "accepted")
    assert (d.state, d.attempts, d.status, d.queue_id) == (DeliveryState.DELIVERED, 2, 200, "4ABC")
    assert store.delivery(e) == d and store.inbox_row(e).state is DeliveryState.DELIVERED
    first, second = store.attempts(e)
    assert (first.outcome, first.status, first.duration_ms, first.excerpt, first.webhook_id, first.queue_id) == (
        DeliveryState.DEFERRED, 503, 120, "busy", e, "4ABC")
    assert second.outcome is DeliveryState.DELIVERED and second.excerpt == "x" * EXCERPT and second.at == clock.now
    no_post = store.record_attempt(put(store, 2), attempt(store, DeliveryState.HELD, None), "kept aside")
    assert no_post.status is None and store.attempts(no_post.event_id)[0].status is None


def test_record_attempt_of_an_unknown_event_is_a_store_error(store):
    with pytest.raises(StoreError):
        store.record_attempt("msg_" + "9" * 16, attempt(store, DeliveryState.DELIVERED), "x")


def test_recent_deliveries_newest_change_first(store, clock):
    a, b, c = (put(store, n) for n in (1, 2, 3))
    clock.advance(1)
    store.record_attempt(a, attempt(store, DeliveryState.DELIVERED), "accepted")
    assert [d.event_id for d in store.recent_deliveries()] == [a, c, b]
    assert [d.event_id for d in store.recent_deliveries(limit=2)] == [a, c]


def test_list_deliveries_by_scope_state_and_cursor_with_the_last_answer(store, clock):
    a = put(store, 1, recipient="agent@agents.test", subject="first")
    b = put(store, 2, recipient="Other+tag@Agents.test")
    c = put(store, 3, recipient="agent@sub.agents.test")
    d = put(store, 4, recipient="agent+x@agents.test", sender="eve@remote.test")
    clock.advance(1)
    store.record_attempt(a, attempt(store, DeliveryState.DEFERRED, 503, excerpt="busy"), "busy")
    store.record_attempt(a, attempt(store, DeliveryState.DELIVERED, 200, excerpt='{"ok":true}'), "accepted")
    store.record_attempt(d, attempt(store, DeliveryState.REFUSED, 406, excerpt="<b>x</b>"), "refused")

    def listed(*scope, **kw) -> list[str]:
        return [r.delivery.event_id for r in store.list_deliveries(scope, **kw)]
    assert listed("agent@agents.test") == listed("Agent@AGENTS.test") == [d, a]      # newest event first
    assert listed("@agents.test") == [d, b, a]                                         # not its subdomains
    assert listed("@Agents.test", "agent@sub.agents.test") == [d, c, b, a]
    assert listed() == [] and listed("@gents.test") == [] and listed("%@agents.test") == []
    assert listed("@agents.test", state=DeliveryState.DELIVERED) == [a]
    assert listed("@agents.test", state=DeliveryState.RECEIVED) == [b]
    seqs = {r.delivery.event_id: r.seq for r in store.list_deliveries(("@agents.test",))}
    assert listed("@agents.test", before_seq=seqs[b]) == [a]
    assert listed("@agents.test", limit=2) == [d, b] and listed("@agents.test", limit=0) == [d]
    rows = {r.delivery.event_id: r for r in store.list_deliveries(("@agents.test",))}
    assert rows[a].delivery == store.delivery(a) and rows[a].delivery.attempts == 2
    assert (rows[a].excerpt, rows[a].subject, rows[a].sender) == ('{"ok":true}', "first", "bob@remote.test")
    assert (rows[d].excerpt, rows[d].sender, rows[b].excerpt) == ("<b>x</b>", "eve@remote.test", "")


# --- the inbox --------------------------------------------------------------------------------------

def test_inbox_query_scopes_by_address_and_domain(store):
    a = put(store, 1, recipient="agent+x@agents.test")
    b = put(store, 2, recipient="other@agents.test")
    c = put(store, 3, recipient="agent@elsewhere.test")
    assert ids(store.inbox_query(("agent@agents.test",))) == [a]
    assert ids(store.inbox_query(("Agent@Agents.test",))) == [a]
    assert ids(store.inbox_query(("@agents.test",))) == [b, a]
    assert ids(store.inbox_query(("@agents.test", "agent@elsewhere.test"))) == [c, b, a]
    assert store.inbox_query(()) == [] and store.inbox_query(("@gents.test",)) == []
    assert ids(store.inbox_query(("@agents.test",), to="Agent+other@agents.test")) == [a]


def test_inbox_query_filters(store, clock):
    a = put(store, 1, sender="bob@remote.test", subject="Your code 100%_done", thread="<t1@x>")
    clock.advance(10)
    b = put(store, 2, sender="alice@signup.remote.test", subject="Welcome", thread="<t1@x>")
    c = put(store, 3, sender="carol@other.test", subject="100 percent")
    scope = ("@agents.test",)
    assert ids(store.inbox_query(scope, sender="Bob@remote.test")) == [a]
    assert ids(store.inbox_query(scope, sender="@remote.test")) == [a]         # that domain, not its subdomains
    assert ids(store.inbox_query(scope, sender="remote.test")) == [a]
    assert ids(store.inbox_query(scope, sender="@signup.remote.test")) == [b]
    assert ids(store.inbox_query(scope, sender="@mote.test")) == []
    assert ids(store.inbox_query(scope, subject="100%_")) == [a]            # % and _ are literal
    assert ids(store.inbox_query(scope, subject="100")) == [c, a]
    assert ids(store.inbox_query(scope, since=clock.now)) == [c, b]
    assert ids(store.inbox_query(scope, thread_id="<t1@x>", oldest_first=True)) == [a, b]
    store.ack(b)
    assert ids(store.inbox_query(scope, unread=True)) == [c, a]


def test_inbox_pages_by_seq(store):
    rows = [put(store, n) for n in range(1, 8)]
    scope = ("@agents.test",)
    first = store.inbox_query(scope, limit=3)
    assert ids(first) == rows[::-1][:3]
    assert ids(store.inbox_query(scope, before_seq=first[-1].seq, limit=3)) == rows[::-1][3:6]
    assert ids(store.inbox_query(scope, after_seq=store.inbox_row(rows[4]).seq, oldest_first=True)) == rows[5:]
    assert len(store.inbox_query(scope, limit=0)) == 1                      # at least one
    assert store.last_seq() == store.inbox_row(rows[-1]).seq
    assert [r.seq for r in store.inbox_query(scope, oldest_first=True)] == sorted(r.seq for r in first + store.inbox_query(
        scope, before_seq=first[-1].seq))


def test_last_seq_of_an_empty_store_is_zero(store):
    assert store.last_seq() == 0


def test_ack_and_claim(store):
    e = put(store, 1)
    assert store.claim(e) is True and store.claim(e) is False
    assert store.inbox_row(e).read is True
    f = put(store, 2)
    assert store.ack(f) is True and store.ack(f) is True and store.claim(f) is False
    assert store.ack("msg_" + "9" * 16) is False and store.claim("msg_" + "9" * 16) is False


def test_claim_is_true_for_exactly_one_of_two_threads(store):
    events = [put(store, n) for n in range(1, 21)]
    for e in events:
        barrier, results = threading.Barrier(2), []

        def claim(e=e, barrier=barrier, results=results):
            barrier.wait()
            results.append(store.claim(e))
        threads = [threading.Thread(target=claim) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, True], e


def woken_by(store, put, *args) -> tuple[bool, float]:
    """Whether put(*args) in another thread wakes a listener of the store, and how soon (the
    fallback check is set to 30 s: only the backend's own signal counts)."""
    async def main():
        listener = store.listener(fallback=30)
        await listener.start()
        try:
            loop = asyncio.get_running_loop()
            generation = listener.generation
            started = loop.time()
            loop.run_in_executor(None, put, *args)
            woken = await listener.wait(generation, 5)
            return woken != generation, loop.time() - started
        finally:
            await listener.stop()
    return asyncio.run(main())


def test_a_put_wakes_a_listener(store):
    """Within a second, by the backend's own signal."""
    woken, took = woken_by(store, put, store, 1)
    assert woken and took < 1.0, took


# --- sends ------------------------------------------------------------------------------------------

def test_sends(store, clock):
    rec = SendRecord(id="snd_" + "a" * 26, key="agent", sender="agent@agents.test",
                     recipients=("bob@remote.test", "carol@remote.test"), message_id="<m@agents.test>",
                     queue_id="4XYZ", thread_id="<t@remote.test>", in_reply_to="<p@remote.test>",
                     reply_to_event="msg_" + "1" * 16, state=SendState.QUEUED, created=clock.now)
    store.put_send(rec)
    assert store.get_send(rec.id) == rec
    assert store.get_send("snd_" + "b" * 26) is None
    bare = SendRecord("snd_" + "c" * 26, "k", "a@agents.test", ("b@x.test",), "<n@agents.test>", None, None, None,
                      None, SendState.QUEUED, clock.now)
    store.put_send(bare)
    assert store.get_send(bare.id) == bare


# --- agent jobs -------------------------------------------------------------------------------------

def test_jobs_queue_claim_and_lease(store, clock):
    a = "msg_" + "a" * 16
    assert store.put_job(a) is True and store.put_job(a) is False              # a retried delivery
    job = store.claim_job(lease=60)
    assert (job.id, job.state, job.attempts, job.actions) == (a, JobState.RUNNING, 0, ())
    assert store.claim_job(lease=60) is None                                     # leased
    clock.advance(61)                                                            # the worker died
    assert store.claim_job(lease=60).id == a
    store.job_did(a, "replied")
    store.job_did(a, "forwarded:h@x.test")
    assert store.job(a).actions == ("replied", "forwarded:h@x.test")
    store.job_done(a)
    assert store.job(a).state is JobState.DONE and store.claim_job(lease=60) is None
    assert store.job("msg_" + "z" * 16) is None


def test_jobs_are_taken_in_due_order(store, clock):
    a, b = "msg_" + "a" * 16, "msg_" + "b" * 16
    store.put_job(a)
    clock.advance(1)
    store.put_job(b)
    store.job_postpone(a, clock.now + 100)
    assert store.claim_job(3600).id == b and store.claim_job(3600) is None
    clock.advance(101)
    assert store.claim_job(3600).id == a


def test_job_failures_back_off_then_park_and_requeue(store, clock):
    a = "msg_" + "a" * 16
    store.put_job(a)
    store.claim_job(60)
    assert store.job_failed(a, "model down " + "x" * 5000, max_attempts=3, retry_base=10) is JobState.QUEUED
    job = store.job(a)
    assert (job.attempts, job.next_at, job.last_error[:10]) == (1, clock.now + 10, "model down")
    assert len(job.last_error) <= 1000
    assert store.claim_job(60) is None
    clock.advance(10)
    store.claim_job(60)
    assert store.job_failed(a, "again", 3, 10) is JobState.QUEUED and store.job(a).next_at == clock.now + 20
    clock.advance(20)
    store.claim_job(60)
    assert store.job_failed(a, "third", 3, 10) is JobState.PARKED
    clock.advance(10_000)
    assert store.claim_job(60) is None                                           # parked: kept, not run
    assert store.job_requeue("msg_" + "z" * 16) is False
    assert store.job_requeue(a) is True and store.job_requeue(a) is False        # only a parked one
    job = store.job(a)
    assert (job.state, job.attempts, job.next_at) == (JobState.QUEUED, 0, clock.now)
    assert store.claim_job(60).id == a


def test_job_postpone_keeps_the_attempts(store, clock):
    a = "msg_" + "a" * 16
    store.put_job(a)
    store.claim_job(60)
    store.job_failed(a, "x", 5, 1)
    clock.advance(1)
    store.claim_job(60)
    store.job_postpone(a, clock.now + 3600)
    job = store.job(a)
    assert (job.state, job.attempts, job.next_at) == (JobState.QUEUED, 1, clock.now + 3600)


def test_job_counts_by_every_state(store):
    assert store.job_counts() == {s: 0 for s in JobState}
    for n in "abc":
        store.put_job("msg_" + n * 16)
    store.claim_job(60)
    store.job_done(store.claim_job(60).id)
    assert store.job_counts() == {JobState.QUEUED: 1, JobState.RUNNING: 1, JobState.DONE: 1, JobState.PARKED: 0}


def test_list_jobs_by_route_state_and_cursor(store, clock):
    a = put(store, 1, route="@agents.test", subject="job a")
    b = put(store, 2, route="agent@other.test", recipient="agent@other.test")
    c = put(store, 3, route="@agents.test", sender="eve@remote.test")
    put(store, 4, route="@agents.test")                                    # no job: not listed
    for e in (a, b, c):
        assert store.put_job(e)
    clock.advance(1)
    store.claim_job(60)                                                    # a: running, then failed
    store.job_failed(a, "model down", 5, 1)
    store.job_did(c, "replied")

    def listed(*routes, **kw) -> list[str]:
        return [r.job.id for r in store.list_jobs(routes, **kw)]
    assert listed("@agents.test") == [c, a]                                # newest event first
    assert listed("@agents.test", "agent@other.test") == [c, b, a]
    assert listed() == [] and listed("@AGENTS.test") == [] and listed("%") == []   # the match as kept
    assert listed("@agents.test", state=JobState.QUEUED) == [c, a]
    assert listed("@agents.test", state=JobState.DONE) == []
    rows = {r.job.id: r for r in store.list_jobs(("@agents.test", "agent@other.test"))}
    assert listed("@agents.test", "agent@other.test", before_seq=rows[b].seq) == [a]
    assert listed("@agents.test", "agent@other.test", limit=0) == [c]
    assert rows[a].job == store.job(a) and (rows[a].job.attempts, rows[a].job.last_error) == (1, "model down")
    assert (rows[a].route, rows[a].subject, rows[a].recipient) == ("@agents.test", "job a", "agent@agents.test")
    assert (rows[c].job.actions, rows[c].sender, rows[b].route) == (("replied",), "eve@remote.test", "agent@other.test")
    assert rows[a].created <= rows[a].updated == clock.now


def test_claim_job_gives_each_job_to_exactly_one_of_concurrent_callers(store):
    jobs = {f"msg_{n:016d}" for n in range(30)}
    for j in jobs:
        store.put_job(j)
    got: list[list[str]] = [[], [], []]
    barrier = threading.Barrier(3)

    def worker(mine):
        barrier.wait()
        while (job := store.claim_job(lease=3600)) is not None:
            mine.append(job.id)
    threads = [threading.Thread(target=worker, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [j for g in got for j in g]
    assert sorted(taken) == sorted(jobs)                  # every job once, none twice


def test_transcripts(store):
    a = "msg_" + "a" * 16
    assert store.get_transcript(a) is None
    store.put_transcript(a, {"id": a, "attempts": [{"summary": "ünïcode \u202e"}]})
    store.put_transcript(a, {"id": a, "attempts": [{"summary": "second"}], "state": "done"})
    assert store.get_transcript(a) == {"id": a, "attempts": [{"summary": "second"}], "state": "done"}


# --- shared counters --------------------------------------------------------------------------------

def test_take_counts_a_sliding_window(store, clock):
    assert store.take([("to:bob@x.test", 2)], 3600) is None
    clock.advance(600)
    assert store.take([("to:bob@x.test", 2)], 3600) is None
    clock.advance(600)
    assert store.take([("to:bob@x.test", 2)], 3600) == ("to:bob@x.test", 2400.0)   # when the first use leaves
    assert store.take([("to:carol@x.test", 2)], 3600) is None                      # per key
    clock.advance(2400)
    assert store.take([("to:bob@x.test", 2)], 3600) is None                        # the first use left
    assert store.take([("to:bob@x.test", 2)], 3600) == ("to:bob@x.test", 600.0)


def test_take_is_all_or_none(store):
    assert store.take([("thread:<t@x>", 1)], 3600) is None
    assert store.take([("to:a@x.test", 5), ("thread:<t@x>", 1)], 3600) == ("thread:<t@x>", 3600.0)
    for _ in range(5):                                    # the refused take counted nothing under to:a@
        assert store.take([("to:a@x.test", 5)], 3600) is None
    assert store.take([("to:a@x.test", 5)], 3600)[0] == "to:a@x.test"
    assert store.take([("agent:@x.test", 0)], 3600) == ("agent:@x.test", 3600.0)  # no allowance at all


def test_give_back_forgets_the_newest_use(store, clock):
    assert store.take([("to:a@x.test", 2), ("thread:<t@x>", 2)], 3600) is None
    clock.advance(100)
    assert store.take([("to:a@x.test", 2), ("thread:<t@x>", 2)], 3600) is None
    store.give_back(["to:a@x.test", "thread:<t@x>"])                # Postfix refused the second
    assert store.take([("to:a@x.test", 2)], 3600) is None
    assert store.take([("to:a@x.test", 2)], 3600) == ("to:a@x.test", 3500.0)
    store.give_back(["to:nobody@x.test"])                            # nothing to forget: nothing happens


def test_take_across_threads_never_exceeds_the_limit(store):
    results = []
    barrier = threading.Barrier(4)

    def taker():
        barrier.wait()
        for _ in range(5):
            results.append(store.take([("to:busy@x.test", 7)], 3600))
    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 7 and len(results) == 20


# --- operations -------------------------------------------------------------------------------------

def test_metrics_count_every_state_attempts_verdicts_and_latency(store, clock):
    m = store.metrics()
    assert (m.received, m.attempts, m.latency_count, m.verdicts) == (0, 0, 0, {})
    assert m.by_state == {s: 0 for s in DeliveryState}
    n = 0
    for state in DeliveryState:                          # one event ending in each state
        n += 1
        e = put(store, n, state=DeliveryState.RECEIVED, created="2026-11-27T19:42:03Z",
                auth={"spf": "pass", "dkim": "fail" if n % 2 else "pass", "dmarc": "none", "arc": "none"})
        if state is not DeliveryState.RECEIVED:
            store.record_attempt(e, attempt(store, state), str(state))
    pull = put(store, 100, state=DeliveryState.STORED,  # a pull route's event starts stored
               auth={"spf": "pass", "dkim": "pass", "dmarc": "none", "arc": "none"})
    m = store.metrics()
    assert m.received == n + 1
    assert m.by_state == {**{s: 1 for s in DeliveryState}, DeliveryState.STORED: 2}
    assert m.attempts == n - 1
    assert m.verdicts == {("spf", "pass"): n + 1, ("dkim", "fail"): 5, ("dkim", "pass"): 5, ("dmarc", "none"): n + 1,
                          ("arc", "none"): n + 1}
    store.record_attempt(pull, attempt(store, DeliveryState.STORED, None), "stored")
    assert store.metrics().by_state[DeliveryState.STORED] == 2      # a state it was in already


def test_activity_counts_a_scope_per_bucket_by_state_verdict_and_send_event_type(store, clock):
    start = clock.now
    since, width = start - 3600, 600.0                  # six buckets of ten minutes, ending now + 1 h
    clock.advance(-3500)                                # bucket 0
    put(store, 1, state=DeliveryState.STORED)           # dmarc pass (event()'s default)
    put(store, 2, state=DeliveryState.STORED, auth={"spf": "none", "dkim": "none", "dmarc": "fail", "arc": "none"})
    clock.advance(1300)                                 # bucket 2
    e = put(store, 3, recipient="other+tag@agents.test")
    store.record_attempt(e, attempt(store, DeliveryState.DELIVERED), "ok")
    put(store, 4, recipient="x@elsewhere.test", route="@elsewhere.test")        # out of scope below
    clock.advance(-3000)
    put(store, 5)                                       # before `since`: not counted
    clock.now = start + 3600
    put(store, 6)                                       # at `until`: not counted
    for name, type_, at, address in (("s1", SendEventType.SENT, start - 3000, "agent@agents.test"),
                                     ("s2", SendEventType.SENT, start - 2990, "agent@agents.test"),
                                     ("s3", SendEventType.BOUNCED, start - 100, "agent@agents.test"),
                                     ("s4", SendEventType.SENT, start - 100, "x@elsewhere.test"),
                                     ("s5", SendEventType.SENT, start - 7200, "agent@agents.test")):
        assert store.put_send_event(send_event(name, type_=type_, address=address, at=at))
    got = store.activity(("@agents.test",), since, start + 3600, width)
    assert sorted(got.inbound) == [(0, "stored", "fail", 1), (0, "stored", "pass", 1), (2, "delivered", "pass", 1)]
    assert sorted(got.sends) == [(1, "email.sent", 2), (5, "email.bounced", 1)]
    # an address scope: its own and its plus addresses only; another domain's; none at all
    got = store.activity(("other@agents.test",), since, start + 3600, width)
    assert got.inbound == ((2, "delivered", "pass", 1),) and got.sends == ()
    got = store.activity(("@elsewhere.test",), since, start + 3600, width)
    assert got.inbound == ((2, "received", "pass", 1),) and got.sends == ((5, "email.sent", 1),)
    assert store.activity((), since, start + 3600, width) == store.activity(("@nowhere.test",), since, start, width)
    assert store.activity((), since, start + 3600, width).inbound == ()


def test_latency_from_acceptance_to_the_first_2xx(store, clock):
    from datetime import datetime, timezone
    accepted = clock.now - 7
    created = datetime.fromtimestamp(accepted, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    e = put(store, 1, created=created)
    store.record_attempt(e, attempt(store, DeliveryState.DEFERRED, 500), "HTTP 500")
    clock.advance(20)
    store.record_attempt(e, attempt(store, DeliveryState.DELIVERED), "accepted")     # 27 s after acceptance
    store.record_attempt(e, attempt(store, DeliveryState.DELIVERED), "replayed")     # delivered already: not again
    m = store.metrics()
    assert (m.latency_count, m.latency_sum) == (1, 27.0)
    assert dict(m.latency_buckets) == {float(b): (1 if b >= 27 else 0) for b in LATENCY_BUCKETS}
    assert m.attempts == 3 and m.by_state[DeliveryState.DELIVERED] == 1 and m.by_state[DeliveryState.DEFERRED] == 0


def test_gc_removes_what_is_old_and_keeps_shared_blobs(store, clock):
    shared = store.put_blob(b"an attachment in an old and a new message")
    old_raw = store.put_blob(b"the old raw message")
    lonely = store.put_blob(b"a blob no event refers to")
    old = put(store, 1, blobs=(old_raw, shared))
    store.record_attempt(old, attempt(store, DeliveryState.DELIVERED), "accepted")
    store.put_transcript(old, {"id": old})
    store.put_job(old)
    store.put_send(SendRecord("snd_" + "o" * 26, "k", "a@agents.test", ("b@x.test",), "<o@agents.test>", "Q1", None,
                              None, None, SendState.QUEUED, clock.now))
    store.take([("to:b@x.test", 10)], 3600)
    clock.advance(20 * DAY)
    new_raw = store.put_blob(b"the new raw message")
    assert store.put_blob(b"an attachment in an old and a new message") == shared     # in use again
    new = put(store, 2, blobs=(new_raw, shared))
    store.put_send(SendRecord("snd_" + "n" * 26, "k", "a@agents.test", ("b@x.test",), "<n@agents.test>", "Q2", None,
                              None, None, SendState.QUEUED, clock.now))
    before = store.metrics()
    cutoff = clock.now - 10 * DAY

    dry = store.gc(cutoff, dry_run=True)
    assert (dry.events, dry.blobs) == (1, 2) and dry.bytes == len(b"the old raw message") + len(b"a blob no event refers to")
    assert store.get_event(old) is not None and store.get_blob(old_raw) is not None and store.metrics() == before

    report = store.gc(cutoff)
    assert (report.events, report.blobs, report.bytes) == (dry.events, dry.blobs, dry.bytes)
    assert report.other == dry.other
    assert {k: v for k, v in report.other.items() if v} == {"deliveries": 1, "attempts": 1, "transcripts": 1,
                                                             "jobs": 1, "sends": 1, "uses": 1}
    for gone in (store.get_event(old), store.inbox_row(old), store.delivery(old), store.get_transcript(old),
                 store.job(old), store.get_send("snd_" + "o" * 26), store.get_blob(old_raw), store.get_blob(lonely)):
        assert gone is None
    assert store.attempts(old) == []
    assert store.get_event(new) is not None and store.get_send("snd_" + "n" * 26) is not None
    assert store.get_blob(shared) is not None and store.get_blob(new_raw) is not None
    m = store.metrics()
    assert (m.received, m.by_state[DeliveryState.DELIVERED], m.by_state[DeliveryState.RECEIVED]) == (1, 0, 1)
    assert m.verdicts[("dmarc", "pass")] == 1
    assert (m.attempts, m.latency_count) == (before.attempts, before.latency_count)    # counters only grow
    assert store.gc(cutoff) == type(report)(0, 0, 0, {k: 0 for k in report.other})


# --- moving a store: export and import (transfer.py) ---------------------------------------------------

def populate(store, clock) -> dict:
    """A store with a bit of everything: events with blobs, attempts of every kind, an ack, sends,
    jobs in several states, transcripts, rate-limit uses."""
    raw, att = store.put_blob(b"raw message 1"), store.put_blob(os.urandom(5000))
    ids = {"delivered": put(store, 1, blobs=(raw, att), fingerprint="e" * 64), "deferred": put(store, 2, thread="<t@x>"),
           "pull": put(store, 3, DeliveryState.STORED), "agent": put(store, 4, message_id=""),
           "spam": put(store, 5, subject="nul\x00 and \u00e9", auth={"spf": "fail", "dkim": "none"})}
    clock.advance(2)
    store.record_attempt(ids["deferred"], attempt(store, DeliveryState.DEFERRED, 503, excerpt="busy",
                                                  webhook_id=ids["deferred"], queue_id="Q2"), "HTTP 503")
    clock.advance(5)
    store.record_attempt(ids["deferred"], attempt(store, DeliveryState.DELIVERED, 200, duration_ms=12), "HTTP 200")
    store.record_attempt(ids["delivered"], attempt(store, DeliveryState.DELIVERED, 204), "HTTP 204")
    store.record_attempt(ids["pull"], attempt(store, DeliveryState.STORED, None), "kept")
    store.record_attempt(ids["agent"], attempt(store, DeliveryState.QUEUED, None), "queued")
    store.record_attempt(ids["spam"], attempt(store, DeliveryState.SPAM, 200, excerpt='{"status":"spam"}'), "spam")
    assert store.ack(ids["pull"])
    store.put_send(SendRecord("snd_" + "a" * 26, "agent:@agents.test", "agent@agents.test", ("bob@x.test", "c@y.test"),
                              "<s1@agents.test>", "QS1", "<t@x>", "<2@remote.test>", ids["deferred"], SendState.QUEUED,
                              clock()))
    store.put_send(SendRecord("snd_" + "b" * 26, "ops", "ops@agents.test", ("d@z.test",), "<s2@agents.test>", None,
                              None, None, None, SendState.QUEUED, clock()))
    # sending: a scheduled send (its request kept) and an upload move too
    store.put_send(SendRecord("snd_" + "c" * 26, "ops", "ops@agents.test", ("e@z.test",), "", None, None, None, None,
                              SendState.SCHEDULED, clock(), scheduled_at=clock() + 3600,
                              request='{"from": "ops@agents.test", "to": "e@z.test", "text": "later"}'))
    store.put_upload(Upload("att_" + "a" * 26, "ops", att, "report.pdf", "application/pdf", 5000, clock(),
                            clock() + 7 * 86400))
    for event_id in (ids["agent"], ids["delivered"]):
        store.put_job(event_id)
    job = store.claim_job(60)
    store.job_did(job.id, "replied")
    store.job_failed(job.id, "model down", 1, 30)
    store.put_transcript(ids["agent"], {"event": ids["agent"], "steps": ["read", "replied \u2713"]})
    assert store.take([("to:bob@x.test", 5), ("thread:<t@x>", 5)], 3600) is None
    assert store.take([("to:bob@x.test", 5)], 3600) is None           # two uses at the same instant
    clock.advance(1)
    assert store.take([("agent:@agents.test", 5)], 3600) is None
    assert store.add_block("spammer@x.test", "@agents.test", ids["spam"])
    assert store.add_block("spammer@x.test", "agent@agents.test", ids["delivered"])
    # issue 16: what became of the sends (a POST pending, one done, one kept for the pull API) and suppressions
    send = "snd_" + "a" * 26
    sent = send_event("sent", send, SendEventType.SENT, "", state=PostState.DELIVERED, at=clock())
    assert store.put_send_event(sent)
    store.send_event_posted(sent.id, PostState.DELIVERED, "ok")
    assert store.put_send_event(send_event("bounced", send, SendEventType.BOUNCED, "C@Y.test", at=clock()))
    assert store.put_send_event(send_event("ops", "snd_" + "b" * 26, SendEventType.DELAYED, "d@z.test",
                                           address="ops@agents.test", state=PostState.KEPT, at=clock()))
    assert store.suppress(Suppression("agents.test", "c@y.test", SuppressionReason.BOUNCED, clock(), "evt_bounced"))
    assert store.suppress(Suppression("agents.test", "b-ad@y.test", SuppressionReason.MANUAL, clock(), "", "by hand"))
    assert store.suppress(Suppression("agents.test", "bad@y.test", SuppressionReason.COMPLAINED, clock(), "evt_x"))
    return ids


def export_all(store, limit: int = 2) -> dict:
    """Every record of every kind, paging `limit` at a time (so that paging itself is tested)."""
    from agentmx.store.model import RecordKind, record_key
    out = {}
    for kind in RecordKind:
        records, after = [], None
        while page := store.export_records(kind, after, limit):
            records += page
            after = record_key(page[-1])
        out[kind] = records
    return out


def blob_names(store) -> list:
    names, after = [], ""
    while page := store.blob_names(after, 1):
        names += page
        after = page[-1][0]
    return names


def test_export_then_import_gives_the_same_store(store, other_store, clock):
    from agentmx.store.model import RecordKind
    ids = populate(store, clock)
    exported = export_all(store)
    assert [len(exported[k]) for k in RecordKind] == [5, 3, 2, 1, 3, 1, 2, 3, 3]
    sent = exported[RecordKind.SEND_EVENTS]
    assert [e.seq for e in sent] == sorted({e.seq for e in sent}) and (sent[0].attempts, sent[0].excerpt) == (1, "ok")
    assert [(x.domain, x.address) for x in exported[RecordKind.SUPPRESSIONS]] == [
        ("agents.test", "b-ad@y.test"), ("agents.test", "bad@y.test"), ("agents.test", "c@y.test")]   # code points
    ev = exported[RecordKind.EVENTS]
    assert [e.seq for e in ev] == sorted(e.seq for e in ev) and ev[0].id == ids["delivered"]
    assert len(ev[0].blobs) == 2 and [a.status for a in ev[1].attempts] == [503, 200]
    assert ev[0].fingerprint == "e" * 64 and ev[1].fingerprint is None        # a moved copy is still a copy
    assert [(u.key, u.count) for u in exported[RecordKind.USES]] == [("agent:@agents.test", 1), ("thread:<t@x>", 1),
                                                                    ("to:bob@x.test", 2)]
    for kind in RecordKind:                       # the newest event first, as a move does
        records = exported[kind][::-1] if kind is RecordKind.EVENTS else exported[kind]
        assert other_store.import_records(kind, records) == len(records)
    again = export_all(other_store)
    for kind in RecordKind:
        if kind is RecordKind.EVENTS:
            assert [e.id for e in again[kind]] == [e.id for e in ev]
            ev_nul = next(e for e in ev if e.id == ids["spam"])
            assert next(e for e in again[kind] if e.id == ids["spam"]).subject in (ev_nul.subject,
                                                                                 ev_nul.subject.replace("\x00", "\ufffd"))
            strip = [dataclasses.replace(e, subject="") for e in again[kind]]
            assert strip == [dataclasses.replace(e, subject="") for e in ev]
        else:
            assert again[kind] == exported[kind], kind
    # what the services see: the inbox in its order with its read flags, deliveries, jobs, limits, metrics
    scope = ("@agents.test",)
    assert ids_and_reads(other_store.inbox_query(scope)) == ids_and_reads(store.inbox_query(scope))
    assert other_store.last_seq() == store.last_seq()
    assert other_store.attempts(ids["deferred"]) == store.attempts(ids["deferred"])
    for job_id in (ids["delivered"], ids["agent"]):
        assert other_store.job(job_id) == store.job(job_id)
    assert other_store.job_counts() == store.job_counts()
    assert other_store.get_transcript(ids["agent"]) == store.get_transcript(ids["agent"])
    assert other_store.take([("to:bob@x.test", 2)], 3600) is not None           # the two uses moved with it
    mine, theirs = store.metrics(), other_store.metrics()
    assert dataclasses.replace(theirs, latency_sum=0) == dataclasses.replace(mine, latency_sum=0)
    assert theirs.latency_sum == pytest.approx(mine.latency_sum) and theirs.latency_count == 2
    # new mail is filed after the imported; so is a new send event
    assert put(other_store, 50) and other_store.inbox_row("msg_0000000000000050").seq > store.last_seq()
    assert other_store.put_send_event(send_event("later", "snd_" + "a" * 26, at=clock.now))
    assert other_store.send_events("snd_" + "a" * 26)[-1].seq > sent[-1].seq
    assert other_store.send_events("snd_" + "a" * 26)[:2] == store.send_events("snd_" + "a" * 26)
    assert [e.id for e in other_store.claim_send_events(60)] == ["evt_bounced", "evt_later"]    # the POST still due
    assert other_store.suppressed("Agents.test", ["C@y.test"]) == store.suppressed("agents.test", ["c@y.test"])


def ids_and_reads(rows) -> list:
    return [(r.seq, r.id, r.read, r.state) for r in rows]


def test_import_is_idempotent_and_never_overwrites(store, other_store, clock):
    from agentmx.store.model import RecordKind
    ids = populate(store, clock)
    exported = export_all(store)
    for kind in RecordKind:
        other_store.import_records(kind, exported[kind])
    assert other_store.ack(ids["delivered"])                         # the target's own change since
    other_store.job_done(ids["agent"])
    other_store.record_attempt(ids["deferred"], attempt(other_store, DeliveryState.DELIVERED, 200), "again")
    metrics = other_store.metrics()
    for kind in RecordKind:                                          # a second run
        assert other_store.import_records(kind, exported[kind]) == 0, kind
    assert other_store.inbox_row(ids["delivered"]).read is True
    assert other_store.job(ids["agent"]).state is JobState.DONE
    assert len(other_store.attempts(ids["deferred"])) == 3
    assert other_store.metrics() == metrics
    assert other_store.take([("to:bob@x.test", 3)], 3600) is None     # 2 moved uses + this one: not doubled
    assert other_store.take([("to:bob@x.test", 3)], 3600) is not None


def test_import_refuses_an_inbox_position_another_event_holds(store, other_store, clock):
    from agentmx.store.model import RecordKind
    put(store, 1)
    put(other_store, 2)                                              # the target took mail of its own first
    with pytest.raises(StoreError, match="inbox position 1"):
        other_store.import_records(RecordKind.EVENTS, store.export_records(RecordKind.EVENTS))
    assert other_store.inbox_row("msg_0000000000000001") is None and other_store.metrics().received == 1



def test_import_leaves_out_a_send_event_whose_seq_is_taken(store, other_store, clock):
    from agentmx.store.model import RecordKind
    store.put_send_event(send_event("1", at=clock.now))
    store.put_send_event(send_event("2", at=clock.now))
    other_store.put_send_event(send_event("its own", at=clock.now))          # seq 1, before the import
    assert other_store.import_records(RecordKind.SEND_EVENTS, store.export_records(RecordKind.SEND_EVENTS)) == 1
    assert [(e.seq, e.id) for e in other_store.send_events(SEND)] == [(1, "evt_its own"), (2, "evt_2")]
    assert other_store.put_send_event(send_event("3", at=clock.now)) and other_store.send_events(SEND)[-1].seq == 3

def test_blob_names_in_order(store):
    shas = sorted(store.put_blob(os.urandom(n)) for n in (10, 20, 30, 40))
    assert [s for s, _ in blob_names(store)] == shas
    assert dict(blob_names(store))[shas[0]] in (10, 20, 30, 40)
    assert store.blob_names(shas[1], 10) == [(s, n) for s, n in blob_names(store)][2:]
    assert store.blob_names(shas[-1]) == []


# --- reading (issue 15: GET /api/messages?search=) --------------------------------------------------

def test_inbox_query_search_matches_subject_or_sender_escaped(store, clock):
    a = put(store, 1, sender="bob@remote.test", subject="Your code 100%_done")
    b = put(store, 2, sender="alice@signup.remote.test", subject="Welcome")
    c = put(store, 3, sender="carol@other.test", subject="Invoice from BOB")
    scope = ("@agents.test",)
    assert ids(store.inbox_query(scope, search="bob")) == [c, a]            # the subject or the sender, any case
    assert ids(store.inbox_query(scope, search="SIGNUP.remote")) == [b]
    assert ids(store.inbox_query(scope, search="100%_")) == [a]             # % and _ are literal
    assert ids(store.inbox_query(scope, search="%")) == [a]
    assert ids(store.inbox_query(scope, search="_")) == [a]
    assert ids(store.inbox_query(scope, search="nothing like it")) == []
    assert ids(store.inbox_query(("other@agents.test",), search="bob")) == []   # within the scope only
    assert ids(store.inbox_query(scope, search="bob", before_seq=store.inbox_row(c).seq)) == [a]
# --- sending (issue 15): scheduled sends, Idempotency-Key, uploads --------------------------------------

def scheduled(store, clock, n: str, due: float) -> SendRecord:
    rec = SendRecord("snd_" + n * 26, "ops", "ops@agents.test", ("e@z.test",), "", None, None, None, None,
                     SendState.SCHEDULED, clock(), scheduled_at=due, request='{"text": "later"}')
    store.put_send(rec)
    return rec


def test_a_due_scheduled_send_is_claimed_once(store, clock):
    scheduled(store, clock, "a", clock.now + 60)
    scheduled(store, clock, "b", clock.now + 10)
    assert store.claim_scheduled(30) is None                      # not due yet
    clock.advance(11)
    got = store.claim_scheduled(30)
    assert (got.id, got.state, got.request) == ("snd_" + "b" * 26, SendState.SENDING, '{"text": "later"}')
    assert got.lease_until == clock.now + 30
    assert store.claim_scheduled(30) is None                      # the other is not due; this one is taken
    clock.advance(50)
    assert store.claim_scheduled(30).id == "snd_" + "a" * 26


def test_a_claim_whose_lease_ran_out_fails_and_is_never_sent_again(store, clock):
    scheduled(store, clock, "a", clock.now)
    assert store.claim_scheduled(30).state is SendState.SENDING
    clock.advance(31)
    assert store.claim_scheduled(30) is None
    rec = store.get_send("snd_" + "a" * 26)
    assert rec.state is SendState.FAILED and "may or may not have gone out" in rec.error and rec.request is None


def test_claims_from_many_threads_hand_each_send_out_once(store, clock):
    for n in "abcdefgh":
        scheduled(store, clock, n, clock.now)
    got, lock = [], threading.Lock()

    def worker():
        while (rec := store.claim_scheduled(60)) is not None:
            with lock:
                got.append(rec.id)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted("snd_" + n * 26 for n in "abcdefgh")


def test_cancel_only_a_scheduled_send(store, clock):
    scheduled(store, clock, "a", clock.now + 60)
    rec = store.cancel_send("snd_" + "a" * 26)
    assert rec.state is SendState.CANCELED and rec.request is None
    clock.advance(61)
    assert store.claim_scheduled(30) is None                      # a canceled send never goes
    scheduled(store, clock, "b", clock.now)
    store.claim_scheduled(30)
    assert store.cancel_send("snd_" + "b" * 26).state is SendState.SENDING     # too late: unchanged
    assert store.cancel_send("snd_" + "z" * 26) is None


def test_idempotency_first_answer_in_flight_and_expiry(store, clock):
    assert store.idempotency_begin("k", "order-1", "f1", clock.now - DAY) is None
    assert store.idempotency_begin("k", "order-1", "f1", clock.now - DAY) == ("f1", None)     # in flight
    assert store.idempotency_begin("other", "order-1", "f2", clock.now - DAY) is None         # per API key
    store.idempotency_finish("k", "order-1", '{"id": "snd_x"}')
    assert store.idempotency_begin("k", "order-1", "f9", clock.now - DAY) == ("f1", '{"id": "snd_x"}')
    store.idempotency_release("k", "order-1")                     # a finished answer is not released
    assert store.idempotency_begin("k", "order-1", "f1", clock.now - DAY)[1] == '{"id": "snd_x"}'
    store.idempotency_release("other", "order-1")                 # an in-flight one is
    assert store.idempotency_begin("other", "order-1", "f3", clock.now - DAY) is None
    clock.advance(DAY + 1)
    assert store.idempotency_begin("k", "order-1", "f4", clock.now - DAY) is None              # expired: anew
    assert store.gc(clock.now - 30 * DAY).other["idempotency"] == 1          # "other"'s, a day old
    clock.advance(DAY + 1)
    assert store.gc(clock.now - 30 * DAY).other["idempotency"] == 1          # and now the new one


def test_uploads_keep_their_blob_until_they_expire(store, clock):
    sha = store.put_blob(b"an uploaded file")
    store.put_upload(Upload("att_" + "a" * 26, "ops", sha, "f.txt", "text/plain", 16, clock.now, clock.now + 90 * DAY))
    assert store.get_upload("att_" + "a" * 26).sha256 == sha and store.get_upload("att_nope") is None
    scheduled(store, clock, "s", clock.now + 29 * DAY)
    clock.advance(40 * DAY)
    report = store.gc(clock.now - 30 * DAY)                       # older than retention, but not expired
    assert report.blobs == 0 and store.get_blob(sha) is not None and store.get_upload("att_" + "a" * 26)
    assert store.get_send("snd_" + "s" * 26).state is SendState.SCHEDULED       # pending sends are kept
    clock.advance(51 * DAY)
    report = store.gc(clock.now - 30 * DAY)
    assert report.other["uploads"] == 1 and report.blobs == 1
    assert store.get_blob(sha) is None and store.get_upload("att_" + "a" * 26) is None
# --- webhooks (issue 15): dropped events and blocked senders ----------------------------------------------

def test_drop_event_deletes_the_copy_and_keeps_the_record(store, clock):
    """{"status": "drop"}: the body, the raw message and an attachment only it refers to are gone; a
    blob another event shares stays; the delivery, attempts and inbox row stay, dropped; a later put
    of the id (a retry) brings nothing back."""
    shared, raw, own = (store.put_blob(b"shared attachment"), store.put_blob(b"raw 1"), store.put_blob(b"own 1"))
    dropped = put(store, 1, blobs=(raw, own, shared))
    kept = put(store, 2, blobs=(store.put_blob(b"raw 2"), shared))
    store.record_attempt(dropped, attempt(store, DeliveryState.DROPPED, 200, excerpt='{"status":"drop"}'), "dropped")
    before = store.metrics()
    assert store.drop_event(dropped) is True and store.drop_event("msg_nothing") is False
    assert store.get_event(dropped) is None and store.get_blob(raw) is None and store.get_blob(own) is None
    assert store.get_blob(shared) == b"shared attachment" and store.get_event(kept) is not None
    assert store.delivery(dropped).state is DeliveryState.DROPPED and len(store.attempts(dropped)) == 1
    row = store.inbox_row(dropped)
    assert row.state is DeliveryState.DROPPED and row.subject == "" and store.metrics() == before
    ev = event(1, blobs=(store.put_blob(b"raw 1"), own))
    assert store.put_event(ev, json.dumps(ev).encode(), "@agents.test", DeliveryState.RECEIVED) is False
    assert store.get_event(dropped) is None and store.delivery(dropped).state is DeliveryState.DROPPED
    clock.advance(DAY)
    store.gc(clock.now)                                   # the blob put again, referred to by none: gc takes it
    assert store.get_blob(raw) is None


def test_drop_keeps_a_blob_an_upload_still_holds(store, clock):
    """An uploaded file (or a scheduled send's parked attachment) shares its blob with an inbound
    message of the same bytes; dropping that message must not take the file from under the
    upload: its URL kept answering 404 and the scheduled send failed (found by review)."""
    sha = store.put_blob(b"%PDF- the public brochure")
    store.put_upload(Upload("att_" + "b" * 26, "ops", sha, "b.pdf", "application/pdf", 25, clock.now,
                            clock.now + 90 * DAY))
    ev = put(store, 1, blobs=(store.put_blob(b"raw 1"), store.put_blob(b"%PDF- the public brochure")))
    store.record_attempt(ev, attempt(store, DeliveryState.DROPPED, 200), "dropped")
    assert store.drop_event(ev) is True
    assert store.get_blob(sha) == b"%PDF- the public brochure"
    clock.advance(91 * DAY)
    store.gc(clock.now - 30 * DAY)                        # once the upload has expired, gc takes it
    assert store.get_blob(sha) is None


def test_blocks_are_kept_once_per_sender_and_scope(store, clock):
    assert store.blocks() == [] and store.blocked("x@y.test", ("@agents.test",)) is None
    assert store.add_block("Spammer@X.test", "agent@agents.test", "msg_1") is True
    clock.advance(5)
    assert store.add_block("spammer@x.test", "agent@agents.test", "msg_2") is False      # the first one kept
    assert store.add_block("spammer@x.test", "@agents.test", "msg_3") is True
    (first, second) = store.blocks()
    assert (first.sender, first.scope, first.event_id) == ("spammer@x.test", "agent@agents.test", "msg_1")
    assert second.created == first.created + 5
    assert store.blocked("SPAMMER@x.test", ("agent@agents.test",)).event_id == "msg_1"
    assert store.blocked("spammer@x.test", ("other@agents.test", "@agents.test")).scope == "@agents.test"
    assert store.blocked("spammer@x.test", ("other@agents.test",)) is None and store.blocked("", ("@agents.test",)) is None
    assert len(store.blocks(limit=1)) == 1
    clock.advance(400 * DAY)
    store.gc(clock.now)                                   # a block is policy, not mail: retention keeps it
    assert len(store.blocks()) == 2



def test_remove_block(store):
    store.add_block("spammer@x.test", "@agents.test", "msg_1")
    store.add_block("spammer@x.test", "agent@agents.test", "msg_2")
    assert store.remove_block("Spammer@X.test", "@Agents.test") is True
    assert store.remove_block("spammer@x.test", "@agents.test") is False
    assert store.blocked("spammer@x.test", ("@agents.test",)) is None
    assert [b.scope for b in store.blocks()] == ["agent@agents.test"]             # that scope only


# --- issue 16: send events (what became of what agents sent) and suppressions ---------------------------------

SEND = "snd_" + "a" * 26


def send_event(name: str, send: str = SEND, type_: SendEventType = SendEventType.DELIVERED,
               recipient: str = "bob@remote.test", *, address: str = "agent@agents.test",
               state: PostState = PostState.PENDING, at: float = 0.0, next_at: float | None = None) -> SendEvent:
    """A send event as agentmx/sendevents.py makes it (what the store reads of it)."""
    body = json.dumps({"id": f"evt_{name}", "type": type_.value, "sendId": send, "recipient": recipient}).encode()
    return SendEvent(f"evt_{name}", send, type_, recipient, at, address, "@agents.test", body, state,
                     next_at=at if next_at is None else next_at)


def a_send(store, n: str, created: float, message_id: str = "", state: SendState = SendState.QUEUED) -> SendRecord:
    rec = SendRecord("snd_" + n * 26, "ops", "agent@agents.test", ("bob@remote.test",), message_id, "Q1", None, None,
                     None, state, created)
    store.put_send(rec)
    return rec


def test_put_send_event_once_and_a_sends_timeline(store, clock):
    first = dataclasses.replace(send_event("1", recipient="Bob@Remote.test", address="Agent@Agents.test", at=clock.now),
                                excerpt="x" * 1000, seq=999)
    assert store.put_send_event(first) is True
    assert store.put_send_event(send_event("other", "snd_" + "b" * 26, at=clock.now)) is True
    clock.advance(5)
    assert store.put_send_event(send_event("2", type_=SendEventType.BOUNCED, at=clock.now)) is True
    again = dataclasses.replace(first, body=b"{}", state=PostState.KEPT)        # the report delivered twice
    assert store.put_send_event(again) is False
    one, two = store.send_events(SEND)
    assert (one.id, two.id) == ("evt_1", "evt_2") and one.seq < two.seq and one.seq != 999
    assert (one.recipient, one.address, one.body, one.state) == ("bob@remote.test", "agent@agents.test",
                                                                  first.body, PostState.PENDING)   # the first stands
    assert one == dataclasses.replace(first, recipient="bob@remote.test", address="agent@agents.test",
                                      excerpt="x" * EXCERPT, seq=one.seq)
    assert store.send_events("snd_" + "z" * 26) == []


def test_list_send_events_by_scope_type_and_cursor(store, clock):
    a1 = send_event("a1", address="agent@agents.test", type_=SendEventType.SENT)
    b1 = send_event("b1", address="other@agents.test")
    c1 = send_event("c1", address="agent@sub.agents.test")
    a2 = send_event("a2", address="agent@agents.test", type_=SendEventType.BOUNCED)
    d1 = send_event("d1", address="agent@elsewhere.test", type_=SendEventType.COMPLAINED)
    for e in (a1, b1, c1, a2, d1):
        assert store.put_send_event(e)

    def listed(*scope, **kw) -> list[str]:
        return [e.id.removeprefix("evt_") for e in store.list_send_events(scope, **kw)]
    assert listed("agent@agents.test") == listed("Agent@AGENTS.test") == ["a2", "a1"]
    assert listed("@agents.test") == ["a2", "b1", "a1"]                   # that domain, not its subdomains
    assert listed("@Agents.test", "agent@elsewhere.test") == ["d1", "a2", "b1", "a1"]
    assert listed() == [] and listed("@gents.test") == [] and listed("%@agents.test") == []
    assert listed("@agents.test", types=(SendEventType.BOUNCED, SendEventType.SENT)) == ["a2", "a1"]
    assert listed("@agents.test", types=(SendEventType.COMPLAINED,)) == []
    seqs = {e.id: e.seq for e in store.list_send_events(("@agents.test",))}
    assert listed("@agents.test", limit=2) == ["a2", "b1"]
    assert listed("@agents.test", before_seq=seqs["evt_b1"]) == ["a1"]
    assert listed("@agents.test", after_seq=seqs["evt_a1"], oldest_first=True) == ["b1", "a2"]
    assert listed("@agents.test", after_seq=seqs["evt_a1"], limit=1, oldest_first=True) == ["b1"]
    assert listed("@agents.test", limit=0) == ["a2"]                      # at least one


def test_list_sends_by_sender_scope_with_the_newest_event_and_cursor(store, clock):
    def a_send_from(n: str, sender: str) -> SendRecord:
        rec = SendRecord("snd_" + n * 26, "ops", sender, ("bob@remote.test",), "", "Q1", None, None, None,
                         SendState.QUEUED, clock.now)
        store.put_send(rec)
        return rec
    a = a_send_from("a", "Agent@Agents.test")
    b = a_send_from("b", "agent+tag@agents.test")
    c = a_send_from("c", "other@agents.test")
    clock.advance(1)
    d = a_send_from("d", "agent@sub.agents.test")
    e = a_send_from("e", "agentx@agents.test")
    assert store.put_send_event(send_event("1", a.id, SendEventType.SENT, "", at=clock.now))
    assert store.put_send_event(send_event("2", a.id, SendEventType.BOUNCED, at=clock.now + 1))
    assert store.put_send_event(send_event("3", c.id, SendEventType.SENT, "", at=clock.now))

    def listed(*scope, **kw) -> list[str]:
        return [r.record.id[4] for r in store.list_sends(scope, **kw)]
    assert listed("agent@agents.test") == listed("AGENT@agents.test") == ["b", "a"]    # plus addresses too
    assert listed("@agents.test") == ["e", "c", "b", "a"]                               # not its subdomains
    assert listed("@agents.test", "agent@sub.agents.test") == ["e", "d", "c", "b", "a"]
    assert listed() == [] and listed("@gents.test") == [] and listed("%@agents.test") == [] and listed("agent") == []
    assert listed("ag_nt@agents.test") == []                                             # LIKE's wildcards are text
    assert listed("@agents.test", limit=2) == ["e", "c"] and listed("@agents.test", limit=0) == ["e"]
    assert listed("@agents.test", before=(e.created, e.id)) == ["c", "b", "a"]
    assert listed("@agents.test", before=(c.created, c.id)) == ["b", "a"]
    rows = {r.record.id: r for r in store.list_sends(("@agents.test",))}
    assert rows[a.id].record == a and (rows[a.id].latest, rows[a.id].latest_at) == (SendEventType.BOUNCED, clock.now + 1)
    assert rows[c.id].latest is SendEventType.SENT and (rows[b.id].latest, rows[b.id].latest_at) == (None, None)
    assert d.id not in rows


def test_claim_send_events_leases_them(store, clock):
    now = clock.now
    for name, state, next_at in (("late", PostState.PENDING, now + 100), ("b", PostState.PENDING, now - 5),
                                 ("kept", PostState.KEPT, 0), ("a", PostState.PENDING, now - 10),
                                 ("c", PostState.PENDING, now), ("done", PostState.DELIVERED, 0)):
        store.put_send_event(send_event(name, state=state, at=now - 20, next_at=next_at))
    got = store.claim_send_events(lease=60, limit=2)
    assert [e.id for e in got] == ["evt_a", "evt_b"]                      # the oldest due first
    assert {e.next_at for e in got} == {now + 60} and {e.state for e in got} == {PostState.PENDING}
    assert [e.id for e in store.claim_send_events(60)] == ["evt_c"]       # a and b are leased
    assert store.claim_send_events(60) == []
    store.send_event_posted("evt_a", PostState.DELIVERED, "y" * 1000)
    store.send_event_posted("evt_b", PostState.PENDING, "HTTP 503", next_at=now + 300)       # a retry, later
    a = store.send_events(SEND)[3]
    assert (a.id, a.state, a.attempts, a.excerpt) == ("evt_a", PostState.DELIVERED, 1, "y" * EXCERPT)
    clock.advance(61)                                                    # c's dispatcher died: its lease ran out
    assert [e.id for e in store.claim_send_events(60)] == ["evt_c"]
    clock.advance(40)
    assert [e.id for e in store.claim_send_events(60)] == ["evt_late"]
    clock.advance(200)                                                   # c and late again (never posted), b's retry
    due = store.claim_send_events(60)
    assert [(e.id, e.attempts, e.excerpt) for e in due] == [("evt_c", 0, ""), ("evt_late", 0, ""),
                                                            ("evt_b", 1, "HTTP 503")]
    store.send_event_posted("evt_b", PostState.FAILED, "given up")
    clock.advance(DAY)
    assert [e.id for e in store.claim_send_events(60)] == ["evt_late", "evt_c"]   # never posted: due again, by seq


def test_two_dispatchers_never_claim_the_same_send_event(store, clock):
    names = [f"{n:02d}" for n in range(24)]
    for name in names:
        store.put_send_event(send_event(name, at=clock.now))
    got: list[list[str]] = [[], [], []]
    barrier = threading.Barrier(3)

    def dispatcher(mine):
        barrier.wait()
        while claimed := store.claim_send_events(lease=3600, limit=3):
            mine += [e.id for e in claimed]
    threads = [threading.Thread(target=dispatcher, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e for g in got for e in g) == [f"evt_{n}" for n in names]     # each once, none twice


def test_send_by_message_id_the_newest(store, clock):
    a_send(store, "a", clock.now, "<m@agents.test>")
    a_send(store, "b", clock.now + 1, "<m@agents.test>")
    a_send(store, "c", clock.now + 2, "<other@agents.test>")
    a_send(store, "d", clock.now + 3)                                     # a scheduled send: no Message-ID yet
    assert store.send_by_message_id("<m@agents.test>").id == "snd_" + "b" * 26
    assert store.send_by_message_id("<nothing@agents.test>") is None and store.send_by_message_id("") is None


def test_suppressions_per_sending_domain(store, clock):
    def supp(domain, address, reason=SuppressionReason.BOUNCED, event_id="evt_1", note=""):
        return Suppression(domain, address, reason, clock.now, event_id, note)
    assert store.suppress(supp("Agents.test", "Bob@Remote.test")) is True
    clock.advance(5)
    assert store.suppress(supp("agents.test", "bob@remote.test", SuppressionReason.COMPLAINED, "evt_2")) is False
    assert store.suppress(supp("other.test", "bob@remote.test", SuppressionReason.MANUAL, "", "asked by phone"))
    assert store.suppress(supp("agents.test", "b-ob@remote.test"))
    assert store.suppress(supp("agents.test", "carol@remote.test", SuppressionReason.COMPLAINED))
    (bob,) = store.suppressed("AGENTS.test", ["BOB@remote.test", "dave@remote.test"])
    assert bob == Suppression("agents.test", "bob@remote.test", SuppressionReason.BOUNCED, clock.now - 5, "evt_1")
    assert [s.address for s in store.suppressed("agents.test", ["carol@remote.test", "bob@remote.test",
                                                                "Bob@remote.test"])] == ["bob@remote.test",
                                                                                         "carol@remote.test"]
    assert store.suppressed("elsewhere.test", ["bob@remote.test"]) == [] and store.suppressed("agents.test", []) == []
    every = [(s.domain, s.address) for s in store.suppressions()]
    assert every == [("agents.test", "b-ob@remote.test"), ("agents.test", "bob@remote.test"),
                     ("agents.test", "carol@remote.test"), ("other.test", "bob@remote.test")]
    assert store.suppressions(("other.test",))[0].note == "asked by phone"
    assert [(s.domain, s.address) for s in store.suppressions(("Other.test", "agents.test"), limit=2)] == every[:2]
    assert [(s.domain, s.address) for s in store.suppressions(after=every[1])] == every[2:]
    assert [(s.domain, s.address) for s in store.suppressions(("agents.test",), after=every[2])] == []
    assert store.suppressions(()) == []
    assert store.unsuppress("AGENTS.test", "Bob@remote.test") is True and store.unsuppress("agents.test",
                                                                                           "bob@remote.test") is False
    assert store.suppressed("agents.test", ["bob@remote.test"]) == []
    assert store.suppressed("other.test", ["bob@remote.test"])            # another domain's stays


def test_gc_of_send_events_keeps_a_pending_post_while_its_send_stays(store, clock):
    old, new = a_send(store, "o", clock.now), None
    store.suppress(Suppression("agents.test", "bob@remote.test", SuppressionReason.BOUNCED, clock.now, "evt_x"))
    for name, send, state in (("o-done", old.id, PostState.DELIVERED), ("o-pending", old.id, PostState.PENDING),
                              ("n-kept", "snd_" + "n" * 26, PostState.KEPT),
                              ("n-pending", "snd_" + "n" * 26, PostState.PENDING)):
        store.put_send_event(send_event(name, send, at=clock.now, state=state))
    clock.advance(20 * DAY)
    new = a_send(store, "n", clock.now)                                   # its events' send stays
    store.put_send_event(send_event("n-new", new.id, at=clock.now, state=PostState.DELIVERED))
    dry = store.gc(clock.now - 10 * DAY, dry_run=True)
    assert len(store.send_events(old.id)) == 2
    report = store.gc(clock.now - 10 * DAY)
    assert (dry.other["send_events"], report.other["send_events"], report.other["sends"]) == (3, 3, 1)
    assert store.send_events(old.id) == [] and store.get_send(old.id) is None
    assert [e.id for e in store.send_events(new.id)] == ["evt_n-pending", "evt_n-new"]
    assert store.suppressions()[0].address == "bob@remote.test"           # never by age


def test_a_send_event_wakes_a_listener(store):
    """put_send_event wakes the waiters as put_event does (event streams, the dispatcher)."""
    woken, took = woken_by(store, store.put_send_event, send_event("wake"))
    assert woken and took < 1.0, took


@pytest.fixture
def unmigrated(request, store, tmp_path, clock):
    """make() -> a store of `store`'s backend on one new data directory or database, no schema yet:
    each call another store on it (a host running the next version)."""
    if isinstance(store, EmbeddedStore):
        made = []

        def make():
            made.append(EmbeddedStore(tmp_path / "unmigrated", clock))
            return made[-1]
        yield make
        for s in made:
            s.close()
        return
    from agentmx.store.postgres import PostgresStore
    pg = request.getfixturevalue("pg_server")
    name = f"agentmx_unmigrated_{time.monotonic_ns() % 10**9}"
    url, made = pg.create_database(name), []

    def make():
        made.append(PostgresStore(url, store.blobs, clock))
        return made[-1]
    yield make
    for s in made:
        s.close()
    pg.drop_database(name)


def test_a_version_4_store_migrates_to_5_and_keeps_its_sends(unmigrated, monkeypatch, clock):
    """An upgraded host: `agentmx store migrate` replaces version 1's empty send_events and
    suppressions tables; the sends kept before are found by Message-ID, and send events and
    suppressions are kept from then on."""
    monkeypatch.setattr(migrations, "MIGRATIONS", tuple(m for m in migrations.MIGRATIONS if m.version <= 4))
    monkeypatch.setattr(migrations, "LATEST", 4)
    old = unmigrated()
    assert old.migrate() == 4
    old.check_schema()
    rec = a_send(old, "a", clock.now, "<m@agents.test>")
    monkeypatch.undo()
    new = unmigrated()
    with pytest.raises(SchemaMismatch, match="store migrate"):
        new.check_schema()
    assert new.migrate() == migrations.LATEST
    new.check_schema()
    assert new.send_by_message_id("<m@agents.test>") == rec
    assert new.put_send_event(send_event("1", rec.id, at=clock.now)) and [e.id for e in new.send_events(rec.id)] == [
        "evt_1"]
    assert [e.id for e in new.claim_send_events(60)] == ["evt_1"]
    assert new.suppress(Suppression("agents.test", "bob@remote.test", SuppressionReason.BOUNCED, clock.now, "evt_1"))
    assert new.suppressed("agents.test", ["bob@remote.test"])[0].event_id == "evt_1"
