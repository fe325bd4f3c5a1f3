"""The web console: `agentmx serve`'s pages for the operator and the agent's owner, under
/console on the same application and port (docs/console.md).

Server-rendered HTML (Jinja2, templates/), no build step; a little JavaScript (static/) for live
updates, and every page works without it. Each page module gives its routes; this mounts them.

    /console/signin, /console/signout                 signin.py (session.py: cookie, CSRF, limit)
    /console/inbox, /console/live                     inbox.py
    /console/messages/{id}[/html|/raw|/attachments/n] message.py
    /console/deliveries[/{id}[/retry]]                deliveries.py
    /console/sends[/{id}]                             sends.py
    /console/agent[/{event id}]                       agent.py
    /console/suppressions[/remove]                    suppressions.py
    /console/blocks[/remove]                          blocks.py
    /console/domains, /console/domains/check          domains.py
    /console/queue                                    queue.py (postqueue -j)
    /console/stats                                    stats.py (counts, an SVG chart)
    /console/static/...                               CSS and the live-update script
"""
from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..context import Context
from ..domains import DomainRoutes
from ..inbox import InboxRoutes
from . import agent, blocks, deliveries, inbox, message, queue, sends, signin, stats, suppressions
from . import domains as domain_pages
from .core import PREFIX, Console
from .render import HERE


def mount(ctx: Context, inbox_routes: InboxRoutes, domains: DomainRoutes | None = None) -> list:
    console = Console(ctx)
    domains = domains or DomainRoutes(ctx)

    async def home(request):
        return RedirectResponse(PREFIX + "/inbox", 303)

    pages = [*signin.routes(console), *inbox.routes(console, inbox_routes),
             *message.routes(console, inbox_routes), *sends.routes(console), *deliveries.routes(console),
             *agent.routes(console),
             *suppressions.routes(console), *blocks.routes(console), *domain_pages.routes(console, domains),
             *queue.routes(console), *stats.routes(console)]
    return [Route(PREFIX, home), Route(PREFIX + "/", home),
            Mount(PREFIX, routes=[*pages, Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")])]
