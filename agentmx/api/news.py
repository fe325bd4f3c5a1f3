"""Who to wake when mail arrives: one reader of the inbox's new rows (and of the new send events:
what became of what the agents sent) for all open waits and event streams, waking only those a
new row may be for.

The listener (store/listener.py, store/pglisten.py) only says "something changed". When every open wait and
stream slept on it, every delivered message woke all of them and each queried the store: one
message cost serve one query and one wake-up per open waiter, for mail none of them was waiting
for (bench/longpoll, 1,000 waiters: ~120 ms of serve's CPU per message, 49-173 ms across runs,
on either backend). Now one task (the pump) sleeps on the listener, reads the rows after the
last one it read in one query, and wakes the waiters whose interest (their key's addresses and
domains, or their `to` filter) a row's address is in: a message costs one query plus the waiters
it is for.

Rows commit in seq order on both backends (SQLite has one writer; PostgreSQL takes seq under a
transaction-level lock, postgres_schema.py), so "seq > N" misses nothing, and rows never become
unread again: a new row is the only news a waiter can be waiting for. Whenever the pump cannot
know every new row (the store failed, or a flood larger than it reads at once), it starts again
from the store's last seq and wakes every waiter, which then queries as before: the shortcut only
ever skips a query that could not have found anything.

Send events (Store.list_send_events, their own seq) are a second feed read the same way: an event
wakes the waiters of its sending address (`fetch_sends`, `last_send_seq`; optional).

    news = InboxNews(listener, fetch, last_seq, run, fetch_sends, last_send_seq); await news.start()
    with news.watch(allow, to) as w:      registered BEFORE the waiter's first query
        w.event.clear(); <query>; await w.event.wait()     (clear before each query)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Iterator

from agentmx.store import StoreError
from agentmx.store.model import InboxRow, SendEvent

log = logging.getLogger("agentmx.serve")

PAGE = 500              # rows one read takes (the store's cap on inbox_query)
PAGES = 4               # reads per wake-up; more new rows than that: start again from last_seq
RETRY = 1.0             # the store failed: try again after this long (or at the next wake-up)


class Watch:
    """One waiter's interest: exact addresses and domains (lower case). `event` is set when a new
    row may be for it (or when the pump lost track)."""

    def __init__(self, addresses: tuple[str, ...], domains: tuple[str, ...]):
        self.addresses, self.domains = addresses, domains
        self.event = asyncio.Event()


class InboxNews:
    def __init__(self, listener, fetch: Callable[[int], list[InboxRow]], last_seq: Callable[[], int],
                 run: Callable[..., Awaitable], fetch_sends: Callable[[int], list[SendEvent]] | None = None,
                 last_send_seq: Callable[[], int] | None = None):
        self.listener = listener
        # (rows with seq > n in every key's scope, oldest first, at most PAGE; the last seq): the
        # inbox, then the send events when given
        self.feeds = [(fetch, last_seq)] + ([(fetch_sends, last_send_seq)] if fetch_sends and last_send_seq else [])
        self.run = run                  # a blocking call, off the event loop
        self.positions: list[int] | None = None     # every row of each feed up to it read (None: lost track)
        self.reads = 0                  # reads of the store (tests, bench)
        self._by_address: dict[str, set[Watch]] = {}
        self._by_domain: dict[str, set[Watch]] = {}
        self._all: set[Watch] = set()
        self._task: asyncio.Task | None = None

    @property
    def seq(self) -> int | None:
        """The inbox's position (None: lost track)."""
        return self.positions[0] if self.positions is not None else None

    @property
    def mark(self) -> tuple[int, ...] | None:
        """Every feed's position: it moves whenever a waiter may have news."""
        return tuple(self.positions) if self.positions is not None else None

    # --- the waiters' side --------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, allow: tuple[str, ...], to: str | None = None) -> Iterator[Watch]:
        """Registered while the block runs: for rows to `to` (a base address the key may read), or
        else to any address or domain of `allow` ("agent@x", "@x")."""
        allow = tuple(a.lower() for a in allow)
        if to:
            w = Watch((to.lower(),), ())
        else:
            w = Watch(tuple(a for a in allow if not a.startswith("@")), tuple(a[1:] for a in allow if a.startswith("@")))
        for a in w.addresses:
            self._by_address.setdefault(a, set()).add(w)
        for d in w.domains:
            self._by_domain.setdefault(d, set()).add(w)
        self._all.add(w)
        try:
            yield w
        finally:
            self._all.discard(w)
            for index, names in ((self._by_address, w.addresses), (self._by_domain, w.domains)):
                for name in names:
                    watchers = index.get(name)
                    if watchers is not None:
                        watchers.discard(w)
                        if not watchers:
                            del index[name]

    # --- the pump ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Before serving: where the rows start (a waiter's first query comes after it)."""
        generation = self.listener.generation         # before the read: news after it is read again
        await self._restart()
        self._task = asyncio.create_task(self._pump(generation))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pump(self, generation: int) -> None:
        while True:
            if self.positions is None:            # lost track: try again soon, whether or not news comes
                await self.listener.wait(generation, RETRY)
                await self._restart()
            elif await self.listener.wait(generation, 60.0) == generation:
                continue
            generation = self.listener.generation     # before the read: a later row moves it again
            if self.positions is not None:
                await self._read()

    async def _read(self) -> None:
        try:
            for i, (fetch, _) in enumerate(self.feeds):
                if not await self._read_feed(i, fetch):
                    await self._restart()         # a flood: skip to the end, everyone looks for itself
                    return
        except StoreError as exc:                 # the waiters' own queries answer 503 / end the stream
            log.debug("reading the inbox's new rows failed: %s", exc)
            self.positions = None
            self._wake_all()

    async def _read_feed(self, i: int, fetch) -> bool:
        """The feed's new rows, waking their waiters; False when there were more than PAGES reads."""
        for _ in range(PAGES):
            rows = await self.run(fetch, self.positions[i])
            self.reads += 1
            for row in rows:
                self.positions[i] = max(self.positions[i], row.seq)
                self._wake_for(row.address)
            if len(rows) < PAGE:
                return True
        return False

    async def _restart(self) -> None:
        """seq from the store; then every waiter queries (rows before it that the pump did not
        read may be theirs)."""
        try:
            positions = []
            for _, last in self.feeds:
                positions.append(await self.run(last))
                self.reads += 1
            self.positions = positions
        except StoreError as exc:
            log.debug("reading the inbox's last seq failed: %s", exc)
            self.positions = None
        self._wake_all()

    def _wake_for(self, address: str) -> None:
        address = address.lower()
        for w in self._by_address.get(address, ()):
            w.event.set()
        for w in self._by_domain.get(address.rpartition("@")[2], ()):
            w.event.set()

    def _wake_all(self) -> None:
        for w in self._all:
            w.event.set()
