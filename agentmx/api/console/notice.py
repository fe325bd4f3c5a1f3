"""After a console form: 303 back to its page, with a short notice in the query string (the page
prints it escaped; it is only ever words of ours and the value the form acted on)."""
from __future__ import annotations

from urllib.parse import urlencode

from starlette.responses import RedirectResponse

from ..guard import printable
from .core import PREFIX


def back(path: str, **notice: str) -> RedirectResponse:
    return RedirectResponse(PREFIX + path + ("?" + urlencode(notice) if notice else ""), 303,
                            headers={"cache-control": "no-store"})


def read(query) -> tuple[str, str]:
    """(done, what): the notice `back` put in the query string, as the page prints it: bounded, one line."""
    return printable(query.get("done", ""), 40), printable(query.get("what", ""), 254)
