"""The config's domains as MailKite's SDK reads them: listDomains, getDomain, verifyDomain,
testWebhook.

    GET  /api/domains                     the domains this key may send as
    GET  /api/domains/{id}                one (the id is the domain name)
    POST /api/domains/{id}/verify         its DNS checked now
    POST /api/domains/{id}/webhook/test   a signed test event POSTed to each of its push routes

Read-only: domains live in the config file ([domains."<name>"]). A key sees a domain when its
`allow` list names it or an address at it. Each domain comes with every record to publish
(`agentmx dns`: dnsrecords.records) and the state `agentmx check` gives it (dnsrecords.check,
through the resolver of [dns]): ok, missing, wrong, unknown (DNS did not answer: temperror),
published (a DKIM key is published, but serve, which may not read the milter's private keys, cannot
compare it; its value is null), or unchecked (MTA-STS and TLS-RPT, which `agentmx check` does not
look up). A check is kept for
CHECK_TTL seconds and shared by the calls that want it while it runs, so a burst of calls is one
check, not a burst of DNS queries; verify starts a new one (or joins the one running).

The test event is not mail: {"type": "webhook.test", "test": true, "id": "whtest_...", ...},
signed like a delivery (webhook-id is its id) and kept nowhere.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmx import dnsrecords
from agentmx.config import ApiKey, Config, Route as RouteConfig
from agentmx.deliver.core import excerpt
from agentmx.deliver.http import post as http_post
from agentmx.resolver import Resolver
from agentmx.webhook import sign_headers
from agentmx.times import rfc3339

from .context import Context
from .deliveries import public_endpoint, readable_routes, route_id
from .errors import ApiError

CHECK_TTL = 60.0          # seconds a domain's DNS check answers GET /api/domains before it is done again
LOOKUP_BUDGET = 50        # DNS queries one check may make (as `agentmx check`)



class DnsChecks:
    """dnsrecords.check per domain, each answer kept `ttl` seconds, one check per domain at a time."""

    def __init__(self, config: Config, run, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, ttl: float = CHECK_TTL):
        self.config, self.run, self.wall, self.clock, self.ttl = config, run, wall, clock, ttl
        self.resolver = Resolver(config.dns.servers, config.dns.timeout)
        self._done: dict[str, tuple[float, float, list[dnsrecords.Finding]]] = {}
        self._running: dict[str, asyncio.Future] = {}
        self.checks = 0                      # checks made (tests: a burst is one)

    def _check(self, domain: str) -> tuple[float, float, list[dnsrecords.Finding]]:
        self.checks += 1
        started, at = self.clock(), self.wall()
        return started, at, dnsrecords.check(self.config, domain, self.resolver.session(LOOKUP_BUDGET))

    async def get(self, domain: str, fresh: bool = False) -> tuple[float, list[dnsrecords.Finding]]:
        """(when it was checked, unix seconds; the findings)."""
        done = self._done.get(domain)
        if done and not fresh and self.clock() - done[0] < self.ttl:
            return done[1], done[2]
        running = self._running.get(domain)
        if running is None:
            running = self._running[domain] = asyncio.ensure_future(self.run(self._check, domain))

            def finished(f: asyncio.Future) -> None:
                self._running.pop(domain, None)
                if not f.cancelled() and f.exception() is None:
                    self._done[domain] = f.result()
            running.add_done_callback(finished)
        _, at, findings = await asyncio.shield(running)
        return at, findings


def domain_view(config: Config, domain: str, checked_at: float, findings: list[dnsrecords.Finding]) -> dict:
    found = {f.record: f for f in findings}
    records = []
    for r in dnsrecords.records(config, domain):
        f = found.get(r.what)
        detail = "DNS did not answer; verify again shortly" if f and f.status == "unknown" else (f.detail if f else "")
        records.append({"type": r.rtype, "name": r.name, "value": r.value or None, "purpose": r.what,
                        "status": f.status if f else "unchecked", "detail": detail})
    states = {f.status for f in findings}
    status = ("verified" if states <= {"ok", "published"} else
              "pending" if states & {"missing", "wrong"} else "unknown")
    return {"id": domain, "name": domain, "status": status, "verified": status == "verified",
            "records": records, "checkedAt": rfc3339(checked_at)}


def key_domains(config: Config, key: ApiKey) -> list[str]:
    """The config's domains this key names, whole or by an address at it."""
    named = {a.rpartition("@")[2].lower() for a in key.allow}
    return [d.name for d in config.domains if d.name in named]


class DomainRoutes:
    def __init__(self, ctx: Context, checks: DnsChecks | None = None):
        self.ctx = ctx
        self.checks = checks or DnsChecks(ctx.config, ctx.run, wall=ctx.clock)

    def domain(self, key: ApiKey, name: str) -> str:
        name = name.lower().rstrip(".")
        if name not in key_domains(self.ctx.config, key):
            raise ApiError(404, "unknown_domain", f"no domain {name[:100]} for this key")
        return name

    async def view(self, domain: str, fresh: bool = False) -> dict:
        at, findings = await self.checks.get(domain, fresh)
        return domain_view(self.ctx.config, domain, at, findings)

    async def list(self, request: Request):
        key = self.ctx.key(request)
        domains = key_domains(self.ctx.config, key)
        return JSONResponse({"domains": list(await asyncio.gather(*(self.view(d) for d in domains)))})

    async def get(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.view(self.domain(key, request.path_params["id"])))

    async def verify(self, request: Request):
        key = self.ctx.key(request)
        return JSONResponse(await self.view(self.domain(key, request.path_params["id"]), fresh=True))

    def _post_test(self, domain: str, route: RouteConfig) -> dict:
        now = self.ctx.clock()
        test_id = "whtest_" + secrets.token_hex(12)
        event = {"id": test_id, "type": "webhook.test", "test": True, "createdAt": rfc3339(now),
                 "domain": domain, "route": {"id": route_id(route), "match": route.match},
                 "note": "a test of this webhook from agentmx: not an email"}
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = sign_headers(route.secret, test_id, body, timestamp=int(now), mailkite=route.mailkite_signature)
        started = time.monotonic()
        resp = http_post(route.endpoint, body, headers, route.timeout)
        return {"route": route_id(route), "match": route.match, "endpoint": public_endpoint(route.endpoint),
                "webhookId": test_id, "ok": 200 <= resp.status < 300, "status": resp.status,
                "durationMs": int((time.monotonic() - started) * 1000), "excerpt": excerpt(resp)}

    async def test_webhook(self, request: Request):
        key = self.ctx.key(request)
        domain = self.domain(key, request.path_params["id"])
        targets = [r for r in readable_routes(self.ctx.config, key)
                   if r.pushes and r.match.rpartition("@")[2].lower() == domain]
        if not targets:
            raise ApiError(409, "no_webhook", f"no push route of {domain} that this key may read: nothing to test")
        results = await asyncio.gather(*(self.ctx.run(self._post_test, domain, r) for r in targets))
        return JSONResponse({"domain": domain, "results": list(results)})


def routes(ctx: Context, d: DomainRoutes | None = None) -> list[Route]:
    """The routes; `d` shared with the console's domains page (one cache of checks for both)."""
    d = d or DomainRoutes(ctx)
    return [Route("/api/domains", d.list),
            Route("/api/domains/{id:str}", d.get),
            Route("/api/domains/{id:str}/verify", d.verify, methods=["POST"]),
            Route("/api/domains/{id:str}/webhook/test", d.test_webhook, methods=["POST"])]
