"""What every route of `agentmx serve` shares: the config, the store, the inbox index (one SQLite
connection per worker thread), the notification listener, the stream slots, the send rate limiter,
and the thread pool that runs the blocking parts (SQLite, files, SMTP) off the event loop."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import anyio
from starlette.requests import Request

from agentmx import send
from agentmx.config import ApiKey, Config
from agentmx.inbox import Inbox
from agentmx.store import Store

from .errors import ApiError
from .listener import Listener
from .streams import StreamSlots


@dataclass
class Context:
    config: Config
    store: Store
    listener: Listener
    streams: StreamSlots
    limiter: send.RateLimiter
    clock: Callable[[], float] = time.time
    threads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(16))
    _local: threading.local = field(default_factory=threading.local)

    @classmethod
    def for_config(cls, config: Config) -> "Context":
        ctx = cls(config=config, store=Store(config.data_dir),
                  listener=Listener(config.data_dir, check=lambda: 0),
                  streams=StreamSlots(config.limits.max_streams_per_key, config.limits.max_streams),
                  limiter=send.RateLimiter(config.send.per_correspondent_per_hour, config.send.per_thread_per_hour))
        ctx.listener.check = lambda: ctx.inbox().last_seq()
        return ctx

    def inbox(self) -> Inbox:
        """This thread's reader of the inbox index (readers never create the file: deliver does)."""
        inbox = getattr(self._local, "inbox", None)
        if inbox is None:
            inbox = self._local.inbox = Inbox(self.config.data_dir, self.clock, create=False)
        return inbox

    async def run(self, fn, *args, **kw):
        """A blocking call, in the thread pool."""
        return await anyio.to_thread.run_sync(partial(fn, *args, **kw), limiter=self.threads)

    def key(self, request: Request) -> ApiKey:
        try:
            return send.authorize(self.config, request.headers.get("authorization"))
        except send.SendError as exc:
            raise ApiError.from_send(exc) from None
