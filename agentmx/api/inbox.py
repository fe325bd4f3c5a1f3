"""The inbox API: what pull-mode agents (and any agent) read.

    GET  /v1/messages?to=&from=&subject=&since=&unread=&limit=&cursor=   newest first, paginated
    GET  /v1/messages/wait?to=&from=&subject=&timeout=&ack=              long-poll: the oldest unread match
    GET  /v1/messages/{id}                                               one message
    POST /v1/messages/{id}/ack                                           mark it read
    GET  /v1/threads/{threadId}                                          a conversation, oldest first
    GET  /v1/events?name=&email=&kind=&limit=&cursor=                    recent events, newest first (JSON)
    GET  /v1/events  (Accept: text/event-stream)                         server-sent events, as they arrive

/v1/events and its stream carry both kinds of event a key may read: email.received (the inbox)
and the send events of its addresses (email.sent, email.delivered, email.delayed, email.bounced,
email.complained: what became of what it sent, agentmx/sendevents.py). Each kind has its own seq
in the store; a cursor or a stream's event id is the pair "<inbox seq>.<send event seq>", opaque
to the client, so that a page or a resumed stream misses and repeats nothing of either kind. The
two are merged by time (merge(), below).

Every request carries an API key (Authorization: Bearer ...); a key sees the messages whose
recipient its `allow` list names (addresses or @domains), as for sending. Each message is the
stored `email.received` event with one more member, `inbox`: {state, read, receivedAt}. The
body of a message is untrusted input, as in the webhook.

A wait and an event stream hold no thread: they sleep until the news (news.py: one reader of the
new rows for all of them, woken by the notification listener that deliver rings) says a row for
their key (or their `to`) has arrived, then query the index; they end as soon as the client goes.
A message costs serve one read plus the waiters it is for, not a query per open waiter. With
ack=true a wait claims its message in one statement, so two waiters never get the same one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from functools import partial
from datetime import datetime
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from agentmx.config import ApiKey
from agentmx.store import StoreError
from agentmx.store.model import InboxRow, SendEvent, SendEventType, base_address
from agentmx.times import rfc3339

from . import timeline
from .context import Context, last_send_seq
from .errors import ApiError

log = logging.getLogger("agentmx.serve")

MAX_WAIT = 300
RECEIVED = "email.received"
# Every event type agentmx emits (DESIGN.md, "Events"): GET /v1/events/names (mailkite.py).
EVENT_NAMES = (RECEIVED, "email.sent", "email.delivered", "email.delayed", "email.bounced", "email.complained")
SEND_TYPES = {t.value: t for t in SendEventType}
KEEPALIVE = 15.0
TRUE = ("1", "true", "yes")
SCAN = 4                # pages of 500 send events looked through for an `email` filter's recipient
_POSITION = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,18}))?")


def position(value: str | None, name: str = "cursor") -> tuple[int | None, int | None]:
    """A cursor or stream position, "<inbox seq>.<send event seq>" (a plain number: an inbox seq, as
    before send events were listed); (None, None) when absent."""
    if not value:
        return None, None
    m = _POSITION.fullmatch(value)
    if m is None:
        raise ApiError(400, f"bad_{name}", f"{name} is a value an earlier answer gave")
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def merge(rows: list, sends: list, newest_first: bool, rows_full: bool = False, sends_full: bool = False) -> list:
    """Inbox rows and send events (each in its own seq order) in one list by time, taking a prefix
    of each (so that a cursor per kind misses nothing). A kind `_full` (more of it may follow what
    was read) ends the merge when it runs out: what comes after it is not known yet."""
    out, i, j = [], 0, 0
    while i < len(rows) or j < len(sends):
        if i == len(rows):
            if rows_full:
                break
            take_row = False
        elif j == len(sends):
            if sends_full:
                break
            take_row = True
        else:
            r, e = rows[i].received, sends[j].at
            take_row = r >= e if newest_first else r <= e
        if take_row:
            out.append(rows[i])
            i += 1
        else:
            out.append(sends[j])
            j += 1
    return out



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


def _filters(q) -> dict:
    if q.get("to") and "@" not in q["to"]:
        raise ApiError(400, "bad_to", "to is an address")
    return {"to": q.get("to") or None, "sender": q.get("from") or None, "subject": q.get("subject") or None}


def _scoped_to(key: ApiKey, q) -> None:
    if q.get("to") and not key.may_send_as(base_address(q["to"])):
        raise ApiError(403, "forbidden_address", "this key may not read mail sent to that address")


async def until_disconnected(request: Request) -> None:
    """Returns when the client has gone (the ASGI server says http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class InboxRoutes:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._running: dict[tuple, asyncio.Future] = {}

    async def _shared(self, shape: tuple, fn, *args):
        """fn(*args) in the thread pool, or the answer of the same query already running since the
        news last moved: when a message for many waiters of one key arrives they all wake at once,
        and one query answers them. Safe because that query started after every row the news had
        read was committed, and a row after those wakes them again (news.py). Only while it runs:
        a finished answer may be stale (an ack since)."""
        mark = self.ctx.news.mark
        if mark is None:
            return await self.ctx.run(fn, *args)
        k = (mark, *shape)
        running = self._running.get(k)
        if running is None:
            running = self._running[k] = asyncio.ensure_future(self.ctx.run(fn, *args))
            running.add_done_callback(lambda f: self._running.pop(k, None) if self._running.get(k) is f else None)
        return await asyncio.shield(running)

    # --- sync parts, run in the thread pool -----------------------------------------------------

    def message(self, row: InboxRow) -> dict | None:
        raw = self.ctx.store.get_event(row.id)
        if raw is None:                       # removed by retention (agentmx gc)
            return None
        event = json.loads(raw)
        event["inbox"] = {"state": row.state.value, "read": row.read, "receivedAt": rfc3339(row.received)}
        return event

    def _row(self, key: ApiKey, event_id: str) -> InboxRow:
        row = self.ctx.store.inbox_row(event_id)
        if row is None or not key.may_send_as(base_address(row.recipient)):
            raise ApiError(404, "unknown_message", f"no message {event_id} for this key")
        return row

    def _list(self, key: ApiKey, q) -> dict:
        limit = _int(q.get("limit"), 20, 1, 100, "limit")
        cursor = _int(q.get("cursor"), 0, 0, 2**62, "cursor") or None
        rows = self.ctx.store.inbox_query(key.allow, **_filters(q), since=_since(q.get("since")),
                                          unread=q.get("unread") in TRUE, before_seq=cursor, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        messages = [m for m in (self.message(r) for r in rows) if m is not None]
        return {"messages": messages, "nextCursor": str(rows[-1].seq) if more and rows else None}

    def _get(self, key: ApiKey, event_id: str) -> dict:
        msg = self.message(self._row(key, event_id))
        if msg is None:
            raise ApiError(410, "gone", "the message was removed by retention")
        return msg

    def _ack(self, key: ApiKey, event_id: str) -> dict:
        self._row(key, event_id)
        self.ctx.store.ack(event_id)
        return {"id": event_id, "read": True}

    def _thread(self, key: ApiKey, thread_id: str) -> dict:
        rows = self.ctx.store.inbox_query(key.allow, thread_id=thread_id, oldest_first=True, limit=500)
        if not rows:
            raise ApiError(404, "unknown_thread", f"no thread {thread_id} for this key")
        return {"threadId": thread_id, "messages": [m for m in (self.message(r) for r in rows) if m]}

    def _first_unread(self, key: ApiKey, filters: dict, since: float | None, ack: bool) -> dict | None:
        store = self.ctx.store
        for _ in range(20):                   # another waiter may claim the row first: take the next
            rows = store.inbox_query(key.allow, **filters, since=since, unread=True, limit=1, oldest_first=True)
            if not rows:
                return None
            row = rows[0]
            if ack:
                if not store.claim(row.id):
                    continue
                row = store.inbox_row(row.id) or row
            msg = self.message(row)
            if msg is not None:
                return msg
            if not ack:                       # removed by retention under an unread row: skip it
                store.ack(row.id)
        return None

    def _after(self, key: ApiKey, seq: int, send_seq: int) -> tuple[list[tuple[int, int, str, dict | None]], bool]:
        """What a stream at (seq, send_seq) has not sent yet, oldest first: (the position after each
        item, its event name, its data: None for a message removed by retention); and whether more
        may follow at once (a read came back full)."""
        rows = self.ctx.store.inbox_query(key.allow, after_seq=seq, oldest_first=True, limit=100)
        sends = self.ctx.store.list_send_events(key.allow, after_seq=send_seq, oldest_first=True, limit=100)
        out, full = [], (len(rows) == 100, len(sends) == 100)
        for item in merge(rows, sends, False, *full):
            if isinstance(item, SendEvent):
                send_seq = item.seq
                out.append((seq, send_seq, item.type.value, timeline.data(item)))
            else:
                seq = item.seq
                out.append((seq, send_seq, RECEIVED, self.message(item)))
        return out, any(full)

    # --- what a request does for a key: the routes below, and MCP's tools in process (mcp.py) ------

    async def events_for(self, key: ApiKey, q) -> dict:
        return await self.ctx.run(self._events, key, q)

    async def list_for(self, key: ApiKey, q) -> dict:
        _scoped_to(key, q)
        return await self.ctx.run(self._list, key, q)

    async def get_for(self, key: ApiKey, event_id: str) -> dict:
        return await self.ctx.run(self._get, key, event_id)

    async def ack_for(self, key: ApiKey, event_id: str) -> dict:
        return await self.ctx.run(self._ack, key, event_id)

    async def wait_for(self, key: ApiKey, q, gone: asyncio.Future | None = None) -> dict:
        """The oldest unread message matching the filters; if there is none, wait for one up to
        `timeout` seconds (default 30, at most 300). ack=true marks it read in the same call.
        `gone` ends the wait early (the client went). {"message": ..., "timedOut": ...}"""
        _scoped_to(key, q)
        timeout = _int(q.get("timeout"), 30, 0, MAX_WAIT, "timeout")
        filters, since, ack = _filters(q), _since(q.get("since")), q.get("ack") in TRUE
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        to = base_address(filters["to"]) if filters["to"] else None
        gone = gone or loop.create_future()
        with self.ctx.streams.slot(key.name), self.ctx.news.watch(key.allow, to) as news:
            while True:
                news.event.clear()            # before the query: a row after it sets it again
                if ack:                       # a claim is each waiter's own
                    msg = await self.ctx.run(self._first_unread, key, filters, since, ack)
                else:
                    msg = await self._shared(("wait", key.allow, *filters.values(), since),
                                             self._first_unread, key, filters, since, ack)
                if msg is not None:
                    return {"message": msg, "timedOut": False}
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return {"message": None, "timedOut": True}
                woken = asyncio.create_task(news.event.wait())
                done, _ = await asyncio.wait({woken, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if woken not in done:
                    woken.cancel()
                if gone in done or not done:  # nobody reads it, or the time is up
                    return {"message": None, "timedOut": True}

    # --- the routes -------------------------------------------------------------------------------

    async def list(self, request: Request):
        return JSONResponse(await self.list_for(self.ctx.key(request), request.query_params))

    async def get(self, request: Request):
        return JSONResponse(await self.get_for(self.ctx.key(request), request.path_params["id"]))

    async def ack(self, request: Request):
        return JSONResponse(await self.ack_for(self.ctx.key(request), request.path_params["id"]))

    async def thread(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.ctx.run(self._thread, key, request.path_params["thread_id"]))

    async def wait(self, request: Request):
        key = self.ctx.key(request)
        gone = asyncio.create_task(until_disconnected(request))
        try:
            return JSONResponse(await self.wait_for(key, request.query_params, gone))
        finally:
            gone.cancel()

    def _received(self, key: ApiKey, before: int | None, limit: int, email: str | None) -> list[InboxRow]:
        query = partial(self.ctx.store.inbox_query, key.allow, before_seq=before, limit=limit)
        if email is None:
            return query()
        rows = query(sender=email)            # from it, or to it (when this key may read its mail)
        if key.may_send_as(base_address(email)):
            rows += query(to=email)
        return sorted({r.seq: r for r in rows}.values(), key=lambda r: r.seq, reverse=True)[:limit]

    def _sent(self, key: ApiKey, types: tuple[SendEventType, ...], before: int | None, limit: int,
              email: str | None) -> list[SendEvent]:
        """The key's send events, newest first; with `email`, those from it (one of the key's
        addresses) or to it (looked for among the newest SCAN * 500 before `before`)."""
        query = partial(self.ctx.store.list_send_events, types=types, limit=limit)
        if email is None:
            return query(key.allow, before_seq=before)
        found = query((base_address(email),), before_seq=before) if key.may_send_as(base_address(email)) else []
        cursor = before
        for _ in range(SCAN):
            page = self.ctx.store.list_send_events(key.allow, types=types, before_seq=cursor, limit=500)
            found += [e for e in page if e.recipient == email or
                      (not e.recipient and email in (r.lower() for r in timeline.data(e).get("recipients") or ()))]
            if len(page) < 500:
                break
            cursor = page[-1].seq
        return sorted({e.seq: e for e in found}.values(), key=lambda e: e.seq, reverse=True)[:limit]

    def _events(self, key: ApiKey, q) -> dict:
        """MailKite's listEvents: the key's events newest first, received and sent alike, `name` (an
        event type) and `email` (an address it concerns: the sender or the recipient) as filters;
        `cursor` the nextCursor of the page before (one position per kind: see the module's doc)."""
        limit = _int(q.get("limit"), 20, 1, 100, "limit")
        before_row, before_send = position(q.get("cursor"))
        name, email = q.get("name") or None, (q.get("email") or "").strip().lower() or None
        if email and "@" not in email:
            raise ApiError(400, "bad_email", "email is an address")
        kind = q.get("kind") or None          # ours: "received" (the inbox) or "sent" (send events) alone
        if kind not in (None, "received", "sent"):
            raise ApiError(400, "bad_kind", 'kind is "received" or "sent"')
        if name not in (None, *EVENT_NAMES):
            return {"events": [], "nextCursor": None}
        # 0: that kind is done (nothing older is left, or the filter leaves none)
        rows = (self._received(key, before_row, limit + 1, email)
                if name in (None, RECEIVED) and kind != "sent" and before_row != 0 else [])
        types = (SEND_TYPES[name],) if name in SEND_TYPES else ()
        sends = (self._sent(key, types, before_send, limit + 1, email)
                 if name != RECEIVED and kind != "received" and before_send != 0 else [])
        page = merge(rows, sends, newest_first=True)[:limit]
        events = []
        for item in page:
            if isinstance(item, SendEvent):
                events.append(timeline.listed(item))
            elif (m := self.message(item)) is not None:
                events.append({"id": m["id"], "name": RECEIVED, "email": item.sender, "recipient": item.recipient,
                               "createdAt": m["inbox"]["receivedAt"], "data": m})
        if len(rows) + len(sends) <= limit:
            return {"events": events, "nextCursor": None}

        def bound(kind: type, fetched: list) -> int:
            taken = [x.seq for x in page if isinstance(x, kind)]
            if taken:
                return taken[-1]
            return fetched[0].seq + 1 if fetched else 0      # none taken: from its newest read (no newer)
        return {"events": events, "nextCursor": f"{bound(InboxRow, rows)}.{bound(SendEvent, sends)}"}

    async def events(self, request: Request):
        """GET /v1/events: server-sent events for Accept: text/event-stream (stream_for); else
        the recent events as JSON (MailKite's listEvents, which must not hang on a stream)."""
        key = self.ctx.key(request)
        if "text/event-stream" in request.headers.get("accept", ""):
            last = request.headers.get("last-event-id") or request.query_params.get("after")
            return await self.stream_for(key, last)
        return JSONResponse(await self.events_for(key, request.query_params))

    async def stream_for(self, key: ApiKey, last: str | None, slot: str | None = None):
        """Server-sent events: every new message for the key, as `email.received`, and every new
        send event of its addresses, under its type, with the stream's position after it as the
        event id (a client resumes with Last-Event-ID, `last`); a comment line as keep-alive.
        `slot`: whose stream slots it counts against (default the key's; the console's own
        "console:<key>", so that a person's open tabs never take the agent's)."""
        slot = slot or key.name
        try:
            after, after_send = position(last)
        except ApiError:                      # not ours: from now on, as without one
            after, after_send = None, None
        self.ctx.streams.acquire(slot)        # first: a client over its cap costs no query
        released = False
        if after is None:                     # before the answer starts: a store down is still a 503
            try:
                after = await self.ctx.run(self.ctx.store.last_seq)
                after_send = await self.ctx.run(last_send_seq, self.ctx.store, key.allow)
            except BaseException:
                self.ctx.streams.release(slot)
                raise

        def release():
            nonlocal released
            if not released:
                released = True
                self.ctx.streams.release(slot)

        async def stream() -> AsyncIterator[bytes]:
            seq, send_seq = after, after_send
            try:
                # Where it starts, as an event id: a client that sees no message before the stream
                # ends (the store down) resumes from here with Last-Event-ID, not from the newest
                # message at its next connect, which would skip what came in between.
                # (an id from before send events were streamed, a plain inbox seq, is given back as it
                # came: the send events start where they are at the first read)
                yield f"retry: 2000\nid: {seq}{'' if send_seq is None else f'.{send_seq}'}\n\n".encode()
                with self.ctx.news.watch(key.allow) as news:
                    if send_seq is None:
                        send_seq = await self.ctx.run(last_send_seq, self.ctx.store, key.allow)
                    while True:
                        news.event.clear()        # before the query: a row after it sets it again
                        items, more = await self._shared(("after", key.allow, seq, send_seq), self._after, key,
                                                         seq, send_seq)
                        for seq, send_seq, name, data in items:
                            if data is not None:
                                yield (f"id: {seq}.{send_seq}\nevent: {name}\ndata: "
                                       f"{json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n").encode()
                        if more:                  # a full read: the rest at once, not at the next wake-up
                            continue
                        while True:               # asleep, a keep-alive now and then, until a row may be ours
                            try:
                                await asyncio.wait_for(news.event.wait(), KEEPALIVE)
                                break
                            except asyncio.TimeoutError:
                                yield b": keep-alive\n\n"
            except StoreError as exc:         # the client reconnects (retry:) and resumes from its Last-Event-ID
                log.warning("event stream for %s ended: %s", key.name, exc)
            finally:
                release()

        return _EventStream(stream(), release, headers={   # exactly text/event-stream: no charset added
            "content-type": "text/event-stream", "cache-control": "no-store", "x-accel-buffering": "no"})


class _EventStream(StreamingResponse):
    """A streaming response that gives its stream slot back however it ends (a generator that
    never started never runs its own `finally`)."""

    def __init__(self, content, release, **kw):
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
