"""The store's contract (agentmx/store/base.py), method by method, on every backend: what each
docstring promises, its edge cases, and the races two processes (here: two threads, each with
its own connection) must not win together."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading

import pytest

from agentmx.store import DuplicateEvent, StoreError
from agentmx.store.model import (EXCERPT, LATENCY_BUCKETS, Attempt, DeliveryState, JobState, SendRecord, SendState)

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


def put(store, n: int, state: DeliveryState = DeliveryState.RECEIVED, route: str = "@agents.test", **kw) -> str:
    ev = event(n, **kw)
    assert store.put_event(ev, json.dumps(ev).encode(), route, state) is True
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


def test_a_put_wakes_a_listener(store):
    """Within a second, by the backend's own signal (the fallback check is set to 30 s)."""
    async def main():
        listener = store.listener(fallback=30)
        await listener.start()
        try:
            loop = asyncio.get_running_loop()
            generation = listener.generation
            started = loop.time()
            loop.run_in_executor(None, put, store, 1)
            woken = await listener.wait(generation, 5)
            return woken != generation, loop.time() - started
        finally:
            await listener.stop()
    woken, took = asyncio.run(main())
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
