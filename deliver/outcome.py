"""deliver's contract as values: the envelope of one delivery, and its outcome (the exit code
Postfix reads). Shared by deliver/core.py and deliver/reports.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from agentmx.store.model import DeliveryState

EX_OK = 0
EX_TEMPFAIL = 75


@dataclass(frozen=True)
class Envelope:
    sender: str                       # MAIL FROM ("" for the null sender)
    recipient: str                    # this delivery's recipient
    queue_id: str | None = None
    client_address: str | None = None
    client_helo: str | None = None
    original_recipient: str | None = None


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    state: DeliveryState              # delivered, refused, dropped, spam, held, stored, queued, deferred
    event_id: str | None = None
    status: int | None = None         # the endpoint's HTTP status, 0 when it did not answer
    reason: str = ""
    details: dict = field(default_factory=dict)
