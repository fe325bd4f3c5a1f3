"""The viewer's deliveries (what became of each inbound event's POST) and a retry:

    GET  /console/deliveries[?state=&before=]   newest event first: state, route, attempts, last answer
    GET  /console/deliveries/{id}               every attempt (as GET /api/deliveries/{id}/attempts gives
                                                them), the message, and a retry form when there is a POST
    POST /console/deliveries/{id}/retry         what POST /api/deliveries/{id}/retry does (ops.replay),
                                                then back to the page, its new attempt on top

Scope: the deliveries of the recipients the viewer's key may read (store.list_deliveries with the
key's allow list; one delivery through api/deliveries.py's `owned`: another key's is a 404). A
pull route or an agent route has nothing to POST: the page says so and has no retry button.
"""
from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from agentmx.store.model import DeliveryState

from ..deliveries import DeliveryRoutes, route_id
from ..errors import ApiError
from . import session
from .core import PREFIX, Console
from .listing import cursor, page, state, valid_id

PAGE = 50
STATES = tuple(s.value for s in DeliveryState)


def routes(console: Console) -> list[Route]:
    ctx = console.ctx
    api = DeliveryRoutes(ctx)

    def listing(viewer: session.Viewer, state: DeliveryState | None, before: int | None):
        rows, last = page(ctx.store.list_deliveries(viewer.key.allow, state=state, before_seq=before,
                                                    limit=PAGE + 1), PAGE)
        return rows, (last.seq if last else None)

    async def index(request: Request, viewer: session.Viewer):
        params = request.query_params
        chosen = state(params.get("state"), DeliveryState)
        rows, next_before = await ctx.run(listing, viewer, chosen, cursor(params.get("before")))
        return console.render(request, viewer, "deliveries.html", title="Deliveries", rows=rows,
                              state=chosen.value if chosen else "", states=STATES, next_before=next_before)

    def detail(viewer: session.Viewer, delivery_id: str):
        row = api.owned(viewer.key, valid_id(delivery_id, "msg_", "delivery"))
        delivery = ctx.store.delivery(row.id)
        attempts = api.attempts_answer(row.id, delivery)           # row: the key's (owned), read once
        try:
            route, no_post = api.pushing_route(row), ""
        except ApiError as exc:                       # a pull or agent route, or none: nothing to POST
            route, no_post = None, exc.message
        return row, delivery, attempts["attempts"], route, no_post

    async def show(request: Request, viewer: session.Viewer):
        row, delivery, attempts, route, no_post = await ctx.run(detail, viewer, request.path_params["id"])
        return console.render(request, viewer, "delivery.html", title=f"Delivery {row.id}", row=row,
                              delivery=delivery, attempts=attempts, no_post=no_post,
                              route_id=route_id(route) if route else "",
                              retried=request.query_params.get("done") == "retry")

    async def retry(request: Request, viewer: session.Viewer):
        await console.form(request, viewer)
        delivery_id = valid_id(request.path_params["id"], "msg_", "delivery")
        await ctx.run(api.retry_one, viewer.key, delivery_id)
        target = f"{PREFIX}/deliveries/{urllib.parse.quote(delivery_id)}?done=retry#attempts"
        return RedirectResponse(target, 303, headers={"cache-control": "no-store"})

    return [Route("/deliveries", console.page(index)),
            Route("/deliveries/{id:str}", console.page(show)),
            Route("/deliveries/{id:str}/retry", console.page(retry), methods=["POST"])]
