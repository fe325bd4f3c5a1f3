"""MailKite's own SDK (mailkite-dev) reading agentmx: listMessages, getMessage, retryDelivery,
retryDeliveries, listDeliveryAttempts, listRoutes, listRouteCandidates, deliverToRoute,
listDomains, getDomain, verifyDomain, testWebhook.

One world (tests/support/world.py): our Postfix with the agentmx pipe transport and `agentmx
serve`; mail arrives by SMTP; the agent's endpoints are real HTTP receivers on loopback; DNS is
the loopback DNS server. Every call goes through the SDK method, not raw HTTP."""
from __future__ import annotations

import asyncio
import base64
import json
import time

import anyio
import mailkite
import pytest

from e2e_helpers import send
from support.postfix import wait_for
from support.receiver import Receiver
from support.world import build

from agentmx import webhook
from agentmx.api.domains import DnsChecks

DOMAIN = "read.agents.test"
KEY = "amx_read_key_for_the_agent_0123456"
OTHER = "amx_read_key_for_someone_else_012"
WHOLE = "amx_read_key_for_the_whole_domain"
SECRET = "whsec_" + base64.b64encode(b"read-secret-read-secret-read-sec").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"other-secret-other-secret-other-").decode()


@pytest.fixture(scope="module")
def world(dns_server):
    agent, whole = Receiver(), Receiver()
    # userinfo and a query in the endpoint: where operators put secrets; GET /api/routes shows neither
    endpoint = f"http://hookuser:hookpass@127.0.0.1:{agent.port}/hooks/email?token=querysecret"
    w = build(dns_server, "r", DOMAIN, f"""
[[routes]]
match = "agent@{DOMAIN}"
endpoint = "{endpoint}"
secret = "{SECRET}"
mailkite_signature = true
timeout = 3
[[routes]]
match = "puller@{DOMAIN}"
mode = "pull"
[[routes]]
match = "@{DOMAIN}"
endpoint = "{whole.url}"
secret = "{OTHER_SECRET}"
timeout = 3
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}", "puller@{DOMAIN}"]
[[api_keys]]
name = "other"
key = "{OTHER}"
allow = ["other@{DOMAIN}"]
[[api_keys]]
name = "whole"
key = "{WHOLE}"
allow = ["@{DOMAIN}"]
""")
    w["agent"], w["whole"] = agent, whole
    yield w
    w.close()
    agent.stop()
    whole.stop()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    world["agent"].default = world["whole"].default = (200, 0.0)
    world["agent"].script.clear()
    return world


def sdk(w, key: str = KEY) -> mailkite.MailKite:
    return mailkite.MailKite(key, baseUrl=w["api"])


def mail(w, to: str, subject: str, sender: str = "news@remote.test", extra: str = "") -> None:
    n = time.time_ns()
    raw = (f"From: Sender <{sender}>\r\nTo: Agent <{to}>\r\nSubject: {subject}\r\nMessage-ID: <r{n}@remote.test>\r\n"
           f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\n{extra}\r\nhello\r\n").encode()
    send(w["ox"].port, sender, [to], raw)


def arrived(w, subject: str, key: str = KEY) -> dict:
    return wait_for(lambda: next(iter(sdk(w, key).listMessages(search=subject)["messages"]), None), timeout=30,
                    what=f"{subject!r} in listMessages")


def error(call) -> mailkite.MailKiteError:
    with pytest.raises(mailkite.MailKiteError) as err:
        call()
    return err.value


def test_list_and_get_messages_newest_first_paged_searched_and_scoped_by_key(w):
    tag = f"t{time.time_ns()}"
    mk = sdk(w)
    for i, sender in enumerate(("ann@remote.test", "bob@remote.test", "cat@remote.test")):
        mail(w, f"puller@{DOMAIN}", f"{tag} number {i} 100%_", sender=sender)       # one after the other
        wait_for(lambda: len(mk.listMessages(search=tag)["messages"]) == i + 1 or None, timeout=30, what="it")
    listed = mk.listMessages(search=tag)["messages"]
    assert [m["subject"] for m in listed] == [f"{tag} number {i} 100%_" for i in (2, 1, 0)]    # newest first
    first = mk.listMessages(search=tag, limit=2)
    assert [m["id"] for m in first["messages"]] == [m["id"] for m in listed[:2]] and first["nextCursor"]
    rest = mk.listMessages(search=tag, limit=2, before=first["nextCursor"])
    assert [m["id"] for m in rest["messages"]] == [listed[2]["id"]] and rest["nextCursor"] is None
    # search: the sender or the subject, any case; % and _ are literal characters
    assert [m["id"] for m in mk.listMessages(search="BOB@remote")["messages"]][:1] == [listed[1]["id"]]
    assert len(mk.listMessages(search=f"{tag} number 1 100%_")["messages"]) == 1
    assert mk.listMessages(search=f"{tag}%number")["messages"] == []
    # a message is the stored event with its inbox member, as GET /v1/messages gives it
    got = mk.getMessage(listed[0]["id"])
    assert got == listed[0] and got["type"] == "email.received" and got["recipient"] == f"puller@{DOMAIN}"
    assert got["inbox"]["state"] == "stored"
    # another key sees nothing of it
    other = sdk(w, OTHER)
    assert other.listMessages(search=tag)["messages"] == [] and other.listMessages()["messages"] == []
    assert error(lambda: other.getMessage(listed[0]["id"])).status == 404
    assert error(lambda: other.listMessages(before=listed[0]["id"])).body["code"] == "bad_before"
    bad = error(lambda: mk.listMessages(search="x" * 201))
    assert (bad.status, bad.body["code"]) == (400, "bad_search")


def test_a_failed_delivery_retried_is_delivered_with_one_more_attempt(w):
    agent = w["agent"]
    agent.default = (500, 0.0)                 # the endpoint fails: deliver defers, Postfix keeps it
    subject = f"retry me {time.time_ns()}"
    mail(w, f"agent@{DOMAIN}", subject)
    mk = sdk(w)
    msg = arrived(w, subject)
    before = wait_for(lambda: (lambda a: a if a["attempts"] else None)(mk.listDeliveryAttempts(msg["id"])),
                      timeout=30, what="the failed attempt")
    assert before["status"] == "deferred" and before["attempts"][0]["status"] == 500
    assert before["attempts"][0]["outcome"] == "deferred" and "scripted" in before["attempts"][0]["excerpt"]
    agent.default = (200, 0.0)                 # the endpoint works again
    posts = len(agent.requests)
    result = mk.retryDelivery(msg["id"])
    assert result["ok"] is True and result["status"] == "delivered" and result["httpStatus"] == 200
    assert result["id"] == msg["id"]
    # the same event, with its original webhook-id, to the same route
    replayed = agent.requests[posts]
    assert replayed.headers["webhook-id"] == msg["id"] and json.loads(replayed.body)["id"] == msg["id"]
    assert replayed.path == "/hooks/email?token=querysecret"
    after = mk.listDeliveryAttempts(msg["id"])
    assert after["status"] == "delivered" and len(after["attempts"]) == len(before["attempts"]) + 1
    newest = after["attempts"][0]
    assert newest["status"] == 200 and newest["outcome"] == "delivered" and newest["webhookId"] == msg["id"]
    assert [a["at"] for a in after["attempts"]] == sorted((a["at"] for a in after["attempts"]), reverse=True)
    assert mk.getMessage(msg["id"])["inbox"]["state"] == "delivered"
    # another key reaches none of it
    other = sdk(w, OTHER)
    assert error(lambda: other.retryDelivery(msg["id"])).status == 404
    assert error(lambda: other.listDeliveryAttempts(msg["id"])).body["code"] == "unknown_delivery"
    assert len(agent.requests) == posts + 1


def test_a_pull_route_has_nothing_to_retry(w):
    subject = f"pulled {time.time_ns()}"
    mail(w, f"puller@{DOMAIN}", subject)
    msg = arrived(w, subject)
    err = error(lambda: sdk(w).retryDelivery(msg["id"]))
    assert (err.status, err.body["code"]) == (409, "pull_route") and "pull route" in err.message
    assert sdk(w).listDeliveryAttempts(msg["id"])["status"] == "stored"


def test_bulk_retry_answers_200_with_a_result_per_id(w):
    tag = f"bulk {time.time_ns()}"
    mail(w, f"agent@{DOMAIN}", f"{tag} pushed")
    mail(w, f"puller@{DOMAIN}", f"{tag} pulled")
    pushed, pulled = arrived(w, f"{tag} pushed"), arrived(w, f"{tag} pulled")
    mk = sdk(w)
    out = mk.retryDeliveries({"deliveryIds": [pushed["id"], "msg_0000000000000000nope"],
                              "messageIds": [pulled["id"], pushed["id"]],
                              "threadIds": [pushed["threadId"], "<no-such-thread@remote.test>"]})
    by_id = {r["id"]: r for r in out["results"]}
    assert len(out["results"]) == 4                        # pushed once (three ways to name it), pulled, two unknown
    assert by_id[pushed["id"]]["ok"] is True and by_id[pushed["id"]]["status"] == "delivered"
    assert (by_id[pulled["id"]]["ok"], by_id[pulled["id"]]["code"]) == (False, "pull_route")
    assert by_id["msg_0000000000000000nope"]["code"] == "unknown_delivery"
    assert by_id["<no-such-thread@remote.test>"]["code"] == "unknown_thread"
    # another key's ids are unknown to this one, one by one
    assert sdk(w, OTHER).retryDeliveries({"messageIds": [pushed["id"]]})["results"][0]["code"] == "unknown_delivery"
    err = error(lambda: mk.retryDeliveries({"deliveryIds": [f"msg_{i:016d}" for i in range(51)]}))
    assert (err.status, err.body["code"]) == (400, "bad_ids")


def test_routes_are_the_keys_own_and_never_show_a_secret(w):
    routes = sdk(w).listRoutes()["routes"]
    assert [r["match"] for r in routes] == [f"agent@{DOMAIN}", f"puller@{DOMAIN}"]     # not the whole domain's
    agent, puller = routes
    assert agent["endpoint"] == f"http://127.0.0.1:{w['agent'].port}/hooks/email"
    assert agent["mode"] == "push" and agent["mailkiteSignature"] is True and agent["id"].startswith("rt_")
    assert agent["ack"] == "lenient" and agent["timeout"] == 3
    assert puller["mode"] == "pull" and puller["endpoint"] is None
    everything = json.dumps(sdk(w, WHOLE).listRoutes())
    assert len(json.loads(everything)["routes"]) == 3
    for secret in (SECRET, SECRET[6:], OTHER_SECRET, "hookpass", "querysecret"):
        assert secret not in everything
    assert sdk(w, OTHER).listRoutes() == {"routes": []}
    assert sdk(w).listRoutes() == sdk(w).listRoutes()                                 # ids are stable


def test_route_candidates_and_deliver_to_route(w):
    tag = f"cand {time.time_ns()}"
    mail(w, f"agent@{DOMAIN}", f"{tag} a")
    mail(w, f"puller@{DOMAIN}", f"{tag} p")
    pushed, pulled = arrived(w, f"{tag} a"), arrived(w, f"{tag} p")
    mk = sdk(w)
    agent_route, pull_route = mk.listRoutes()["routes"]
    cands = mk.listRouteCandidates(agent_route["id"], limit=100)["messages"]
    assert pushed["id"] in [m["id"] for m in cands] and all(m["recipient"] == f"agent@{DOMAIN}" for m in cands)
    posts = len(w["agent"].requests)
    out = mk.deliverToRoute(agent_route["id"], {"messageIds": [pushed["id"], pulled["id"]]})
    by_id = {r["id"]: r for r in out["results"]}
    assert by_id[pushed["id"]]["ok"] is True and by_id[pulled["id"]]["code"] == "other_route"
    assert [r.headers["webhook-id"] for r in w["agent"].requests[posts:]] == [pushed["id"]]
    err = error(lambda: mk.deliverToRoute(pull_route["id"], {"messageIds": [pulled["id"]]}))
    assert (err.status, err.body["code"]) == (409, "pull_route")
    assert error(lambda: sdk(w, OTHER).listRouteCandidates(agent_route["id"])).status == 404


def test_domains_show_each_record_and_its_state_from_dns(w, dns_server):
    mk = sdk(w)
    (domain,) = mk.listDomains()["domains"]
    assert domain["id"] == DOMAIN and domain["status"] == "verified"
    kinds = {r["purpose"].split(" ")[0]: r for r in domain["records"]}
    assert set(kinds) == {"MX", "SPF", "DKIM", "DMARC"} and all(r["status"] == "ok" for r in domain["records"])
    assert kinds["DMARC"]["name"] == f"_dmarc.{DOMAIN}" and kinds["DKIM"]["value"].startswith("v=DKIM1")
    assert mk.getDomain(DOMAIN) == domain
    # the zone loses its DMARC record: the cached state holds until verify checks again
    zone = dict(w["zone"])
    del zone[f"_dmarc.{DOMAIN}"]
    dns_server.set_zone(zone)
    assert mk.getDomain(DOMAIN)["status"] == "verified"
    checked = mk.verifyDomain(DOMAIN)
    assert checked["status"] == "pending" and checked["verified"] is False
    assert {r["purpose"]: r["status"] for r in checked["records"]}["DMARC"] == "missing"
    assert mk.getDomain(DOMAIN)["status"] == "pending"                  # the new check is the cached one
    dns_server.set_zone(w["zone"])
    assert mk.verifyDomain(DOMAIN)["status"] == "verified"
    assert sdk(w, OTHER).listDomains()["domains"][0]["id"] == DOMAIN    # other@ is an address at it
    assert error(lambda: mk.getDomain("elsewhere.test")).body["code"] == "unknown_domain"


def test_a_burst_of_domain_reads_is_one_dns_check_until_the_cache_time(w, dns_server):
    now = [1000.0]

    async def run(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args)

    checks = DnsChecks(w["config"], run, clock=lambda: now[0], ttl=60)

    async def burst():
        return await asyncio.gather(*(checks.get(DOMAIN) for _ in range(20)))

    queries = dns_server.resolver.queries
    answers = asyncio.run(burst())
    assert checks.checks == 1 and len({id(a[1]) for a in answers}) == 1
    made = dns_server.resolver.queries - queries
    assert 0 < made <= 6                      # MX, SPF, one DKIM key, DMARC (and nothing for the 19 others)
    zone = dict(w["zone"])
    del zone[f"_dmarc.{DOMAIN}"]
    dns_server.set_zone(zone)
    now[0] += 59
    assert all(f.status == "ok" for f in asyncio.run(checks.get(DOMAIN))[1]) and checks.checks == 1
    now[0] += 2                               # past the cache time: checked again, the change seen
    assert {f.record: f.status for f in asyncio.run(checks.get(DOMAIN))[1]}["DMARC"] == "missing"
    assert checks.checks == 2


def test_webhook_test_posts_a_signed_test_event_to_each_push_route(w):
    agent, whole = w["agent"], w["whole"]
    posts, whole_posts = len(agent.requests), len(whole.requests)
    out = sdk(w).testWebhook(DOMAIN)
    (result,) = out["results"]                 # this key reads the agent@ route only
    assert result["ok"] is True and result["status"] == 200 and result["match"] == f"agent@{DOMAIN}"
    assert result["durationMs"] >= 0 and result["excerpt"] == '{"ok":true}'
    (req,) = agent.requests[posts:]
    event = json.loads(req.body)
    assert event["type"] == "webhook.test" and event["test"] is True and event["id"] == result["webhookId"]
    webhook.verify(req.headers, req.body, SECRET)                                      # Standard Webhooks
    assert mailkite.verify_webhook(req.headers["x-mailkite-signature"], req.body, SECRET)
    assert len(whole.requests) == whole_posts
    whole.default = (503, 0.0)
    results = {r["match"]: r for r in sdk(w, WHOLE).testWebhook(DOMAIN)["results"]}
    assert set(results) == {f"agent@{DOMAIN}", f"@{DOMAIN}"}
    assert (results[f"@{DOMAIN}"]["ok"], results[f"@{DOMAIN}"]["status"]) == (False, 503)
    err = error(lambda: sdk(w, OTHER).testWebhook(DOMAIN))
    assert (err.status, err.body["code"]) == (409, "no_webhook")


def test_a_dkim_key_published_but_not_comparable_leaves_the_domain_verified(w):
    """serve may not read the milter's private keys: dnsrecords.check says `published` for them
    (test_dkim_keys_dns.py runs it as such a user); that is no reason to call the domain pending."""
    from agentmx.api.domains import domain_view
    from agentmx.dnsrecords import Finding
    found = [Finding("MX", "ok", ""), Finding("SPF", "ok", ""), Finding("DKIM s1", "published", "p"),
             Finding("DMARC", "ok", "")]
    view = domain_view(w["config"], DOMAIN, time.time(), found)
    assert view["status"] == "verified"
    view = domain_view(w["config"], DOMAIN, time.time(), [*found[:3], Finding("DMARC", "unknown", "timeout to 127.0.0.1")])
    assert view["status"] == "unknown" and "127.0.0.1" not in json.dumps(view)
