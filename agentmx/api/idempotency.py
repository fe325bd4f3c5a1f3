"""Idempotency-Key on POST /v1/send and /v1/send/batch: a retry answers the first answer.

Per API key, for WINDOW seconds, in the store (so a retry that reaches another serve process or
another host finds it too):

    a new key            the request runs; its answer is kept (an error is not: the key is freed,
                         nothing was sent, a retry may go)
    the same key, the same request (method, path, body: their sha256)
                         the first answer again, with Idempotent-Replayed: true; nothing is sent
    the same key, another request                 422 idempotency_key_reused
    the same key while the first is still running 409 idempotency_in_flight

A key is 1 to MAX_KEY printable ASCII characters (400 bad_idempotency_key otherwise).
"""
from __future__ import annotations

import hashlib
import json
import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from agentmx import send

WINDOW = 24 * 3600.0
MAX_KEY = 255
_KEY = re.compile(r"^[\x21-\x7e]{1,%d}$" % MAX_KEY)


def fingerprint(method: str, path: str, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def check_key(value: str) -> str:
    if not _KEY.match(value):
        raise send.SendError(400, "bad_idempotency_key", f"Idempotency-Key is 1 to {MAX_KEY} printable ASCII "
                                                         "characters without spaces")
    return value


def run_once(ctx, key, idem: str, print_: str, run):
    """run() under an Idempotency-Key: (answer dict, replayed?). Raises send.SendError."""
    store = ctx.store
    found = store.idempotency_begin(key.name, idem, print_, ctx.clock() - WINDOW)
    if found is not None:
        first_print, answer = found
        if first_print != print_:
            raise send.SendError(422, "idempotency_key_reused", "this Idempotency-Key was used with another request "
                                                                "in the last 24 hours")
        if answer is None:
            raise send.SendError(409, "idempotency_in_flight", "a request with this Idempotency-Key is still running; "
                                                               "try again shortly", retry_after=1)
        return json.loads(answer), True
    try:
        result = run()
    except BaseException:
        store.idempotency_release(key.name, idem)
        raise
    store.idempotency_finish(key.name, idem, json.dumps(result))
    return result, False


async def answer(ctx, key, request: Request, body: bytes, handler) -> JSONResponse:
    """handler(ctx, key, body) -> dict, in the thread pool, once per Idempotency-Key."""
    idem = request.headers.get("idempotency-key")
    if idem is None:
        return JSONResponse(await ctx.run(handler, ctx, key, body))
    idem = check_key(idem)
    print_ = fingerprint(request.method, request.url.path, body)
    result, replayed = await ctx.run(run_once, ctx, key, idem, print_, lambda: handler(ctx, key, body))
    return JSONResponse(result, headers={"idempotent-replayed": "true"} if replayed else None)
