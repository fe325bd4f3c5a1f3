"""The console's frame: who is signed in, the pages' common values, forms, and errors as pages.

Every console route is wrapped by `Console.page` (signed-in pages) or `Console.public` (the sign-in
page): an ApiError (the API's one error type) or a store failure becomes an HTML page with its
status, never JSON and never a traceback; a request without a session is sent to the sign-in page.
"""
from __future__ import annotations

import logging
import urllib.parse
from functools import wraps

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from agentmx.store import StoreError

from ..context import Context
from ..errors import ApiError
from ..guard import printable
from . import session
from .render import page as render_page

log = logging.getLogger("agentmx.serve.console")

PREFIX = "/console"
# The navigation, in order: (label, path). A page not yet built is not listed.
NAV = [("Inbox", "/inbox"), ("Sends", "/sends"), ("Deliveries", "/deliveries"), ("Agent", "/agent"),
       ("Suppressions", "/suppressions"), ("Blocks", "/blocks"), ("Domains", "/domains"), ("Queue", "/queue"),
       ("Stats", "/stats")]
MAX_FORM = 65536


def secure(ctx: Context, request: Request) -> bool:
    """Whether the cookie gets Secure: serve is reached over TLS (its public URL, or this request)."""
    return ctx.config.public_url.startswith("https://") or request.url.scheme == "https"


class Console:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    # --- who ------------------------------------------------------------------------------------

    def viewer(self, request: Request) -> session.Viewer | None:
        return session.read_session(self.ctx.config, request.cookies.get(session.COOKIE), self.ctx.clock())

    def render(self, request: Request, viewer: session.Viewer | None, template: str, *, status: int = 200,
               headers: dict | None = None, **values: object) -> Response:
        return render_page(template, status, headers, viewer=viewer, csrf=viewer.csrf() if viewer else "",
                           nav=[(label, PREFIX + path) for label, path in NAV], path=request.url.path,
                           prefix=PREFIX, **values)

    def error(self, request: Request, viewer, exc: ApiError) -> Response:
        headers = {"retry-after": str(int(exc.retry_after))} if exc.retry_after is not None else None
        return self.render(request, viewer, "error.html", status=exc.status, headers=headers, title=f"{exc.status}",
                           message=exc.message, code=exc.code)

    # --- forms ----------------------------------------------------------------------------------

    async def form(self, request: Request, viewer: session.Viewer | None, expected: str | None = None) -> dict[str, str]:
        """A POSTed form (application/x-www-form-urlencoded), its CSRF token checked: the session's,
        or `expected` (the sign-in form's). One value per name (the first)."""
        # The body first, whatever is refused below: a refusal with the body unread made the server
        # close the kept-alive connection under the client's next request. (The guard bounds it.)
        body = await request.body()
        origin = request.headers.get("origin")
        # "null" passes: Chromium sends it for every form of a page whose Referrer-Policy is no-referrer
        # (ours); the CSRF token, not the Origin, is what refuses another site's form.
        if origin and origin != "null" and not _same_origin(origin, request):
            raise ApiError(403, "cross_site", "this form was posted from another site")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise ApiError(415, "not_a_form", "post the console's forms as the page sends them")
        if len(body) > MAX_FORM:
            raise ApiError(413, "too_large", "the form is too large")
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100,
                                           strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "bad_form", "the form could not be read") from None
        values: dict[str, str] = {}
        for k, v in pairs:
            values.setdefault(k, v)
        want = expected if expected is not None else (viewer.csrf() if viewer else "")
        if not session.same(values.get("csrf", ""), want):
            raise ApiError(403, "csrf", "the form expired or was not ours: reload the page and try again")
        return values

    # --- wrappers -------------------------------------------------------------------------------

    def page(self, fn):
        """A signed-in page: fn(request, viewer) -> Response."""
        @wraps(fn)
        async def handler(request: Request) -> Response:
            viewer = self.viewer(request)
            if viewer is None:
                await _drain(request)
                target = PREFIX + "/signin"
                if request.method == "GET" and request.url.path != PREFIX + "/signin":
                    target += "?" + urllib.parse.urlencode({"next": _local(request.url.path, request.url.query)})
                return RedirectResponse(target, 303, headers={"cache-control": "no-store"})
            return await self._guarded(request, viewer, fn, viewer)
        return handler

    def public(self, fn):
        """A page without a session (sign-in): fn(request) -> Response."""
        @wraps(fn)
        async def handler(request: Request) -> Response:
            return await self._guarded(request, None, fn)
        return handler

    async def _guarded(self, request: Request, viewer, fn, *args) -> Response:
        try:
            return await fn(request, *args)
        except ApiError as exc:
            await _drain(request)
            return self.error(request, viewer, exc)
        except StoreError as exc:
            log.warning("503 for %s: the store: %s", printable(request.url.path), exc)
            return self.error(request, viewer, ApiError(503, "store_unavailable",
                                                        "the store is unavailable; try again shortly", retry_after=5))
        except Exception:                # a bug of ours: logged once, here; the page says nothing of it
            log.exception("500 for %s", printable(request.url.path))
            return self.error(request, viewer, ApiError(500, "internal", "internal error (logged); try again later"))


async def _drain(request: Request) -> None:
    """Read what is left of a refused request's body (the guard bounds it): answering with it
    unread makes the server close the connection under the client's next request."""
    if request.method not in ("GET", "HEAD"):
        try:
            await request.body()
        except Exception as exc:               # the client went, or the guard refused the body: nothing to keep
            log.debug("body of a refused %s not read: %s", request.method, exc.__class__.__name__)


def _same_origin(origin: str, request: Request) -> bool:
    host = request.headers.get("host", "")
    parts = urllib.parse.urlsplit(origin)
    return bool(host) and parts.netloc.lower() == host.lower()


def _local(path: str, query: str) -> str:
    """A path of ours to go back to after sign-in (never another site's)."""
    if not path.startswith(PREFIX + "/") or path.startswith("//"):
        return PREFIX + "/inbox"
    return path + ("?" + query if query else "")


def next_target(value: str | None) -> str:
    value = value or ""
    if not value.startswith(PREFIX + "/") or "//" in value or "\\" in value or any(c in value for c in "\r\n"):
        return PREFIX + "/inbox"
    return value
