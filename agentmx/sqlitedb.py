"""One SQLite file in the data directory, opened lazily in WAL mode with its schema, left to the
data directory's owner when root opens it (a test, `agentmx status` by hand): deliver and serve
(user agentmx) must keep writing it. The inbox index and the agent job queue are two of these."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path


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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(self.SCHEMA)
            self._db = db
            _same_owner_as_dir(self.path)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _same_owner_as_dir(path: Path) -> None:
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    for p in path.parent.glob(path.name + "*"):
        try:
            os.chown(p, st.st_uid, st.st_gid)
        except OSError:
            pass
