"""The store: the one interface to everything agentmx keeps. Two backends implement it:

    embedded   SQLite (WAL) in <data_dir>/agentmx.sqlite + blobs in <data_dir>/blobs  (one host)
    postgres   PostgreSQL (psycopg 3, a pool) + blobs in an S3-compatible bucket     (several hosts)

Every reader and writer (deliver and its front-ends, serve, the agent, replay, status, gc,
metrics, MCP) goes through it; no other module opens a data file. Each method is one short
transaction; the backend is thread-safe (serve calls it from a thread pool). When the backend
cannot be reached or written, a method raises StoreUnavailable: deliver exits 75 (Postfix keeps
the message), serve answers 503 with a JSON error and tries again on the next request.

Times are unix seconds from the clock the store was made with (injected; tests pass their own).
"""
from __future__ import annotations

import abc
from typing import Callable, Iterable

from agentmx.address import DELIMITER

from .model import (Activity, Attempt, Blob, Block, Delivery, DeliveryRow, DeliveryState, GcReport, InboxRow, Job, JobRow, JobState,
                    Metrics, PostState, RecordKind, SendEvent, SendEventType, SendRecord, SendRow, Suppression, Upload)


class StoreError(Exception):
    """The one error type of the store's boundary."""


class StoreUnavailable(StoreError):
    """The database or the blob store cannot be reached or written now: try again later."""


class SchemaMismatch(StoreError):
    """The database's schema is not the one this version expects: run `agentmx store migrate`."""


class DuplicateEvent(StoreError):
    """put_event with a fingerprint: another event already holds this message for this recipient
    (the same message taken by two MX hosts, or twice by one); `first` is that event's id."""

    def __init__(self, first: str):
        super().__init__(f"duplicate of {first}")
        self.first = first


def conditions(where: list[str], args: list, pairs) -> None:
    """Add each (SQL condition, value) whose value is not None to `where` and `args`: the optional
    filters of a listing."""
    for cond, value in pairs:
        if value is not None:
            where.append(cond)
            args.append(value)


def like(text: str) -> str:
    """`text` as a LIKE pattern's literal part (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def sender_scope(addresses: tuple[str, ...], param: str) -> tuple[str, list]:
    """list_sends' scope in SQL both backends read (`param`: their placeholder): the sends table's
    sender (kept as given) is, lower-cased, one of `addresses`, a plus address of one (agent+tag@x,
    config.allows' rule), or in one of their @domains; "" for none."""
    scope, args = [], []
    for a in addresses:
        a = a.lower()
        if a.startswith("@"):
            scope.append(f"lower(sender) LIKE {param} ESCAPE '\\'")
            args.append("%" + like(a))
        elif "@" in a:
            local, _, domain = a.rpartition("@")
            scope.append(f"(lower(sender) = {param} OR lower(sender) LIKE {param} ESCAPE '\\')")
            args += [a, like(local + DELIMITER) + "%@" + like(domain)]
    return ("(" + " OR ".join(scope) + ")" if scope else ""), args


class Store(abc.ABC):
    clock: Callable[[], float]

    # --- lifecycle -------------------------------------------------------------------------------

    @abc.abstractmethod
    def migrate(self) -> int:
        """Apply the pending schema migrations (versioned, each once, in order); the version now."""

    @abc.abstractmethod
    def check_schema(self) -> None:
        """Raise SchemaMismatch unless the schema is this version's (services call it at start)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- blobs: raw messages and attachments, by the sha256 of their bytes ------------------------

    @abc.abstractmethod
    def put_blob(self, data: bytes) -> str:
        """Store (once: content-addressed) and return the sha256 hex digest."""

    @abc.abstractmethod
    def get_blob(self, sha256: str) -> bytes | None: ...

    @abc.abstractmethod
    def open_blob(self, sha256: str) -> Blob | None:
        """The blob as chunks (serve streams a 25 MB attachment without holding it)."""

    @abc.abstractmethod
    def has_blob(self, sha256: str) -> bool:
        """Whether the blob is kept (without reading it: each backend answers from its metadata)."""

    # --- events, with their inbox row: one write --------------------------------------------------

    @abc.abstractmethod
    def put_event(self, event: dict, body: bytes, route: str, state: DeliveryState,
                  fingerprint: str | None = None, since: float | None = None) -> bool:
        """Keep an event (its JSON body as sent) with its inbox row and its delivery record, in one
        transaction, and wake the waiters (long-polls, event streams) on every host. A second
        put of the same id (a Postfix retry) keeps the first row's place, read flag, state and
        attempts, replaces the body (the event as last sent: its URLs signed anew), adds the blobs
        it refers to, and returns False.

        `fingerprint` (deliver's: the body's sha256 and the verdicts, deliver/dedup.py) is kept
        with the event. With `since` too, and an event messageId, a NEW id is kept only when
        find_event finds no other event for its recipient, Message-ID and fingerprint kept since
        `since`, checked in the same transaction (two hosts storing one message at once keep
        one); else DuplicateEvent(that event's id) is raised and nothing is written."""

    @abc.abstractmethod
    def get_event(self, event_id: str) -> bytes | None: ...

    @abc.abstractmethod
    def find_event(self, recipient: str, message_id: str, fingerprint: str, since: float) -> str | None:
        """The id of the first event kept since `since` for this recipient (any case), Message-ID
        and fingerprint: the same message reaching two MX hosts (or one twice, under two queue
        ids) is one event. None for an empty Message-ID or fingerprint."""

    @abc.abstractmethod
    def drop_event(self, event_id: str) -> bool:
        """A control answer {"status": "drop"}: delete the stored copy (the event's body, and the
        raw message and attachments it refers to unless another event refers to them too),
        keeping its delivery, attempts and inbox row (so that a retry, or a copy of the message
        taken by another MX host, is known as dropped and not delivered again). get_event
        answers None from then on, and a later put_event of the id keeps no body or blobs.
        False when there is no such event. A put_event racing the deletion of a blob it names
        fails (StoreUnavailable: deliver exits 75 and the retry stores the blob again)."""

    # --- deliveries and their attempts ------------------------------------------------------------

    @abc.abstractmethod
    def record_attempt(self, event_id: str, attempt: Attempt, reason: str) -> Delivery:
        """Append an attempt and set the delivery's (and the inbox row's) state to its outcome;
        the excerpt is cut to model.EXCERPT characters. StoreError for an event not kept."""

    @abc.abstractmethod
    def delivery(self, event_id: str) -> Delivery | None: ...

    @abc.abstractmethod
    def attempts(self, event_id: str) -> list[Attempt]: ...

    @abc.abstractmethod
    def recent_deliveries(self, limit: int = 20) -> list[Delivery]:
        """Newest change first (`agentmx status`)."""

    @abc.abstractmethod
    def list_deliveries(self, addresses: tuple[str, ...], *, state: DeliveryState | None = None,
                        before_seq: int | None = None, limit: int = 50) -> list[DeliveryRow]:
        """The deliveries of events whose base address is one of `addresses` ("agent@x") or in one
        of their domains ("@x") (inbox_query's scope), in `state` (any when None), newest event
        first (by seq, before `before_seq`), at most `limit` (1..500); each with its last
        attempt's excerpt."""

    # --- the inbox index (pull mode, waits, event streams) ----------------------------------------

    @abc.abstractmethod
    def inbox_query(self, addresses: tuple[str, ...], *, to: str | None = None, sender: str | None = None,
                    subject: str | None = None, since: float | None = None, unread: bool = False,
                    before_seq: int | None = None, after_seq: int | None = None, thread_id: str | None = None,
                    limit: int = 50, oldest_first: bool = False, search: str | None = None) -> list[InboxRow]:
        """Rows whose base address is one of `addresses` ("agent@x") or in one of their domains
        ("@x"); newest first unless oldest_first. `sender` is an address or "@domain"; `subject` a
        substring (LIKE, escaped); `search` a substring of the subject or the sender (either; any
        case, escaped)."""

    @abc.abstractmethod
    def inbox_row(self, event_id: str) -> InboxRow | None: ...

    @abc.abstractmethod
    def ack(self, event_id: str) -> bool:
        """Mark read; False when there is no such row."""

    @abc.abstractmethod
    def claim(self, event_id: str) -> bool:
        """Mark an unread row read; True for exactly one caller (wait + ack on any host)."""

    @abc.abstractmethod
    def last_seq(self) -> int: ...

    @abc.abstractmethod
    def listener(self, fallback: float = 3.0):
        """serve's wake-ups (an object with async start(), stop(), wait(generation, timeout) and
        .generation): unix datagrams on one host, LISTEN/NOTIFY across hosts."""

    # --- what agents sent ---------------------------------------------------------------------------

    @abc.abstractmethod
    def put_send(self, record: SendRecord) -> None: ...

    @abc.abstractmethod
    def get_send(self, send_id: str) -> SendRecord | None: ...

    @abc.abstractmethod
    def list_sends(self, addresses: tuple[str, ...], *, before: tuple[float, str] | None = None,
                   limit: int = 50) -> list[SendRow]:
        """The sends whose sender's base address (any case, agent+tag@x as agent@x) is one of
        `addresses` ("agent@x") or in one of their domains ("@x"), newest first (by (created, id),
        before the cursor `before`), at most `limit` (1..500); each with its newest send event's
        type and time (None before any)."""

    @abc.abstractmethod
    def claim_scheduled(self, lease: float) -> SendRecord | None:
        """The next SCHEDULED send that is due, now SENDING and leased to the caller until
        now + lease: one serve on one host gets it (SKIP LOCKED on postgres). A SENDING send whose
        lease ran out (its serve died while handing it to Postfix) becomes FAILED, never sent
        again: it may have gone out."""

    @abc.abstractmethod
    def cancel_send(self, send_id: str) -> SendRecord | None:
        """A SCHEDULED send becomes CANCELED (its request dropped); the send as it is now (any
        other state unchanged), None when there is no such send."""

    # --- Idempotency-Key: the first answer, per API key, kept for a window --------------------------

    @abc.abstractmethod
    def idempotency_begin(self, key: str, idem: str, fingerprint: str, since: float) -> tuple[str, str | None] | None:
        """Take `idem` for API key `key`: None when the caller has it now (a row in flight); else
        (the fingerprint it was taken with, the answer kept, None while still in flight). A row
        created before `since` has expired and is taken anew."""

    @abc.abstractmethod
    def idempotency_finish(self, key: str, idem: str, answer: str) -> None: ...

    @abc.abstractmethod
    def idempotency_release(self, key: str, idem: str) -> None:
        """Forget an in-flight row (the request failed: nothing was sent, a retry may go)."""

    # --- uploaded attachments ------------------------------------------------------------------------

    @abc.abstractmethod
    def put_upload(self, upload: Upload) -> None:
        """Keep an upload's record (its blob put already); gc keeps the blob until `expires`."""

    @abc.abstractmethod
    def get_upload(self, upload_id: str) -> Upload | None: ...

    # --- agent jobs (action = "agent" routes) ------------------------------------------------------

    @abc.abstractmethod
    def put_job(self, event_id: str) -> bool:
        """Queue a job; False when it is there already (a retried delivery)."""

    @abc.abstractmethod
    def claim_job(self, lease: float) -> Job | None:
        """The next due job (or a running one whose lease ran out), leased to the caller: one
        worker on one host gets it (row locks: SKIP LOCKED on postgres)."""

    @abc.abstractmethod
    def job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def job_did(self, job_id: str, action: str) -> None: ...

    @abc.abstractmethod
    def job_done(self, job_id: str) -> None: ...

    @abc.abstractmethod
    def job_failed(self, job_id: str, error: str, max_attempts: int, retry_base: float) -> JobState:
        """Queued again with backoff (retry_base * 2^(attempts-1)), or parked after max_attempts."""

    @abc.abstractmethod
    def job_postpone(self, job_id: str, until: float) -> None:
        """Queued again for `until`, attempts unchanged (the route's send cap is used up)."""

    @abc.abstractmethod
    def job_requeue(self, job_id: str) -> bool:
        """A parked job, by hand: due now, attempts reset."""

    @abc.abstractmethod
    def job_counts(self) -> dict[JobState, int]:
        """Every JobState, with 0 for those no job is in."""

    @abc.abstractmethod
    def list_jobs(self, routes: tuple[str, ...], *, state: JobState | None = None, before_seq: int | None = None,
                  limit: int = 50) -> list[JobRow]:
        """The jobs whose event's delivery went to one of `routes` (route matches, exactly as
        kept), in `state` (any when None), newest event first (by seq, before `before_seq`), at
        most `limit` (1..500)."""

    @abc.abstractmethod
    def put_transcript(self, event_id: str, record: dict) -> None: ...

    @abc.abstractmethod
    def get_transcript(self, event_id: str) -> dict | None: ...

    # --- counters shared by every process and host: rate limits and the loop breaker --------------

    @abc.abstractmethod
    def take(self, keys: Iterable[tuple[str, int]], window: float) -> tuple[str, float] | None:
        """Count one use under each (key, limit) in the sliding `window` (seconds), atomically:
        all or none. None when taken; else (the first key that is full, seconds until one of
        its uses is older than the window). Keys: "to:<address>", "thread:<id>",
        "agent:<route>"..."""

    @abc.abstractmethod
    def give_back(self, keys: Iterable[str]) -> None:
        """Forget the newest use under each key (a send Postfix then refused)."""

    # --- operations -------------------------------------------------------------------------------

    @abc.abstractmethod
    def metrics(self) -> Metrics:
        """From counters kept as records are written: cheap per scrape."""

    @abc.abstractmethod
    def activity(self, addresses: tuple[str, ...], since: float, until: float, width: float) -> Activity:
        """What happened in scope (`addresses`: base addresses and @domains, as inbox_query's) from
        `since` to `until`, counted per bucket of `width` seconds by grouped queries (the rows are
        never read): inbound events by bucket of their arrival, the current state of their delivery
        and their dmarc result; send events (email.sent, .delivered, .bounced...) of the scope's
        senders by bucket of their time and type. Only non-zero counts are given."""

    @abc.abstractmethod
    def gc(self, older_than: float, dry_run: bool = False) -> GcReport:
        """Remove what is older than `older_than` (events, their attempts and deliveries, inbox
        rows, sends (not those SCHEDULED or SENDING) and their send events, send events not PENDING,
        jobs, transcripts, old counter entries; never suppressions or blocks),
        uploads whose `expires` has passed, idempotency answers older than a day, and every blob
        that no remaining event and no unexpired upload refers to (blobs are shared by content)."""

    # --- moving a store to another backend (`agentmx store migrate --to`, transfer.py) -------------

    @abc.abstractmethod
    def export_records(self, kind: RecordKind, after=None, limit: int = 500) -> list:
        """Up to `limit` records of `kind` whose key (model.record_key) is after `after` (None: from
        the first), in key order (text keys in code-point order), as model.py's neutral values:
        StoredEvent (by seq), SendRecord, StoredJob (by id), StoredTranscript (by event_id),
        StoredUses (by (key, at)), Upload (by id), Block (by (sender, scope)), SendEvent (by seq),
        Suppression (by (domain, address)). Read in one transaction: an event comes with all of it."""

    @abc.abstractmethod
    def import_records(self, kind: RecordKind, records: list) -> int:
        """Insert, in one transaction, each record whose key this store does not hold yet, exactly
        as given (an event at its seq, with its delivery, attempts, blob references and inbox
        row; the counters behind metrics() counted as if it had arrived here); a record whose key
        is here already is left as it is (never overwritten, never doubled). StoredUses: as many
        uses at that instant as the record counts. The next event (and send event) put here comes
        after every imported one. StoreError when an event's seq is another event's here; a send
        event whose seq is another's here is left out (a move's verification names it). The number
        inserted."""

    @abc.abstractmethod
    def blob_names(self, after: str = "", limit: int = 1000) -> list[tuple[str, int]]:
        """(sha256, size) of up to `limit` blobs kept, in name order, after `after`."""

    # --- senders blocked by block-sender answers (the milter reads them through blocklist.py) ------

    @abc.abstractmethod
    def add_block(self, sender: str, scope: str, event_id: str) -> bool:
        """Block `sender` (lower-cased) for `scope` (a route's match), because of `event_id`'s
        answer; False when that block was there (the first event and time are kept)."""

    @abc.abstractmethod
    def blocks(self, limit: int = 100_000) -> list[Block]:
        """Every block, oldest first (up to `limit`)."""

    @abc.abstractmethod
    def blocked(self, sender: str, scopes: tuple[str, ...]) -> Block | None:
        """The block of `sender` for one of `scopes`, if any (deliver's check before a POST)."""

    @abc.abstractmethod
    def remove_block(self, sender: str, scope: str) -> bool:
        """Unblock `sender` (any case) for `scope`; False when it was not blocked there."""

    # --- what became of what agents sent: send events (issue 16) -----------------------------------

    @abc.abstractmethod
    def send_by_message_id(self, message_id: str) -> SendRecord | None:
        """The send whose Message-ID this is (exactly, "<...>"), the newest if several; None for ""."""

    @abc.abstractmethod
    def put_send_event(self, event: SendEvent) -> bool:
        """Keep a send event (its seq is the store's: the one given is ignored), and wake the
        waiters as put_event does (event streams, serve's dispatcher). False, and nothing
        written, when its id is kept already (a report delivered twice: the first stands)."""

    @abc.abstractmethod
    def send_events(self, send_id: str) -> list[SendEvent]:
        """A send's events, in the order they were kept (its timeline)."""

    @abc.abstractmethod
    def list_send_events(self, addresses: tuple[str, ...], *, types: tuple[SendEventType, ...] = (),
                         before_seq: int | None = None, after_seq: int | None = None, limit: int = 50,
                         oldest_first: bool = False) -> list[SendEvent]:
        """The send events whose `address` is one of `addresses` ("agent@x") or in one of their
        domains ("@x"), of any of `types` (all when empty); newest first unless oldest_first."""

    @abc.abstractmethod
    def claim_send_events(self, lease: float, limit: int = 10) -> list[SendEvent]:
        """Up to `limit` PENDING events whose next_at is due, oldest first, their next_at moved to
        now + lease, so that one dispatcher on one host POSTs each (SKIP LOCKED on postgres)."""

    @abc.abstractmethod
    def send_event_posted(self, event_id: str, state: PostState, excerpt: str, next_at: float = 0.0) -> None:
        """One POST of it done: attempts + 1, its state (PENDING again with next_at: a retry), the
        answer's excerpt (cut to model.EXCERPT characters)."""

    # --- suppressions: addresses a sending domain no longer sends to ---------------------------------

    @abc.abstractmethod
    def suppress(self, suppression: Suppression) -> bool:
        """Keep it (domain and address lower-cased); False when that address was suppressed for
        that domain already (the first reason and time stand)."""

    @abc.abstractmethod
    def unsuppress(self, domain: str, address: str) -> bool:
        """False when it was not suppressed."""

    @abc.abstractmethod
    def suppressed(self, domain: str, addresses: Iterable[str]) -> list[Suppression]:
        """The suppressions among `addresses` (any case) for sending domain `domain`."""

    @abc.abstractmethod
    def suppressions(self, domains: tuple[str, ...] | None = None, after: tuple[str, str] | None = None,
                     limit: int = 100) -> list[Suppression]:
        """Suppressions of these sending domains (every domain: None), in (domain, address) order,
        after the key `after` (a cursor), at most `limit`."""
