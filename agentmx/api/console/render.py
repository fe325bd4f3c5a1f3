"""HTML out: one Jinja2 environment (autoescape on, undefined names an error), and the headers
every console page carries.

Nothing from a message is ever rendered as our HTML: templates print it escaped (autoescape), and
a message's own HTML is served only as the document of a sandboxed iframe (pages/message.py) under
its own Content-Security-Policy. The console's pages allow scripts and styles from /console/static
alone, no inline script, no frames but our own, no form posting elsewhere.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import jinja2
from starlette.responses import HTMLResponse

HERE = Path(__file__).parent

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": PAGE_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
}


def _when(value) -> str:
    """Unix seconds as 2026-12-05 14:03:07 UTC (the console shows UTC: servers' logs do too)."""
    if value in (None, ""):
        return "-"
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)


def _size(n) -> str:
    try:
        n = int(n)
    except (TypeError, ValueError):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                         autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
ENV.filters["when"] = _when
ENV.filters["size"] = _size
# Only http(s) links become links: a javascript: or data: URL from a message stays text.
ENV.filters["web_url"] = lambda url: isinstance(url, str) and url.lower().startswith(("http://", "https://"))


def page(template: str, status: int = 200, headers: dict | None = None, **values) -> HTMLResponse:
    html = ENV.get_template(template).render(**values)
    return HTMLResponse(html, status, headers={**SECURITY_HEADERS, **(headers or {})})
