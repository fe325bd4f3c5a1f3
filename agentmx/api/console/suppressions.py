"""GET /console/suppressions: the suppressed recipients of the viewer's sending domains (a send
from that domain to them is refused: agentmx/suppression.py), with a form to add one and a
button per row to lift it. POST /console/suppressions adds, POST /console/suppressions/remove
lifts: the JSON API's own functions (../suppressions.py: SuppressionRoutes), so the rules are its
rules (the address read by suppression.address, a domain of the viewer's or 404, the first reason
and time stand)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from agentmx.store.model import SuppressionReason

from ..suppressions import SuppressionRoutes, key_domains
from . import notice, session
from .core import Console
from .notice import back

PAGE = 100
REASONS = [r.value for r in SuppressionReason]


def routes(console: Console) -> list[Route]:
    ctx = console.ctx
    api = SuppressionRoutes(ctx)

    async def show(request: Request, viewer: session.Viewer):
        q = request.query_params
        found = await ctx.run(api.page, viewer.key, {"cursor": q.get("cursor"), "limit": str(PAGE)})
        done, what = notice.read(q)
        return console.render(request, viewer, "suppressions.html", title="Suppressions",
                              rows=found["suppressions"], next_cursor=found["nextCursor"],
                              domains=key_domains(viewer.key), reasons=REASONS,
                              done=done, what=what)

    async def add(request: Request, viewer: session.Viewer):
        form = await console.form(request, viewer)
        body = {"email": form.get("address", ""), "reason": form.get("reason") or None,
                "note": form.get("note") or f"in the console by {viewer.label}", "domain": form.get("domain") or None}
        got = await ctx.run(api.add_one, viewer.key, body)
        return back("/suppressions", done="added" if got["created"] else "already", what=got["email"])

    async def remove(request: Request, viewer: session.Viewer):
        form = await console.form(request, viewer)
        got = await ctx.run(api.remove_one, viewer.key, form.get("address", ""), form.get("domain") or None)
        return back("/suppressions", done="removed" if got["removed"] else "absent", what=got["email"])

    return [Route("/suppressions", console.page(show)),
            Route("/suppressions", console.page(add), methods=["POST"]),
            Route("/suppressions/remove", console.page(remove), methods=["POST"])]
