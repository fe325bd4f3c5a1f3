"""The embedded store's counters (the `counters` table: what /metrics and `agentmx status` read
without counting the records): a change is a (kind, label, amount) row added to the running
value. Shared by embedded.py (on every write) and legacy.py (rebuilt after an import), below both.
"""
from __future__ import annotations

import sqlite3

from .model import LATENCY_BUCKETS, DeliveryState

CHECKS = ("spf", "dkim", "dmarc", "arc")     # the verdicts an event keeps, one counter per value


def bump(db: sqlite3.Connection, changes: list[tuple[str, str, float]]) -> None:
    db.executemany("INSERT INTO counters (kind, label, value) VALUES (?, ?, ?) "
                   "ON CONFLICT (kind, label) DO UPDATE SET value = value + excluded.value", changes)


def latency(seconds: float) -> list[tuple[str, str, float]]:
    """One observation of the time from acceptance by Postfix to the agent's 2xx."""
    seconds = max(0.0, seconds)
    bucket = next((f"{b:g}" for b in LATENCY_BUCKETS if seconds <= b), "+Inf")
    return [("latency", bucket, 1), ("latency_sum", "", seconds), ("latency_count", "", 1)]


def rebuild_counters(db: sqlite3.Connection) -> None:
    """The counters recomputed from the records (after an import; and the contract's check that
    the counters kept as records are written say what the records say)."""
    db.execute("DELETE FROM counters")
    changes = [("received", "", db.execute("SELECT COUNT(*) FROM events").fetchone()[0]),
               ("attempts", "", db.execute("SELECT COALESCE(SUM(attempts), 0) FROM deliveries").fetchone()[0])]
    changes += [("state", s, n) for s, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")]
    for check in CHECKS:
        changes += [("verdict", f"{check}={v}", n) for v, n in db.execute(
            f"SELECT {check}, COUNT(*) FROM events GROUP BY {check}")]
    for (seconds,) in db.execute("SELECT d.updated - e.accepted FROM deliveries d JOIN events e ON e.id = d.event_id "
                                 "WHERE d.state = ?", (DeliveryState.DELIVERED.value,)):
        changes += latency(seconds)
    bump(db, changes)
