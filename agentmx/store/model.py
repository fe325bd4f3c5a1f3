"""What agentmx keeps, as values: every state one enum, every record one frozen dataclass.

Shared by both backends (embedded: SQLite + a blob folder; postgres: PostgreSQL + S3) and by
every reader and writer. Times are unix seconds (floats), taken from the store's injected clock.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from agentmx.address import split

EXCERPT = 200                  # characters of an endpoint's answer kept with each attempt
MESSAGE_ID_MAX = 998           # characters of an event's Message-ID kept (and compared by find_event)


class _Named(enum.Enum):
    """An enum that prints as its value ("delivered"), in log lines and f-strings alike."""

    def __str__(self) -> str:
        return str(self.value)


class DeliveryState(_Named):
    """What became of one inbound message for one recipient (one event)."""
    RECEIVED = "received"      # stored, its POST not answered yet (in flight, or the process died)
    DELIVERED = "delivered"    # the endpoint answered 2xx
    REFUSED = "refused"        # the endpoint answered 406: kept, not retried
    DROPPED = "dropped"        # a control answer {"status": "drop"}
    SPAM = "spam"              # a control answer {"status": "spam"}
    HELD = "held"              # the route's trust policy kept it aside (require-dmarc)
    STORED = "stored"          # a pull route: kept for the inbox API
    QUEUED = "queued"          # an agent route: a job for `agentmx agent`
    DEFERRED = "deferred"      # not taken this time: Postfix keeps it and retries

    @property
    def final(self) -> bool:
        return self not in (DeliveryState.RECEIVED, DeliveryState.DEFERRED)


class JobState(_Named):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    PARKED = "parked"


class SendState(_Named):
    QUEUED = "queued"          # Postfix took it (what became of it per recipient: its SendEvents)
    SCHEDULED = "scheduled"    # parked until scheduled_at, its request kept (POST /v1/send scheduledAt)
    SENDING = "sending"        # a scheduled send one serve claimed and is handing to Postfix
    CANCELED = "canceled"      # DELETE /v1/send/{id} before it went out
    FAILED = "failed"          # a scheduled send refused at its time (or its sender died mid-way): `error` says why

    @property
    def pending(self) -> bool:
        return self in (SendState.SCHEDULED, SendState.SENDING)


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt of an event: a POST, or what deliver did instead."""
    at: float
    outcome: DeliveryState           # the delivery's state after this attempt
    status: int | None = None        # the HTTP status; 0 when the endpoint did not answer; None: no POST
    duration_ms: int = 0
    excerpt: str = ""                # the first 200 characters of the answer, or the error
    webhook_id: str = ""
    queue_id: str | None = None


@dataclass(frozen=True)
class Delivery:
    event_id: str
    route: str                       # the route's match
    recipient: str
    state: DeliveryState
    attempts: int
    status: int | None
    reason: str
    queue_id: str | None
    created: float
    updated: float


@dataclass(frozen=True)
class InboxRow:
    seq: int                         # the order of arrival, per store (what event streams resume from)
    id: str
    address: str                     # the recipient's base address, lower case (agent+tag@ -> agent@)
    recipient: str
    sender: str
    subject: str
    thread_id: str | None
    received: float
    state: DeliveryState
    read: bool


@dataclass(frozen=True)
class SendRecord:
    id: str                          # snd_...
    key: str                         # the API key's name ("agent:<route>" for the built-in agent)
    sender: str
    recipients: tuple[str, ...]
    message_id: str
    queue_id: str | None
    thread_id: str | None
    in_reply_to: str | None
    reply_to_event: str | None
    state: SendState
    created: float
    scheduled_at: float | None = None   # when a scheduled send is due
    request: str | None = field(default=None, repr=False)   # a scheduled send's request (JSON), until it goes
    error: str = ""                     # why a scheduled send FAILED
    lease_until: float = 0.0            # a SENDING claim runs out then


class SendEventType(_Named):
    """What became of a message an agent sent, per recipient (the event's `type`)."""
    SENT = "email.sent"                # Postfix queued it (the send path, at once)
    DELIVERED = "email.delivered"      # a DSN: the remote took it (Action delivered or relayed)
    DELAYED = "email.delayed"          # a DSN: not delivered yet, Postfix still tries
    BOUNCED = "email.bounced"          # a DSN or a bounce: not delivered (permanent or not: its `permanent`)
    COMPLAINED = "email.complained"    # an ARF feedback report (RFC 5965): the recipient called it spam


class PostState(_Named):
    """The webhook POST of a send event (serve's dispatcher POSTs them, api/dispatch.py)."""
    PENDING = "pending"        # to be POSTed at next_at (first, or again after a failed attempt)
    DELIVERED = "delivered"    # the endpoint answered 2xx
    REFUSED = "refused"        # the endpoint answered 406: not retried
    FAILED = "failed"          # no 2xx for as long as Postfix keeps mail (given up)
    KEPT = "kept"              # the sending address's route does not push: kept for /v1/events only


@dataclass(frozen=True)
class SendEvent:
    """One status event of a send: what GET /v1/send/{id} shows, /v1/events lists, the route gets."""
    id: str                          # evt_...: the webhook-id, stable for one report of one recipient
    send_id: str
    type: SendEventType
    recipient: str                   # lower case; "" when the report names none
    at: float                        # when it happened (our clock when the report came)
    address: str                     # the sender's base address, lower case: the scope a key reads it by
    route: str                       # the match of the route it goes to ("" when none takes the sender)
    body: bytes = field(repr=False, default=b"")   # the event JSON, as POSTed
    state: PostState = PostState.PENDING
    attempts: int = 0
    next_at: float = 0.0             # PENDING: when the next POST is due (a claim moves it by its lease)
    excerpt: str = ""                # the endpoint's last answer (model.EXCERPT characters), or the error
    seq: int = 0                     # the store's order of arrival (cursors); 0 before it is kept


class SuppressionReason(_Named):
    BOUNCED = "bounced"        # a permanent bounce
    COMPLAINED = "complained"  # a feedback report
    MANUAL = "manual"          # the API or `agentmx suppressions add`


@dataclass(frozen=True)
class Suppression:
    """An address agents may not send to from one sending domain."""
    domain: str                      # the sending domain, lower case
    address: str                     # the recipient, lower case
    reason: SuppressionReason
    created: float
    event_id: str = ""               # the send event that suppressed it ("" by hand)
    note: str = ""                   # who or why, by hand (bounded by the API)


@dataclass(frozen=True)
class Upload:
    """A file from POST /v1/attachments (or a scheduled send's attachment), kept until `expires`."""
    id: str                          # att_...
    key: str                         # the API key's name
    sha256: str                      # the blob
    filename: str
    content_type: str
    size: int
    created: float
    expires: float


@dataclass(frozen=True)
class Block:
    """A sender blocked for a route's addresses: by an agent's block-sender answer, or by the API."""
    sender: str                      # the envelope sender (MAIL FROM), lower case
    scope: str                       # the route's match: "agent@example.com" or "@example.com"
    event_id: str                    # the event whose answer blocked it; "key:<name>" when an API key did
    created: float


@dataclass(frozen=True)
class Job:
    id: str                          # the event id
    state: JobState
    attempts: int
    actions: tuple[str, ...]         # what it already did: "replied", "forwarded:<address>"
    last_error: str
    next_at: float


@dataclass(frozen=True)
class DeliveryRow:
    """A delivery as a listing shows it (store.list_deliveries): its event's place and sender."""
    seq: int                         # the event's seq (the listing's order and cursor)
    delivery: Delivery
    sender: str
    subject: str
    excerpt: str                     # the last attempt's answer excerpt ("" before any attempt)


@dataclass(frozen=True)
class SendRow:
    """A send as a listing shows it (store.list_sends): with its newest send event, if any."""
    record: SendRecord
    latest: SendEventType | None     # the type of the newest send event kept for it
    latest_at: float | None


@dataclass(frozen=True)
class JobRow:
    """An agent job as a listing shows it (store.list_jobs): its event's place, route and sender."""
    seq: int                         # the event's seq (the listing's order and cursor)
    job: Job
    route: str                       # the route's match (the delivery's route)
    recipient: str
    sender: str
    subject: str
    created: float
    updated: float


def base_address(recipient: str) -> str:
    """agent@example.com for Agent+tag@Example.com: the inbox's scope, deliver's own routing rule."""
    return split(recipient)[0]


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    chunks: Iterator[bytes] = field(repr=False)


@dataclass(frozen=True)
class GcReport:
    events: int
    blobs: int
    bytes: int
    other: dict[str, int]            # table -> rows removed (attempts, sends, transcripts, jobs, ...)


@dataclass(frozen=True)
class Metrics:
    """What GET /metrics shows of the store, from counters kept as records are written."""
    received: int
    by_state: dict[DeliveryState, int]   # DeliveryState -> current count
    attempts: int
    verdicts: dict[tuple[str, str], int]  # (check, result) -> count, of events as stored
    latency_buckets: tuple[tuple[float, int], ...]    # (le seconds, cumulative count) acceptance -> 2xx
    latency_sum: float
    latency_count: int


@dataclass(frozen=True)
class Activity:
    """Counts of a scope's records per time bucket (Store.activity): the console's stats page.
    Bucket i is [since + i * width, since + (i + 1) * width)."""
    inbound: tuple[tuple[int, str, str, int], ...]    # (bucket, delivery state, dmarc result, events)
    sends: tuple[tuple[int, str, int], ...]           # (bucket, send event type, events)


# The delivery latency histogram's bounds (seconds, acceptance by Postfix -> the agent's 2xx),
# shared by both backends' counters and by /metrics.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400)


# --- moving a store: what Store.export_records gives and Store.import_records takes ----------------
# Backend-neutral values (the embedded and postgres schemas differ: SQLite keeps the inbox columns
# on events, PostgreSQL an inbox table beside them), so a move in either direction, and its
# verification (the same export of both stores, compared), needs no code per pair of backends.

class RecordKind(_Named):
    """What a store exports and imports, in the order a move copies them, each with its key."""
    EVENTS = "events"              # StoredEvent, by seq (the inbox's order, kept)
    SENDS = "sends"                # SendRecord, by id
    JOBS = "jobs"                  # StoredJob, by id
    TRANSCRIPTS = "transcripts"    # StoredTranscript, by event_id
    USES = "uses"                  # StoredUses, by (key, at): rate-limit and loop-breaker counts
    UPLOADS = "uploads"            # Upload, by id: POST /v1/attachments files (their blobs move with the blobs)
    BLOCKS = "blocks"              # Block, by (sender, scope): senders blocked by block-sender answers
    SEND_EVENTS = "send_events"    # SendEvent, by seq (kept), with its body and POST state
    SUPPRESSIONS = "suppressions"  # Suppression, by (domain, address)


@dataclass(frozen=True)
class StoredEvent:
    """An event with everything of it: its inbox row, body, blob references, delivery, attempts."""
    seq: int
    id: str
    body: bytes                      # the event JSON as last sent
    recipient: str
    address: str
    sender: str
    subject: str
    thread_id: str | None
    message_id: str                  # "" when the message had none
    received: float                  # when the store took it
    accepted: float | None           # the event's createdAt (acceptance by Postfix), None when unreadable
    read: bool
    verdicts: tuple[str, str, str, str]   # spf, dkim, dmarc, arc as stored
    blobs: tuple[str, ...]           # sha256 of the raw message and attachments, sorted
    delivery: Delivery
    attempts: tuple[Attempt, ...]    # in order
    fingerprint: str | None = None   # deliver's copy detector (deliver/dedup.py), None when not kept


@dataclass(frozen=True)
class StoredJob:
    id: str
    state: JobState
    attempts: int
    actions: tuple[str, ...]
    last_error: str
    next_at: float
    lease_until: float
    created: float
    updated: float


@dataclass(frozen=True)
class StoredTranscript:
    event_id: str
    record: str                      # the JSON text as written
    at: float                        # when it was written


@dataclass(frozen=True)
class StoredUses:
    key: str                         # "to:<address>", "thread:<id>", "agent:<route>"
    at: float
    count: int                       # uses under this key at this instant


def record_key(record: Any) -> Any:
    """The key a record is exported in order of (and imported once by)."""
    if isinstance(record, StoredEvent):
        return record.seq
    if isinstance(record, StoredTranscript):
        return record.event_id
    if isinstance(record, StoredUses):
        return (record.key, record.at)
    if isinstance(record, Block):
        return (record.sender, record.scope)
    if isinstance(record, SendEvent):
        return record.seq
    if isinstance(record, Suppression):
        return (record.domain, record.address)
    return record.id                 # SendRecord, StoredJob, Upload


def stored_events(rows: Iterable[Sequence[Any]], attempt_rows: Iterable[Sequence[Any]],
                  blob_rows: Iterable[tuple[str, str]]) -> list[StoredEvent]:
    """Both backends' export of events, from rows of (seq, id, body, recipient, address, sender,
    subject, thread_id, message_id, received, accepted, read, spf, dkim, dmarc, arc, and the
    delivery's event_id, route, recipient, state, attempts, status, reason, queue_id, created,
    updated, and the event's fingerprint); their attempts (event_id, at, outcome, status, duration_ms, excerpt, webhook_id,
    queue_id), in order; their blob references (event_id, sha256)."""
    attempts: dict[str, list[Attempt]] = {}
    for r in attempt_rows:
        attempts.setdefault(r[0], []).append(Attempt(r[1], DeliveryState(r[2]), *r[3:]))
    blobs: dict[str, list[str]] = {}
    for event_id, sha in blob_rows:
        blobs.setdefault(event_id, []).append(sha)
    return [StoredEvent(seq=r[0], id=r[1], body=bytes(r[2]), recipient=r[3], address=r[4], sender=r[5], subject=r[6],
                        thread_id=r[7], message_id=r[8] or "", received=r[9], accepted=r[10], read=bool(r[11]),
                        verdicts=tuple(r[12:16]), blobs=tuple(sorted(blobs.get(r[1], ()))),
                        delivery=Delivery(r[16], r[17], r[18], DeliveryState(r[19]), *r[20:26]),
                        attempts=tuple(attempts.get(r[1], ())), fingerprint=r[26])
            for r in rows]


def export_after(kind: RecordKind, after: Any) -> tuple[Any, ...]:
    """The query arguments that select a kind's records after the key `after` (None: all):
    (key,) for one-column keys, (key, key, at) for uses: `key > ? OR (key = ? AND at > ?)`, and
    (sender, sender, scope) for blocks, (domain, domain, address) for suppressions alike."""
    if kind is RecordKind.USES:
        key, at = after if after is not None else ("", float("-inf"))
        return (key, key, at)
    if kind in (RecordKind.BLOCKS, RecordKind.SUPPRESSIONS):
        first, second = after if after is not None else ("", "")
        return (first, first, second)
    if kind is RecordKind.SEND_EVENTS:
        return (after or 0,)
    return (after or "",)


def delivered_at(attempts: Iterable[Attempt]) -> list[float]:
    """When each attempt took the delivery into DELIVERED (from another state): the observations
    of the latency histogram, as record_attempt counts them, for an imported event."""
    out: list[float] = []
    before: DeliveryState | None = None
    for a in attempts:
        if a.outcome is DeliveryState.DELIVERED and before is not DeliveryState.DELIVERED:
            out.append(a.at)
        before = a.outcome
    return out
