"""The schema's versions: each migration a number, what it does, and its DDL per backend.

A store's `schema_version` table holds one row per migration applied. `agentmx store migrate`
applies the pending ones, in order, each once; every service checks at start that the schema is
LATEST (Store.check_schema) and refuses an older or a newer one rather than guess. An embedded
store applies them itself when it creates its file (a fresh host needs no step). A migration is
never edited once released: a change is a new version.

    Migration(version, what, ddl={"embedded": (statement, ...), "postgres": (statement, ...)})

The statements of one migration run in one transaction with the version row (so SQLite's DDL
here has no `;` inside a statement and no PRAGMA, which cannot run in a transaction).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import postgres_schema        # the PostgreSQL DDL, as text (no psycopg import)


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    ddl: dict = field(default_factory=dict)      # backend name -> tuple of statements


_V1_SQLITE = (
    # the inbox row of every event: its order of arrival (seq), scope and filters, read flag
    """CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        address    TEXT NOT NULL,          -- the recipient's base address, lower case (agent+tag@ -> agent@)
        recipient  TEXT NOT NULL,
        sender     TEXT NOT NULL,          -- the From address, lower case
        subject    TEXT NOT NULL,
        thread_id  TEXT,
        message_id TEXT,
        received   REAL NOT NULL,          -- when the store took it (the store's clock)
        accepted   REAL NOT NULL,          -- the event's createdAt: when Postfix accepted it
        read       INTEGER NOT NULL DEFAULT 0,
        spf TEXT NOT NULL, dkim TEXT NOT NULL, dmarc TEXT NOT NULL, arc TEXT NOT NULL)""",
    "CREATE INDEX events_address ON events (address, seq)",
    "CREATE INDEX events_thread ON events (thread_id)",
    "CREATE INDEX events_message ON events (recipient, message_id)",
    "CREATE INDEX events_received ON events (received)",
    # the event's JSON as last sent, apart: the inbox's scans never read through it
    "CREATE TABLE event_bodies (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)",
    # which blobs (raw message, attachments) each event refers to: what gc keeps
    """CREATE TABLE event_blobs (event_id TEXT NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (event_id, sha256)) WITHOUT ROWID""",
    "CREATE INDEX event_blobs_sha ON event_blobs (sha256)",
    # one delivery per event (the route its recipient matched), and every attempt of it
    """CREATE TABLE deliveries (
        event_id   TEXT PRIMARY KEY,
        route      TEXT NOT NULL,
        recipient  TEXT NOT NULL,
        state      TEXT NOT NULL,          -- DeliveryState
        attempts   INTEGER NOT NULL DEFAULT 0,
        status     INTEGER,
        reason     TEXT NOT NULL DEFAULT '',
        queue_id   TEXT,
        created    REAL NOT NULL,
        updated    REAL NOT NULL)""",
    "CREATE INDEX deliveries_updated ON deliveries (updated)",
    """CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        event_id    TEXT NOT NULL,
        at          REAL NOT NULL,
        outcome     TEXT NOT NULL,         -- DeliveryState after this attempt
        status      INTEGER,               -- HTTP status; 0 no answer; NULL no POST
        duration_ms INTEGER NOT NULL,
        excerpt     TEXT NOT NULL,         -- the answer's first 200 characters, or the error
        webhook_id  TEXT NOT NULL,
        queue_id    TEXT)""",
    "CREATE INDEX attempts_event ON attempts (event_id, id)",
    # what agents sent through the send API or the built-in agent
    """CREATE TABLE sends (
        id             TEXT PRIMARY KEY,   -- snd_...
        key            TEXT NOT NULL,
        sender         TEXT NOT NULL,
        recipients     TEXT NOT NULL,      -- JSON list
        message_id     TEXT NOT NULL,
        queue_id       TEXT,
        thread_id      TEXT,
        in_reply_to    TEXT,
        reply_to_event TEXT,
        state          TEXT NOT NULL,      -- SendState
        created        REAL NOT NULL)""",
    "CREATE INDEX sends_created ON sends (created)",
    # agent jobs (action = "agent" routes) and what the agent was shown and did
    """CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,      -- the event id
        state       TEXT NOT NULL,         -- JobState
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        actions     TEXT NOT NULL DEFAULT '[]',
        last_error  TEXT NOT NULL DEFAULT '',
        created     REAL NOT NULL,
        updated     REAL NOT NULL)""",
    "CREATE INDEX jobs_due ON jobs (state, next_at)",
    "CREATE TABLE transcripts (event_id TEXT PRIMARY KEY, record TEXT NOT NULL, updated REAL NOT NULL)",
    # sliding-window counters shared by every process: rate limits ("to:", "thread:", "agent:")
    "CREATE TABLE uses (id INTEGER PRIMARY KEY, key TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX uses_key ON uses (key, at)",
    # what /metrics shows, kept as records are written: (kind, label) -> value
    #   received | state/<DeliveryState> | attempts | verdict/<check>=<result>
    #   latency/<bucket le> (not cumulative) | latency_sum | latency_count
    """CREATE TABLE counters (kind TEXT NOT NULL, label TEXT NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (kind, label)) WITHOUT ROWID""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # room for issue 16: delivery-status events of sends, suppressions, blocks (no methods yet)
    """CREATE TABLE send_events (
        id        INTEGER PRIMARY KEY,
        send_id   TEXT NOT NULL,
        type      TEXT NOT NULL,           -- email.delivered, email.delayed, email.bounced, email.complained
        recipient TEXT,
        at        REAL NOT NULL,
        detail    TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX send_events_send ON send_events (send_id, at)",
    """CREATE TABLE suppressions (address TEXT PRIMARY KEY, reason TEXT NOT NULL, created REAL NOT NULL,
        expires REAL)""",
    "CREATE TABLE blocks (pattern TEXT PRIMARY KEY, reason TEXT NOT NULL, created REAL NOT NULL)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events with their inbox rows, deliveries and attempts, sends, agent jobs and transcripts, "
                 "rate-limit uses, metrics counters; empty tables for issue 16 (send events, suppressions, blocks)",
              {"embedded": _V1_SQLITE, "postgres": (postgres_schema.V1,)}),
    Migration(2, "events.fingerprint (deliver/dedup.py: MAIL FROM, verdicts, the body's sha256) and an index on "
                 "recipient, Message-ID and it: one message taken by two MX hosts, or twice by one, is one event",
              {"embedded": ("ALTER TABLE events ADD COLUMN fingerprint TEXT",
                            "DROP INDEX events_message",
                            "CREATE INDEX events_dedup ON events (recipient, message_id, fingerprint)"),
               "postgres": (postgres_schema.V2,)}),
    Migration(3, "blocks with a scope: a sender blocked for a route's addresses by an agent's block-sender answer, "
                 "with the event that asked and when (the empty blocks table of version 1 had no scope)",
              {"embedded": ("DROP TABLE blocks",
                            """CREATE TABLE blocks (sender TEXT NOT NULL, scope TEXT NOT NULL, event_id TEXT NOT NULL,
                                created REAL NOT NULL, PRIMARY KEY (sender, scope)) WITHOUT ROWID"""),
               "postgres": (postgres_schema.V3,)}),
)

_V4_SQLITE = (
    # scheduled sends: the request kept until it is due, claimed by one serve (lease), its error
    "ALTER TABLE sends ADD COLUMN scheduled_at REAL",
    "ALTER TABLE sends ADD COLUMN request TEXT",
    "ALTER TABLE sends ADD COLUMN error TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sends ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
    "CREATE INDEX sends_due ON sends (state, scheduled_at)",
    # Idempotency-Key: per API key, the request's fingerprint and the first answer (NULL: in flight)
    """CREATE TABLE idempotency (key TEXT NOT NULL, idem TEXT NOT NULL, fingerprint TEXT NOT NULL, answer TEXT,
        created REAL NOT NULL, PRIMARY KEY (key, idem)) WITHOUT ROWID""",
    "CREATE INDEX idempotency_created ON idempotency (created)",
    # POST /v1/attachments files (and scheduled sends' attachments): gc keeps their blobs until expires
    """CREATE TABLE uploads (id TEXT PRIMARY KEY, key TEXT NOT NULL, sha256 TEXT NOT NULL, filename TEXT NOT NULL,
        content_type TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL, expires REAL NOT NULL)""",
    "CREATE INDEX uploads_sha ON uploads (sha256, expires)",
)

MIGRATIONS += (
    Migration(4, "scheduled sends (sends.scheduled_at, request, error, lease_until), Idempotency-Key answers, "
                 "uploaded attachments (POST /v1/attachments) kept until they expire",
              {"embedded": _V4_SQLITE, "postgres": (postgres_schema.V4,)}),
)

_V5_SQLITE = (
    # issue 16: the empty tables of version 1 had neither a POST state nor a scope
    "DROP TABLE send_events",
    """CREATE TABLE send_events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        id        TEXT NOT NULL UNIQUE,    -- evt_...: the webhook-id
        send_id   TEXT NOT NULL,
        type      TEXT NOT NULL,           -- SendEventType
        recipient TEXT NOT NULL,
        at        REAL NOT NULL,
        address   TEXT NOT NULL,           -- the sender's base address: the scope keys read by
        route     TEXT NOT NULL,
        body      BLOB NOT NULL,
        state     TEXT NOT NULL,           -- PostState
        attempts  INTEGER NOT NULL DEFAULT 0,
        next_at   REAL NOT NULL DEFAULT 0,
        excerpt   TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX send_events_send ON send_events (send_id, seq)",
    "CREATE INDEX send_events_address ON send_events (address, seq)",
    "CREATE INDEX send_events_due ON send_events (state, next_at)",
    "DROP TABLE suppressions",
    """CREATE TABLE suppressions (domain TEXT NOT NULL, address TEXT NOT NULL, reason TEXT NOT NULL,
        created REAL NOT NULL, event_id TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (domain, address)) WITHOUT ROWID""",
    "CREATE INDEX sends_message ON sends (message_id)",
)

MIGRATIONS += (
    Migration(5, "send events (what became of what agents sent: DSNs, bounces, complaints) with their webhook "
                 "POST state, suppressions per sending domain (both replace version 1's empty tables), and "
                 "an index on the Message-ID of sends (a report names the message it is about)",
              {"embedded": _V5_SQLITE, "postgres": (postgres_schema.V5,)}),
)

LATEST = MIGRATIONS[-1].version


def pending(current: int, backend: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """(version, what, statements) of every migration after `current`, in order."""
    out = []
    for m in MIGRATIONS:
        if m.version > current:
            if backend not in m.ddl:
                raise KeyError(f"migration {m.version} has no DDL for the {backend} backend")
            out.append((m.version, m.what, tuple(m.ddl[backend])))
    return out
