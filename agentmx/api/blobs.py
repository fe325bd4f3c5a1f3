"""GET /v1/blobs/{sha256}?exp=&type=&name=&sig=: a stored raw message or attachment.

A forged, altered or expired URL gets 403 (the log says which); a valid URL for a blob that is
gone (expired by retention) gets 404. The blob is found by its sha256 alone and streamed from the
store in chunks (a 25 MB attachment is never held whole); the signed filename only goes into
Content-Disposition, quoted per RFC 6266, and the signed type, checked again here (urls.check),
into Content-Type. The bytes are the sender's: never sniffed, never run (nosniff, a sandbox CSP,
attachment disposition).
"""
from __future__ import annotations

import logging
import re
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import StreamingResponse

from agentmx import urls

from .context import Context
from .errors import ApiError
from .guard import printable

log = logging.getLogger("agentmx.serve")


def disposition(name: str) -> str:
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\]', "_", name) or "file"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def blob_route(ctx: Context, request: Request):
    sha = request.path_params["sha"]
    q = request.query_params
    why = urls.check(ctx.config.url_secret, sha, q.get("exp"), q.get("type", ""), q.get("name", ""),
                     q.get("sig", "")) if ctx.config.url_secret else "no url_secret configured"
    if why:
        log.warning("403 for blob %s: %s", printable(sha[:16]), why)
        raise ApiError(403, "forbidden", "this URL is not valid (altered, or expired)")
    blob = await ctx.run(ctx.store.open_blob, sha)
    if blob is None:
        raise ApiError(404, "gone", "the file was removed by retention")
    return StreamingResponse(blob.chunks, media_type=q.get("type"), headers={
        "content-length": str(blob.size),
        "content-disposition": disposition(q.get("name") or sha),
        "x-content-type-options": "nosniff",
        "content-security-policy": "sandbox",
        "cache-control": "private, max-age=300",
    })
