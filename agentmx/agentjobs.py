"""The durable queue of agent jobs (action = "agent" routes): <data_dir>/agent-jobs.sqlite.

deliver puts one job per event (a Postfix retry of the same message puts nothing new) and exits 0
only once the row is committed; `agentmx agent` (the worker service) claims due jobs with a
lease, so a job held by a worker that died is taken up again when the lease runs out.

    queued  -> running -> done
                       -> queued (a model error: next_at = now + retry_base * 2^attempts)
                       -> parked (max_attempts model errors: kept, visible, retried by hand)

`actions` lists what the job already did (replied, forwarded to X): a job run again after a
crash does not send the same reply twice.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .sqlitedb import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,     -- the event id
    state       TEXT NOT NULL,        -- queued, running, done, parked
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    actions     TEXT NOT NULL DEFAULT '[]',
    last_error  TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_at);
"""


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    attempts: int
    actions: tuple[str, ...]
    last_error: str


class Jobs(SqliteFile):
    SCHEMA = SCHEMA

    def __init__(self, data_dir: Path, clock=time.time, create: bool = True):
        super().__init__(Path(data_dir) / "agent-jobs.sqlite", create)
        self.clock = clock

    def put(self, event_id: str) -> bool:
        """Queue a job for the event; False if it is already there (a retried delivery)."""
        now = self.clock()
        cur = self._conn().execute("INSERT OR IGNORE INTO jobs (id, state, next_at, created, updated) "
                                   "VALUES (?, 'queued', ?, ?, ?)", (event_id, now, now, now))
        return cur.rowcount == 1

    def claim(self, lease: float) -> Job | None:
        """The next due job, now leased to the caller (or a running one whose lease ran out)."""
        db = self._conn()
        now = self.clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT id FROM jobs WHERE (state = 'queued' AND next_at <= ?) OR "
                             "(state = 'running' AND lease_until < ?) ORDER BY next_at LIMIT 1", (now, now)).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET state = 'running', lease_until = ?, updated = ? WHERE id = ?",
                       (now + lease, now, row[0]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.get(row[0])

    def get(self, job_id: str) -> Job | None:
        if self.missing:
            return None
        r = self._conn().execute("SELECT id, state, attempts, actions, last_error FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
        return Job(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4]) if r else None

    def did(self, job_id: str, action: str) -> None:
        job = self.get(job_id)
        actions = list(job.actions) + [action] if job else [action]
        self._conn().execute("UPDATE jobs SET actions = ?, updated = ? WHERE id = ?",
                             (json.dumps(actions), self.clock(), job_id))

    def done(self, job_id: str) -> None:
        self._conn().execute("UPDATE jobs SET state = 'done', last_error = '', updated = ? WHERE id = ?",
                             (self.clock(), job_id))

    def failed(self, job_id: str, error: str, max_attempts: int, retry_base: float) -> str:
        """A model error: queue again with backoff, or park after max_attempts. Returns the state."""
        job = self.get(job_id)
        attempts = (job.attempts if job else 0) + 1
        state = "parked" if attempts >= max_attempts else "queued"
        self._conn().execute("UPDATE jobs SET state = ?, attempts = ?, next_at = ?, last_error = ?, updated = ? "
                             "WHERE id = ?", (state, attempts, self.clock() + retry_base * 2 ** (attempts - 1),
                                              error[:1000], self.clock(), job_id))
        return state

    def requeue(self, job_id: str) -> bool:
        """A parked job, by hand: try again now."""
        return self._conn().execute("UPDATE jobs SET state = 'queued', attempts = 0, next_at = ? WHERE id = ? "
                                    "AND state = 'parked'", (self.clock(), job_id)).rowcount == 1

    def counts(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
