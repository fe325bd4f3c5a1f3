"""serve's wake-ups on the postgres backend: LISTEN on a connection of its own, so a message
stored by deliver on any host (put_event's NOTIFY, sent at commit) wakes the waiters here at
once. The slow check of agentmx/store/listener.py stays as the fallback (a notification missed
while the connection was down), and the generation also moves when the connection comes back.

    listener = store.listener(); await listener.start(); gen = listener.generation
    await listener.wait(gen, timeout)       -> the new generation, or the same on timeout
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import psycopg

from .listener import Listener, cancel

log = logging.getLogger("agentmx.notify")

CHANNEL = "agentmx_inbox"
START_WAIT = 5.0


class PgListener(Listener):
    def __init__(self, url: str, kwargs: dict, check: Callable[[], int], fallback: float = 3.0,
                 retry: float = 1.0):
        super().__init__(Path("."), check, fallback)        # no data_dir: no datagram socket
        self._url = url
        self._kwargs = dict(kwargs)
        self._retry = retry
        self._listen_task: asyncio.Task | None = None
        self.listening = asyncio.Event()                     # set while LISTEN is in force (tests)

    async def start(self) -> None:
        try:
            self._last_check = await asyncio.to_thread(self.check)
        except Exception as exc:                  # the store is down: the fallback's first tick takes it
            log.debug("notification check failed: %s", exc)
        self._task = asyncio.create_task(self._fallback_loop())
        self._listen_task = asyncio.create_task(self._listen_loop())
        # A waiter that starts right after start() must not miss a NOTIFY sent before LISTEN was in
        # force: wait for it (briefly; a database that is down leaves the fallback check to it).
        try:
            await asyncio.wait_for(self.listening.wait(), START_WAIT)
        except asyncio.TimeoutError:
            log.warning("inbox notifications not listening after %gs; the check every %gs goes on",
                        START_WAIT, self.fallback)

    async def stop(self) -> None:
        await cancel(self._listen_task)
        await super().stop()

    async def _listen_loop(self) -> None:
        delay, first = self._retry, True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, **self._kwargs)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if not first:
                        self.bump()               # whatever was stored while we were not listening
                        log.info("listening for inbox notifications again")
                    first, delay = False, self._retry
                    async for _ in conn.notifies():
                        self.bump()
            except psycopg.Error as exc:
                if self.listening.is_set() or first:
                    log.warning("inbox notifications: %s; the check every %gs goes on, reconnecting",
                                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                                self.fallback)
                first = False
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
