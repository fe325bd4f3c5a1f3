"""The embedded backend: one SQLite file in WAL mode and a blob folder, both in the data directory.

    <data_dir>/agentmx.sqlite (-wal, -shm)   every record (schema: migrations.py)
    <data_dir>/blobs/<sha[:2]>/<sha>         raw messages and attachments, by the sha256 of their bytes

One connection per thread (serve calls from a thread pool, deliver from one thread, the LMTP
front-end from a pool), opened on first use; every method one short transaction, BEGIN IMMEDIATE
where it writes. A process's writers take turns in the order they came (_Turns) before SQLite's
write lock: SQLite's own wait (the busy timeout) polls with sleeps growing to 100 ms, so among
many writers one that has waited long checks least often and every newcomer passes it (seen:
`agentmx worker`'s threads under load, a few writes a run waiting out all 20 s). A process that
forks gets new connections in the child; the parent's are left alone there, never closed (their
locks belong to the parent).

Lessons kept from the per-file stores of earlier versions:
- The database file is created 0640 and the data directory owner's BEFORE SQLite opens it (SQLite
  then gives -wal and -shm the same mode and owner): Postfix runs pipe programs with umask 022,
  and root (a test, the CLI by hand) must leave files that deliver and serve (user agentmx) can
  still write. Blobs and their folders are 0640/0750 and handed over the same way.
- No descriptor of a live SQLite file is ever opened and closed beside a connection: closing one
  drops the POSIX locks this process's connections hold (seen: another process then reset the
  -shm under a mapping, SIGBUS). Only lstat, and chmod by path.
- A symbolic link where a file of ours belongs is refused, never followed (ownership.py).
Nothing in a path comes from a message: only hex digests.
"""
from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import re
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from agentmx import notify
from agentmx.ownership import NotOurs, hand_over, no_other_access, refuse_links, writable_like, write_atomically

from . import migrations
from .base import (DuplicateEvent, SchemaMismatch, Store, StoreError, StoreUnavailable, conditions, like as _like,
                   sender_scope)
from .model import (EXCERPT, LATENCY_BUCKETS, MESSAGE_ID_MAX, Activity, Attempt, Blob, Block, Delivery, DeliveryRow, DeliveryState,
                    GcReport, InboxRow, Job, JobRow, JobState, Metrics, PostState, RecordKind, SendEvent, SendEventType, SendRecord,
                    SendRow, SendState, StoredEvent, StoredJob, StoredTranscript, StoredUses, Suppression, SuppressionReason,
                    Upload, base_address, delivered_at, export_after, stored_events)
from . import legacy
from .counters import CHECKS, bump, latency

FILE = "agentmx.sqlite"
BACKEND = "embedded"
CHUNK = 256 * 1024
BUSY_TIMEOUT = 20.0             # seconds a write waits for another's transaction
# What earlier versions kept in the data directory: imported once by `agentmx store migrate`.
LEGACY = ("inbox.sqlite", "agent-jobs.sqlite", "events", "state", "sent", "transcripts")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_INBOX_COLUMNS = ("e.seq, e.id, e.address, e.recipient, e.sender, e.subject, e.thread_id, e.received, d.state, "
                  "e.read")


class _Turns:
    """A lock that threads get in the order they asked for it (threading.Lock promises no
    order), handed from one to the next on release; each waits at most `timeout`."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            me = threading.Lock()
            me.acquire()
            self._waiting.append(me)
        try:
            if me.acquire(timeout=timeout):
                return True               # handed over by release()
        except BaseException:             # interrupted (KeyboardInterrupt): no longer waiting
            if not self._withdraw(me):
                self.release()            # handed over meanwhile: passed on
            raise
        return not self._withdraw(me)     # (handed over between the timeout and here: ours)

    def _withdraw(self, me: threading.Lock) -> bool:
        """Leave the queue; False if the turn was handed to `me` already."""
        with self._mutex:
            try:
                self._waiting.remove(me)
            except ValueError:
                return False
            return True

    def release(self) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._held = False


class EmbeddedStore(Store):
    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / FILE
        self.blobs = self.data_dir / "blobs"
        self.clock = clock
        self._lock = threading.Lock()
        self._turns = _Turns()            # this process's writers, in turn (see the module's doc)
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._abandoned: list[sqlite3.Connection] = []     # a parent's, inherited by a fork: never closed
        self._pid = os.getpid()
        self._ready = False

    # --- connections -------------------------------------------------------------------------------

    def _files(self) -> tuple[Path, ...]:
        return (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The error for the caller; after an error of the database, this thread's connection is
        dropped and the next call opens a new one (a file opened read-only because root had just
        made it, or one replaced under us, must not stay broken in a long-lived thread)."""
        if isinstance(exc, sqlite3.Error):
            self._drop()
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StoreUnavailable(f"data directory {self.data_dir}: {what}")

    def _drop(self) -> None:
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            return
        self._local.db = None
        with self._lock:
            if self._conns.get(threading.current_thread()) is db:
                del self._conns[threading.current_thread()]
        try:
            db.close()
        except sqlite3.Error:
            pass

    def _db(self) -> sqlite3.Connection:
        """This thread's connection, the schema checked once per store (SchemaMismatch)."""
        db = self._connection()
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._prepare(db)
                    self._ready = True
        return db

    def _after_fork(self) -> None:
        """In a forked child: the parent's connections (and lock) are not ours. They are kept,
        never closed: closing would release locks that are the parent's business."""
        if self._pid != os.getpid():
            self._lock, self._turns = threading.Lock(), _Turns()
            self._abandoned += self._conns.values()
            self._conns, self._local, self._pid = {}, threading.local(), os.getpid()

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        self._after_fork()
        with self._lock:
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()   # a thread that ended (one per connection in a worker)
            try:
                db = self._open()
            except (sqlite3.Error, OSError) as exc:
                raise self._unavailable(exc) from None
            self._conns[threading.current_thread()] = db
        self._local.db, self._local.pid = db, os.getpid()
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            refuse_links(*self._files())
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._make()
        except NotOurs as exc:
            raise StoreUnavailable(str(exc)) from None
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous=FULL")     # a pull route's mail exists only here once deliver exits 0
            db.execute("PRAGMA trusted_schema=OFF")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _make(self) -> None:
        """Create the file, 0640 and the data directory's owner's, before SQLite opens it. A file an
        older version made 0644 loses the others' bits, path-based, and only when we are not root."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except FileExistsError:
            if os.geteuid() != 0:
                for p in self._files():
                    no_other_access(p)
                for p in self._files()[1:]:
                    writable_like(p, self.path)
            return
        try:
            os.fchmod(fd, 0o640)
            if os.geteuid() == 0:
                st = self.data_dir.stat()
                os.fchown(fd, st.st_uid, st.st_gid)
        finally:
            os.close(fd)

    @contextmanager
    def _tx(self, write: bool = True):
        """One transaction (BEGIN IMMEDIATE to write, after this process's earlier writers); errors
        of the database become StoreUnavailable."""
        db = self._db()
        turn = write and not db.in_transaction     # (a nested one fails at BEGIN, as it always did)
        if turn and not self._turns.acquire(BUSY_TIMEOUT):
            raise StoreUnavailable(f"data directory {self.data_dir}: database is locked (waited {BUSY_TIMEOUT:g} s "
                                   "behind this process's other writers)")
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from None
        finally:
            if turn:
                self._turns.release()

    def _one(self, sql: str, args: tuple = ()):
        try:
            return self._db().execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def _all(self, sql: str, args: tuple = ()) -> list:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    # --- lifecycle ---------------------------------------------------------------------------------

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone():
            return 0
        return db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

    def legacy_present(self) -> bool:
        """Files of an earlier version's data directory (events/, inbox.sqlite, ...)."""
        return any(os.path.lexists(self.data_dir / name) for name in LEGACY)

    def _imported(self, db: sqlite3.Connection) -> bool:
        return db.execute("SELECT 1 FROM meta WHERE key = 'legacy_import'").fetchone() is not None

    def _prepare(self, db: sqlite3.Connection) -> None:
        """A new file gets the whole schema; an older or newer one, or an earlier version's data
        directory not imported yet, is refused until `agentmx store migrate` has run."""
        try:
            version = self._version(db)
            if version == 0 and not self.legacy_present():
                self._apply(db, mark_imported=True)          # a fresh host: no step needed
                return
            if version == 0 or (version == migrations.LATEST and not self._imported(db) and self.legacy_present()):
                raise SchemaMismatch(f"{self.data_dir} holds the files of an earlier agentmx (events/, inbox.sqlite, "
                                     "...): run `agentmx store migrate` to import them into the store")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        if version < migrations.LATEST:
            raise SchemaMismatch(f"{self.path} has schema version {version}, this agentmx needs "
                                 f"{migrations.LATEST}: run `agentmx store migrate`")
        if version > migrations.LATEST:
            raise SchemaMismatch(f"{self.path} has schema version {version}, newer than this agentmx "
                                 f"({migrations.LATEST}): upgrade agentmx, or restore a backup")

    def _apply(self, db: sqlite3.Connection, mark_imported: bool = False) -> int:
        """The pending migrations, each in one transaction with its version row."""
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")        # kept in the file; not inside a transaction
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, what TEXT NOT NULL, "
                       "applied REAL NOT NULL)")
            version = self._version(db)
            for number, what, statements in migrations.pending(version, BACKEND):
                for sql in statements:
                    db.execute(sql)
                db.execute("INSERT INTO schema_version (version, what, applied) VALUES (?, ?, ?)",
                           (number, what, self.clock()))
                version = number
            if mark_imported and not self.legacy_present():
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('legacy_import', 'none')")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return version

    def migrate(self) -> int:
        db = self._connection()
        try:
            with self._lock:
                version = self._apply(db)
                self._ready = False
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        return version

    def check_schema(self) -> None:
        self._db()

    def import_legacy(self, route_of: Callable[[str], str] | None = None) -> dict[str, int]:
        """Import an earlier version's data directory once (agentmx/store/legacy.py); {} when there
        is nothing to import or it was imported already. `route_of(recipient)` names the route of
        an old delivery (default: its base address)."""
        db = self._connection()
        try:
            if self._version(db) != migrations.LATEST:
                raise SchemaMismatch("apply the migrations first (Store.migrate)")
            if self._imported(db) or not self.legacy_present():
                return {}
            counts = legacy.import_all(self, db, route_of)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        self._ready = False
        return counts

    def close(self) -> None:
        self._after_fork()
        with self._lock:
            conns = list(self._conns.values())
            self._conns, self._local = {}, threading.local()
        for db in conns:
            db.close()

    # --- blobs -------------------------------------------------------------------------------------

    def _blob_path(self, sha256: str) -> Path | None:
        return self.blobs / sha256[:2] / sha256 if isinstance(sha256, str) and _SHA.match(sha256) else None

    def _folder(self, path: Path) -> None:
        """A folder of ours (blobs/, blobs/ab/): made 0750 and handed over, never a link."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.mkdir(mode=0o750, exist_ok=True)
            hand_over(path, self.data_dir)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise NotOurs(f"{path}: not a folder (a link?): refused")

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha)
        now = self.clock()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._folder(self.blobs)
            self._folder(path.parent)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                try:
                    os.utime(path, (now, now), follow_symlinks=False)    # in use again: gc keeps it
                except OSError:
                    pass
                return sha
            if st is not None:
                raise NotOurs(f"{path}: not a regular file (a link?): refused")
            self._write(path, data, now)
        except OSError as exc:
            raise self._unavailable(exc) from None
        return sha

    def has_blob(self, sha256: str) -> bool:
        path = self._blob_path(sha256)
        try:
            return path is not None and stat.S_ISREG(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._unavailable(exc) from None

    def _write(self, path: Path, data: bytes, now: float) -> None:
        """Atomically, the data directory owner's, 0640 (ownership.write_atomically)."""
        write_atomically(path, data, self.data_dir, mtime=now)

    def _open_blob_file(self, sha256: str):
        path = self._blob_path(sha256)
        if path is None:
            return None
        try:
            f = open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link where a blob belongs: not ours
                return None
            raise self._unavailable(exc) from None
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            return None
        return f

    def get_blob(self, sha256: str) -> bytes | None:
        f = self._open_blob_file(sha256)
        if f is None:
            return None
        try:
            with f:
                return f.read()
        except OSError as exc:
            raise self._unavailable(exc) from None

    def open_blob(self, sha256: str) -> Blob | None:
        f = self._open_blob_file(sha256)
        if f is None:
            return None
        size = os.fstat(f.fileno()).st_size

        def chunks():
            with f:                       # closed however the reader ends (the file's own finalizer too)
                while chunk := f.read(CHUNK):
                    yield chunk
        return Blob(sha256, size, chunks())

    # --- events ------------------------------------------------------------------------------------

    def put_event(self, event: dict, body: bytes, route: str, state: DeliveryState,
                  fingerprint: str | None = None, since: float | None = None) -> bool:
        event_id = event["id"]
        recipient = event["recipient"].lower()
        message_id = (event.get("messageId") or "")[:MESSAGE_ID_MAX] or None
        now = self.clock()
        auth = event.get("auth") or {}
        shas = {s for s in [(event.get("raw") or {}).get("sha256"),
                            *(a.get("sha256") for a in event.get("attachments") or [])] if isinstance(s, str)}
        with self._tx() as db:        # BEGIN IMMEDIATE: the duplicate check and the insert are one step
            row = db.execute("SELECT e.seq, d.state FROM events e JOIN deliveries d ON d.event_id = e.id "
                             "WHERE e.id = ?", (event_id,)).fetchone()
            if row is not None and row[1] == DeliveryState.DROPPED.value:
                return False              # a dropped event stays without its copy (drop_event)
            if row is not None:
                db.execute("UPDATE event_bodies SET body = ? WHERE seq = ?", (body, row[0]))
                first = False
            else:
                if fingerprint and since is not None and message_id:
                    other = _first(db, recipient, message_id, fingerprint, since)
                    if other is not None:
                        raise DuplicateEvent(other)
                verdicts = [str(auth.get(c) or "none") for c in CHECKS]
                seq = db.execute(
                    "INSERT INTO events (id, address, recipient, sender, subject, thread_id, message_id, received, "
                    "accepted, spf, dkim, dmarc, arc, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event_id, base_address(event["recipient"]), recipient,
                     ((event.get("from") or {}).get("address") or "").lower(), event.get("subject") or "",
                     event.get("threadId"), message_id, now, _accepted(event, now), *verdicts,
                     fingerprint)).lastrowid
                db.execute("INSERT INTO event_bodies (seq, body) VALUES (?, ?)", (seq, body))
                db.execute("INSERT INTO deliveries (event_id, route, recipient, state, created, updated) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (event_id, route, recipient, state.value, now, now))
                bump(db, [("received", "", 1), ("state", state.value, 1),
                           *(("verdict", f"{c}={v}", 1) for c, v in zip(CHECKS, verdicts))])
                first = True
            # the blobs of the body as last sent (a copy taken by another host names its own raw message)
            db.executemany("INSERT OR IGNORE INTO event_blobs (event_id, sha256) VALUES (?, ?)",
                           [(event_id, s) for s in shas])
        notify.ring(self.data_dir)        # long-polls and event streams on this host wake up
        return first

    def get_event(self, event_id: str) -> bytes | None:
        row = self._one("SELECT b.body FROM events e JOIN event_bodies b ON b.seq = e.seq WHERE e.id = ?", (event_id,))
        return bytes(row[0]) if row and row[0] else None       # b"": dropped

    def drop_event(self, event_id: str) -> bool:
        with self._tx() as db:       # BEGIN IMMEDIATE: no put_event adds a reference meanwhile
            row = db.execute("SELECT seq FROM events WHERE id = ?", (event_id,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE event_bodies SET body = ? WHERE seq = ?", (b"", row[0]))
            db.execute("UPDATE events SET subject = '' WHERE seq = ?", (row[0],))
            shas = [r[0] for r in db.execute("SELECT sha256 FROM event_blobs WHERE event_id = ?", (event_id,))]
            db.execute("DELETE FROM event_blobs WHERE event_id = ?", (event_id,))
            for sha in shas:
                path = self._blob_path(sha)
                # another event's, or an upload's (an uploaded file or a scheduled send's attachment
                # with the same bytes), until it expires: gc's rule
                held = db.execute("SELECT 1 FROM event_blobs WHERE sha256 = ? UNION ALL SELECT 1 FROM uploads "
                                  "WHERE sha256 = ? AND expires >= ? LIMIT 1", (sha, sha, self.clock())).fetchone()
                if path is not None and not held:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        raise self._unavailable(exc) from None
        return True

    def find_event(self, recipient: str, message_id: str, fingerprint: str, since: float) -> str | None:
        if not message_id or not fingerprint:
            return None
        try:
            return _first(self._db(), recipient.lower(), message_id[:MESSAGE_ID_MAX], fingerprint, since)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    # --- deliveries --------------------------------------------------------------------------------

    def record_attempt(self, event_id: str, attempt: Attempt, reason: str) -> Delivery:
        with self._tx() as db:
            row = db.execute("SELECT d.state, d.attempts, e.accepted FROM deliveries d JOIN events e ON e.id = d.event_id "
                             "WHERE d.event_id = ?", (event_id,)).fetchone()
            if row is None:
                raise StoreError(f"no event {event_id} to record an attempt of")
            old, new = row[0], attempt.outcome.value
            db.execute("INSERT INTO attempts (event_id, at, outcome, status, duration_ms, excerpt, webhook_id, queue_id) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (event_id, attempt.at, new, attempt.status, int(attempt.duration_ms), attempt.excerpt[:EXCERPT],
                        attempt.webhook_id, attempt.queue_id))
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, status = ?, reason = ?, "
                       "queue_id = COALESCE(?, queue_id), updated = ? WHERE event_id = ?",
                       (new, attempt.status, reason[:1000], attempt.queue_id, attempt.at, event_id))
            changes = [("attempts", "", 1)]
            if old != new:
                changes += [("state", old, -1), ("state", new, 1)]
                if attempt.outcome is DeliveryState.DELIVERED:
                    changes += latency(attempt.at - row[2])
            bump(db, changes)
            return _delivery(db.execute(f"SELECT {_DELIVERY} FROM deliveries WHERE event_id = ?", (event_id,)).fetchone())

    def delivery(self, event_id: str) -> Delivery | None:
        row = self._one(f"SELECT {_DELIVERY} FROM deliveries WHERE event_id = ?", (event_id,))
        return _delivery(row) if row else None

    def attempts(self, event_id: str) -> list[Attempt]:
        return [Attempt(at, DeliveryState(outcome), status, ms, excerpt, webhook_id, queue_id)
                for at, outcome, status, ms, excerpt, webhook_id, queue_id in self._all(
                    "SELECT at, outcome, status, duration_ms, excerpt, webhook_id, queue_id FROM attempts "
                    "WHERE event_id = ? ORDER BY id", (event_id,))]

    def recent_deliveries(self, limit: int = 20) -> list[Delivery]:
        return [_delivery(r) for r in self._all(f"SELECT {_DELIVERY} FROM deliveries ORDER BY updated DESC, rowid DESC "
                                                "LIMIT ?", (max(1, min(limit, 10_000)),))]

    def list_deliveries(self, addresses: tuple[str, ...], *, state: DeliveryState | None = None,
                        before_seq: int | None = None, limit: int = 50) -> list[DeliveryRow]:
        scope, args = _scope("e.address", addresses)
        if not scope:
            return []
        where = [scope]
        conditions(where, args, (("d.state = ?", state.value if state else None), ("e.seq < ?", before_seq)))
        d = ", ".join("d." + c for c in _DELIVERY.split(", "))
        sql = (f"SELECT e.seq, {d}, e.sender, e.subject, COALESCE((SELECT a.excerpt FROM attempts a "
               f"WHERE a.event_id = e.id ORDER BY a.id DESC LIMIT 1), '') FROM events e JOIN deliveries d "
               f"ON d.event_id = e.id WHERE {' AND '.join(where)} ORDER BY e.seq DESC LIMIT ?")
        return [DeliveryRow(r[0], _delivery(r[1:11]), r[11], r[12], r[13])
                for r in self._all(sql, (*args, max(1, min(limit, 500))))]

    # --- the inbox -----------------------------------------------------------------------------------

    def inbox_query(self, addresses: tuple[str, ...], *, to: str | None = None, sender: str | None = None,
                    subject: str | None = None, since: float | None = None, unread: bool = False,
                    before_seq: int | None = None, after_seq: int | None = None, thread_id: str | None = None,
                    limit: int = 50, oldest_first: bool = False, search: str | None = None) -> list[InboxRow]:
        scope, args = _scope("e.address", addresses)
        if not scope:
            return []
        where = [scope]
        if to:
            where.append("e.address = ?")
            args.append(base_address(to))
        if sender:
            s = sender.lower()
            where.append("(e.sender = ? OR e.sender LIKE ? ESCAPE '\\')")
            args += [s, "%" + _like(s if s.startswith("@") else "@" + s)]
        if subject:
            where.append("e.subject LIKE ? ESCAPE '\\'")
            args.append("%" + _like(subject) + "%")
        if search:
            where.append("(e.subject LIKE ? ESCAPE '\\' OR e.sender LIKE ? ESCAPE '\\')")
            args += ["%" + _like(search) + "%", "%" + _like(search.lower()) + "%"]
        conditions(where, args, (("e.received >= ?", since), ("e.seq < ?", before_seq), ("e.seq > ?", after_seq),
                            ("e.thread_id = ?", thread_id)))
        if unread:
            where.append("e.read = 0")
        sql = (f"SELECT {_INBOX_COLUMNS} FROM events e JOIN deliveries d ON d.event_id = e.id "
               f"WHERE {' AND '.join(where)} ORDER BY e.seq {'ASC' if oldest_first else 'DESC'} LIMIT ?")
        return [_inbox_row(r) for r in self._all(sql, (*args, max(1, min(limit, 500))))]

    def inbox_row(self, event_id: str) -> InboxRow | None:
        row = self._one(f"SELECT {_INBOX_COLUMNS} FROM events e JOIN deliveries d ON d.event_id = e.id WHERE e.id = ?",
                        (event_id,))
        return _inbox_row(row) if row else None

    def ack(self, event_id: str) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE events SET read = 1 WHERE id = ?", (event_id,)).rowcount == 1

    def claim(self, event_id: str) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE events SET read = 1 WHERE id = ? AND read = 0", (event_id,)).rowcount == 1

    def last_seq(self) -> int:
        return self._one("SELECT COALESCE(MAX(seq), 0) FROM events")[0]

    def listener(self, fallback: float = 3.0):
        from .listener import Listener       # lazy: asyncio (6-14 ms) is serve's, never deliver's import
        return Listener(self.data_dir, check=self.last_seq, fallback=fallback)

    # --- sends ---------------------------------------------------------------------------------------

    def put_send(self, record: SendRecord) -> None:
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO sends ({_SEND}) VALUES ({_SEND_VALUES})", _send_row(record))

    def get_send(self, send_id: str) -> SendRecord | None:
        r = self._one(f"SELECT {_SEND} FROM sends WHERE id = ?", (send_id,))
        return _send(r) if r else None

    def list_sends(self, addresses: tuple[str, ...], *, before: tuple[float, str] | None = None,
                   limit: int = 50) -> list[SendRow]:
        scope, args = sender_scope(addresses, "?")
        if not scope:
            return []
        where = [scope]
        if before is not None:
            where.append("(created < ? OR (created = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        latest = "FROM send_events v WHERE v.send_id = sends.id ORDER BY v.seq DESC LIMIT 1"
        sql = (f"SELECT {_SEND}, (SELECT v.type {latest}), (SELECT v.at {latest}) FROM sends "
               f"WHERE {' AND '.join(where)} ORDER BY created DESC, id DESC LIMIT ?")
        return [SendRow(_send(r), SendEventType(r[15]) if r[15] else None, r[16])
                for r in self._all(sql, (*args, max(1, min(limit, 500))))]

    def claim_scheduled(self, lease: float) -> SendRecord | None:
        now = self.clock()
        due = (SendState.SCHEDULED.value, now, SendState.SENDING.value, now)
        # Every serve asks every second: a read first, so that nothing due takes no write lock.
        if not self._one("SELECT 1 FROM sends WHERE (state = ? AND scheduled_at <= ?) OR (state = ? AND lease_until < ?) "
                         "LIMIT 1", due):
            return None
        with self._tx() as db:
            db.execute("UPDATE sends SET state = ?, request = NULL, error = ? WHERE state = ? AND lease_until < ?",
                       (SendState.FAILED.value, INTERRUPTED, SendState.SENDING.value, now))
            row = db.execute("SELECT id FROM sends WHERE state = ? AND scheduled_at <= ? ORDER BY scheduled_at, id "
                             "LIMIT 1", (SendState.SCHEDULED.value, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE sends SET state = ?, lease_until = ? WHERE id = ?",
                       (SendState.SENDING.value, now + lease, row[0]))
            return _send(db.execute(f"SELECT {_SEND} FROM sends WHERE id = ?", (row[0],)).fetchone())

    def cancel_send(self, send_id: str) -> SendRecord | None:
        with self._tx() as db:
            db.execute("UPDATE sends SET state = ?, request = NULL WHERE id = ? AND state = ?",
                       (SendState.CANCELED.value, send_id, SendState.SCHEDULED.value))
            r = db.execute(f"SELECT {_SEND} FROM sends WHERE id = ?", (send_id,)).fetchone()
        return _send(r) if r else None

    # --- Idempotency-Key -----------------------------------------------------------------------------

    def idempotency_begin(self, key: str, idem: str, fingerprint: str, since: float) -> tuple[str, str | None] | None:
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND idem = ? AND created < ?", (key, idem, since))
            row = db.execute("SELECT fingerprint, answer FROM idempotency WHERE key = ? AND idem = ?",
                             (key, idem)).fetchone()
            if row is not None:
                return row[0], row[1]
            db.execute("INSERT INTO idempotency (key, idem, fingerprint, answer, created) VALUES (?, ?, ?, NULL, ?)",
                       (key, idem, fingerprint, self.clock()))
        return None

    def idempotency_finish(self, key: str, idem: str, answer: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE idempotency SET answer = ? WHERE key = ? AND idem = ?", (answer, key, idem))

    def idempotency_release(self, key: str, idem: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND idem = ? AND answer IS NULL", (key, idem))

    # --- uploads -------------------------------------------------------------------------------------

    def put_upload(self, upload: Upload) -> None:
        with self._tx() as db:
            _import_upload(db, upload)

    def get_upload(self, upload_id: str) -> Upload | None:
        r = self._one(f"SELECT {_UPLOAD} FROM uploads WHERE id = ?", (upload_id,))
        return Upload(*r) if r else None

    # --- agent jobs ----------------------------------------------------------------------------------

    def put_job(self, event_id: str) -> bool:
        now = self.clock()
        with self._tx() as db:
            return db.execute("INSERT OR IGNORE INTO jobs (id, state, next_at, created, updated) VALUES (?, ?, ?, ?, ?)",
                              (event_id, JobState.QUEUED.value, now, now, now)).rowcount == 1

    def claim_job(self, lease: float) -> Job | None:
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE (state = ? AND next_at <= ?) OR (state = ? AND lease_until < ?) "
                             "ORDER BY next_at, rowid LIMIT 1",
                             (JobState.QUEUED.value, now, JobState.RUNNING.value, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, lease_until = ?, updated = ? WHERE id = ?",
                       (JobState.RUNNING.value, now + lease, now, row[0]))
            return _job(db.execute(f"SELECT {_JOB} FROM jobs WHERE id = ?", (row[0],)).fetchone())

    def job(self, job_id: str) -> Job | None:
        row = self._one(f"SELECT {_JOB} FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    def job_did(self, job_id: str, action: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT actions FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                db.execute("UPDATE jobs SET actions = ?, updated = ? WHERE id = ?",
                           (json.dumps(json.loads(row[0]) + [action]), self.clock(), job_id))

    def job_done(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = ?, last_error = '', updated = ? WHERE id = ?",
                       (JobState.DONE.value, self.clock(), job_id))

    def job_failed(self, job_id: str, error: str, max_attempts: int, retry_base: float) -> JobState:
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            attempts = (row[0] if row else 0) + 1
            state = JobState.PARKED if attempts >= max_attempts else JobState.QUEUED
            db.execute("UPDATE jobs SET state = ?, attempts = ?, next_at = ?, last_error = ?, updated = ? WHERE id = ?",
                       (state.value, attempts, now + retry_base * 2 ** (attempts - 1), error[:1000], now, job_id))
        return state

    def job_postpone(self, job_id: str, until: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = ?, next_at = ?, updated = ? WHERE id = ?",
                       (JobState.QUEUED.value, until, self.clock(), job_id))

    def job_requeue(self, job_id: str) -> bool:
        now = self.clock()
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state = ?, attempts = 0, next_at = ?, updated = ? WHERE id = ? AND state = ?",
                              (JobState.QUEUED.value, now, now, job_id, JobState.PARKED.value)).rowcount == 1

    def job_counts(self) -> dict[JobState, int]:
        counts = dict(self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {s: counts.get(s.value, 0) for s in JobState}

    def list_jobs(self, routes: tuple[str, ...], *, state: JobState | None = None, before_seq: int | None = None,
                  limit: int = 50) -> list[JobRow]:
        if not routes:
            return []
        where, args = [f"d.route IN ({', '.join('?' * len(routes))})"], list(routes)
        conditions(where, args, (("j.state = ?", state.value if state else None), ("e.seq < ?", before_seq)))
        j = ", ".join("j." + c for c in _JOB.split(", "))
        sql = (f"SELECT e.seq, {j}, d.route, e.recipient, e.sender, e.subject, j.created, j.updated FROM jobs j "
               f"JOIN deliveries d ON d.event_id = j.id JOIN events e ON e.id = j.id "
               f"WHERE {' AND '.join(where)} ORDER BY e.seq DESC LIMIT ?")
        return [JobRow(r[0], _job(r[1:7]), *r[7:]) for r in self._all(sql, (*args, max(1, min(limit, 500))))]

    def put_transcript(self, event_id: str, record: dict) -> None:
        text = json.dumps(record, ensure_ascii=False)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO transcripts (event_id, record, updated) VALUES (?, ?, ?)",
                       (event_id, text, self.clock()))

    def get_transcript(self, event_id: str) -> dict | None:
        row = self._one("SELECT record FROM transcripts WHERE event_id = ?", (event_id,))
        return json.loads(row[0]) if row else None

    # --- shared counters -----------------------------------------------------------------------------

    def take(self, keys: Iterable[tuple[str, int]], window: float) -> tuple[str, float] | None:
        keys = list(keys)
        now = self.clock()
        with self._tx() as db:
            for key, limit in keys:
                db.execute("DELETE FROM uses WHERE key = ? AND at <= ?", (key, now - window))
                if limit <= 0:
                    return key, float(window)
                row = db.execute("SELECT at FROM uses WHERE key = ? ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?",
                                 (key, limit - 1)).fetchone()
                if row is not None:          # `limit` uses in the window: full until the limit-th newest leaves it
                    return key, max(0.0, row[0] + window - now)
            db.executemany("INSERT INTO uses (key, at) VALUES (?, ?)", [(key, now) for key, _ in keys])
        return None

    def give_back(self, keys: Iterable[str]) -> None:
        with self._tx() as db:
            for key in keys:
                db.execute("DELETE FROM uses WHERE id = (SELECT id FROM uses WHERE key = ? ORDER BY at DESC, id DESC "
                           "LIMIT 1)", (key,))

    # --- operations ----------------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        rows = self._all("SELECT kind, label, value FROM counters")
        c = {(k, label): v for k, label, v in rows}
        by_state = {s: int(c.get(("state", s.value), 0)) for s in DeliveryState}
        verdicts = {}
        for (kind, label), v in c.items():
            if kind == "verdict" and v:
                check, _, result = label.partition("=")
                verdicts[(check, result)] = int(v)
        cumulative, buckets = 0, []
        for b in LATENCY_BUCKETS:
            cumulative += int(c.get(("latency", f"{b:g}"), 0))
            buckets.append((float(b), cumulative))
        return Metrics(received=int(c.get(("received", ""), 0)), by_state=by_state,
                       attempts=int(c.get(("attempts", ""), 0)), verdicts=verdicts, latency_buckets=tuple(buckets),
                       latency_sum=float(c.get(("latency_sum", ""), 0.0)),
                       latency_count=int(c.get(("latency_count", ""), 0)))

    def activity(self, addresses: tuple[str, ...], since: float, until: float, width: float) -> Activity:
        scope, args = _scope("e.address", addresses)
        sends_scope, sends_args = _scope("address", addresses)
        if not scope:
            return Activity((), ())
        bucket = "CAST((e.received - ?) / ? AS INTEGER)"
        inbound = self._all(
            f"SELECT {bucket} AS b, d.state, e.dmarc, COUNT(*) FROM events e JOIN deliveries d ON d.event_id = e.id "
            f"WHERE {scope} AND e.received >= ? AND e.received < ? GROUP BY b, d.state, e.dmarc",
            (since, width, *args, since, until))
        sends = self._all(
            f"SELECT CAST((at - ?) / ? AS INTEGER) AS b, type, COUNT(*) FROM send_events "
            f"WHERE {sends_scope} AND at >= ? AND at < ? GROUP BY b, type",
            (since, width, *sends_args, since, until))
        return Activity(tuple((int(b), st, dm, int(n)) for b, st, dm, n in inbound),
                        tuple((int(b), t, int(n)) for b, t, n in sends))

    def gc(self, older_than: float, dry_run: bool = False) -> GcReport:
        """Records in one transaction; then every blob file older than `older_than` that no
        remaining event refers to. (A blob put again is touched: its age is its last use.)"""
        old = "SELECT id FROM events WHERE received < :t"
        with self._tx(write=not dry_run) as db:
            t = {"t": older_than, "done": JobState.DONE.value, "parked": JobState.PARKED.value, "now": self.clock(),
                 "scheduled": SendState.SCHEDULED.value, "sending": SendState.SENDING.value,
                 "pending": PostState.PENDING.value}
            events = db.execute("SELECT COUNT(*) FROM events WHERE received < :t", t).fetchone()[0]
            doomed = {
                "deliveries": f"FROM deliveries WHERE event_id IN ({old})",
                "attempts": f"FROM attempts WHERE event_id IN ({old})",
                "transcripts": f"FROM transcripts WHERE event_id IN ({old}) OR updated < :t",
                "jobs": f"FROM jobs WHERE id IN ({old}) OR (updated < :t AND state IN (:done, :parked))",
                "send_events": "FROM send_events WHERE at < :t AND (state != :pending OR send_id IN "
                               "(SELECT id FROM sends WHERE created < :t AND state NOT IN (:scheduled, :sending)))",
                "sends": "FROM sends WHERE created < :t AND state NOT IN (:scheduled, :sending)",
                "uses": "FROM uses WHERE at < :t",
                "uploads": "FROM uploads WHERE expires < :now",
                "idempotency": "FROM idempotency WHERE created < :now - 86400",
            }
            other = {name: db.execute(f"SELECT COUNT(*) {where}", t).fetchone()[0] for name, where in doomed.items()}
            if not dry_run and events:
                changes = [("received", "", -events)]
                changes += [("state", s, -n) for s, n in db.execute(
                    f"SELECT state, COUNT(*) FROM deliveries WHERE event_id IN ({old}) GROUP BY state", t)]
                for check in CHECKS:
                    changes += [("verdict", f"{check}={v}", -n) for v, n in db.execute(
                        f"SELECT {check}, COUNT(*) FROM events WHERE received < :t GROUP BY {check}", t)]
                bump(db, changes)
            if not dry_run:
                for where in doomed.values():
                    db.execute(f"DELETE {where}", t)
                db.execute(f"DELETE FROM event_blobs WHERE event_id IN ({old})", t)
                db.execute("DELETE FROM event_bodies WHERE seq IN (SELECT seq FROM events WHERE received < :t)", t)
                db.execute("DELETE FROM events WHERE received < :t", t)
        blobs, size = self._gc_blobs(older_than, dry_run)
        return GcReport(events, blobs, size, other)

    def _gc_blobs(self, older_than: float, dry_run: bool) -> tuple[int, int]:
        count = size = 0
        try:
            folders = sorted(os.listdir(self.blobs)) if os.path.isdir(self.blobs) else []
        except OSError as exc:
            raise self._unavailable(exc) from None
        for folder in folders:
            path = self.blobs / folder
            if not (re.fullmatch(r"[0-9a-f]{2}", folder) and stat.S_ISDIR(os.lstat(path).st_mode)):
                continue
            for name in os.listdir(path):
                file = path / name
                try:
                    st = os.lstat(file)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_mtime >= older_than:
                    continue
                if name.startswith(".tmp-"):          # a write that died halfway
                    if not dry_run:
                        file.unlink(missing_ok=True)
                    continue
                if self._one("SELECT 1 FROM event_blobs b JOIN events e ON e.id = b.event_id "
                             "WHERE b.sha256 = ? AND e.received >= ? LIMIT 1", (name, older_than)):
                    continue
                if self._one("SELECT 1 FROM uploads WHERE sha256 = ? AND expires >= ? LIMIT 1", (name, self.clock())):
                    continue
                count += 1
                size += st.st_size
                if not dry_run:
                    file.unlink(missing_ok=True)
        return count, size

    # --- blocks ----------------------------------------------------------------------------------

    def add_block(self, sender: str, scope: str, event_id: str) -> bool:
        with self._tx() as db:
            return db.execute("INSERT OR IGNORE INTO blocks (sender, scope, event_id, created) VALUES (?, ?, ?, ?)",
                              (sender.lower(), scope.lower(), event_id, self.clock())).rowcount == 1

    def blocks(self, limit: int = 100_000) -> list[Block]:
        return [Block(*r) for r in self._all("SELECT sender, scope, event_id, created FROM blocks "
                                             "ORDER BY created, sender, scope LIMIT ?", (max(0, int(limit)),))]

    def blocked(self, sender: str, scopes: tuple[str, ...]) -> Block | None:
        scopes = tuple(s.lower() for s in scopes)
        if not sender or not scopes:
            return None
        row = self._one(f"SELECT sender, scope, event_id, created FROM blocks WHERE sender = ? AND scope IN "
                        f"({', '.join('?' * len(scopes))}) ORDER BY created LIMIT 1", (sender.lower(), *scopes))
        return Block(*row) if row else None

    def remove_block(self, sender: str, scope: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM blocks WHERE sender = ? AND scope = ?",
                              (sender.lower(), scope.lower())).rowcount == 1

    # --- send events ---------------------------------------------------------------------------------

    def send_by_message_id(self, message_id: str) -> SendRecord | None:
        if not message_id:
            return None
        r = self._one(f"SELECT {_SEND} FROM sends WHERE message_id = ? ORDER BY created DESC LIMIT 1", (message_id,))
        return _send(r) if r else None

    def put_send_event(self, event: SendEvent) -> bool:
        with self._tx() as db:
            added = db.execute(f"INSERT OR IGNORE INTO send_events ({_SEND_EVENT}) VALUES ({_SEND_EVENT_VALUES})",
                               _send_event_row(event)).rowcount == 1
        if added:
            notify.ring(self.data_dir)
        return added

    def send_events(self, send_id: str) -> list[SendEvent]:
        return [_send_event(r) for r in self._all(f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE send_id = ? "
                                                  "ORDER BY seq", (send_id,))]

    def list_send_events(self, addresses: tuple[str, ...], *, types: tuple[SendEventType, ...] = (),
                         before_seq: int | None = None, after_seq: int | None = None, limit: int = 50,
                         oldest_first: bool = False) -> list[SendEvent]:
        scope, args = _scope("address", addresses)
        if not scope:
            return []
        where = [scope]
        if types:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            args += [t.value for t in types]
        conditions(where, args, (("seq < ?", before_seq), ("seq > ?", after_seq)))
        sql = (f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE {' AND '.join(where)} "
               f"ORDER BY seq {'ASC' if oldest_first else 'DESC'} LIMIT ?")
        return [_send_event(r) for r in self._all(sql, (*args, max(1, min(limit, 500))))]

    def claim_send_events(self, lease: float, limit: int = 10) -> list[SendEvent]:
        now = self.clock()
        due = (PostState.PENDING.value, now)
        # Every serve asks every second: a read first, so that nothing due takes no write lock.
        if not self._one("SELECT 1 FROM send_events WHERE state = ? AND next_at <= ? LIMIT 1", due):
            return []
        with self._tx() as db:
            rows = db.execute(f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE state = ? AND next_at <= ? "
                              "ORDER BY next_at, seq LIMIT ?", (*due, max(1, int(limit)))).fetchall()
            db.executemany("UPDATE send_events SET next_at = ? WHERE seq = ?", [(now + lease, r[0]) for r in rows])
        return [replace(_send_event(r), next_at=now + lease) for r in rows]

    def send_event_posted(self, event_id: str, state: PostState, excerpt: str, next_at: float = 0.0) -> None:
        with self._tx() as db:
            db.execute("UPDATE send_events SET state = ?, attempts = attempts + 1, excerpt = ?, next_at = ? "
                       "WHERE id = ?", (state.value, excerpt[:EXCERPT], next_at, event_id))

    # --- suppressions --------------------------------------------------------------------------------

    def suppress(self, suppression: Suppression) -> bool:
        lowered = replace(suppression, domain=suppression.domain.lower(), address=suppression.address.lower())
        with self._tx() as db:
            return _import_suppression(db, lowered) == 1

    def unsuppress(self, domain: str, address: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM suppressions WHERE domain = ? AND address = ?",
                              (domain.lower(), address.lower())).rowcount == 1

    def suppressed(self, domain: str, addresses: Iterable[str]) -> list[Suppression]:
        wanted = sorted({a.lower() for a in addresses})
        if not wanted:
            return []
        return [_suppression(r) for r in self._all(
            f"SELECT {_SUPPRESSION} FROM suppressions WHERE domain = ? AND address IN ({', '.join('?' * len(wanted))}) "
            "ORDER BY address", (domain.lower(), *wanted))]

    def suppressions(self, domains: tuple[str, ...] | None = None, after: tuple[str, str] | None = None,
                     limit: int = 100) -> list[Suppression]:
        where, args = ["(domain > ? OR (domain = ? AND address > ?))"], list(export_after(RecordKind.SUPPRESSIONS, after))
        if domains is not None:
            if not domains:
                return []
            where.append(f"domain IN ({', '.join('?' * len(domains))})")
            args += [d.lower() for d in domains]
        return [_suppression(r) for r in self._all(
            f"SELECT {_SUPPRESSION} FROM suppressions WHERE {' AND '.join(where)} ORDER BY domain, address LIMIT ?",
            (*args, max(1, min(int(limit), 1000))))]

    # --- moving a store (transfer.py) ----------------------------------------------------------------

    def export_records(self, kind: RecordKind, after=None, limit: int = 500) -> list:
        limit = max(1, int(limit))
        with self._tx(write=False) as db:
            if kind is RecordKind.EVENTS:
                return _export_events(db, 0 if after is None else int(after), limit)
            sql, make = _EXPORT[kind]
            return [make(r) for r in db.execute(sql, (*export_after(kind, after), limit))]

    def import_records(self, kind: RecordKind, records: list) -> int:
        inserted = 0
        with self._tx() as db:
            for r in records:
                inserted += _IMPORT[kind](db, r)
        if inserted and kind is RecordKind.EVENTS:
            notify.ring(self.data_dir)
        return inserted

    def blob_names(self, after: str = "", limit: int = 1000) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        try:
            folders = sorted(os.listdir(self.blobs)) if os.path.isdir(self.blobs) else []
            for folder in folders:
                if not re.fullmatch(r"[0-9a-f]{2}", folder) or folder < after[:2]:
                    continue
                path = self.blobs / folder
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                for name in sorted(os.listdir(path)):
                    if name <= after or not _SHA.match(name) or name[:2] != folder:
                        continue
                    try:
                        st = os.lstat(path / name)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        out.append((name, st.st_size))
                        if len(out) >= limit:
                            return out
        except OSError as exc:
            raise self._unavailable(exc) from None
        return out


# --- moving a store: rows <-> the neutral records of model.py ----------------------------------------

_SEND = ("id, key, sender, recipients, message_id, queue_id, thread_id, in_reply_to, reply_to_event, state, created, "
         "scheduled_at, request, error, lease_until")
_SEND_VALUES = ", ".join("?" * len(_SEND.split(", ")))
_UPLOAD = "id, key, sha256, filename, content_type, size, created, expires"
INTERRUPTED = "interrupted while handed to Postfix (the serve that held it stopped): it may or may not have gone out"


def _send(r) -> SendRecord:
    return SendRecord(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6], r[7], r[8], SendState(r[9]), r[10],
                      r[11], r[12], r[13] or "", r[14] or 0.0)


def _send_row(r: SendRecord) -> tuple:
    return (r.id, r.key, r.sender, json.dumps(list(r.recipients)), r.message_id, r.queue_id, r.thread_id,
            r.in_reply_to, r.reply_to_event, r.state.value, r.created, r.scheduled_at, r.request, r.error, r.lease_until)


_SEND_EVENT = "id, send_id, type, recipient, at, address, route, body, state, attempts, next_at, excerpt"
_SEND_EVENT_VALUES = ", ".join("?" * len(_SEND_EVENT.split(", ")))
_SUPPRESSION = "domain, address, reason, created, event_id, note"


def _send_event(r) -> SendEvent:
    """From (seq, *_SEND_EVENT)."""
    return SendEvent(r[1], r[2], SendEventType(r[3]), r[4], r[5], r[6], r[7], bytes(r[8]), PostState(r[9]), r[10],
                     r[11], r[12], seq=r[0])


def _send_event_row(e: SendEvent) -> tuple:
    return (e.id, e.send_id, e.type.value, e.recipient.lower(), e.at, e.address.lower(), e.route, e.body,
            e.state.value, e.attempts, e.next_at, e.excerpt[:EXCERPT])


def _suppression(r) -> Suppression:
    return Suppression(r[0], r[1], SuppressionReason(r[2]), r[3], r[4], r[5])


def _scope(column: str, addresses: tuple[str, ...]) -> tuple[str, list]:
    """The condition (and its arguments) that a base address column is one of `addresses` or in
    one of their @domains; "" for none."""
    scope, args = [], []
    for a in addresses:
        if a.startswith("@"):
            scope.append(f"{column} LIKE ? ESCAPE '\\'")
            args.append("%" + _like(a.lower()))
        else:
            scope.append(f"{column} = ?")
            args.append(a.lower())
    return ("(" + " OR ".join(scope) + ")" if scope else ""), args


# The records of a kind after a key, in key order (SQLite compares text by its bytes: code points),
# and how a row becomes one.
_EXPORT = {
    RecordKind.SENDS: (f"SELECT {_SEND} FROM sends WHERE id > ? ORDER BY id LIMIT ?", _send),
    RecordKind.JOBS: ("SELECT id, state, attempts, actions, last_error, next_at, lease_until, created, updated FROM jobs "
                      "WHERE id > ? ORDER BY id LIMIT ?",
                      lambda r: StoredJob(r[0], JobState(r[1]), r[2], tuple(json.loads(r[3])), *r[4:])),
    RecordKind.TRANSCRIPTS: ("SELECT event_id, record, updated FROM transcripts WHERE event_id > ? ORDER BY event_id "
                             "LIMIT ?", lambda r: StoredTranscript(*r)),
    RecordKind.USES: ("SELECT key, at, COUNT(*) FROM uses WHERE key > ? OR (key = ? AND at > ?) GROUP BY key, at "
                      "ORDER BY key, at LIMIT ?", lambda r: StoredUses(*r)),
    RecordKind.UPLOADS: (f"SELECT {_UPLOAD} FROM uploads WHERE id > ? ORDER BY id LIMIT ?", lambda r: Upload(*r)),
    RecordKind.BLOCKS: ("SELECT sender, scope, event_id, created FROM blocks WHERE sender > ? OR (sender = ? AND "
                        "scope > ?) ORDER BY sender, scope LIMIT ?", lambda r: Block(*r)),
    RecordKind.SEND_EVENTS: (f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE seq > ? ORDER BY seq LIMIT ?",
                             _send_event),
    RecordKind.SUPPRESSIONS: (f"SELECT {_SUPPRESSION} FROM suppressions WHERE domain > ? OR (domain = ? AND "
                              "address > ?) ORDER BY domain, address LIMIT ?", _suppression),
}


def _export_events(db: sqlite3.Connection, after: int, limit: int) -> list[StoredEvent]:
    rows = db.execute("SELECT e.seq, e.id, b.body, e.recipient, e.address, e.sender, e.subject, e.thread_id, "
                      "e.message_id, e.received, e.accepted, e.read, e.spf, e.dkim, e.dmarc, e.arc, "
                      + ", ".join(f"d.{c}" for c in _DELIVERY.split(", ")) + ", e.fingerprint "
                      "FROM events e JOIN event_bodies b ON b.seq = e.seq JOIN deliveries d ON d.event_id = e.id "
                      "WHERE e.seq > ? ORDER BY e.seq LIMIT ?", (after, limit)).fetchall()
    if not rows:
        return []
    span = "(SELECT id FROM events WHERE seq > ? AND seq <= ?)"
    bounds = (after, rows[-1][0])
    return stored_events(
        rows, db.execute("SELECT event_id, at, outcome, status, duration_ms, excerpt, webhook_id, queue_id FROM attempts "
                         f"WHERE event_id IN {span} ORDER BY id", bounds),
        db.execute(f"SELECT event_id, sha256 FROM event_blobs WHERE event_id IN {span}", bounds))


def _import_event(db: sqlite3.Connection, r: StoredEvent) -> int:
    if db.execute("SELECT 1 FROM events WHERE id = ?", (r.id,)).fetchone():
        return 0
    other = db.execute("SELECT id FROM events WHERE seq = ?", (r.seq,)).fetchone()
    if other:
        raise StoreError(f"inbox position {r.seq} of {r.id} is {other[0]}'s in {FILE}: the store took mail of its "
                         "own before the import")
    d = r.delivery
    db.execute("INSERT INTO events (seq, id, address, recipient, sender, subject, thread_id, message_id, received, "
               "accepted, read, spf, dkim, dmarc, arc, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (r.seq, r.id, r.address, r.recipient, r.sender, r.subject, r.thread_id, r.message_id or None, r.received,
                r.received if r.accepted is None else r.accepted, int(r.read), *r.verdicts, r.fingerprint))
    db.execute("INSERT INTO event_bodies (seq, body) VALUES (?, ?)", (r.seq, r.body))
    db.execute("INSERT INTO deliveries (event_id, route, recipient, state, attempts, status, reason, queue_id, created, "
               "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (r.id, d.route, d.recipient, d.state.value, d.attempts, d.status, d.reason, d.queue_id, d.created,
                d.updated))
    db.executemany("INSERT INTO attempts (event_id, at, outcome, status, duration_ms, excerpt, webhook_id, queue_id) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [(r.id, a.at, a.outcome.value, a.status, a.duration_ms, a.excerpt, a.webhook_id, a.queue_id)
                    for a in r.attempts])
    db.executemany("INSERT OR IGNORE INTO event_blobs (event_id, sha256) VALUES (?, ?)", [(r.id, s) for s in r.blobs])
    changes = [("received", "", 1), ("state", d.state.value, 1), ("attempts", "", d.attempts),
               *(("verdict", f"{c}={v}", 1) for c, v in zip(CHECKS, r.verdicts))]
    if r.accepted is not None:
        for at in delivered_at(r.attempts):
            changes += latency(at - r.accepted)
    bump(db, changes)
    return 1


def _import_send(db: sqlite3.Connection, r: SendRecord) -> int:
    return db.execute(f"INSERT OR IGNORE INTO sends ({_SEND}) VALUES ({_SEND_VALUES})", _send_row(r)).rowcount


def _import_upload(db: sqlite3.Connection, r: Upload) -> int:
    return db.execute(f"INSERT OR IGNORE INTO uploads ({_UPLOAD}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (r.id, r.key, r.sha256, r.filename, r.content_type, r.size, r.created, r.expires)).rowcount


def _import_job(db: sqlite3.Connection, r: StoredJob) -> int:
    return db.execute("INSERT OR IGNORE INTO jobs (id, state, attempts, actions, last_error, next_at, lease_until, "
                      "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (r.id, r.state.value, r.attempts, json.dumps(list(r.actions)), r.last_error, r.next_at,
                       r.lease_until, r.created, r.updated)).rowcount


def _import_transcript(db: sqlite3.Connection, r: StoredTranscript) -> int:
    return db.execute("INSERT OR IGNORE INTO transcripts (event_id, record, updated) VALUES (?, ?, ?)",
                      (r.event_id, r.record, r.at)).rowcount


def _import_uses(db: sqlite3.Connection, r: StoredUses) -> int:
    have = db.execute("SELECT COUNT(*) FROM uses WHERE key = ? AND at = ?", (r.key, r.at)).fetchone()[0]
    missing = max(0, r.count - have)
    db.executemany("INSERT INTO uses (key, at) VALUES (?, ?)", [(r.key, r.at)] * missing)
    return int(missing > 0)


def _import_block(db: sqlite3.Connection, r: Block) -> int:
    return db.execute("INSERT OR IGNORE INTO blocks (sender, scope, event_id, created) VALUES (?, ?, ?, ?)",
                      (r.sender, r.scope, r.event_id, r.created)).rowcount


def _import_send_event(db: sqlite3.Connection, r: SendEvent) -> int:
    if db.execute("SELECT 1 FROM send_events WHERE id = ? OR seq = ?", (r.id, r.seq)).fetchone():
        return 0
    return db.execute(f"INSERT INTO send_events (seq, {_SEND_EVENT}) VALUES (?, {_SEND_EVENT_VALUES})",
                      (r.seq, *_send_event_row(r))).rowcount


def _import_suppression(db: sqlite3.Connection, r: Suppression) -> int:
    return db.execute(f"INSERT OR IGNORE INTO suppressions ({_SUPPRESSION}) VALUES (?, ?, ?, ?, ?, ?)",
                      (r.domain, r.address, r.reason.value, r.created, r.event_id, r.note)).rowcount


_IMPORT = {RecordKind.EVENTS: _import_event, RecordKind.SENDS: _import_send, RecordKind.JOBS: _import_job,
           RecordKind.TRANSCRIPTS: _import_transcript, RecordKind.USES: _import_uses, RecordKind.UPLOADS: _import_upload,
           RecordKind.BLOCKS: _import_block, RecordKind.SEND_EVENTS: _import_send_event,
           RecordKind.SUPPRESSIONS: _import_suppression}


# --- rows -> records ---------------------------------------------------------------------------------

_DELIVERY = "event_id, route, recipient, state, attempts, status, reason, queue_id, created, updated"
_JOB = "id, state, attempts, actions, last_error, next_at"


def _delivery(r) -> Delivery:
    return Delivery(r[0], r[1], r[2], DeliveryState(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])


def _inbox_row(r) -> InboxRow:
    return InboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], DeliveryState(r[8]), bool(r[9]))


def _job(r) -> Job:
    return Job(r[0], JobState(r[1]), r[2], tuple(json.loads(r[3])), r[4], r[5])


def _first(db: sqlite3.Connection, recipient: str, message_id: str, fingerprint: str, since: float) -> str | None:
    """find_event's query: the first event kept since `since` with these three keys."""
    row = db.execute("SELECT id FROM events WHERE recipient = ? AND message_id = ? AND fingerprint = ? AND received >= ? "
                     "ORDER BY seq LIMIT 1", (recipient, message_id, fingerprint, since)).fetchone()
    return row[0] if row else None


def _accepted(event: dict, default: float) -> float:
    """The event's createdAt (RFC 3339, when Postfix accepted the message) as unix seconds."""
    try:
        return datetime.fromisoformat(str(event.get("createdAt")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default
