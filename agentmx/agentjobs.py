"""The durable queue of agent jobs (action = "agent" routes): <data_dir>/agent-jobs.sqlite.

deliver puts one job per event (a Postfix retry of the same message puts nothing new) and exits 0
only once the row is committed; `agentmx agent` (the worker service) claims due jobs with a
lease, so a job held by a worker that died is taken up again when the lease runs out.

    queued  -> running -> done
                       -> queued (an error, the model's or ours: next_at = now + retry_base * 2^attempts)
                       -> parked (max_attempts errors: kept, visible, retried by hand)
                       -> queued (the route's sends_per_hour used up: next_at = when one frees,
                                  attempts unchanged)

`actions` lists what the job already did (replied, forwarded to X): a job run again after a
crash does not send the same reply twice.

`sends` holds one row per message the agent sent (a reply or a forward), per route, for the last
two hours: the route's sends_per_hour cap is counted here, so it survives a worker restart. (It
is one host's count: with agent workers on several hosts, each host has its own file.)
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
CREATE TABLE IF NOT EXISTS sends (
    id          INTEGER PRIMARY KEY,
    route       TEXT NOT NULL,        -- the route's match
    job         TEXT NOT NULL,
    action      TEXT NOT NULL,        -- replied, forwarded:<address>
    at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_route ON sends (route, at);
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
        """A failed attempt: queue again with backoff, or park after max_attempts. Returns the state."""
        job = self.get(job_id)
        attempts = (job.attempts if job else 0) + 1
        state = "parked" if attempts >= max_attempts else "queued"
        self._conn().execute("UPDATE jobs SET state = ?, attempts = ?, next_at = ?, last_error = ?, updated = ? "
                             "WHERE id = ?", (state, attempts, self.clock() + retry_base * 2 ** (attempts - 1),
                                              error[:1000], self.clock(), job_id))
        return state

    def postpone(self, job_id: str, until: float) -> None:
        """Not run now, through no fault of the job's: queued again for `until`, attempts unchanged."""
        self._conn().execute("UPDATE jobs SET state = 'queued', next_at = ?, updated = ? WHERE id = ?",
                             (until, self.clock(), job_id))

    # --- the route's send cap ---------------------------------------------------------------------

    def full_until(self, route: str, per_hour: int) -> float | None:
        """None while the route may still send this hour; else when its oldest counted send leaves
        the one-hour window."""
        now = self.clock()
        rows = self._conn().execute("SELECT at FROM sends WHERE route = ? AND at > ? ORDER BY at DESC LIMIT ?",
                                    (route, now - 3600, per_hour)).fetchall()
        return rows[-1][0] + 3600 if len(rows) >= per_hour else None

    def take_send(self, route: str, job_id: str, action: str, per_hour: int) -> int | None:
        """Count one send for the route if it has one left this hour: its row id (for
        release_send), or None when the route has sent per_hour messages in the last hour."""
        db = self._conn()
        now = self.clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM sends WHERE at <= ?", (now - 7200,))
            (count,) = db.execute("SELECT COUNT(*) FROM sends WHERE route = ? AND at > ?",
                                  (route, now - 3600)).fetchone()
            row = None
            if count < per_hour:
                row = db.execute("INSERT INTO sends (route, job, action, at) VALUES (?, ?, ?, ?)",
                                 (route, job_id, action, now)).lastrowid
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row

    def release_send(self, row: int) -> None:
        """A counted send that did not happen (Postfix refused it)."""
        self._conn().execute("DELETE FROM sends WHERE id = ?", (row,))

    def requeue(self, job_id: str) -> bool:
        """A parked job, by hand: try again now."""
        return self._conn().execute("UPDATE jobs SET state = 'queued', attempts = 0, next_at = ? WHERE id = ? "
                                    "AND state = 'parked'", (self.clock(), job_id)).rowcount == 1

    def counts(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
