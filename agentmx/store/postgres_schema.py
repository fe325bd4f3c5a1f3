"""The postgres backend's DDL for each schema version (the versions themselves, with the embedded
backend's DDL beside this one, are agentmx/store/migrations.py: one list), applied in order, each
once, each in its own transaction, by `agentmx store migrate` (PostgresStore.migrate()).

The version numbers and table names are the embedded backend's (one data model): a version adds
the same tables and columns to both. Times are unix seconds (double precision), from the
store's clock; states are the model's enum values as text.
"""
from __future__ import annotations

V1 = """
CREATE TABLE events (
    id          text PRIMARY KEY,            -- msg_...
    recipient   text NOT NULL,               -- lower case
    message_id  text NOT NULL DEFAULT '',    -- find_event: one message at two MX hosts is one event
    route       text NOT NULL,
    body        bytea NOT NULL,              -- the event JSON, as sent
    accepted    double precision,            -- createdAt (acceptance by Postfix): delivery latency
    spf         text NOT NULL DEFAULT 'none',
    dkim        text NOT NULL DEFAULT 'none',
    dmarc       text NOT NULL DEFAULT 'none',
    arc         text NOT NULL DEFAULT 'none',
    created     double precision NOT NULL
);
CREATE INDEX events_message ON events (recipient, message_id);
CREATE INDEX events_created ON events (created);

-- Which blobs (raw message, attachments) an event refers to: gc keeps those.
CREATE TABLE event_blobs (
    event_id    text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    sha256      text NOT NULL,
    PRIMARY KEY (event_id, sha256)
);
CREATE INDEX event_blobs_sha ON event_blobs (sha256);

-- One row per blob in the bucket: written (under the row lock) before the object is, so gc and
-- a put of the same bytes never cross.
CREATE TABLE blobs (
    sha256      text PRIMARY KEY,
    size        bigint NOT NULL,
    seen        double precision NOT NULL    -- the last put
);
CREATE INDEX blobs_seen ON blobs (seen);

CREATE TABLE deliveries (
    event_id    text PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    route       text NOT NULL,
    recipient   text NOT NULL,
    state       text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    status      integer,
    reason      text NOT NULL DEFAULT '',
    queue_id    text,
    created     double precision NOT NULL,
    updated     double precision NOT NULL
);
CREATE INDEX deliveries_updated ON deliveries (updated);

CREATE TABLE attempts (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    at          double precision NOT NULL,
    outcome     text NOT NULL,
    status      integer,
    duration_ms integer NOT NULL DEFAULT 0,
    excerpt     text NOT NULL DEFAULT '',
    webhook_id  text NOT NULL DEFAULT '',
    queue_id    text
);
CREATE INDEX attempts_event ON attempts (event_id, id);

-- seq is the order of arrival: taken under a transaction-level advisory lock, so rows commit in
-- seq order on every host and an event stream resuming after seq N misses nothing.
CREATE SEQUENCE inbox_seq;
CREATE TABLE inbox (
    seq         bigint PRIMARY KEY,
    id          text NOT NULL UNIQUE REFERENCES events (id) ON DELETE CASCADE,
    address     text NOT NULL,               -- the recipient's base address, lower case
    domain      text GENERATED ALWAYS AS (split_part(address, '@', 2)) STORED,
    recipient   text NOT NULL,
    sender      text NOT NULL,               -- From address, lower case
    subject     text NOT NULL,
    thread_id   text,
    received    double precision NOT NULL,
    state       text NOT NULL,
    read        boolean NOT NULL DEFAULT false
);
CREATE INDEX inbox_address ON inbox (address, seq);
CREATE INDEX inbox_domain ON inbox (domain, seq);
CREATE INDEX inbox_thread ON inbox (thread_id);

CREATE TABLE sends (
    id              text PRIMARY KEY,        -- snd_...
    key             text NOT NULL,
    sender          text NOT NULL,
    recipients      text[] NOT NULL,
    message_id      text NOT NULL,
    queue_id        text,
    thread_id       text,
    in_reply_to     text,
    reply_to_event  text,
    state           text NOT NULL,
    created         double precision NOT NULL
);
CREATE INDEX sends_created ON sends (created);

CREATE TABLE jobs (
    id          text PRIMARY KEY,            -- the event id
    state       text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    next_at     double precision NOT NULL,
    lease_until double precision NOT NULL DEFAULT 0,
    actions     text[] NOT NULL DEFAULT '{}',
    last_error  text NOT NULL DEFAULT '',
    created     double precision NOT NULL,
    updated     double precision NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_at);

CREATE TABLE transcripts (
    event_id    text PRIMARY KEY,
    record      text NOT NULL,               -- JSON, as written
    created     double precision NOT NULL
);

-- Rate limits and the loop breaker: one row per use, counted in a sliding window under a
-- transaction-level advisory lock per key (take()).
CREATE TABLE uses (
    id          bigserial PRIMARY KEY,
    key         text NOT NULL,
    at          double precision NOT NULL
);
CREATE INDEX uses_key ON uses (key, at);

-- What /metrics shows, kept as records are written (cheap per scrape).
CREATE TABLE counters (
    name        text NOT NULL,
    label       text NOT NULL DEFAULT '',
    value       double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (name, label)
);

-- Room for the next issues: delivery-status events of sends (issue 16), suppressions, blocks.
CREATE TABLE send_events (
    id          bigserial PRIMARY KEY,
    send_id     text NOT NULL,
    kind        text NOT NULL,
    at          double precision NOT NULL,
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX send_events_send ON send_events (send_id, id);
CREATE TABLE suppressions (
    address     text PRIMARY KEY,
    reason      text NOT NULL,
    created     double precision NOT NULL
);
CREATE TABLE blocks (
    pattern     text PRIMARY KEY,
    reason      text NOT NULL,
    created     double precision NOT NULL
);
"""

# find_event's third key: deliver's fingerprint of the message (MAIL FROM, the verdicts, the
# body's sha256), NULL for events kept before it (never taken for a duplicate). The index holds
# all three keys: a sender who sends many messages under one Message-ID cannot make each look-up
# read all of them.
V2 = """
ALTER TABLE events ADD COLUMN fingerprint text;
DROP INDEX events_message;
CREATE INDEX events_dedup ON events (recipient, message_id, fingerprint);
"""

# Blocks with a scope (deliver/control.py: an agent's block-sender answer). The version 1 table
# (pattern, reason) was never written: replaced.
V3 = """
DROP TABLE blocks;
CREATE TABLE blocks (
    sender      text NOT NULL,
    scope       text NOT NULL,
    event_id    text NOT NULL,
    created     double precision NOT NULL,
    PRIMARY KEY (sender, scope)
);
"""

# Scheduled sends (their request kept until due, claimed with FOR UPDATE SKIP LOCKED), the answers
# kept for Idempotency-Key (24 hours), and files uploaded through POST /v1/attachments (gc keeps
# their blobs until they expire).
V4 = """
ALTER TABLE sends ADD COLUMN scheduled_at double precision;
ALTER TABLE sends ADD COLUMN request text;
ALTER TABLE sends ADD COLUMN error text NOT NULL DEFAULT '';
ALTER TABLE sends ADD COLUMN lease_until double precision NOT NULL DEFAULT 0;
CREATE INDEX sends_due ON sends (state, scheduled_at);
CREATE TABLE idempotency (
    key         text NOT NULL,               -- the API key's name
    idem        text NOT NULL,               -- the Idempotency-Key header
    fingerprint text NOT NULL,               -- sha256 of the method, path and body
    answer      text,                        -- the first answer (JSON); NULL while in flight
    created     double precision NOT NULL,
    PRIMARY KEY (key, idem)
);
CREATE INDEX idempotency_created ON idempotency (created);
CREATE TABLE uploads (
    id           text PRIMARY KEY,           -- att_...
    key          text NOT NULL,
    sha256       text NOT NULL,
    filename     text NOT NULL,
    content_type text NOT NULL,
    size         bigint NOT NULL,
    created      double precision NOT NULL,
    expires      double precision NOT NULL
);
CREATE INDEX uploads_sha ON uploads (sha256, expires);
"""

# Send events (issue 16: DSNs, bounces and complaints matched to the send, and email.sent) with
# their webhook POST state (claimed by serve's dispatcher with FOR UPDATE SKIP LOCKED), and
# suppressions per sending domain. Version 1's tables of these names were never written: replaced.
V5 = """
DROP TABLE send_events;
CREATE TABLE send_events (
    seq         bigserial PRIMARY KEY,
    id          text NOT NULL UNIQUE,        -- evt_...: the webhook-id
    send_id     text NOT NULL,
    type        text NOT NULL,               -- SendEventType
    recipient   text NOT NULL,
    at          double precision NOT NULL,
    address     text NOT NULL,               -- the sender's base address
    route       text NOT NULL,
    body        bytea NOT NULL,
    state       text NOT NULL,               -- PostState
    attempts    integer NOT NULL DEFAULT 0,
    next_at     double precision NOT NULL DEFAULT 0,
    excerpt     text NOT NULL DEFAULT ''
);
CREATE INDEX send_events_send ON send_events (send_id, seq);
CREATE INDEX send_events_address ON send_events (address, seq);
CREATE INDEX send_events_due ON send_events (state, next_at);
DROP TABLE suppressions;
CREATE TABLE suppressions (
    domain      text NOT NULL,
    address     text NOT NULL,
    reason      text NOT NULL,
    created     double precision NOT NULL,
    event_id    text NOT NULL DEFAULT '',
    note        text NOT NULL DEFAULT '',
    PRIMARY KEY (domain, address)
);
CREATE INDEX sends_message ON sends (message_id);
"""
