"""One SQLite file in the data directory, opened lazily in WAL mode with its schema, left to the
data directory's owner when root opens it (a test, `agentmx status` by hand): deliver and serve
(user agentmx) must keep writing it. The inbox index and the agent job queue are two of these.

The file is created 0640 whatever the umask (Postfix runs pipe programs with umask 022): senders
and subjects are nobody else's to read. SQLite gives its -wal and -shm files the same mode."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .ownership import hand_over


class SqliteFile:
    SCHEMA = ""

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        self.create = create         # readers (serve, the CLI) never create the file: deliver does
        self._db: sqlite3.Connection | None = None

    @property
    def missing(self) -> bool:
        """A reader's file that deliver has not made yet: nothing in it."""
        return not self.create and self._db is None and not self.path.exists()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if self.create:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o640))
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(self.SCHEMA)
            self._db = db
            _no_other_access(self.path)
            _same_owner_as_dir(self.path)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _same_owner_as_dir(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        hand_over(p, path.parent)


def _no_other_access(path: Path) -> None:
    """A file made 0644 by an older version: take the others' bits away (ours to change only)."""
    for p in path.parent.glob(path.name + "*"):
        try:
            st = p.stat()
            if st.st_mode & 0o007 and st.st_uid == os.geteuid():
                os.chmod(p, st.st_mode & 0o770)
        except OSError:
            pass
