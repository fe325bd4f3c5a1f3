"""GET /console/blocks: senders refused at RCPT (and kept aside by deliver) for the routes the
viewer may read, with a form to block one and a button per row to lift it. POST /console/blocks
and /console/blocks/remove are POST and DELETE /v1/blocks' own functions (../blocklist_api.py:
BlockRoutes): the same scope rule (a readable route, or the route of the viewer's address), the
same validation (config.block_sender) and limit (MAX_BLOCKS per scope), the config's blocks not
lifted here, and blocks.json written for the milter at once."""
from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from ..blocklist_api import BlockRoutes
from ..deliveries import readable_routes
from . import notice, session
from .core import Console
from .notice import back

PAGE = 100


def routes(console: Console) -> list[Route]:
    ctx = console.ctx
    api = BlockRoutes(ctx)

    async def show(request: Request, viewer: session.Viewer):
        q = request.query_params
        found = await ctx.run(api.page, viewer.key, {"cursor": q.get("cursor"), "limit": str(PAGE)})
        done, what = notice.read(q)
        return console.render(request, viewer, "blocks.html", title="Blocks", rows=found["blocks"],
                              next_cursor=found["nextCursor"],
                              scopes=[r.match for r in readable_routes(ctx.config, viewer.key)],
                              done=done, what=what, unpublished=bool(q.get("unpublished")))

    async def add(request: Request, viewer: session.Viewer):
        form = await console.form(request, viewer)
        got = await ctx.run(api.add_one, viewer.key, {"sender": form.get("sender", ""), "scope": form.get("scope") or None})
        return back("/blocks", done="added" if got["created"] else "already", what=got["sender"],
                    **({} if got["published"] else {"unpublished": "1"}))

    async def remove(request: Request, viewer: session.Viewer):
        form = await console.form(request, viewer)
        got = await ctx.run(api.remove_one, viewer.key, form.get("sender", ""), form.get("scope") or None)
        return back("/blocks", done="removed" if got["removed"] else "absent", what=got["sender"])

    return [Route("/blocks", console.page(show)),
            Route("/blocks", console.page(add), methods=["POST"]),
            Route("/blocks/remove", console.page(remove), methods=["POST"])]
