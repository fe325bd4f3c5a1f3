"""The inbox API on `agentmx serve`: what pull-mode agents (and any agent) read.

    GET  /v1/messages?to=&from=&subject=&since=&unread=&limit=&cursor=   newest first, paginated
    GET  /v1/messages/wait?to=&from=&subject=&timeout=&ack=              long-poll: the oldest unread match
    GET  /v1/messages/{id}                                               one message
    POST /v1/messages/{id}/ack                                           mark it read
    GET  /v1/threads/{threadId}                                          a conversation, oldest first
    GET  /v1/events                                                      server-sent events, as they arrive

Every request carries an API key (Authorization: Bearer ...); a key sees the messages whose
recipient its `allow` list names (addresses or @domains), as for sending. Each message is the
stored `email.received` event with one more member, `inbox`: {state, read, receivedAt}. The
body of a message is untrusted input, as in the webhook.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Callable, Iterator

from . import send
from .config import ApiKey, Config
from .inbox import Inbox, Row, base_address
from .store import Store

MAX_WAIT = 300.0
POLL = 0.1


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(400, "bad_since", "since is unix seconds or an RFC 3339 time") from None


def _int(value: str | None, default: int, lo: int, hi: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"{name} is a whole number") from None
    return max(lo, min(hi, n))


class InboxApi:
    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.config, self.store, self.clock, self.sleep = config, store, clock, sleep

    def _inbox(self) -> Inbox:
        return Inbox(self.config.data_dir, create=False)

    def key(self, authorization: str | None) -> ApiKey:
        try:
            return send.authorize(self.config, authorization)
        except send.SendError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None

    def message(self, row: Row) -> dict | None:
        raw = self.store.get_event(row.id)
        if raw is None:                       # removed by retention (agentmx gc)
            return None
        event = json.loads(raw)
        event["inbox"] = {"state": row.state, "read": row.read, "receivedAt": _rfc3339(row.received)}
        return event

    def _filters(self, q: dict) -> dict:
        if q.get("to") and "@" not in q["to"]:
            raise ApiError(400, "bad_to", "to is an address")
        return {"to": q.get("to") or None, "sender": q.get("from") or None, "subject": q.get("subject") or None}

    def _scoped_to(self, key: ApiKey, q: dict) -> None:
        if q.get("to") and not key.may_send_as(base_address(q["to"])):
            raise ApiError(403, "forbidden_address", "this key may not read mail sent to that address")

    # --- the routes -------------------------------------------------------------------------

    def list(self, key: ApiKey, q: dict) -> dict:
        self._scoped_to(key, q)
        limit = _int(q.get("limit"), 20, 1, 100, "limit")
        cursor = _int(q.get("cursor"), 0, 0, 2**62, "cursor") or None
        inbox = self._inbox()
        try:
            rows = inbox.query(key.allow, **self._filters(q), since=_since(q.get("since")),
                               unread=q.get("unread") in ("1", "true", "yes"), before_seq=cursor, limit=limit + 1)
        finally:
            inbox.close()
        more = len(rows) > limit
        rows = rows[:limit]
        messages = [m for m in (self.message(r) for r in rows) if m is not None]
        return {"messages": messages, "nextCursor": str(rows[-1].seq) if more and rows else None}

    def get(self, key: ApiKey, event_id: str) -> dict:
        row = self._row(key, event_id)
        msg = self.message(row)
        if msg is None:
            raise ApiError(410, "gone", "the message was removed by retention")
        return msg

    def _row(self, key: ApiKey, event_id: str) -> Row:
        inbox = self._inbox()
        try:
            row = inbox.get(event_id)
        finally:
            inbox.close()
        if row is None or not key.may_send_as(base_address(row.recipient)):
            raise ApiError(404, "unknown_message", f"no message {event_id} for this key")
        return row

    def ack(self, key: ApiKey, event_id: str) -> dict:
        self._row(key, event_id)
        inbox = self._inbox()
        try:
            inbox.ack(event_id)
        finally:
            inbox.close()
        return {"id": event_id, "read": True}

    def thread(self, key: ApiKey, thread_id: str) -> dict:
        inbox = self._inbox()
        try:
            rows = inbox.query(key.allow, thread_id=thread_id, oldest_first=True, limit=500)
        finally:
            inbox.close()
        if not rows:
            raise ApiError(404, "unknown_thread", f"no thread {thread_id} for this key")
        return {"threadId": thread_id, "messages": [m for m in (self.message(r) for r in rows) if m]}

    def wait(self, key: ApiKey, q: dict) -> dict:
        """The oldest unread message matching the filters; if there is none, wait for one up to
        `timeout` seconds (default 30, at most 300). ack=true marks it read in the same call."""
        self._scoped_to(key, q)
        timeout = min(MAX_WAIT, max(0.0, float(_int(q.get("timeout"), 30, 0, int(MAX_WAIT), "timeout"))))
        filters = self._filters(q)
        since = _since(q.get("since"))
        deadline = self.clock() + timeout
        inbox = self._inbox()
        try:
            while True:
                rows = inbox.query(key.allow, **filters, since=since, unread=True, limit=1, oldest_first=True)
                if rows:
                    if q.get("ack") in ("1", "true", "yes"):
                        inbox.ack(rows[0].id)
                        rows = [inbox.get(rows[0].id)]
                    msg = self.message(rows[0])
                    if msg is not None:
                        return {"message": msg, "timedOut": False}
                if self.clock() >= deadline:
                    return {"message": None, "timedOut": True}
                self.sleep(POLL)
        finally:
            inbox.close()

    def stream(self, key: ApiKey, after: int | None, alive: Callable[[], bool],
               keepalive: float = 15.0) -> Iterator[bytes]:
        """Server-sent events: every new message for the key, as `email.received`, with its seq
        as the event id (a client resumes with Last-Event-ID); a comment line as keep-alive."""
        inbox = self._inbox()
        try:
            seq = inbox.last_seq() if after is None else after
            last_sent = self.clock()
            yield b"retry: 2000\n\n"
            while alive():
                rows = inbox.query(key.allow, after_seq=seq, oldest_first=True, limit=100)
                for row in rows:
                    seq = row.seq
                    msg = self.message(row)
                    if msg is not None:
                        yield (f"id: {row.seq}\nevent: email.received\ndata: "
                               f"{json.dumps(msg, ensure_ascii=False, separators=(',', ':'))}\n\n").encode()
                        last_sent = self.clock()
                if self.clock() - last_sent >= keepalive:
                    yield b": keep-alive\n\n"
                    last_sent = self.clock()
                self.sleep(POLL * 2)
        finally:
            inbox.close()
