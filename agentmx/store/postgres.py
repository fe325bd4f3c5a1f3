"""The postgres backend: records in PostgreSQL (psycopg 3), blobs in an S3-compatible bucket
(store/s3.py), shared by every agentmx process on every MX host.

    store = PostgresStore(url, blobs, clock, pool_size=1)     deliver: one connection, no threads
    store = PostgresStore(url, blobs, clock, pool_size=4)     serve, the agent: a psycopg_pool

Every method is one transaction. What makes it safe across hosts:
  - inbox order: put_event takes a transaction-level advisory lock before it draws the next seq,
    so rows commit in seq order everywhere and an event stream resuming after N misses nothing;
  - wake-ups: put_event sends NOTIFY in its transaction (delivered at commit) to every listener
    (listener(): LISTEN on its own connection, with the slow check as a fallback);
  - claim_job, claim_scheduled, claim_send_events: SELECT ... FOR UPDATE SKIP LOCKED: one worker
    gets a job, one serve a scheduled send or a send event to POST;
  - send events: put_send_event draws its seq under an advisory lock of its own and NOTIFYs, as
    put_event does (a /v1/events cursor resuming after seq N misses nothing);
  - claim (wait + ack): UPDATE ... WHERE NOT read: one caller gets a message;
  - take: uses counted under a transaction-level advisory lock per key, keys locked in order;
  - blobs: a row per blob, written under its row lock with the object; gc deletes objects under
    the same locks, so a put of the same bytes and gc never cross.
Any failure to reach PostgreSQL (refused, timeout, a connection cut, the server shutting down)
or the bucket is StoreUnavailable; the pool replaces broken connections by itself.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import re
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

import psycopg
from psycopg import errors as pgerrors

from agentmx.address import split

from . import migrations
from .base import (DuplicateEvent, SchemaMismatch, Store, StoreError, StoreUnavailable, conditions, like as _like,
                   sender_scope)
from .model import (EXCERPT, LATENCY_BUCKETS, MESSAGE_ID_MAX, Activity, Attempt, Blob, Block, Delivery, DeliveryRow, DeliveryState,
                    GcReport, InboxRow, Job, JobRow, JobState, Metrics, PostState, RecordKind, SendEvent, SendEventType, SendRecord,
                    SendRow, SendState, StoredEvent, StoredJob, StoredTranscript, StoredUses, Suppression, SuppressionReason,
                    Upload, delivered_at, export_after, stored_events)
from .counters import CHECKS
from .pglisten import PgListener
from .s3 import BlobStore, blob_store

log = logging.getLogger("agentmx.store.postgres")

CHANNEL = "agentmx_inbox"
# Advisory lock keys: (our namespace, what). hashtext() of a key is the second half for take().
LOCK_NS = 0x61676D78                      # "agmx"
LOCK_INBOX = 1
LOCK_MIGRATE = 2
LOCK_SEND_EVENTS = 3                      # send events' seq, taken in commit order like the inbox's
LOCK_NS_TAKE = LOCK_NS + 1
LOCK_NS_BLOB = LOCK_NS + 2
_SHA = re.compile(r"[0-9a-f]{64}")
_RETRIES = 3                              # a deadlock or serialization failure: the transaction again


class PostgresStore(Store):
    def __init__(self, url: str, blobs: BlobStore, clock: Callable[[], float] = time.time, *,
                 pool_size: int = 1, timeout: float = 5.0, statement_timeout: float = 30.0):
        self.url = url
        self.blobs = blobs
        self.clock = clock
        self.timeout = timeout
        self._kwargs = {"connect_timeout": max(1, int(timeout)), "application_name": "agentmx",
                        "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
                        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
        self._conns = (_OneConnection(url, self._kwargs) if pool_size <= 1
                       else _Pool(url, self._kwargs, pool_size, timeout))

    @classmethod
    def from_config(cls, store_config, clock: Callable[[], float] = time.time, pool_size: int = 1) -> "PostgresStore":
        """From config.store (agentmx.config.StoreConfig)."""
        return cls(store_config.database_url, blob_store(store_config.s3), clock, pool_size=pool_size)

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)}, {self.blobs.client!r})"

    # --- transactions ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor]:
        """One transaction: committed when the block ends, rolled back on an exception; any way
        PostgreSQL could not be reached is StoreUnavailable."""
        try:
            with self._conns.connection() as conn, contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(conn.transaction())       # BEGIN, sent now
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    raise _NotBegun(_first_line(exc)) from None
                yield stack.enter_context(conn.cursor())
        except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, _NotBegun):
            raise                                    # _run() tries the transaction again
        except (psycopg.OperationalError, psycopg.InterfaceError, _PoolTimeout()) as exc:
            raise StoreUnavailable(f"PostgreSQL: {_first_line(exc)}") from None
        except pgerrors.UndefinedTable as exc:
            raise SchemaMismatch(f"PostgreSQL: {_first_line(exc)}: run `agentmx store migrate`") from None
        except psycopg.Error as exc:                 # our bug or a value PostgreSQL refused
            raise StoreError(f"PostgreSQL: {_first_line(exc)}") from None

    def _run(self, fn):
        """fn(cur) in one transaction, again (up to _RETRIES) after a deadlock or a serialization
        failure: both roll back the whole transaction, so running it again is safe. A BEGIN that
        fails has run nothing: the connection died while idle (PostgreSQL restarted since its
        last use), and the transaction goes once more on a new one, not to the caller as a 503
        or a deferral while the server is up."""
        fresh = False
        attempt = 0
        while True:
            try:
                with self._tx() as cur:
                    return fn(cur)
            except _NotBegun as exc:
                if fresh:
                    raise StoreUnavailable(f"PostgreSQL: {exc}") from None
                fresh = True
            except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure) as exc:
                attempt += 1
                if attempt == _RETRIES:
                    raise StoreUnavailable(f"PostgreSQL: {_first_line(exc)}") from None
                time.sleep(0.01 * attempt)

    # --- lifecycle --------------------------------------------------------------------------------

    def migrate(self) -> int:
        def apply(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_MIGRATE))  # one host at a time
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                        "applied double precision NOT NULL)")
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            current = cur.fetchone()[0]
            if current > migrations.LATEST:
                raise SchemaMismatch(f"the database has schema version {current}, newer than this agentmx "
                                     f"({migrations.LATEST}): upgrade agentmx")
            for version, what, statements in migrations.pending(current, "postgres"):
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version, applied) VALUES (%s, %s)",
                            (version, self.clock()))
                log.info("schema migrated to version %d (%s)", version, what)
            return migrations.LATEST
        return self._run(apply)

    def check_schema(self) -> None:
        def read(cur):
            cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            return cur.fetchone()[0]
        version = self._run(read)
        if version != migrations.LATEST:
            raise SchemaMismatch(f"the database has schema version {version}, this agentmx needs "
                                 f"{migrations.LATEST}: run `agentmx store migrate`")

    def close(self) -> None:
        self._conns.close()
        self.blobs.client.close()

    # --- blobs --------------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()

        def put(cur):
            # Row first, under its lock, then the object: gc takes the same lock before it deletes.
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NS_BLOB, sha))
            cur.execute("INSERT INTO blobs (sha256, size, seen) VALUES (%s, %s, %s) ON CONFLICT (sha256) "
                        "DO UPDATE SET seen = GREATEST(blobs.seen, excluded.seen)", (sha, len(data), self.clock()))
            if self.blobs.client.head(self.blobs.key(sha)) != len(data):
                self.blobs.client.put(self.blobs.key(sha), data, sha256=sha)
            return sha
        return self._run(put)

    def get_blob(self, sha256: str) -> bytes | None:
        return self.blobs.get(sha256)

    def has_blob(self, sha256: str) -> bool:
        try:
            return self.blobs.client.head(self.blobs.key(sha256)) is not None
        except ValueError:                # not a sha256 digest
            return False

    def open_blob(self, sha256: str) -> Blob | None:
        return self.blobs.open(sha256)

    # --- events -------------------------------------------------------------------------------------

    def put_event(self, event: dict, body: bytes, route: str, state: DeliveryState,
                  fingerprint: str | None = None, since: float | None = None) -> bool:
        event_id = event["id"]
        recipient = _text(event.get("recipient") or "").lower()
        message_id = _text(event.get("messageId") or "")[:MESSAGE_ID_MAX]
        now = self.clock()
        auth = event.get("auth") or {}
        verdicts = {c: _text(str(auth.get(c) or "none"))[:32] for c in CHECKS}
        refs = _blob_refs(event)

        def put(cur):
            # One lock for every put: the duplicate check below and the insert are one step for
            # all hosts, and rows commit in seq order.
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_INBOX))
            if fingerprint and since is not None and message_id:
                cur.execute("SELECT 1 FROM events WHERE id = %s", (event_id,))
                if cur.fetchone() is None:
                    first = self._first(cur, recipient, message_id, fingerprint, since)
                    if first is not None:
                        raise DuplicateEvent(first)
            cur.execute("INSERT INTO events (id, recipient, message_id, route, body, accepted, spf, dkim, dmarc, arc, "
                        "created, fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (id) DO NOTHING",
                        (event_id, recipient, message_id, _text(route), body,
                         _timestamp(event.get("createdAt")), *verdicts.values(), now, _opt_text(fingerprint)))
            inserted = cur.rowcount == 1
            if not inserted:
                cur.execute("SELECT state FROM deliveries WHERE event_id = %s", (event_id,))
                row = cur.fetchone()
                if row is not None and row[0] == DeliveryState.DROPPED.value:
                    return False          # a dropped event stays without its copy (drop_event)
            if refs:
                cur.executemany("INSERT INTO event_blobs (event_id, sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                [(event_id, sha) for sha in refs])
            if not inserted:
                # a retry: the body as last sent (and the blobs it names); place, read flag, state, attempts kept
                cur.execute("UPDATE events SET body = %s WHERE id = %s", (body, event_id))
                cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
                return False
            cur.execute("INSERT INTO deliveries (event_id, route, recipient, state, created, updated) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", (event_id, _text(route), recipient, state.value, now, now))
            cur.execute("INSERT INTO inbox (seq, id, address, recipient, sender, subject, thread_id, received, state) "
                        "VALUES (nextval('inbox_seq'), %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                        (event_id, split(recipient)[0] if "@" in recipient else recipient, recipient,
                         _text(((event.get("from") or {}).get("address") or "")).lower(),
                         _text(event.get("subject") or ""), _opt_text(event.get("threadId")), now, state.value))
            seq = cur.fetchone()[0]
            deltas = {("received", ""): 1, ("state", state.value): 1}
            deltas.update({("verdict", f"{c}:{v}"): 1 for c, v in verdicts.items()})
            _count(cur, deltas)
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))   # delivered at commit
            return True
        return self._run(put)

    def get_event(self, event_id: str) -> bytes | None:
        row = self._one("SELECT body FROM events WHERE id = %s", (event_id,))
        return bytes(row[0]) if row and row[0] else None       # empty: dropped

    def drop_event(self, event_id: str) -> bool:
        def drop(cur):
            cur.execute("UPDATE events SET body = ''::bytea WHERE id = %s", (event_id,))
            if cur.rowcount != 1:
                return False
            cur.execute("UPDATE inbox SET subject = '' WHERE id = %s", (event_id,))
            cur.execute("DELETE FROM event_blobs WHERE event_id = %s RETURNING sha256", (event_id,))
            for sha in sorted(r[0] for r in cur.fetchall()):
                # put_blob's lock: a put of the same bytes waits, then writes its row and object anew
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NS_BLOB, sha))
                # another event's, or an upload's (an uploaded file or a scheduled send's attachment
                # with the same bytes), until it expires: gc's rule
                cur.execute("SELECT 1 FROM event_blobs WHERE sha256 = %s UNION ALL SELECT 1 FROM uploads "
                            "WHERE sha256 = %s AND expires >= %s LIMIT 1", (sha, sha, self.clock()))
                if cur.fetchone() is None:
                    self.blobs.delete(sha)
                    cur.execute("DELETE FROM blobs WHERE sha256 = %s", (sha,))
            return True
        return self._run(drop)

    def find_event(self, recipient: str, message_id: str, fingerprint: str, since: float) -> str | None:
        if not message_id or not fingerprint:
            return None
        return self._run(lambda cur: self._first(cur, _text(recipient).lower(), _text(message_id)[:MESSAGE_ID_MAX],
                                                 fingerprint, since))

    @staticmethod
    def _first(cur, recipient: str, message_id: str, fingerprint: str, since: float) -> str | None:
        cur.execute("SELECT id FROM events WHERE recipient = %s AND message_id = %s AND fingerprint = %s "
                    "AND created >= %s ORDER BY created, id LIMIT 1", (recipient, message_id, _text(fingerprint), since))
        row = cur.fetchone()
        return row[0] if row else None

    # --- deliveries -------------------------------------------------------------------------------------

    def record_attempt(self, event_id: str, attempt: Attempt, reason: str) -> Delivery:
        now = self.clock()

        def record(cur):
            cur.execute("SELECT d.state, e.accepted FROM deliveries d JOIN events e ON e.id = d.event_id "
                        "WHERE d.event_id = %s FOR UPDATE OF d", (event_id,))
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"no event {event_id!r}")
            old, accepted = row
            new = attempt.outcome.value
            cur.execute("INSERT INTO attempts (event_id, at, outcome, status, duration_ms, excerpt, webhook_id, queue_id) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        (event_id, attempt.at, new, attempt.status, attempt.duration_ms, _text(attempt.excerpt)[:200],
                         _text(attempt.webhook_id), _opt_text(attempt.queue_id)))
            cur.execute("UPDATE deliveries SET state = %s, attempts = attempts + 1, status = %s, reason = %s, "
                        "queue_id = COALESCE(%s, queue_id), updated = %s WHERE event_id = %s RETURNING " + _DELIVERY,
                        (new, attempt.status, _text(reason)[:1000], _opt_text(attempt.queue_id), now, event_id))
            delivery = _delivery(cur.fetchone())
            cur.execute("UPDATE inbox SET state = %s WHERE id = %s", (new, event_id))
            deltas = {("attempts", ""): 1}
            if old != new:
                deltas[("state", old)] = -1
                deltas[("state", new)] = 1
            if attempt.outcome is DeliveryState.DELIVERED and old != new and accepted is not None:
                latency = max(0.0, attempt.at - accepted)
                bound = next((b for b in LATENCY_BUCKETS if latency <= b), None)
                deltas[("latency_bucket", "+Inf" if bound is None else f"{bound:g}")] = 1
                deltas[("latency_sum", "")] = latency
                deltas[("latency_count", "")] = 1
            _count(cur, deltas)
            return delivery
        return self._run(record)

    def delivery(self, event_id: str) -> Delivery | None:
        row = self._one("SELECT " + _DELIVERY + " FROM deliveries WHERE event_id = %s", (event_id,))
        return _delivery(row) if row else None

    def attempts(self, event_id: str) -> list[Attempt]:
        rows = self._all("SELECT at, outcome, status, duration_ms, excerpt, webhook_id, queue_id FROM attempts "
                         "WHERE event_id = %s ORDER BY id", (event_id,))
        return [Attempt(at=r[0], outcome=DeliveryState(r[1]), status=r[2], duration_ms=r[3], excerpt=r[4],
                        webhook_id=r[5], queue_id=r[6]) for r in rows]

    def recent_deliveries(self, limit: int = 20) -> list[Delivery]:
        rows = self._all("SELECT " + _DELIVERY + " FROM deliveries ORDER BY updated DESC, event_id DESC LIMIT %s",
                         (max(0, int(limit)),))
        return [_delivery(r) for r in rows]

    def list_deliveries(self, addresses: tuple[str, ...], *, state: DeliveryState | None = None,
                        before_seq: int | None = None, limit: int = 50) -> list[DeliveryRow]:
        scope, args = _scope(addresses, domain="i.domain")
        if not scope:
            return []
        where = [scope]
        conditions(where, args, (("d.state = %s", state.value if state else None), ("i.seq < %s", before_seq)))
        d = ", ".join("d." + c for c in _DELIVERY.split(", "))
        sql = (f"SELECT i.seq, {d}, i.sender, i.subject, COALESCE((SELECT a.excerpt FROM attempts a "
               f"WHERE a.event_id = i.id ORDER BY a.id DESC LIMIT 1), '') FROM inbox i JOIN deliveries d "
               f"ON d.event_id = i.id WHERE {' AND '.join(where)} ORDER BY i.seq DESC LIMIT %s")
        return [DeliveryRow(seq=r[0], delivery=_delivery(r[1:11]), sender=r[11], subject=r[12], excerpt=r[13])
                for r in self._all(sql, (*args, max(1, min(int(limit), 500))))]

    # --- the inbox -----------------------------------------------------------------------------------------

    def inbox_query(self, addresses: tuple[str, ...], *, to: str | None = None, sender: str | None = None,
                    subject: str | None = None, since: float | None = None, unread: bool = False,
                    before_seq: int | None = None, after_seq: int | None = None, thread_id: str | None = None,
                    limit: int = 50, oldest_first: bool = False, search: str | None = None) -> list[InboxRow]:
        scope, args = _scope(addresses)
        if not scope:
            return []
        where = [scope]
        if to:
            where.append("address = %s")
            args.append(split(_text(to))[0])
        if sender:
            s = _text(sender).lower()
            where.append("(sender = %s OR sender LIKE %s)")
            args += [s, "%" + _like(s if s.startswith("@") else "@" + s)]
        if subject:
            where.append("subject ILIKE %s")
            args.append("%" + _like(_text(subject)) + "%")
        if search:
            where.append("(subject ILIKE %s OR sender ILIKE %s)")
            args += ["%" + _like(_text(search)) + "%"] * 2
        if since is not None:
            where.append("received >= %s")
            args.append(since)
        if unread:
            where.append("NOT read")
        if before_seq is not None:
            where.append("seq < %s")
            args.append(before_seq)
        if after_seq is not None:
            where.append("seq > %s")
            args.append(after_seq)
        if thread_id is not None:
            where.append("thread_id = %s")
            args.append(_text(thread_id))
        order = "ASC" if oldest_first else "DESC"
        rows = self._all(f"SELECT {_INBOX} FROM inbox WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT %s",
                         (*args, max(1, min(int(limit), 500))))
        return [_inbox(r) for r in rows]

    def inbox_row(self, event_id: str) -> InboxRow | None:
        row = self._one(f"SELECT {_INBOX} FROM inbox WHERE id = %s", (event_id,))
        return _inbox(row) if row else None

    def ack(self, event_id: str) -> bool:
        return self._rowcount("UPDATE inbox SET read = true WHERE id = %s", (event_id,)) == 1

    def claim(self, event_id: str) -> bool:
        # Two callers: the second waits for the first's row lock, then sees read = true.
        return self._rowcount("UPDATE inbox SET read = true WHERE id = %s AND NOT read", (event_id,)) == 1

    def last_seq(self) -> int:
        return self._one("SELECT COALESCE(MAX(seq), 0) FROM inbox", ())[0]

    def listener(self, fallback: float = 3.0):
        return PgListener(self.url, self._kwargs, self.last_seq, fallback)

    # --- sends --------------------------------------------------------------------------------------------

    def put_send(self, record: SendRecord) -> None:
        columns = _SEND.split(", ")
        self._rowcount(
            f"INSERT INTO sends ({_SEND}) VALUES ({', '.join(['%s'] * len(columns))}) ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in columns[1:]), _send_row(record))

    def get_send(self, send_id: str) -> SendRecord | None:
        r = self._one(f"SELECT {_SEND} FROM sends WHERE id = %s", (send_id,))
        return _send(r) if r else None

    def list_sends(self, addresses: tuple[str, ...], *, before: tuple[float, str] | None = None,
                   limit: int = 50) -> list[SendRow]:
        scope, args = sender_scope(tuple(_text(a) for a in addresses), "%s")
        if not scope:
            return []
        where = [scope]
        if before is not None:
            where.append("(created < %s OR (created = %s AND id < %s COLLATE \"C\"))")
            args += [before[0], before[0], _text(before[1])]
        latest = "FROM send_events v WHERE v.send_id = sends.id ORDER BY v.seq DESC LIMIT 1"
        sql = (f"SELECT {_SEND}, (SELECT v.type {latest}), (SELECT v.at {latest}) FROM sends "
               f"WHERE {' AND '.join(where)} ORDER BY created DESC, id COLLATE \"C\" DESC LIMIT %s")
        return [SendRow(record=_send(r), latest=SendEventType(r[15]) if r[15] else None, latest_at=r[16])
                for r in self._all(sql, (*args, max(1, min(int(limit), 500))))]

    def claim_scheduled(self, lease: float) -> SendRecord | None:
        now = self.clock()

        def claim(cur):
            cur.execute("UPDATE sends SET state = %s, request = NULL, error = %s WHERE state = %s AND lease_until < %s",
                        (SendState.FAILED.value, INTERRUPTED, SendState.SENDING.value, now))
            cur.execute(f"UPDATE sends SET state = %(sending)s, lease_until = %(until)s "
                        f"WHERE id = (SELECT id FROM sends WHERE state = %(scheduled)s AND scheduled_at <= %(now)s "
                        f"            ORDER BY scheduled_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_SEND}",
                        {"sending": SendState.SENDING.value, "scheduled": SendState.SCHEDULED.value, "now": now,
                         "until": now + lease})
            return cur.fetchone()
        row = self._run(claim)
        return _send(row) if row else None

    def cancel_send(self, send_id: str) -> SendRecord | None:
        def cancel(cur):
            cur.execute("UPDATE sends SET state = %s, request = NULL WHERE id = %s AND state = %s",
                        (SendState.CANCELED.value, send_id, SendState.SCHEDULED.value))
            cur.execute(f"SELECT {_SEND} FROM sends WHERE id = %s", (send_id,))
            return cur.fetchone()
        row = self._run(cancel)
        return _send(row) if row else None

    # --- Idempotency-Key --------------------------------------------------------------------------------------

    def idempotency_begin(self, key: str, idem: str, fingerprint: str, since: float) -> tuple[str, str | None] | None:
        key, idem, now = _text(key), _text(idem), self.clock()

        def begin(cur):
            cur.execute("DELETE FROM idempotency WHERE key = %s AND idem = %s AND created < %s", (key, idem, since))
            cur.execute("INSERT INTO idempotency (key, idem, fingerprint, answer, created) VALUES (%s, %s, %s, NULL, %s) "
                        "ON CONFLICT (key, idem) DO NOTHING", (key, idem, fingerprint, now))
            if cur.rowcount == 1:
                return None
            cur.execute("SELECT fingerprint, answer FROM idempotency WHERE key = %s AND idem = %s", (key, idem))
            row = cur.fetchone()
            return (row[0], row[1]) if row else None
        return self._run(begin)

    def idempotency_finish(self, key: str, idem: str, answer: str) -> None:
        self._rowcount("UPDATE idempotency SET answer = %s WHERE key = %s AND idem = %s",
                       (_text(answer), _text(key), _text(idem)))

    def idempotency_release(self, key: str, idem: str) -> None:
        self._rowcount("DELETE FROM idempotency WHERE key = %s AND idem = %s AND answer IS NULL", (_text(key), _text(idem)))

    # --- uploads ------------------------------------------------------------------------------------------------

    def put_upload(self, upload: Upload) -> None:
        self._run(lambda cur: _import_uploads(cur, [upload]))

    def get_upload(self, upload_id: str) -> Upload | None:
        r = self._one(f"SELECT {_UPLOAD} FROM uploads WHERE id = %s", (upload_id,))
        return Upload(*r) if r else None

    # --- agent jobs -------------------------------------------------------------------------------------------

    def put_job(self, event_id: str) -> bool:
        now = self.clock()
        return self._rowcount("INSERT INTO jobs (id, state, next_at, created, updated) VALUES (%s, %s, %s, %s, %s) "
                              "ON CONFLICT (id) DO NOTHING", (event_id, JobState.QUEUED.value, now, now, now)) == 1

    def claim_job(self, lease: float) -> Job | None:
        now = self.clock()
        row = self._one(
            "UPDATE jobs SET state = %(running)s, lease_until = %(until)s, updated = %(now)s "
            "WHERE id = (SELECT id FROM jobs WHERE (state = %(queued)s AND next_at <= %(now)s) "
            "            OR (state = %(running)s AND lease_until < %(now)s) "
            "            ORDER BY next_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING " + _JOB,
            {"running": JobState.RUNNING.value, "queued": JobState.QUEUED.value, "now": now, "until": now + lease})
        return _job(row) if row else None

    def job(self, job_id: str) -> Job | None:
        row = self._one("SELECT " + _JOB + " FROM jobs WHERE id = %s", (job_id,))
        return _job(row) if row else None

    def job_did(self, job_id: str, action: str) -> None:
        self._rowcount("UPDATE jobs SET actions = array_append(actions, %s), updated = %s WHERE id = %s",
                       (_text(action), self.clock(), job_id))

    def job_done(self, job_id: str) -> None:
        self._rowcount("UPDATE jobs SET state = %s, last_error = '', updated = %s WHERE id = %s",
                       (JobState.DONE.value, self.clock(), job_id))

    def job_failed(self, job_id: str, error: str, max_attempts: int, retry_base: float) -> JobState:
        now = self.clock()
        row = self._one(
            "UPDATE jobs SET attempts = attempts + 1, "
            "state = CASE WHEN attempts + 1 >= %(max)s THEN %(parked)s ELSE %(queued)s END, "
            "next_at = %(now)s + %(base)s * power(2, attempts), last_error = %(error)s, updated = %(now)s "
            "WHERE id = %(id)s RETURNING state",
            {"max": max_attempts, "parked": JobState.PARKED.value, "queued": JobState.QUEUED.value, "now": now,
             "base": float(retry_base), "error": _text(error)[:1000], "id": job_id})
        if row is None:
            raise StoreError(f"no job {job_id!r}")
        return JobState(row[0])

    def job_postpone(self, job_id: str, until: float) -> None:
        self._rowcount("UPDATE jobs SET state = %s, next_at = %s, updated = %s WHERE id = %s",
                       (JobState.QUEUED.value, until, self.clock(), job_id))

    def job_requeue(self, job_id: str) -> bool:
        now = self.clock()
        return self._rowcount("UPDATE jobs SET state = %s, attempts = 0, next_at = %s, updated = %s "
                              "WHERE id = %s AND state = %s",
                              (JobState.QUEUED.value, now, now, job_id, JobState.PARKED.value)) == 1

    def job_counts(self) -> dict[JobState, int]:
        counts = {state: 0 for state in JobState}
        counts.update({JobState(s): n for s, n in self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state", ())})
        return counts

    def list_jobs(self, routes: tuple[str, ...], *, state: JobState | None = None, before_seq: int | None = None,
                  limit: int = 50) -> list[JobRow]:
        if not routes:
            return []
        where: list[str] = ["d.route = ANY(%s)"]
        args: list[object] = [[_text(r) for r in routes]]
        conditions(where, args, (("j.state = %s", state.value if state else None), ("i.seq < %s", before_seq)))
        j = ", ".join("j." + c for c in _JOB.split(", "))
        sql = (f"SELECT i.seq, {j}, d.route, i.recipient, i.sender, i.subject, j.created, j.updated FROM jobs j "
               f"JOIN deliveries d ON d.event_id = j.id JOIN inbox i ON i.id = j.id "
               f"WHERE {' AND '.join(where)} ORDER BY i.seq DESC LIMIT %s")
        return [JobRow(r[0], _job(r[1:7]), *r[7:]) for r in self._all(sql, (*args, max(1, min(int(limit), 500))))]

    def put_transcript(self, event_id: str, record: dict) -> None:
        self._rowcount("INSERT INTO transcripts (event_id, record, created) VALUES (%s, %s, %s) ON CONFLICT "
                       "(event_id) DO UPDATE SET record = excluded.record",
                       (event_id, json.dumps(record, ensure_ascii=True), self.clock()))

    def get_transcript(self, event_id: str) -> dict | None:
        row = self._one("SELECT record FROM transcripts WHERE event_id = %s", (event_id,))
        return json.loads(row[0]) if row else None

    # --- counters across processes and hosts ---------------------------------------------------------------

    def take(self, keys: Iterable[tuple[str, int]], window: float) -> tuple[str, float] | None:
        wanted = sorted(dict((_text(k), int(limit)) for k, limit in keys).items())
        if not wanted:
            return None
        now = self.clock()

        def take(cur):
            for key, _ in wanted:                 # in key order: two takes never wait on each other in a cycle
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NS_TAKE, key))
            for key, limit in wanted:
                if limit <= 0:
                    return key, float(window)
                # The limit-th newest use in the window: when it leaves the window, one is free.
                cur.execute("SELECT at FROM uses WHERE key = %s AND at > %s ORDER BY at DESC LIMIT 1 OFFSET %s",
                            (key, now - window, limit - 1))
                row = cur.fetchone()
                if row is not None:
                    return key, max(0.0, row[0] + window - now)
            cur.executemany("INSERT INTO uses (key, at) VALUES (%s, %s)", [(key, now) for key, _ in wanted])
            return None
        return self._run(take)

    def give_back(self, keys: Iterable[str]) -> None:
        wanted = sorted({_text(k) for k in keys})
        if not wanted:
            return

        def give(cur):
            for key in wanted:
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NS_TAKE, key))
            for key in wanted:
                cur.execute("DELETE FROM uses WHERE id = (SELECT id FROM uses WHERE key = %s "
                            "ORDER BY at DESC, id DESC LIMIT 1)", (key,))
        self._run(give)

    # --- operations -------------------------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        rows = self._all("SELECT name, label, value FROM counters", ())
        values = {(name, label): value for name, label, value in rows}
        by_state = {state: 0 for state in DeliveryState}
        for (name, label), value in values.items():
            if name == "state":
                try:
                    by_state[DeliveryState(label)] = int(value)
                except ValueError:                   # a state a newer agentmx wrote
                    continue
        verdicts = {}
        for (name, label), value in values.items():
            if name == "verdict" and ":" in label:
                check, result = label.split(":", 1)
                verdicts[(check, result)] = int(value)
        cumulative, buckets = 0, []
        for bound in LATENCY_BUCKETS:
            cumulative += int(values.get(("latency_bucket", f"{bound:g}"), 0))
            buckets.append((float(bound), cumulative))
        return Metrics(received=int(values.get(("received", ""), 0)), by_state=by_state,
                       attempts=int(values.get(("attempts", ""), 0)), verdicts=verdicts,
                       latency_buckets=tuple(buckets), latency_sum=float(values.get(("latency_sum", ""), 0.0)),
                       latency_count=int(values.get(("latency_count", ""), 0)))

    def activity(self, addresses: tuple[str, ...], since: float, until: float, width: float) -> Activity:
        scope, args = _scope(addresses, domain="i.domain")
        if not scope:
            return Activity((), ())
        sends_scope, sends_args = _scope(addresses, domain="split_part(address, '@', 2)")
        inbound = self._all(
            "SELECT floor((i.received - %s) / %s)::bigint AS b, i.state, e.dmarc, COUNT(*) FROM inbox i "
            f"JOIN events e ON e.id = i.id WHERE {scope} AND i.received >= %s AND i.received < %s "
            "GROUP BY b, i.state, e.dmarc", (since, width, *args, since, until))
        sends = self._all(
            "SELECT floor((at - %s) / %s)::bigint AS b, type, COUNT(*) FROM send_events "
            f"WHERE {sends_scope} AND at >= %s AND at < %s GROUP BY b, type",
            (since, width, *sends_args, since, until))
        return Activity(tuple((int(b), st, dm, int(n)) for b, st, dm, n in inbound),
                        tuple((int(b), t, int(n)) for b, t, n in sends))

    def gc(self, older_than: float, dry_run: bool = False) -> GcReport:
        other: dict[str, int] = {}

        def records(cur):
            cur.execute("SELECT COUNT(*) FROM events WHERE created < %s", (older_than,))
            events = cur.fetchone()[0]
            for table in ("attempts", "deliveries"):          # inbox rows go with their events
                cur.execute(f"SELECT COUNT(*) FROM {table} t JOIN events e ON e.id = t.event_id "
                            "WHERE e.created < %s", (older_than,))
                other[table] = cur.fetchone()[0]
            now = self.clock()
            pending = (SendState.SCHEDULED.value, SendState.SENDING.value)
            sends = ("created < %s AND state <> ALL(%s)", (older_than, list(pending)))
            # send events before their sends: one still to be POSTed (PENDING) goes only with its send
            for table, where, args in (("send_events", f"at < %s AND (state <> %s OR send_id IN (SELECT id FROM sends "
                                                       f"WHERE {sends[0]}))",
                                        (older_than, PostState.PENDING.value, *sends[1])),
                                       ("sends", *sends),
                                       ("transcripts", "created < %s", (older_than,)),
                                       ("jobs", "updated < %s", (older_than,)), ("uses", "at < %s", (older_than,)),
                                       ("uploads", "expires < %s", (now,)),
                                       ("idempotency", "created < %s", (now - 86400,))):
                verb = "SELECT COUNT(*) FROM" if dry_run else "DELETE FROM"
                cur.execute(f"{verb} {table} WHERE {where}", args)
                other[table] = cur.fetchone()[0] if dry_run else cur.rowcount
            if dry_run or not events:
                return events
            # The counters of what goes: states and verdicts are of stored events (gauges).
            cur.execute("SELECT d.state, e.spf, e.dkim, e.dmarc, e.arc, COUNT(*) FROM events e "
                        "JOIN deliveries d ON d.event_id = e.id WHERE e.created < %s "
                        "GROUP BY 1, 2, 3, 4, 5", (older_than,))
            deltas: dict[tuple[str, str], float] = {}
            for state, spf, dkim, dmarc, arc, n in cur.fetchall():
                deltas[("state", state)] = deltas.get(("state", state), 0) - n
                for check, value in zip(CHECKS, (spf, dkim, dmarc, arc)):
                    deltas[("verdict", f"{check}:{value}")] = deltas.get(("verdict", f"{check}:{value}"), 0) - n
            deltas[("received", "")] = -events
            cur.execute("DELETE FROM events WHERE created < %s", (older_than,))   # cascades
            _count(cur, deltas)
            return events
        events = self._run(records)
        blobs, size = self._gc_blobs(older_than, dry_run)
        return GcReport(events=events, blobs=blobs, bytes=size, other=other)

    def _gc_blobs(self, older_than: float, dry_run: bool) -> tuple[int, int]:
        """Blobs no event refers to, put before `older_than`: their rows and objects, in batches,
        each row locked while its object is deleted. Then objects with no row at all (left by a
        gc that could not reach the bucket), each under the lock put_blob takes."""
        removed = size = 0
        batch = 500
        # (A dry run has not removed the old events: their references do not count either.)
        query = ("SELECT sha256, size FROM blobs b WHERE seen < %s AND NOT EXISTS "
                 "(SELECT 1 FROM event_blobs r JOIN events e ON e.id = r.event_id "
                 " WHERE r.sha256 = b.sha256 AND e.created >= %s) "
                 "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.sha256 = b.sha256 AND u.expires >= %s) ORDER BY sha256")
        now = self.clock()
        if dry_run:
            rows = self._all(query, (older_than, older_than, now))
            return len(rows), sum(r[1] for r in rows)

        def one_batch(cur):
            cur.execute(query + " LIMIT %s FOR UPDATE SKIP LOCKED", (older_than, older_than, now, batch))
            rows = cur.fetchall()
            for sha, _ in rows:
                self.blobs.delete(sha)
            if rows:
                cur.execute("DELETE FROM blobs WHERE sha256 = ANY(%s)", ([sha for sha, _ in rows],))
            return rows
        while True:
            rows = self._run(one_batch)
            removed += len(rows)
            size += sum(r[1] for r in rows)
            if len(rows) < batch:
                break

        def orphan(cur, sha):
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NS_BLOB, sha))
            cur.execute("SELECT 1 FROM blobs WHERE sha256 = %s", (sha,))
            if cur.fetchone() is None:
                self.blobs.delete(sha)
                return True
            return False
        for sha, length, modified in list(self.blobs.list()):
            if modified < older_than and self._run(lambda cur, sha=sha: orphan(cur, sha)):
                removed += 1
                size += length
        return removed, size

    # --- blocks ---------------------------------------------------------------------------------------------

    def add_block(self, sender: str, scope: str, event_id: str) -> bool:
        return self._rowcount("INSERT INTO blocks (sender, scope, event_id, created) VALUES (%s, %s, %s, %s) "
                              "ON CONFLICT DO NOTHING",
                              (_text(sender).lower(), _text(scope).lower(), _text(event_id), self.clock())) == 1

    def blocks(self, limit: int = 100_000) -> list[Block]:
        return [Block(*r) for r in self._all("SELECT sender, scope, event_id, created FROM blocks "
                                             "ORDER BY created, sender, scope LIMIT %s", (max(0, int(limit)),))]

    def blocked(self, sender: str, scopes: tuple[str, ...]) -> Block | None:
        if not sender or not scopes:
            return None
        row = self._one("SELECT sender, scope, event_id, created FROM blocks WHERE sender = %s AND scope = ANY(%s) "
                        "ORDER BY created LIMIT 1", (_text(sender).lower(), [_text(s).lower() for s in scopes]))
        return Block(*row) if row else None

    def remove_block(self, sender: str, scope: str) -> bool:
        return self._rowcount("DELETE FROM blocks WHERE sender = %s AND scope = %s",
                              (_text(sender).lower(), _text(scope).lower())) == 1

    # --- send events ----------------------------------------------------------------------------------------

    def send_by_message_id(self, message_id: str) -> SendRecord | None:
        if not message_id:
            return None
        r = self._one(f"SELECT {_SEND} FROM sends WHERE message_id = %s ORDER BY created DESC, id DESC LIMIT 1",
                      (_text(message_id),))
        return _send(r) if r else None

    def put_send_event(self, event: SendEvent) -> bool:
        def put(cur):
            # seq drawn under one lock for every put: rows commit in seq order on every host
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_SEND_EVENTS))
            cur.execute(f"INSERT INTO send_events ({_SEND_EVENT}) VALUES ({_SEND_EVENT_VALUES}) "
                        "ON CONFLICT (id) DO NOTHING RETURNING seq", _send_event_row(event))
            row = cur.fetchone()
            if row is None:
                return False              # kept already: the first stands
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"send {row[0]}"))    # delivered at commit
            return True
        return self._run(put)

    def send_events(self, send_id: str) -> list[SendEvent]:
        return [_send_event(r) for r in self._all(f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE send_id = %s "
                                                  "ORDER BY seq", (_text(send_id),))]

    def list_send_events(self, addresses: tuple[str, ...], *, types: tuple[SendEventType, ...] = (),
                         before_seq: int | None = None, after_seq: int | None = None, limit: int = 50,
                         oldest_first: bool = False) -> list[SendEvent]:
        scope, args = _scope(addresses, domain="split_part(address, '@', 2)")
        if not scope:
            return []
        where = [scope]
        if types:
            where.append("type = ANY(%s)")
            args.append([t.value for t in types])
        conditions(where, args, (("seq < %s", before_seq), ("seq > %s", after_seq)))
        return [_send_event(r) for r in self._all(
            f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'ASC' if oldest_first else 'DESC'} LIMIT %s", (*args, max(1, min(int(limit), 500))))]

    def claim_send_events(self, lease: float, limit: int = 10) -> list[SendEvent]:
        now = self.clock()
        rows = self._all(
            "WITH due AS (SELECT seq, next_at FROM send_events WHERE state = %(pending)s AND next_at <= %(now)s "
            "             ORDER BY next_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "UPDATE send_events s SET next_at = %(until)s FROM due WHERE s.seq = due.seq "
            "RETURNING due.next_at, s.seq, " + ", ".join(f"s.{c}" for c in _SEND_EVENT.split(", ")),
            {"pending": PostState.PENDING.value, "now": now, "limit": max(1, int(limit)), "until": now + lease})
        return [_send_event(r[1:]) for r in sorted(rows, key=lambda r: (r[0], r[1]))]   # oldest first

    def send_event_posted(self, event_id: str, state: PostState, excerpt: str, next_at: float = 0.0) -> None:
        self._rowcount("UPDATE send_events SET state = %s, attempts = attempts + 1, excerpt = %s, next_at = %s "
                       "WHERE id = %s", (state.value, _text(excerpt)[:EXCERPT], next_at, _text(event_id)))

    # --- suppressions ---------------------------------------------------------------------------------------

    def suppress(self, suppression: Suppression) -> bool:
        return self._run(lambda cur: _import_suppressions(cur, [suppression])) == 1

    def unsuppress(self, domain: str, address: str) -> bool:
        return self._rowcount("DELETE FROM suppressions WHERE domain = %s AND address = %s",
                              (_text(domain).lower(), _text(address).lower())) == 1

    def suppressed(self, domain: str, addresses: Iterable[str]) -> list[Suppression]:
        wanted = sorted({_text(a).lower() for a in addresses})
        if not wanted:
            return []
        return [_suppression(r) for r in self._all(
            f'SELECT {_SUPPRESSION} FROM suppressions WHERE domain = %s AND address = ANY(%s) '
            'ORDER BY address COLLATE "C"', (_text(domain).lower(), wanted))]

    def suppressions(self, domains: tuple[str, ...] | None = None, after: tuple[str, str] | None = None,
                     limit: int = 100) -> list[Suppression]:
        args: list = [_text(k) for k in export_after(RecordKind.SUPPRESSIONS, after)]
        where = _AFTER_SUPPRESSION
        if domains is not None:
            if not domains:
                return []
            where += " AND domain = ANY(%s)"
            args.append([_text(d).lower() for d in domains])
        return [_suppression(r) for r in self._all(
            f'SELECT {_SUPPRESSION} FROM suppressions WHERE {where} ORDER BY domain COLLATE "C", address COLLATE "C" '
            'LIMIT %s', (*args, max(1, min(int(limit), 1000))))]

    # --- moving a store (transfer.py) ----------------------------------------------------------------------
    # Text keys in code-point order whatever the database's collation: COLLATE "C".

    def export_records(self, kind: RecordKind, after=None, limit: int = 500) -> list:
        limit = max(1, int(limit))
        if kind is RecordKind.EVENTS:
            return self._run(lambda cur: _export_events(cur, 0 if after is None else int(after), limit))
        sql, make = _EXPORT[kind]
        return [make(r) for r in self._all(sql, (*export_after(kind, after), limit))]

    def import_records(self, kind: RecordKind, records: list) -> int:
        records = list(records)
        if not records:
            return 0
        return self._run(lambda cur: _IMPORT[kind](cur, records))

    def blob_names(self, after: str = "", limit: int = 1000) -> list[tuple[str, int]]:
        return [(sha, size) for sha, size in self._all(
            'SELECT sha256, size FROM blobs WHERE sha256 > %s COLLATE "C" ORDER BY sha256 COLLATE "C" LIMIT %s',
            (after, max(1, int(limit))))]

    # --- small helpers ----------------------------------------------------------------------------------------

    def _one(self, sql: str, args):
        def q(cur):
            cur.execute(sql, args)
            return cur.fetchone()
        return self._run(q)

    def _all(self, sql: str, args):
        def q(cur):
            cur.execute(sql, args)
            return cur.fetchall()
        return self._run(q)

    def _rowcount(self, sql: str, args) -> int:
        def q(cur):
            cur.execute(sql, args)
            return cur.rowcount
        return self._run(q)


# --- connections: one for deliver's per-message process, a pool for serve and the agent ----------------

class _NotBegun(Exception):
    """BEGIN failed: the connection was dead before the transaction ran anything (_run)."""


class _NoPool(Exception):
    """Never raised: what _PoolTimeout() gives while psycopg_pool is not loaded."""


def _PoolTimeout() -> type[Exception]:
    """psycopg_pool's PoolTimeout when the pool module is loaded (deliver never loads it)."""
    mod = sys.modules.get("psycopg_pool")
    return mod.PoolTimeout if mod else _NoPool


class _OneConnection:
    """One connection, opened when first used, again after it broke: no pool, no threads
    (deliver is a process per message)."""

    def __init__(self, url: str, kwargs: dict):
        self.url, self.kwargs = url, kwargs
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self):
        with self._lock:
            conn = self._conn
            if conn is not None and (conn.closed or conn.broken):
                conn = self._conn = None
            # One that died while idle fails at BEGIN, and _run() goes on with a new one.
            if conn is None:
                conn = self._conn = psycopg.connect(self.url, **self.kwargs)
            try:
                yield conn
            finally:
                if conn.broken:
                    self._conn = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Pool:
    """psycopg_pool.ConnectionPool, opened when first used; a connection is checked as it is
    handed out, so one the server dropped (a restart) is replaced, not given to a caller."""

    def __init__(self, url: str, kwargs: dict, size: int, timeout: float):
        self.url, self.kwargs, self.size, self.timeout = url, kwargs, size, timeout
        self._pool = None
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool     # lazy: 3-7 ms; only serve (pool_size > 1) pools
                self._pool = ConnectionPool(self.url, kwargs=self.kwargs, min_size=1, max_size=self.size,
                                            timeout=self.timeout, open=False, name="agentmx",
                                            check=ConnectionPool.check_connection, reconnect_timeout=0,
                                            num_workers=1)
                self._pool.open(wait=False)
            return self._pool

    def connection(self):
        return self._open().connection()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


# --- rows -------------------------------------------------------------------------------------------------------

_DELIVERY = "event_id, route, recipient, state, attempts, status, reason, queue_id, created, updated"
_INBOX = "seq, id, address, recipient, sender, subject, thread_id, received, state, read"
_JOB = "id, state, attempts, actions, last_error, next_at"


def _delivery(r) -> Delivery:
    return Delivery(event_id=r[0], route=r[1], recipient=r[2], state=DeliveryState(r[3]), attempts=r[4],
                    status=r[5], reason=r[6], queue_id=r[7], created=r[8], updated=r[9])


def _inbox(r) -> InboxRow:
    return InboxRow(seq=r[0], id=r[1], address=r[2], recipient=r[3], sender=r[4], subject=r[5], thread_id=r[6],
                    received=r[7], state=DeliveryState(r[8]), read=bool(r[9]))


def _job(r) -> Job:
    return Job(id=r[0], state=JobState(r[1]), attempts=r[2], actions=tuple(r[3] or ()), last_error=r[4],
               next_at=r[5])


_SEND_EVENT = "id, send_id, type, recipient, at, address, route, body, state, attempts, next_at, excerpt"
_SEND_EVENT_VALUES = ", ".join(["%s"] * len(_SEND_EVENT.split(", ")))
_SUPPRESSION = "domain, address, reason, created, event_id, note"
# After a (domain, address) key, in code-point order (export_after's three arguments).
_AFTER_SUPPRESSION = '(domain > %s COLLATE "C" OR (domain = %s AND address > %s COLLATE "C"))'


def _send_event(r) -> SendEvent:
    """From (seq, *_SEND_EVENT)."""
    return SendEvent(id=r[1], send_id=r[2], type=SendEventType(r[3]), recipient=r[4], at=r[5], address=r[6],
                     route=r[7], body=bytes(r[8]), state=PostState(r[9]), attempts=r[10], next_at=r[11],
                     excerpt=r[12], seq=r[0])


def _send_event_row(e: SendEvent) -> tuple:
    return (_text(e.id), _text(e.send_id), e.type.value, _text(e.recipient).lower(), e.at, _text(e.address).lower(),
            _text(e.route), bytes(e.body), e.state.value, e.attempts, e.next_at, _text(e.excerpt)[:EXCERPT])


def _suppression(r) -> Suppression:
    return Suppression(domain=r[0], address=r[1], reason=SuppressionReason(r[2]), created=r[3], event_id=r[4],
                       note=r[5])


def _suppression_row(s: Suppression) -> tuple:
    return (_text(s.domain).lower(), _text(s.address).lower(), s.reason.value, s.created, _text(s.event_id),
            _text(s.note))


def _scope(addresses: tuple[str, ...], domain: str = "domain") -> tuple[str, list]:
    """The condition (and its arguments) that a row's base address (column `address`) is one of
    `addresses` ("agent@x") or its domain (the expression `domain`) one of their "@x"; "" for none."""
    scope, args = [], []
    for a in addresses:
        a = _text(a).lower()
        if a.startswith("@"):
            scope.append(f"{domain} = %s")
            args.append(a[1:])
        else:
            scope.append("address = %s")
            args.append(a)
    return ("(" + " OR ".join(scope) + ")" if scope else ""), args


# --- moving a store: rows <-> the neutral records of model.py -------------------------------------------------

_SEND = ("id, key, sender, recipients, message_id, queue_id, thread_id, in_reply_to, reply_to_event, state, created, "
         "scheduled_at, request, error, lease_until")
_UPLOAD = "id, key, sha256, filename, content_type, size, created, expires"
INTERRUPTED = "interrupted while handed to Postfix (the serve that held it stopped): it may or may not have gone out"


def _send(r) -> SendRecord:
    return SendRecord(id=r[0], key=r[1], sender=r[2], recipients=tuple(r[3]), message_id=r[4], queue_id=r[5],
                      thread_id=r[6], in_reply_to=r[7], reply_to_event=r[8], state=SendState(r[9]), created=r[10],
                      scheduled_at=r[11], request=r[12], error=r[13] or "", lease_until=r[14] or 0.0)


def _send_row(r: SendRecord) -> tuple:
    return (r.id, _text(r.key), _text(r.sender), [_text(x) for x in r.recipients], _text(r.message_id),
            _opt_text(r.queue_id), _opt_text(r.thread_id), _opt_text(r.in_reply_to), _opt_text(r.reply_to_event),
            r.state.value, r.created, r.scheduled_at, _opt_text(r.request), _text(r.error), r.lease_until)


def _export_events(cur, after: int, limit: int) -> list[StoredEvent]:
    cur.execute("SELECT i.seq, e.id, e.body, e.recipient, i.address, i.sender, i.subject, i.thread_id, e.message_id, "
                "i.received, e.accepted, i.read, e.spf, e.dkim, e.dmarc, e.arc, d.event_id, d.route, d.recipient, "
                "d.state, d.attempts, d.status, d.reason, d.queue_id, d.created, d.updated, e.fingerprint "
                "FROM inbox i JOIN events e ON e.id = i.id JOIN deliveries d ON d.event_id = i.id "
                "WHERE i.seq > %s ORDER BY i.seq LIMIT %s", (after, limit))
    rows = cur.fetchall()
    if not rows:
        return []
    ids = [r[1] for r in rows]
    cur.execute("SELECT event_id, at, outcome, status, duration_ms, excerpt, webhook_id, queue_id FROM attempts "
                "WHERE event_id = ANY(%s) ORDER BY id", (ids,))
    attempts = cur.fetchall()
    cur.execute("SELECT event_id, sha256 FROM event_blobs WHERE event_id = ANY(%s)", (ids,))
    return stored_events(rows, attempts, cur.fetchall())


# The records of a kind after a key, in code-point order of their key (COLLATE "C": whatever the
# database's collation), and how a row becomes one.
_EXPORT = {
    RecordKind.SENDS: (f'SELECT {_SEND} FROM sends WHERE id > %s COLLATE "C" ORDER BY id COLLATE "C" LIMIT %s', _send),
    RecordKind.JOBS: ('SELECT id, state, attempts, actions, last_error, next_at, lease_until, created, updated FROM jobs '
                      'WHERE id > %s COLLATE "C" ORDER BY id COLLATE "C" LIMIT %s',
                      lambda r: StoredJob(r[0], JobState(r[1]), r[2], tuple(r[3] or ()), *r[4:])),
    RecordKind.TRANSCRIPTS: ('SELECT event_id, record, created FROM transcripts WHERE event_id > %s COLLATE "C" '
                             'ORDER BY event_id COLLATE "C" LIMIT %s', lambda r: StoredTranscript(*r)),
    RecordKind.USES: ('SELECT key, at, COUNT(*) FROM uses WHERE key > %s COLLATE "C" OR (key = %s AND at > %s) '
                      'GROUP BY key, at ORDER BY key COLLATE "C", at LIMIT %s', lambda r: StoredUses(*r)),
    RecordKind.UPLOADS: (f'SELECT {_UPLOAD} FROM uploads WHERE id > %s COLLATE "C" ORDER BY id COLLATE "C" LIMIT %s',
                         lambda r: Upload(*r)),
    RecordKind.BLOCKS: ('SELECT sender, scope, event_id, created FROM blocks WHERE sender > %s COLLATE "C" OR '
                        '(sender = %s AND scope > %s COLLATE "C") ORDER BY sender COLLATE "C", scope COLLATE "C" '
                        'LIMIT %s', lambda r: Block(*r)),
    RecordKind.SEND_EVENTS: (f"SELECT seq, {_SEND_EVENT} FROM send_events WHERE seq > %s ORDER BY seq LIMIT %s",
                             _send_event),
    RecordKind.SUPPRESSIONS: (f'SELECT {_SUPPRESSION} FROM suppressions WHERE {_AFTER_SUPPRESSION} '
                              'ORDER BY domain COLLATE "C", address COLLATE "C" LIMIT %s', _suppression),
}


def _missing(cur, table: str, column: str, keys: list[str]) -> set[str]:
    cur.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", (keys,))
    return set(keys) - {r[0] for r in cur.fetchall()}


def _import_events(cur, records: list[StoredEvent]) -> int:
    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_INBOX))     # put_event's: one order
    missing = _missing(cur, "events", "id", [r.id for r in records])
    new = [r for r in records if r.id in missing]
    if not new:
        return 0
    cur.execute("SELECT seq, id FROM inbox WHERE seq = ANY(%s) ORDER BY seq LIMIT 1", ([r.seq for r in new],))
    taken = cur.fetchone()
    if taken:
        raise StoreError(f"inbox position {taken[0]} is {taken[1]}'s in this database, not the imported event's: "
                         "the database took mail of its own before the import")
    cur.executemany("INSERT INTO events (id, recipient, message_id, route, body, accepted, spf, dkim, dmarc, arc, "
                    "created, fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(r.id, _text(r.recipient), _text(r.message_id), _text(r.delivery.route), r.body, r.accepted,
                      *(_text(v) for v in r.verdicts), r.received, _opt_text(r.fingerprint)) for r in new])
    cur.executemany("INSERT INTO deliveries (event_id, route, recipient, state, attempts, status, reason, queue_id, "
                    "created, updated) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(r.id, _text(d.route), _text(d.recipient), d.state.value, d.attempts, d.status, _text(d.reason),
                      _opt_text(d.queue_id), d.created, d.updated) for r in new for d in (r.delivery,)])
    cur.executemany("INSERT INTO inbox (seq, id, address, recipient, sender, subject, thread_id, received, state, read) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(r.seq, r.id, _text(r.address), _text(r.recipient), _text(r.sender), _text(r.subject),
                      _opt_text(r.thread_id), r.received, r.delivery.state.value, r.read) for r in new])
    rows = [(r.id, a.at, a.outcome.value, a.status, a.duration_ms, _text(a.excerpt), _text(a.webhook_id),
             _opt_text(a.queue_id)) for r in new for a in r.attempts]
    if rows:
        cur.executemany("INSERT INTO attempts (event_id, at, outcome, status, duration_ms, excerpt, webhook_id, "
                        "queue_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    refs = [(r.id, sha) for r in new for sha in r.blobs]
    if refs:
        cur.executemany("INSERT INTO event_blobs (event_id, sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING", refs)
    deltas: dict[tuple[str, str], float] = {}

    def add(key, value):
        deltas[key] = deltas.get(key, 0) + value
    for r in new:
        add(("received", ""), 1)
        add(("state", r.delivery.state.value), 1)
        add(("attempts", ""), r.delivery.attempts)
        for check, value in zip(CHECKS, r.verdicts):
            add(("verdict", f"{check}:{_text(value)}"), 1)
        for at in (delivered_at(r.attempts) if r.accepted is not None else ()):
            latency = max(0.0, at - r.accepted)
            bound = next((b for b in LATENCY_BUCKETS if latency <= b), None)
            add(("latency_bucket", "+Inf" if bound is None else f"{bound:g}"), 1)
            add(("latency_sum", ""), latency)
            add(("latency_count", ""), 1)
    _count(cur, deltas)
    # Mail put here from now on comes after every imported event (is_called: nextval gives last_value + 1).
    cur.execute("SELECT setval('inbox_seq', GREATEST(%s, (SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                "FROM inbox_seq)))", (max(r.seq for r in new),))
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(max(r.seq for r in new))))
    return len(new)


def _insert_new(table: str, column: str, key, sql: str, row):
    """An importer of records keyed by one column: inserts those whose key the table lacks."""
    def insert(cur, records: list) -> int:
        missing = _missing(cur, table, column, [key(r) for r in records])
        new = [r for r in records if key(r) in missing]
        if new:
            cur.executemany(sql, [row(r) for r in new])
        return len(new)
    return insert


_import_sends = _insert_new(
    "sends", "id", lambda r: r.id,
    f"INSERT INTO sends ({_SEND}) VALUES ({', '.join(['%s'] * len(_SEND.split(', ')))}) ON CONFLICT (id) DO NOTHING",
    _send_row)
_import_uploads = _insert_new(
    "uploads", "id", lambda r: r.id,
    f"INSERT INTO uploads ({_UPLOAD}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
    lambda r: (r.id, _text(r.key), r.sha256, _text(r.filename), _text(r.content_type), r.size, r.created, r.expires))
_import_jobs = _insert_new(
    "jobs", "id", lambda r: r.id,
    "INSERT INTO jobs (id, state, attempts, actions, last_error, next_at, lease_until, created, updated) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
    lambda r: (r.id, r.state.value, r.attempts, [_text(a) for a in r.actions], _text(r.last_error), r.next_at,
               r.lease_until, r.created, r.updated))
_import_transcripts = _insert_new(
    "transcripts", "event_id", lambda r: r.event_id,
    "INSERT INTO transcripts (event_id, record, created) VALUES (%s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
    lambda r: (r.event_id, _text(r.record), r.at))


def _import_uses(cur, records: list[StoredUses]) -> int:
    keys = sorted({_text(r.key) for r in records})
    for key in keys:                       # take()'s locks, in its order
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NS_TAKE, key))
    cur.execute("SELECT key, at, COUNT(*) FROM uses WHERE key = ANY(%s) GROUP BY key, at", (keys,))
    have = {(k, at): n for k, at, n in cur.fetchall()}
    rows, inserted = [], 0
    for r in records:
        missing = r.count - have.get((_text(r.key), r.at), 0)
        if missing > 0:
            rows += [(_text(r.key), r.at)] * missing
            inserted += 1
    if rows:
        cur.executemany("INSERT INTO uses (key, at) VALUES (%s, %s)", rows)
    return inserted


def _insert_each(sql: str, row):
    """An importer of records keyed by several columns: each inserted unless its key is here."""
    def insert(cur, records: list) -> int:
        inserted = 0
        for r in records:
            cur.execute(sql, row(r))
            inserted += cur.rowcount
        return inserted
    return insert


_import_blocks = _insert_each(
    "INSERT INTO blocks (sender, scope, event_id, created) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
    lambda r: (_text(r.sender), _text(r.scope), _text(r.event_id), r.created))


def _import_send_events(cur, records: list[SendEvent]) -> int:
    """Each at its seq, unless its id or its seq is here already (the target's own event stays);
    put_send_event's next seq comes after every imported one."""
    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_SEND_EVENTS))     # put_send_event's
    cur.execute("SELECT id, seq FROM send_events WHERE id = ANY(%s) OR seq = ANY(%s)",
                ([_text(r.id) for r in records], [r.seq for r in records]))
    held = cur.fetchall()
    ids, seqs = {r[0] for r in held}, {r[1] for r in held}
    new = []
    for r in records:
        if _text(r.id) not in ids and r.seq not in seqs:
            new.append(r)
            ids.add(_text(r.id))
            seqs.add(r.seq)
    if not new:
        return 0
    cur.executemany(f"INSERT INTO send_events (seq, {_SEND_EVENT}) VALUES (%s, {_SEND_EVENT_VALUES})",
                    [(r.seq, *_send_event_row(r)) for r in new])
    cur.execute("SELECT setval('send_events_seq_seq', GREATEST(%s, (SELECT CASE WHEN is_called THEN last_value "
                "ELSE 0 END FROM send_events_seq_seq)))", (max(r.seq for r in new),))
    return len(new)


_import_suppressions = _insert_each(
    f"INSERT INTO suppressions ({_SUPPRESSION}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    _suppression_row)


_IMPORT = {RecordKind.EVENTS: _import_events, RecordKind.SENDS: _import_sends, RecordKind.JOBS: _import_jobs,
           RecordKind.TRANSCRIPTS: _import_transcripts, RecordKind.USES: _import_uses, RecordKind.UPLOADS: _import_uploads,
           RecordKind.BLOCKS: _import_blocks, RecordKind.SEND_EVENTS: _import_send_events,
           RecordKind.SUPPRESSIONS: _import_suppressions}


def _count(cur, deltas: dict[tuple[str, str], float]) -> None:
    """Add to counter rows, in key order (two writers lock them in the same order: no deadlock)."""
    items = sorted((k, v) for k, v in deltas.items() if v)
    if not items:
        return
    cur.execute("INSERT INTO counters (name, label, value) SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[]) "
                "ON CONFLICT (name, label) DO UPDATE SET value = counters.value + excluded.value",
                ([k[0] for k, _ in items], [k[1] for k, _ in items], [float(v) for _, v in items]))


def _blob_refs(event: dict) -> list[str]:
    refs = []
    raw = event.get("raw")
    if isinstance(raw, dict) and isinstance(raw.get("sha256"), str):
        refs.append(raw["sha256"])
    for a in event.get("attachments") or ():
        if isinstance(a, dict) and isinstance(a.get("sha256"), str):
            refs.append(a["sha256"])
    return sorted({r for r in refs if _SHA.fullmatch(r)})


def _timestamp(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def _text(value) -> str:
    """Text PostgreSQL takes: no NUL, no lone surrogates (hostile mail may carry both)."""
    s = str(value)
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _opt_text(value) -> str | None:
    return None if value is None else _text(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _redact(text[0]) if text else type(exc).__name__


def _redact(text: str) -> str:
    """A URL's password never in a message or a log."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)

