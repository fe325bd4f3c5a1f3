"""serve's part in the block list: with the postgres backend (several MX hosts), every
blocklist.REFRESH seconds on every host, the store's blocks (block-sender answers) are written
to <data_dir>/blocks.json for the milter, which cannot open the store itself (it reads none of
the application's secrets: no PostgreSQL password). A block added on another MX host sharing the
store reaches this host's milter within REFRESH. With the embedded backend (one host) there is
nothing to refresh: deliver writes the file when it adds a block, on the only host there is."""
from __future__ import annotations

import asyncio
import logging

from agentmx import blocklist
from agentmx.config import StoreBackend
from agentmx.deliver.control import publish
from agentmx.store import StoreError

from .context import Context

log = logging.getLogger("agentmx.api.blocks")


async def refresh(ctx: Context, stop: asyncio.Event, every: float | None = None) -> None:
    """Publish now and then every `every` (blocklist.REFRESH) seconds until `stop` is set; a
    failure is logged and tried again. Stopped by the event, not cancelled: a publish runs in a
    thread, which must be done before serve closes the store under it."""
    if ctx.config.store.backend is StoreBackend.EMBEDDED:
        return
    while not stop.is_set():
        try:
            if await ctx.run(publish, ctx.store, ctx.config.data_dir):
                log.info("block list written (%s)", blocklist.path_in(ctx.config.data_dir))
        except (StoreError, OSError) as exc:
            log.warning("block list not written: %s", exc)
        except Exception:                  # a bug here must not end the refresh for good
            log.exception("block list not written")
        try:
            await asyncio.wait_for(stop.wait(), every or blocklist.REFRESH)
        except asyncio.TimeoutError:
            pass
