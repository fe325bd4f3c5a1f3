"""GET /console/domains: each of the viewer's domains (those its key names, whole or by an
address at it; the admin: every configured one) with each DNS record's state as `agentmx check`
gives it (ok, missing, wrong, unknown: DNS did not answer, published, unchecked) and the records
to publish. POST /console/domains/check checks again now (every domain of the viewer's, or the
one named). The checks are the JSON API's (../domains.py: DomainRoutes, its DnsChecks): one cache
shared with GET /api/domains, a burst of pages one check per domain."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.routing import Route

from ..domains import DomainRoutes, key_domains
from . import notice, session
from .core import Console
from .notice import back


def routes(console: Console, checks: DomainRoutes) -> list[Route]:
    ctx = console.ctx

    async def show(request: Request, viewer: session.Viewer):
        names = key_domains(ctx.config, viewer.key)
        views = await asyncio.gather(*(checks.view(d) for d in names))
        q = request.query_params
        done, what = notice.read(q)
        return console.render(request, viewer, "domains.html", title="Domains", domains=list(views),
                              done=done, what=what)

    async def check(request: Request, viewer: session.Viewer):
        form = await console.form(request, viewer)
        named = form.get("domain") or ""
        names = [checks.domain(viewer.key, named)] if named else key_domains(ctx.config, viewer.key)
        await asyncio.gather(*(checks.view(d, fresh=True) for d in names))
        return back("/domains", done="checked", what=named or "all")

    return [Route("/domains", console.page(show)),
            Route("/domains/check", console.page(check), methods=["POST"])]
