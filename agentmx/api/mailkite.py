"""The rest of MailKite's SDK surface: who a key is, the event names, and a clear JSON 501 for
what a self-hosted agent inbox does not offer.

    GET  /v1/me               this key: name, addresses, verified, agentmx's version (no secret)
    GET  /v1/events/names     the event types agentmx emits (MailKite's listEventNames)
    <NOT_OFFERED>             501 {"error": "<why, and what to do instead>", "code": "not_supported"}

The 501 routes come AFTER every other route (app.py): a path another module serves is never
answered 501, and Starlette takes a later route that matches path and method over an earlier one
that matches the path alone (so POST /v1/events is 501 while GET /v1/events is the inbox's). A
path in no table is 404, a method no route takes 405, as before. A 501 needs the API key first
(401 without one), as every route does, except the calls MailKite itself serves without a key
(register, OAuth, docs search): those are 501 at once.
"""
from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import agentmx

from .context import Context
from .errors import ApiError
from .inbox import EVENT_NAMES

CONFIG = "it is the operator's configuration (agentmx.toml), not an API call"

# Why each area is not offered, and what to do instead: the message of its 501.
REASONS = {
    "templates": "templates are not part of agentmx: render the body yourself and send html/text",
    "domains": f"domains are added in [[domains]] and their DNS records published by the operator "
               f"(agentmx dns): {CONFIG}",
    "registration": "agentmx registers no domains and hosts no subdomains: use a domain you hold and add it "
                    "to [[domains]]",
    "routes": f"routes are [[routes]] in agentmx.toml: {CONFIG}",
    "webhooks": f"a route's webhook URL, secret, ack mode and events are set in its [[routes]] entry: {CONFIG}",
    "secrets": "webhook secrets are never served over the API: the operator gives the route's secret_file "
               "to the receiver",
    "lists": "contact lists are not part of agentmx (it is an inbox and outbox for agents, not a mailing-list tool)",
    "broadcasts": "broadcasts are not part of agentmx: send each message with /v1/send or /v1/send/batch",
    "sequences": "sequences, triggers and enrollments are not part of agentmx: schedule follow-ups in your own "
                 "code (send with scheduledAt)",
    "events": "application events (sendEvent) feed MailKite's sequences, which agentmx does not have; "
              "GET /v1/events lists the mail events agentmx records",
    "billing": "a self-hosted server has no billing or plan quotas; GET /metrics (Prometheus) counts its mail",
    "keys": f"API keys are [[api_keys]] in agentmx.toml, each with the addresses it may use: {CONFIG}",
    "app-passwords": "agentmx has no IMAP service and no app passwords: read mail with GET /api/messages "
                     "or /v1/messages",
    "mailbox": "agentmx has no IMAP mailbox: read mail with GET /api/messages/{id} (its raw URL gives the "
               "RFC 822 bytes) and mark it read with POST /v1/messages/{id}/ack",
    "oauth": "agentmx has no accounts to link: the operator gives each agent an API key ([[api_keys]])",
    "register": "agentmx has no sign-up: the operator gives each agent an API key ([[api_keys]])",
    "agent": "agentmx's agent answers mail that arrives for a route with action = \"agent\"; "
             "there is no API to hand it a message: send it an email",
    "route": "agentmx routes mail as it arrives through Postfix; there is no API to route a message: send an email",
    "docs": "agentmx's documentation is in docs/ of its source; there is no docs search API",
}

# (methods, path, area, needs a key): every MailKite SDK path agentmx does not serve.
NOT_OFFERED: tuple[tuple[tuple[str, ...], str, str, bool], ...] = (
    (("GET", "POST"), "/api/templates", "templates", True),
    (("GET",), "/api/templates/base", "templates", True),
    (("GET",), "/api/templates/{id}", "templates", True),
    (("POST",), "/api/domains", "domains", True),
    (("DELETE",), "/api/domains/{id}", "domains", True),
    (("GET",), "/api/domains/subdomain/suggest", "registration", True),
    (("GET",), "/api/domains/subdomain/check", "registration", True),
    (("POST",), "/api/domains/subdomain", "registration", True),
    (("GET",), "/api/domains/register/check", "registration", True),
    (("POST",), "/api/domains/register", "registration", True),
    (("GET",), "/api/domains/{id}/webhook/secret", "secrets", True),
    (("PUT", "DELETE"), "/api/domains/{id}/webhook", "webhooks", True),
    (("PUT", "DELETE"), "/api/domains/{id}/tracking-webhook", "webhooks", True),
    (("PUT", "DELETE"), "/api/domains/{id}/webhook-events", "webhooks", True),
    (("POST",), "/api/routes", "routes", True),
    (("DELETE",), "/api/routes/{id}", "routes", True),
    (("POST",), "/api/routes/{id}/deliver", "routes", True),        # until the reading routes (earlier) serve them
    (("GET",), "/api/routes/{id}/candidates", "routes", True),
    (("GET", "POST"), "/api/lists", "lists", True),
    (("GET", "PATCH", "DELETE"), "/api/lists/{id}", "lists", True),
    (("GET", "POST"), "/api/lists/{id}/contacts", "lists", True),
    (("DELETE",), "/api/lists/{id}/contacts/{contact}", "lists", True),
    (("GET", "POST"), "/api/broadcasts", "broadcasts", True),
    (("GET", "PATCH", "DELETE"), "/api/broadcasts/{id}", "broadcasts", True),
    (("POST",), "/api/broadcasts/{id}/send", "broadcasts", True),
    (("POST",), "/v1/events", "events", True),
    (("GET", "POST"), "/v1/sequences", "sequences", True),
    (("POST",), "/v1/sequences/stop", "sequences", True),
    (("GET", "PATCH", "DELETE"), "/v1/sequences/{id}", "sequences", True),
    (("POST",), "/v1/sequences/{id}/start", "sequences", True),
    (("GET", "POST"), "/v1/sequences/{id}/triggers", "sequences", True),
    (("GET",), "/v1/sequences/{id}/enrollments", "sequences", True),
    (("PATCH", "DELETE"), "/v1/triggers/{id}", "sequences", True),
    (("GET", "DELETE"), "/v1/enrollments/{id}", "sequences", True),
    (("GET",), "/v1/enrollments/{id}/runs", "sequences", True),
    (("GET",), "/api/billing/usage", "billing", True),
    (("GET",), "/api/keys", "keys", True),
    (("POST",), "/api/keys/rotate", "keys", True),
    (("GET", "POST"), "/api/keys/scoped", "keys", True),
    (("DELETE",), "/api/keys/scoped/{id}", "keys", True),
    (("GET", "POST"), "/api/app-passwords", "app-passwords", True),
    (("PATCH", "DELETE"), "/api/app-passwords/{id}", "app-passwords", True),
    (("POST",), "/api/app-passwords/{id}/rotate", "app-passwords", True),
    (("GET",), "/api/mailbox/messages", "mailbox", True),
    (("GET",), "/api/mailbox/messages/{uid}/raw", "mailbox", True),
    (("POST",), "/api/mailbox/messages/{uid}/flags", "mailbox", True),
    (("POST",), "/v1/agent", "agent", True),
    (("POST",), "/v1/route", "route", True),
    (("POST",), "/api/v1/provision", "register", False),      # PUBLIC at MailKite: no key asked
    (("POST",), "/oauth/register", "oauth", False),
    (("POST",), "/oauth/token", "oauth", False),
    (("GET",), "/v1/docs/search", "docs", False),
)


async def not_offered(ctx: Context, area: str, keyed: bool, request: Request):
    if keyed:
        ctx.key(request)
    raise ApiError(501, "not_supported", REASONS[area])


async def me(ctx: Context, request: Request):
    """MailKite's me(): who this credential is. agentmx's keys are the operator's, so verified."""
    key = ctx.key(request)
    addresses = [a for a in key.allow if not a.startswith("@")]
    return JSONResponse({"name": key.name, "email": addresses[0] if addresses else None, "allow": list(key.allow),
                         "verified": True, "plan": "self-hosted", "version": agentmx.__version__},
                        headers={"cache-control": "no-store"})


async def event_names(ctx: Context, request: Request):
    ctx.key(request)
    return JSONResponse({"names": [{"name": n, "listed": True} for n in EVENT_NAMES]})     # all listed (issue 16)


def routes(ctx: Context) -> list[Route]:
    """/v1/me and /v1/events/names: anywhere in the table."""
    return [Route("/v1/me", partial(me, ctx)), Route("/v1/events/names", partial(event_names, ctx))]


def not_offered_routes(ctx: Context) -> list[Route]:
    """The 501s: after every other route."""
    return [Route(path, partial(not_offered, ctx, area, keyed), methods=list(methods))
            for methods, path, area, keyed in NOT_OFFERED]
