"""Attachments: POST /v1/attachments (upload a file, get a signed URL), and resolving the
attachments of a send that come by URL.

POST /v1/attachments takes one file four ways (MailKite's uploadAttachment):
    raw body        Content-Type: the file's type; ?filename=&retentionDays=   (the SDK's bytes and path modes)
    JSON content    {"content": base64, "filename", "contentType", "retentionDays"}
    JSON url        {"url": "https://...", ...}: fetched by serve (agentmx/fetch.py: SSRF rules)
and answers {id, url, filename, contentType, size, expiresAt}: `url` is a signed blob URL of ours
(agentmx/urls.py) valid until expiresAt; the upload record keeps the blob from gc until then.
retentionDays: 7, 30, 90 or 365 (default 7). The body has its own bound ([send] max_upload_bytes,
raw; base64 JSON may be 4/3 of it), apart from /v1/send's.

An attachment of a send given by `url`:
    our own signed blob URL ([server] public_url/v1/blobs/...)   its signature checked (urls.check),
                                                                  the bytes taken from the store, not fetched
    any other URL                                                 fetched under the SSRF rules
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import replace
from functools import partial
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import fetch, send, urls
from agentmx.config import ApiKey
from agentmx.store.model import Upload
from agentmx.times import rfc3339

from .context import Context
from .errors import ApiError

log = logging.getLogger("agentmx.serve")

RETENTION_DAYS = (7, 30, 90, 365)
DAY = 86400


def policy(ctx: Context) -> fetch.FetchPolicy:
    s = ctx.config.send
    return fetch.FetchPolicy(allow_http=s.fetch_allow_http, allow_networks=s.fetch_allow_networks,
                             max_bytes=s.fetch_max_bytes, timeout=s.fetch_timeout)


def own_blob(ctx: Context, url: str) -> tuple[str, str, str] | None:
    """(sha256, type, name) of a signed blob URL of ours; None for any other URL; SendError 400
    for one of ours whose signature does not hold (altered, expired)."""
    prefix = ctx.config.public_url + "/v1/blobs/"
    if not url.startswith(prefix):
        return None
    parts = urlsplit(url)
    sha = parts.path.rpartition("/")[2]
    q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    why = (urls.check(ctx.config.url_secret, sha, q.get("exp"), q.get("type", ""), q.get("name", ""), q.get("sig", ""),
                      now=ctx.clock()) if ctx.config.url_secret else "no url_secret configured")
    if why:
        log.info("attachment by blob URL refused: %s", why)
        raise send.SendError(400, "bad_attachment_url", "the attachment's agentmx URL is not valid (altered, or expired)")
    return sha, q.get("type", ""), q.get("name", "")


def fetch_url(ctx: Context, url: str, max_bytes: int | None = None) -> fetch.Fetched:
    """An outside URL under the SSRF rules; SendError 400 (refused: nothing was connected to) or
    502 (could not be fetched)."""
    rules = policy(ctx)
    if max_bytes is not None:
        rules = replace(rules, max_bytes=max(0, min(rules.max_bytes, max_bytes)))
    try:
        return fetch.fetch(url, ctx.resolver, rules)
    except fetch.FetchRefused as exc:
        log.warning("attachment URL refused: %s", exc)
        raise send.SendError(400, "url_refused", f"the attachment URL is not fetched: {exc}") from None
    except fetch.FetchFailed as exc:
        log.info("attachment URL not fetched: %s", exc)
        raise send.SendError(502, "fetch_failed", f"the attachment URL could not be fetched: {exc}") from None


def load(ctx: Context, url: str, budget: dict | None = None) -> tuple[bytes, str, str]:
    """(bytes, content type, filename) of a URL: a blob of ours, or fetched. `budget`: bytes left
    for blobs of ours ("own") and for fetches ("fetched"), taken from as they load (413 too_large
    past the first, 502 fetch_failed past the second)."""
    mine = own_blob(ctx, url)
    if mine is not None:
        sha, ctype, name = mine
        data = ctx.store.get_blob(sha)
        if data is None:
            raise send.SendError(400, "attachment_gone", "the attachment's agentmx URL names a file that was removed")
        if budget is not None:
            budget["own"] -= len(data)
            if budget["own"] < 0:
                raise send.SendError(413, "too_large", "the agentmx attachment URLs of one send are at most "
                                                       f"{own_budget(ctx)} bytes together")
        return data, ctype, name
    got = fetch_url(ctx, url, budget["fetched"] if budget is not None else None)
    if budget is not None:
        budget["fetched"] -= len(got.data)
    return got.data, urls.safe_type(got.content_type.partition(";")[0]), got.filename


def own_budget(ctx: Context) -> int:
    """What the files of ours one send may name together: an upload's bound, or a whole send's."""
    return max(ctx.config.send.max_upload_bytes, ctx.config.send.max_request_bytes)


def resolve_all(ctx: Context, atts: tuple[send.Attachment, ...]) -> tuple[send.Attachment, ...]:
    """Every attachment given by URL, loaded: fetched ones together at most [send] fetch_max_bytes
    (20 URLs of 25 MB each would otherwise be 500 MB in memory for one request), ours together at
    most own_budget()."""
    budget = {"fetched": ctx.config.send.fetch_max_bytes, "own": own_budget(ctx)}
    out = []
    for i, att in enumerate(atts):
        if att.url is not None:
            data, ctype, name = load(ctx, att.url, budget)
            att = send.Attachment(att.filename or urls.safe_name(name) or f"attachment-{i + 1}",
                                  att.content_type or ctype or urls.FALLBACK_TYPE, data)
        out.append(att)
    return tuple(out)


def resolve_request(ctx: Context, req: send.SendRequest, resolved=None) -> send.SendRequest:
    atts = resolved if resolved is not None else resolve_all(ctx, req.attachments)
    return replace(req, attachments=atts) if atts != req.attachments else req


# --- POST /v1/attachments ---------------------------------------------------------------------------

def store_file(ctx: Context, key: ApiKey, data: bytes, filename: str, ctype: str, expires: float) -> Upload:
    """Keep a file (the blob and its upload record, which keeps the blob until `expires`)."""
    sha = ctx.store.put_blob(data)
    upload = Upload("att_" + base64.b32encode(os.urandom(16)).decode().lower().rstrip("="), key.name, sha,
                    urls.safe_name(filename) or "attachment", urls.safe_type(ctype), len(data), ctx.clock(), expires)
    ctx.store.put_upload(upload)
    return upload


def signed_url(ctx: Context, upload: Upload) -> str:
    return urls.sign_url(ctx.config.public_url, ctx.config.url_secret, upload.sha256, upload.content_type,
                         upload.filename, ttl=max(1, int(upload.expires - ctx.clock())), now=ctx.clock())


def _retention(value) -> int:
    if value is None or value == "":
        return RETENTION_DAYS[0]
    try:
        days = int(value)
    except (TypeError, ValueError):
        days = -1
    if days not in RETENTION_DAYS or isinstance(value, bool):
        raise send.SendError(400, "bad_retention", "retentionDays is 7, 30, 90 or 365")
    return days


def _text_param(name: str, value, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > 255:
        raise send.SendError(400, "bad_field", f"{name} is a string of at most 255 characters")
    return value


def upload(ctx: Context, key: ApiKey, content_type: str, query: dict, body: bytes) -> dict:
    if not ctx.config.url_secret:
        raise send.SendError(503, "no_url_secret", "uploads answer a signed URL: set [server] url_secret_file")
    limit = ctx.config.send.max_upload_bytes
    # The SDK's raw modes always name the file in the query (?filename=), its JSON mode never: a
    # .json file uploaded raw (Content-Type: application/json) is a file, not a request to parse.
    if content_type.partition(";")[0].strip().lower() == "application/json" and "filename" not in query:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise send.SendError(400, "bad_json", "the body is not JSON") from None
        if not isinstance(doc, dict) or (doc.get("content") is None) == (doc.get("url") is None):
            raise send.SendError(400, "bad_request", "give content (base64) or url, one of them")
        unknown = sorted(set(doc) - {"content", "url", "filename", "contentType", "retentionDays"})
        if unknown:
            raise send.SendError(400, "unknown_field", f"unknown field {unknown[0]!r}")
        filename = _text_param("filename", doc.get("filename"))
        ctype = _text_param("contentType", doc.get("contentType"))
        days = _retention(doc.get("retentionDays"))
        if doc.get("url") is not None:
            url = _text_param("url", doc["url"])
            if own_blob(ctx, url) is not None:     # kept up to 365 days, it would outlive what it names
                raise send.SendError(400, "own_url", "this is an agentmx URL already: send the file by that URL; "
                                                     "an upload may not keep it past its own expiry")
            data, got_type, got_name = load(ctx, url)
            filename, ctype = filename or got_name, ctype or got_type
        else:
            if not isinstance(doc["content"], str):
                raise send.SendError(400, "bad_attachment", "content is base64 text")
            try:
                data = base64.b64decode(doc["content"], validate=True)
            except (binascii.Error, ValueError):
                raise send.SendError(400, "bad_attachment", "content is not base64") from None
    else:
        data = body
        filename = _text_param("filename", query.get("filename"))
        ctype = content_type.partition(";")[0].strip()
        days = _retention(query.get("retentionDays"))
    if len(data) > limit:
        raise send.SendError(413, "too_large", f"a file is at most {limit} bytes")
    if not data:
        raise send.SendError(400, "empty_file", "the file is empty")
    up = store_file(ctx, key, data, filename, ctype, ctx.clock() + days * DAY)
    log.info("%s: uploaded %d bytes for key %s, kept %d days", up.id, up.size, key.name, days)
    return {"id": up.id, "url": signed_url(ctx, up), "filename": up.filename, "contentType": up.content_type,
            "size": up.size, "expiresAt": rfc3339(up.expires)}


async def upload_route(ctx: Context, request: Request):
    key = ctx.key(request)
    body = await request.body()
    try:
        return JSONResponse(await ctx.run(upload, ctx, key, request.headers.get("content-type", ""),
                                          dict(request.query_params), body))
    except send.SendError as exc:
        log.info("upload refused (%s): %s", exc.status, exc.message)
        raise ApiError.from_send(exc) from None


def body_limit(max_upload_bytes: int) -> int:
    """The guard's bound for POST /v1/attachments: the file as base64 in JSON, with room for the rest."""
    return max_upload_bytes * 4 // 3 + 65536


def routes(ctx: Context) -> list[Route]:
    return [Route("/v1/attachments", partial(upload_route, ctx), methods=["POST"])]
