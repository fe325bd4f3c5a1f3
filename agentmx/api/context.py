"""What every route of `agentmx serve` shares: the config, the store (one for the app: the
embedded backend keeps one connection per worker thread), its wake-up listener and the news
(news.py: one reader of the new inbox rows, waking only the waiters a row is for), the stream
slots, and the thread pool that runs the blocking parts (the store, SMTP) off the event loop."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import anyio
from starlette.requests import Request

from agentmx import send
from agentmx.config import ApiKey, Config
from agentmx.resolver import Resolver
from agentmx.store import Store, open_store

from .errors import ApiError
from .news import PAGE, InboxNews
from .streams import StreamSlots


# PostgreSQL connections serve's threads share (docs/operator.md); the embedded backend ignores it.
# One connection behind a lock made every request wait for the one before it: with PostgreSQL
# silent, the Nth waited out N connect timeouts.
POOL_SIZE = 4


def last_send_seq(store: Store, scope: tuple[str, ...]) -> int:
    """The newest send event's seq among `scope`'s (0: none): where a reader of new ones starts."""
    newest = store.list_send_events(scope, limit=1)
    return newest[0].seq if newest else 0


@dataclass
class Context:
    config: Config
    store: Store
    listener: object                  # store.listener(): start(), stop(), wait(generation, timeout), .generation
    streams: StreamSlots
    clock: Callable[[], float] = time.time
    threads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(16))
    news: InboxNews | None = None
    resolver: object = None           # agentmx.resolver.Resolver ([dns] servers): attachment URLs (fetch.py)
    submit: Callable = send.submit    # the send path's way to Postfix (sendpath.Outbox; a test gives its own)

    def __post_init__(self):
        if self.resolver is None:
            self.resolver = Resolver.from_config(self.config.dns)
        if self.news is None:
            scope = tuple(dict.fromkeys(a for key in self.config.api_keys for a in key.allow))   # every key's

            def fetch(after: int):
                return self.store.inbox_query(scope, after_seq=after, oldest_first=True, limit=PAGE)

            def fetch_sends(after: int):      # send events: what became of what the agents sent
                return self.store.list_send_events(scope, after_seq=after, oldest_first=True, limit=PAGE)
            self.news = InboxNews(self.listener, fetch, self.store.last_seq, self.run, fetch_sends,
                                  partial(last_send_seq, self.store, scope))

    @classmethod
    def for_config(cls, config: Config, clock: Callable[[], float] = time.time) -> "Context":
        store = open_store(config, clock, pool_size=POOL_SIZE)
        return cls(config=config, store=store, listener=store.listener(),
                   streams=StreamSlots(config.limits.max_streams_per_key, config.limits.max_streams), clock=clock)

    async def idle(self, timeout: float) -> bool:
        """Wait until no blocking call runs in the thread pool (at most `timeout` seconds): the
        store is closed only then. Closing an SQLite connection another thread is running a
        statement on crashes the process (seen: serve stopping while an event stream's query ran)."""
        deadline = time.monotonic() + timeout
        while self.threads.borrowed_tokens:
            if time.monotonic() > deadline:
                return False
            await anyio.sleep(0.01)
        return True

    async def run(self, fn, *args, **kw):
        """A blocking call, in the thread pool."""
        return await anyio.to_thread.run_sync(partial(fn, *args, **kw), limiter=self.threads)

    def key(self, request: Request) -> ApiKey:
        try:
            return send.authorize(self.config, request.headers.get("authorization"))
        except send.SendError as exc:
            raise ApiError.from_send(exc) from None
