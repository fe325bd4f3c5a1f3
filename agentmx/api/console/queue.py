"""GET /console/queue: what waits in Postfix's queue for agentmx's routes, as far as the viewer
may read it: each entry's queue id, queue, arrival, sender and its recipients that are the
viewer's routed addresses (other recipients of the same message are not shown), with Postfix's
delay reason.

serve runs `postqueue -j` ([server] postfix_config as -c, else Postfix's default) in the thread
pool, bounded in time and output (ops.read_queue), at most RUNNING at once. postqueue talks to
Postfix's public showq service, which serve's user may use (systemd/agentmx-serve.service gives it
the group postdrop). When postqueue cannot run (Postfix absent, not allowed, no answer) the page
says so, with 200: the rest of the console works without Postfix."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.routing import Route

from agentmx import ops
from agentmx.store.model import base_address

from ..guard import printable
from ..errors import ApiError
from . import session
from .core import Console

RUNNING = 2                 # postqueue processes one serve runs at once for the console
SHOWN = 500                 # entries a page shows (the rest are counted)


def routes(console: Console) -> list[Route]:
    ctx = console.ctx
    slots = asyncio.Semaphore(RUNNING)

    def read(viewer: session.Viewer) -> tuple[list[dict], ops.QueueRead]:
        got = ops.read_queue(ctx.config.postfix_config)
        mine = ops.queued_for(ctx.config, got.items, lambda a: viewer.key.may_send_as(base_address(a)))
        return mine, got

    async def show(request: Request, viewer: session.Viewer):
        if slots.locked():      # refused at once: a request waiting here would hold one of serve's request slots
            raise ApiError(503, "busy", "the queue is being read for other pages: try again in a few seconds",
                           retry_after=5)
        async with slots:
            entries, got = await ctx.run(read, viewer)
        more = max(0, len(entries) - SHOWN)
        entries = entries[:SHOWN]                # what the page shows, and only that, made printable
        for e in entries:                        # Postfix's words, from mail of strangers: one line, bounded
            e["sender"] = printable(e["sender"], 300)
            for r in e["recipients"]:
                r["address"], r["delay_reason"] = printable(r["address"], 300), printable(r["delay_reason"], 500)
        return console.render(request, viewer, "queue.html", title="Queue", entries=entries,
                              more=more, error=got.error, truncated=got.truncated)

    return [Route("/queue", console.page(show))]
