"""One SQLite file in the data directory, opened lazily in WAL mode with its schema, left to the
data directory's owner when root opens it (a test, `agentmx status` by hand): deliver and serve
(user agentmx) must keep writing it. The inbox index and the agent job queue are two of these.

The file is created 0640 whatever the umask (Postfix runs pipe programs with umask 022): senders
and subjects are nobody else's to read. SQLite gives its -wal and -shm files the same mode. The
three files are touched by their exact names, and a symbolic link in their place is refused, never
followed (agentmx/ownership.py: the data directory is user agentmx's, root must not be led out of it)."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .ownership import NotOurs, no_other_access, refuse_links


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
            try:
                refuse_links(*self._files())
                if self.create:
                    self._make()
            except NotOurs as exc:
                raise sqlite3.OperationalError(str(exc)) from None
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(self.SCHEMA)
            self._db = db
        return self._db

    def _make(self) -> None:
        """Create the file, 0640 and the data directory's owner's, before SQLite opens it (SQLite
        then gives -wal and -shm the same mode and owner). No descriptor of an SQLite file is ever
        opened and closed here once it exists: closing one drops the POSIX locks that SQLite
        connections of this process hold on it (seen: another process then reset the -shm under
        a mapping, SIGBUS). A file an older version made 0644 loses the others' bits, path-based,
        and only when we are not root (then only our own files can change)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except FileExistsError:
            if os.geteuid() != 0:
                for p in self._files():
                    no_other_access(p)
            return
        try:
            os.fchmod(fd, 0o640)
            if os.geteuid() == 0:
                st = self.path.parent.stat()
                os.fchown(fd, st.st_uid, st.st_gid)
        finally:
            os.close(fd)

    def _files(self) -> tuple[Path, ...]:
        return (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

