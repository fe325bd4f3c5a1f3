"""Wake-ups from deliver to serve (agentmx/notify.py, agentmx/store/listener.py), over real sockets."""
from __future__ import annotations

import asyncio
import socket
import time

from agentmx.store.listener import Listener
from agentmx.notify import folder, ring


def test_a_ring_wakes_a_waiter_at_once_and_a_stale_socket_is_removed(tmp_path):
    folder(tmp_path).mkdir()
    stale = folder(tmp_path) / "serve-999999.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(stale))
    s.close()                                   # bound once, nobody listening now: a dead serve's

    async def main():
        listener = Listener(tmp_path, check=lambda: 0, fallback=60)
        await listener.start()
        try:
            generation = listener.generation
            asyncio.get_running_loop().call_later(0.2, lambda: ring(tmp_path))
            t0 = time.monotonic()
            assert await listener.wait(generation, 10) == generation + 1
            return time.monotonic() - t0
        finally:
            await listener.stop()
    took = asyncio.run(main())
    assert took < 1.0
    assert not stale.exists()
    assert list(folder(tmp_path).iterdir()) == []       # its own socket is gone with it


def test_without_rings_the_slow_check_still_wakes_waiters(tmp_path):
    value = {"seq": 1}

    async def main():
        listener = Listener(tmp_path, check=lambda: value["seq"], fallback=0.2)
        await listener.start()
        try:
            generation = listener.generation
            assert await listener.wait(generation, 0.5) == generation      # nothing new: no wake
            value["seq"] = 2
            assert await listener.wait(generation, 5) == generation + 1
        finally:
            await listener.stop()
    asyncio.run(main())


def test_ring_with_no_serve_is_silent(tmp_path):
    assert ring(tmp_path) == 0                  # no folder: nobody to tell, nothing raised
