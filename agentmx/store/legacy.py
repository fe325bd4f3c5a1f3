"""The data directory of earlier versions, imported once into the embedded store (`agentmx store
migrate`): an upgraded host keeps its mail, its inbox order and read flags, its agent jobs.

    events/<id>.json       the event as last sent             -> events (+ inbox row, blob references)
    state/<id>.json        {"state", "attempts", ...}         -> deliveries (the attempts count and the
                                                                 last attempt: earlier versions kept no more)
    inbox.sqlite           seq order, read flags               -> the events' order and read flags
    sent/<snd_id>.json     what the send API submitted          -> sends
    transcripts/<id>.json  what the agent was shown and did    -> transcripts
    agent-jobs.sqlite      jobs; the last hour's agent sends   -> jobs; uses ("agent:<route>")
    blobs/                 the same layout: stays where it is

Idempotent: every row is inserted only if its id is not there yet, in batches, so an interrupted
import is simply run again; the store is marked imported at the end (meta.legacy_import), and
until then every service refuses the store (SchemaMismatch) so that no new mail is ordered before
the old. The old files are left in place: the operator removes them after checking.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from datetime import datetime
from pathlib import Path
from typing import Callable

from .counters import CHECKS, rebuild_counters
from .model import DeliveryState, JobState, SendState, base_address

_ID = re.compile(r"^(msg|snd)_[a-z0-9]{16,64}$")
BATCH = 500
MAX_FILE = 512 * 1024 * 1024


def _read(path: Path) -> bytes | None:
    """A regular file of the old layout, never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(MAX_FILE)


def _json(path: Path):
    data = _read(path)
    try:
        return json.loads(data) if data is not None else None
    except ValueError:
        return None


def _ids(folder: Path) -> list[tuple[float, str]]:
    """(mtime, id) of every <id>.json in an old folder, oldest first."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return []
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for name in names:
        stem = name[:-5]
        if name.endswith(".json") and _ID.match(stem):
            try:
                out.append((os.lstat(folder / name).st_mtime, stem))
            except OSError:
                continue
    return sorted(out)


def _old_db(path: Path, sql: str) -> list[tuple]:
    """Rows of an old SQLite file, opened read-only (none when it is missing or unreadable)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return []
    except OSError:
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []


def _time(text, default: float) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _state(value, default: DeliveryState) -> DeliveryState:
    try:
        return DeliveryState(value)
    except ValueError:
        return default


def import_all(store, db: sqlite3.Connection, route_of: Callable[[str], str] | None = None) -> dict[str, int]:
    """Everything of the old layout under store.data_dir into `db`; the counts imported."""
    root = store.data_dir
    route_of = route_of or base_address
    counts = {"events": 0, "skipped": 0, "sends": 0, "transcripts": 0, "jobs": 0, "uses": 0}
    inbox = {r[0]: r for r in _old_db(root / "inbox.sqlite",
                                      "SELECT id, received, state, read FROM messages ORDER BY seq")}
    files = {event_id: mtime for mtime, event_id in _ids(root / "events")}
    order = [i for i in inbox if i in files] + sorted((i for i in files if i not in inbox), key=files.get)

    def batches(items):
        for n in range(0, len(items), BATCH):
            yield items[n:n + BATCH]

    for batch in batches(order):
        db.execute("BEGIN IMMEDIATE")
        try:
            for event_id in batch:
                if db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone():
                    continue
                body = _read(root / "events" / f"{event_id}.json")
                try:
                    event = json.loads(body)
                    recipient = str(event["recipient"]).lower()
                except (TypeError, ValueError, KeyError):
                    counts["skipped"] += 1
                    continue
                row = inbox.get(event_id)
                received = row[1] if row else files[event_id]
                st = _json(root / "state" / f"{event_id}.json") or {}
                state = _state(st.get("state") or (row[2] if row else None), DeliveryState.RECEIVED)
                updated = _time(st.get("updatedAt"), received)
                auth = event.get("auth") if isinstance(event.get("auth"), dict) else {}
                seq = db.execute(
                    "INSERT INTO events (id, address, recipient, sender, subject, thread_id, message_id, received, "
                    "accepted, read, spf, dkim, dmarc, arc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event_id, base_address(recipient), recipient,
                     str(((event.get("from") or {}).get("address") or "")).lower(), str(event.get("subject") or ""),
                     event.get("threadId"), event.get("messageId"), received, _time(event.get("createdAt"), received),
                     int(bool(row[3])) if row else 0, *(str(auth.get(c) or "none") for c in CHECKS))).lastrowid
                db.execute("INSERT INTO event_bodies (seq, body) VALUES (?, ?)", (seq, body))
                attempts = int(st.get("attempts") or 0)
                db.execute("INSERT INTO deliveries (event_id, route, recipient, state, attempts, status, reason, "
                           "queue_id, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (event_id, route_of(recipient), recipient, state.value, attempts, st.get("status"),
                            str(st.get("reason") or ""), st.get("queueId"), received, updated))
                if attempts:
                    db.execute("INSERT INTO attempts (event_id, at, outcome, status, duration_ms, excerpt, webhook_id, "
                               "queue_id) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                               (event_id, updated, state.value, st.get("status"), str(st.get("reason") or "")[:200],
                                event_id, st.get("queueId")))
                shas = {s for s in [(event.get("raw") or {}).get("sha256"),
                                    *(a.get("sha256") for a in event.get("attachments") or [] if isinstance(a, dict))]
                        if isinstance(s, str)}
                db.executemany("INSERT OR IGNORE INTO event_blobs (event_id, sha256) VALUES (?, ?)",
                               [(event_id, s) for s in shas])
                counts["events"] += 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    db.execute("BEGIN IMMEDIATE")
    try:
        for mtime, send_id in _ids(root / "sent"):
            rec = _json(root / "sent" / f"{send_id}.json")
            if not isinstance(rec, dict):
                continue
            counts["sends"] += db.execute(
                "INSERT OR IGNORE INTO sends (id, key, sender, recipients, message_id, queue_id, thread_id, in_reply_to, "
                "reply_to_event, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (send_id, str(rec.get("key") or ""), str(rec.get("from") or ""), json.dumps(rec.get("recipients") or []),
                 str(rec.get("messageId") or ""), rec.get("queueId"), rec.get("threadId"), rec.get("inReplyTo"),
                 rec.get("replyToEvent"), SendState.QUEUED.value, mtime)).rowcount
        for mtime, event_id in _ids(root / "transcripts"):
            rec = _json(root / "transcripts" / f"{event_id}.json")
            if isinstance(rec, dict):
                counts["transcripts"] += db.execute(
                    "INSERT OR IGNORE INTO transcripts (event_id, record, updated) VALUES (?, ?, ?)",
                    (event_id, json.dumps(rec, ensure_ascii=False), mtime)).rowcount
        jobs_file = root / "agent-jobs.sqlite"
        for job in _old_db(jobs_file, "SELECT id, state, attempts, next_at, lease_until, actions, last_error, created, "
                                      "updated FROM jobs"):
            state = job[1] if job[1] in {s.value for s in JobState} else JobState.QUEUED.value
            counts["jobs"] += db.execute(
                "INSERT OR IGNORE INTO jobs (id, state, attempts, next_at, lease_until, actions, last_error, created, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (job[0], state, *job[2:])).rowcount
        if not db.execute("SELECT 1 FROM uses WHERE key LIKE 'agent:%' LIMIT 1").fetchone():
            for route, at in _old_db(jobs_file, "SELECT route, at FROM sends"):
                db.execute("INSERT INTO uses (key, at) VALUES (?, ?)", (f"agent:{route}", at))
                counts["uses"] += 1
        rebuild_counters(db)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('legacy_import', ?)",
                   (json.dumps({"at": store.clock(), **counts}),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return counts
