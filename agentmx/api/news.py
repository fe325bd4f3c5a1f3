"""What arrived in the inbox, read once per wake-up for every open wait and event stream.

The listener (listener.py, pglisten.py) only says "something changed": every delivered message
wakes every waiter. If each of them then queried the store, one message would cost serve one
query per open waiter (measured with 1,000 waiters: 50 ms of serve's CPU per message on the
embedded backend, 148 ms on postgres, for mail none of them was waiting for; bench/longpoll).
Instead the first waiter to wake reads the new inbox rows (seq > the last one read) in one query
for all of them; each waiter then looks at their addresses in memory and queries the store only
when one of them is in its key's scope (and its `to` filter).

Rows commit in seq order on both backends (SQLite has one writer; PostgreSQL takes seq under a
transaction-level lock, postgres_schema.py), so "seq > N" misses nothing, and rows never become
unread again: a new row is the only news a waiter can be waiting for. Whenever the rows since a
waiter's last look are not all known here (the first read, a read that failed, more rows than
one read takes, or older than the window kept), the answer is "unknown" and the waiter queries
as before: the shortcut only ever skips a query that could not have found anything.

    news = InboxNews(listener, fetch, last_seq, run)     fetch(after_seq) -> rows, oldest first
    seen = await news.mark()                             before a waiter's first query
    arrived, seen2 = await news.since(seen)              after a wake: addresses, or None: query
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from agentmx.store import StoreError
from agentmx.store.model import InboxRow

log = logging.getLogger("agentmx.serve")

PAGE = 500              # rows one read takes (the store's cap on inbox_query)
PAGES = 4               # reads per wake-up before giving up on knowing every row ("unknown")
KEEP = 4096             # rows remembered: a waiter further behind than this queries


class InboxNews:
    def __init__(self, listener, fetch: Callable[[int], list[InboxRow]], last_seq: Callable[[], int],
                 run: Callable[..., Awaitable], keep: int = KEEP):
        self.listener = listener
        self.fetch = fetch              # rows with seq > n for every key's scope, oldest first, at most PAGE
        self.last_seq = last_seq
        self.run = run                  # a blocking call, off the event loop
        self.seq: int | None = None     # every row up to it has been read (None: nothing known yet)
        self._floor: int | None = None  # ... and every row after it is in _rows
        self._rows: deque[tuple[int, str]] = deque(maxlen=keep)
        self._generation: int | None = None
        self._lock = asyncio.Lock()

    async def mark(self) -> int | None:
        """Where a new waiter starts: taken BEFORE its first query, so that every row that query
        may not have seen is after it."""
        await self._refresh()
        return self.seq

    async def since(self, seen: int | None) -> tuple[list[str] | None, int | None]:
        """The addresses of the rows after `seen` (None: not known, query the store) and the seq
        they go up to, read at least up to the listener's current generation."""
        await self._refresh()
        if seen is None or self.seq is None or self._floor is None or seen < self._floor:
            return None, self.seq
        return [address for seq, address in self._rows if seq > seen], self.seq

    async def _refresh(self) -> None:
        if self._generation == self.listener.generation:
            return
        async with self._lock:
            generation = self.listener.generation      # before the read: a later row moves it again
            if self._generation == generation:
                return
            try:
                if self.seq is None:
                    self.seq = self._floor = await self.run(self.last_seq)
                else:
                    for _ in range(PAGES):
                        rows = await self.run(self.fetch, self.seq)
                        for row in rows:
                            if len(self._rows) == self._rows.maxlen:
                                self._floor = self._rows[0][0]     # the oldest one is forgotten
                            self._rows.append((row.seq, row.address))
                            self.seq = max(self.seq, row.seq)
                        if len(rows) < PAGE:
                            break
                    else:                                  # a flood: waiters behind it query
                        self._floor = self.seq
                self._generation = generation
            except StoreError as exc:                      # the waiters' own queries say 503 / end the stream
                log.debug("reading the inbox's news failed: %s", exc)
                self.seq = self._floor = self._generation = None     # start again from last_seq
                self._rows.clear()
