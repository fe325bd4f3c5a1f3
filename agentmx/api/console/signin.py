"""GET|POST /console/signin, POST /console/signout."""
from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from ..errors import ApiError
from . import session
from .core import PREFIX, Console, next_target, secure

log = logging.getLogger("agentmx.serve.console")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def routes(console: Console) -> list[Route]:
    ctx = console.ctx

    def form_page(request: Request, status: int = 200, message: str = "", nxt: str = ""):
        pre = request.cookies.get(session.PRE_COOKIE) or ""
        if len(pre) != 24:
            pre = session.new_pre()
        response = console.render(request, None, "signin.html", status=status, pre=pre, message=message,
                                  next=next_target(nxt or request.query_params.get("next")),
                                  title="Sign in")
        response.set_cookie(session.PRE_COOKIE, pre, max_age=3600, path=PREFIX + "/signin", httponly=True,
                            samesite="strict", secure=secure(ctx, request))
        return response

    async def show(request: Request):
        if console.viewer(request) is not None:
            return RedirectResponse(PREFIX + "/inbox", 303)
        return form_page(request)

    async def submit(request: Request):
        pre = request.cookies.get(session.PRE_COOKIE) or ""
        try:
            values = await console.form(request, None, expected=pre)
        except ApiError as exc:
            return form_page(request, exc.status, exc.message)
        client = _client(request)
        full = await ctx.run(ctx.store.take, [(f"signin:{client}", session.LIMIT)], session.WINDOW)
        if full is not None:
            log.warning("console sign-in refused for %s: too many attempts", client)
            raise ApiError(429, "too_many_attempts", "too many sign-in attempts from this address: "
                           f"try again in {int(full[1]) + 1} seconds", retry_after=int(full[1]) + 1)
        key = session.find_key(ctx.config, values.get("key", "")[:512])
        if key is None:
            log.info("console sign-in failed from %s", client)
            return form_page(request, 401, "That key is not one of this server's API keys.", values.get("next", ""))
        log.info("console sign-in as %s from %s", "admin" if key.name == session.ADMIN else key.name, client)
        response = RedirectResponse(next_target(values.get("next")), 303, headers={"cache-control": "no-store"})
        response.set_cookie(session.COOKIE, session.open_session(key, ctx.clock()), max_age=session.SESSION_TTL,
                            path=PREFIX, httponly=True, samesite="strict", secure=secure(ctx, request))
        response.delete_cookie(session.PRE_COOKIE, path=PREFIX + "/signin")
        return response

    async def signout(request: Request, viewer: session.Viewer):
        await console.form(request, viewer)
        response = RedirectResponse(PREFIX + "/signin", 303, headers={"cache-control": "no-store"})
        response.delete_cookie(session.COOKIE, path=PREFIX, httponly=True, samesite="strict",
                               secure=secure(ctx, request))
        return response

    return [Route("/signin", console.public(show), methods=["GET"]),
            Route("/signin", console.public(submit), methods=["POST"]),
            Route("/signout", console.page(signout), methods=["POST"])]
