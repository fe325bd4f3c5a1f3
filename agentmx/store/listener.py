"""serve's side of the wake-ups (agentmx/notify.py): a generation counter that grows when deliver
rings, or when a slow check of the inbox (one query every few seconds, for a lost datagram) moves.

    listener = Listener(data_dir, check)    check() -> a number that grows with news
    await listener.start(); gen = listener.generation
    await listener.wait(gen, timeout)       -> the new generation, or the same on timeout
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Callable

from agentmx.notify import folder, remove_stale
from agentmx.ownership import hand_over, refuse_links

log = logging.getLogger("agentmx.notify")


class Listener:
    """serve's side: a generation counter that grows when deliver rings or `check()` moves."""

    def __init__(self, data_dir: Path, check: Callable[[], int], fallback: float = 3.0):
        self.data_dir = Path(data_dir)
        self.check = check              # e.g. the inbox's last sequence number (run in a thread)
        self.fallback = fallback
        self.generation = 0
        self._event = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task | None = None
        self._path: Path | None = None
        self._last_check: int | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        d = folder(self.data_dir)
        try:
            refuse_links(d)                          # never led out of the data directory
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
            hand_over(d, self.data_dir)
            self._path = d / f"serve-{os.getpid()}.sock"
            remove_stale(str(self._path))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self._path))
            os.chmod(self._path, 0o660)            # deliver (the same user, or its group) may write
            hand_over(self._path, self.data_dir)
            self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self.bump), sock=sock)
        except OSError as exc:
            # Not fatal: waiters are still woken by the fallback check, only later.
            log.warning("cannot listen for inbox notifications in %s (%s); checking every %gs instead",
                        d, exc.strerror, self.fallback)
            self._path = None
        try:
            self._last_check = await asyncio.to_thread(self.check)
        except Exception as exc:                 # the first tick takes it, then
            log.debug("notification check failed: %s", exc)
        self._task = asyncio.create_task(self._fallback_loop())

    async def stop(self) -> None:
        await cancel(self._task)
        if self._transport:
            self._transport.close()
        if self._path:
            remove_stale(str(self._path))

    def bump(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, generation: int, timeout: float) -> int:
        """Until the generation moves past `generation`, or `timeout` seconds."""
        if self.generation != generation:
            return self.generation
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.generation

    async def _fallback_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fallback)
            try:
                value = await asyncio.to_thread(self.check)
            except Exception as exc:             # a store hiccup: try again at the next tick
                log.debug("notification fallback check failed: %s", exc)
                continue
            if value != self._last_check:
                self.bump()
            self._last_check = value


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, bump: Callable[[], None]):
        self.bump = bump

    def datagram_received(self, data: bytes, addr) -> None:
        self.bump()


async def cancel(task: asyncio.Task | None) -> None:
    """Stop a task of ours and wait until it has."""
    if task:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
