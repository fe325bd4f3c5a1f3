"""The inbox index: which stored events exist, for whom, in what order, read or not.

The events themselves stay where deliver stores them (<data_dir>/events/<id>.json); this is an
SQLite index beside them (<data_dir>/inbox.sqlite, WAL mode) that deliver writes once per event
and `agentmx serve` reads for GET /v1/messages, the long-poll wait and the event stream. `seq`
is the order of arrival (what the event stream resumes from); `read` is set by an ack.

Scoping is by the recipient's base address (agent+tag@ is agent@): an API key sees what its
`allow` list names, as for sending.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .sqlitedb import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    address    TEXT NOT NULL,       -- the recipient's base address, lower case (agent+tag@ -> agent@)
    recipient  TEXT NOT NULL,
    sender     TEXT NOT NULL,       -- From address, lower case
    subject    TEXT NOT NULL,
    thread_id  TEXT,
    received   REAL NOT NULL,       -- when deliver stored it (unix seconds)
    state      TEXT NOT NULL,       -- stored (pull), delivered, refused, held, dropped, spam, deferred
    read       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_address ON messages (address, seq);
CREATE INDEX IF NOT EXISTS messages_thread ON messages (thread_id);
"""


@dataclass(frozen=True)
class Row:
    seq: int
    id: str
    address: str
    recipient: str
    sender: str
    subject: str
    thread_id: str | None
    received: float
    state: str
    read: bool


def base_address(recipient: str) -> str:
    """agent@example.com for Agent+tag@Example.com: deliver's own routing rule."""
    from agentmx.deliver.route import split
    return split(recipient)[0]


class Inbox(SqliteFile):
    SCHEMA = SCHEMA

    def __init__(self, data_dir: Path, clock=time.time, create: bool = True):
        super().__init__(Path(data_dir) / "inbox.sqlite", create)
        self.clock = clock

    # --- written by deliver ------------------------------------------------------------------

    def record(self, event: dict, state: str) -> None:
        """Index one event (again: a retry updates its state, keeps its place and read flag)."""
        db = self._conn()
        db.execute(
            "INSERT INTO messages (id, address, recipient, sender, subject, thread_id, received, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
            (event["id"], base_address(event["recipient"]), event["recipient"],
             ((event.get("from") or {}).get("address") or "").lower(), event.get("subject") or "",
             event.get("threadId"), self.clock(), state))

    def set_state(self, event_id: str, state: str) -> None:
        self._conn().execute("UPDATE messages SET state = ? WHERE id = ?", (state, event_id))

    # --- read by serve --------------------------------------------------------------------------

    def query(self, addresses: tuple[str, ...], *, to: str | None = None, sender: str | None = None,
              subject: str | None = None, since: float | None = None, unread: bool = False,
              before_seq: int | None = None, after_seq: int | None = None, thread_id: str | None = None,
              limit: int = 50, oldest_first: bool = False) -> list[Row]:
        """Events for the scoped addresses ("agent@x" or "@x"), newest first unless oldest_first."""
        if self.missing:
            return []
        where, args = [], []
        scope = []
        for a in addresses:
            if a.startswith("@"):
                scope.append("address LIKE ? ESCAPE '\\'")
                args.append("%" + _like(a))
            else:
                scope.append("address = ?")
                args.append(a.lower())
        if not scope:
            return []
        where.append("(" + " OR ".join(scope) + ")")
        if to:
            where.append("address = ?")
            args.append(base_address(to))
        if sender:
            where.append("(sender = ? OR sender LIKE ? ESCAPE '\\')")
            args += [sender.lower(), "%" + _like(sender.lower() if sender.startswith("@") else "@" + sender.lower())]
        if subject:
            where.append("subject LIKE ? ESCAPE '\\'")
            args.append("%" + _like(subject) + "%")
        if since is not None:
            where.append("received >= ?")
            args.append(since)
        if unread:
            where.append("read = 0")
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        if after_seq is not None:
            where.append("seq > ?")
            args.append(after_seq)
        if thread_id is not None:
            where.append("thread_id = ?")
            args.append(thread_id)
        order = "ASC" if oldest_first else "DESC"
        sql = (f"SELECT seq, id, address, recipient, sender, subject, thread_id, received, state, read "
               f"FROM messages WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?")
        rows = self._conn().execute(sql, (*args, max(1, min(limit, 500)))).fetchall()
        return [Row(*r[:9], bool(r[9])) for r in rows]

    def get(self, event_id: str) -> Row | None:
        if self.missing:
            return None
        r = self._conn().execute("SELECT seq, id, address, recipient, sender, subject, thread_id, received, state, "
                                 "read FROM messages WHERE id = ?", (event_id,)).fetchone()
        return Row(*r[:9], bool(r[9])) if r else None

    def ack(self, event_id: str) -> bool:
        if self.missing:
            return False
        return self._conn().execute("UPDATE messages SET read = 1 WHERE id = ?", (event_id,)).rowcount == 1

    def claim(self, event_id: str) -> bool:
        """Mark an unread message read; True only for the one caller that did (wait + ack: two
        waiters never get the same message)."""
        if self.missing:
            return False
        return self._conn().execute("UPDATE messages SET read = 1 WHERE id = ? AND read = 0",
                                    (event_id,)).rowcount == 1

    def last_seq(self) -> int:
        if self.missing:
            return 0
        return self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

