"""What agentmx keeps, as values: every state one enum, every record one frozen dataclass.

Shared by both backends (embedded: SQLite + a blob folder; postgres: PostgreSQL + S3) and by
every reader and writer. Times are unix seconds (floats), taken from the store's injected clock.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterator

EXCERPT = 200                  # characters of an endpoint's answer kept with each attempt
MESSAGE_ID_MAX = 998           # characters of an event's Message-ID kept (and compared by find_event)


class _Named(enum.Enum):
    """An enum that prints as its value ("delivered"), in log lines and f-strings alike."""

    def __str__(self) -> str:
        return self.value


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
    QUEUED = "queued"          # Postfix took it (issue 16 adds delivered, delayed, bounced, complained)


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


@dataclass(frozen=True)
class Job:
    id: str                          # the event id
    state: JobState
    attempts: int
    actions: tuple[str, ...]         # what it already did: "replied", "forwarded:<address>"
    last_error: str
    next_at: float


def base_address(recipient: str) -> str:
    """agent@example.com for Agent+tag@Example.com: the inbox's scope, deliver's own routing rule."""
    from agentmx.deliver.route import split
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
    other: dict                      # table -> rows removed (attempts, sends, transcripts, jobs, ...)


@dataclass(frozen=True)
class Metrics:
    """What GET /metrics shows of the store, from counters kept as records are written."""
    received: int
    by_state: dict                   # DeliveryState -> current count
    attempts: int
    verdicts: dict                   # (check, result) -> count, of events as stored
    latency_buckets: tuple[tuple[float, int], ...]    # (le seconds, cumulative count) acceptance -> 2xx
    latency_sum: float
    latency_count: int


# The delivery latency histogram's bounds (seconds, acceptance by Postfix -> the agent's 2xx),
# shared by both backends' counters and by /metrics.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400)
