"""Suppressions (issue 16): a send to an address suppressed for the sending domain is a 422
`suppressed` on every door (POST /v1/send, each recipient of a batch, a scheduled send when it is
parked and when it is due, MCP, the built-in agent's reply), and nothing of it leaves; MailKite's
SDK lists, adds and removes them (listSuppressions, addSuppression, removeSuppression) on the key's
own domains only; the operator's `agentmx suppressions` works on the same store.

One world (tests/support/world.py) on each store backend: our Postfix with serve (the API and MCP)
and DKIM signing, a remote Postfix that logs every address our side sends to, the agent's worker
as a real process against a scripted model server."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mailkite
import pytest

from e2e_helpers import send as smtp_send
from support.backends import BACKENDS, store_config
from support.model import ModelServer, tool_call
from support.postfix import wait_for
from support.world import build, delivered_at_rx, sent_to_at_rx
from support.mcpclient import mcp_calls

from agentmx.store import open_store
from agentmx.store.model import DeliveryState, JobState, Suppression, SuppressionReason

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
KEY = "amx_supp_key_for_the_agent_012345"
SIDE = "amx_supp_key_for_another_domain_01"
BOTH = "amx_supp_key_for_two_domains_0123"
DOMAIN = "supp.agents.test"
SIDE_DOMAIN = "side.agents.test"
REFUSAL = re.compile(r"^(\S+) is suppressed for (\S+) since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) \((\w+)\)$")


@pytest.fixture(scope="module")
def model():
    m = ModelServer()
    yield m
    m.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, dns_server, model):
    w = build(dns_server, "s", DOMAIN, f"""
[agent]
base_url = "{model.url}"
model = "scripted-1"
max_rounds = 3
max_attempts = 1
[[routes]]
match = "support@{DOMAIN}"
action = "agent"
prompt = "You answer briefly."
[[routes]]
match = "@{DOMAIN}"
mode = "pull"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}"]
[[api_keys]]
name = "side"
key = "{SIDE}"
allow = ["side@{SIDE_DOMAIN}"]
[[api_keys]]
name = "both"
key = "{BOTH}"
allow = ["agent@{DOMAIN}", "@{SIDE_DOMAIN}"]
""", store=lambda where: store_config(request, request.param, where))
    w["store"] = open_store(w["config"])
    yield w
    w["store"].close()
    w.close()


@pytest.fixture
def w(world, dns_server, model):
    dns_server.set_zone(world["zone"])
    model.script.clear()
    model.requests.clear()
    return world


def address(what: str) -> str:
    return f"{what}-{time.time_ns()}@remote.test"


def suppress(w, to: str, reason=SuppressionReason.BOUNCED, domain: str = DOMAIN) -> None:
    assert w["store"].suppress(Suppression(domain, to, reason, time.time(), "evt_test"))


def http(w, method: str, path: str, body=None, key: str = KEY):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(w["api"] + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def refused(message: str, to: str, reason: str = "bounced") -> None:
    """The 422's message names the address, the sending domain, an RFC 3339 date and the reason."""
    m = REFUSAL.match(message)
    assert m, message
    assert (m.group(1), m.group(2), m.group(4)) == (to, DOMAIN, reason)
    assert abs(datetime.strptime(m.group(3), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
               - time.time()) < 120


def arrived(w, text: str, *recipients: str) -> set[str]:
    """A send after the refused ones reached the remote (its copy, and each of `recipients` in the
    remote's log): what was refused had every chance to. Every address the remote took so far."""
    delivered_at_rx(w, text.encode())
    return wait_for(lambda: (lambda sent: sent if set(recipients) <= sent else None)(sent_to_at_rx(w)),
                    timeout=30, what=f"{recipients} in the remote's log")


# --- refused on every door -------------------------------------------------------------------------

def test_a_send_to_a_suppressed_address_is_422_and_nothing_of_it_leaves(w):
    mk = mailkite.MailKite(KEY, baseUrl=w["api"])
    gone, fine = address("gone"), address("fine")
    suppress(w, gone)
    for to in ([gone], [fine, gone.upper()]):              # alone, or beside another (any case): the whole send
        with pytest.raises(mailkite.MailKiteError) as err:
            mk.send({"from": f"agent@{DOMAIN}", "to": to, "subject": "hello", "text": "refused"})
        assert err.value.status == 422 and err.value.body["code"] == "suppressed"
        refused(err.value.message, gone)
    # suppressed for another sending domain only: not for this one
    elsewhere = address("elsewhere")
    suppress(w, elsewhere, domain=SIDE_DOMAIN)
    marker = f"after-{time.time_ns()}"
    assert mk.send({"from": f"agent@{DOMAIN}", "to": [fine, elsewhere], "subject": "ok", "text": marker})["status"] \
        == "queued"
    assert gone not in arrived(w, marker, fine, elsewhere)


def test_each_batch_recipient_is_checked_on_its_own(w):
    gone, fine = address("batch-gone"), address("batch-fine")
    suppress(w, gone, SuppressionReason.COMPLAINED)
    marker = f"batch-{time.time_ns()}"
    got = mailkite.MailKite(KEY, baseUrl=w["api"]).sendBatch({
        "from": f"agent@{DOMAIN}", "subject": "news", "text": marker, "recipients": [{"to": gone}, {"to": fine}]})
    assert (got["queued"], got["failed"]) == (1, 1)
    failed, queued = got["results"]
    assert (failed["status"], failed["code"], queued["status"]) == ("failed", "suppressed", "queued")
    refused(failed["error"], gone, "complained")
    assert gone not in arrived(w, marker, fine)


def at(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_a_scheduled_send_is_refused_when_parked_and_fails_when_due(w):
    mk = mailkite.MailKite(KEY, baseUrl=w["api"])
    gone, later = address("sched-gone"), address("sched-later")
    suppress(w, gone)
    with pytest.raises(mailkite.MailKiteError) as err:
        mk.send({"from": f"agent@{DOMAIN}", "to": gone, "subject": "later", "text": "x", "scheduledAt": at(60)})
    assert err.value.status == 422
    refused(err.value.message, gone)
    parked = mk.send({"from": f"agent@{DOMAIN}", "to": later, "subject": "later", "text": "y", "scheduledAt": at(5)})
    assert parked["status"] == "scheduled"
    suppress(w, later)                                   # it bounced from another send meanwhile
    got = wait_for(lambda: (lambda r: r if r[1]["status"] not in ("scheduled", "sending") else None)(
        http(w, "GET", f"/v1/send/{parked['id']}")), timeout=30, what="the scheduled send's outcome")
    assert got[1]["status"] == "failed" and got[1]["error"].startswith("suppressed: ")
    refused(got[1]["error"].removeprefix("suppressed: "), later)
    assert later not in sent_to_at_rx(w)


def test_mcp_send_is_refused_with_the_reason(w):
    gone = address("mcp-gone")
    suppress(w, gone)
    (result,) = mcp_calls(w["api"], KEY, [("send", {"from_address": f"agent@{DOMAIN}", "to": [gone],
                                                     "subject": "hi", "text": "refused"})])
    assert result.is_error and "422 suppressed" in result.content[0].text
    assert f"{gone} is suppressed for {DOMAIN} since " in result.content[0].text


def test_the_agents_reply_to_a_suppressed_sender_is_refused_and_the_model_told(w, model):
    """bob bounced before: the built-in agent's reply to his next message is refused before it
    counts or goes; the model sees why, and nothing reaches the remote."""
    bob = address("bob")
    suppress(w, bob)
    model.script = [tool_call("reply", {"text": "We are open 9-17."}), tool_call("done", {"summary": "tried"})]
    subject = f"hours {time.time_ns()}"
    raw = (f"From: Bob <{bob}>\r\nTo: support@{DOMAIN}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.time_ns()}@remote.test>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nOpen?\r\n")
    smtp_send(w["ox"].port, bob, [f"support@{DOMAIN}"], raw.encode())
    store = w["store"]

    def queued():
        for row in store.inbox_query((f"support@{DOMAIN}",), limit=200):
            if row.state is DeliveryState.QUEUED and json.loads(store.get_event(row.id))["subject"] == subject:
                return row.id
        return None
    event_id = wait_for(queued, timeout=30, what="the agent's job")
    out = subprocess.run([AGENTMX, "--config", str(w["cfg"]), "agent", "--once"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    job = store.job(event_id)
    assert job.state is JobState.DONE and job.actions == ()
    told = [m["content"] for m in model.requests[1]["body"]["messages"] if m["role"] == "tool"]
    assert told and told[0].startswith(f"error: not sent: {bob} is suppressed for {DOMAIN} since ")
    assert bob not in sent_to_at_rx(w)


# --- the API, through MailKite's SDK --------------------------------------------------------------

def test_add_list_remove_through_the_sdk_and_the_send_goes_again(w):
    mk = mailkite.MailKite(KEY, baseUrl=w["api"])
    to = address("sdk")
    added = mk.addSuppression({"email": to.upper(), "note": "asked us to stop"})
    assert (added["email"], added["domain"], added["reason"], added["note"], added["created"]) == (
        to, DOMAIN, "manual", "asked us to stop", True)
    again = mk.addSuppression({"email": to, "reason": "bounced"})      # the first reason and time stand
    assert (again["reason"], again["created"]) == ("manual", False)
    listed = [s for s in mk.listSuppressions()["suppressions"] if s["email"] == to]
    assert listed == [{k: v for k, v in added.items() if k != "created"}]
    with pytest.raises(mailkite.MailKiteError) as err:
        mk.send({"from": f"agent@{DOMAIN}", "to": to, "subject": "hi", "text": "no"})
    refused(err.value.message, to, "manual")
    assert mk.removeSuppression(to) == {"email": to, "removed": True, "domains": [DOMAIN]}
    assert mk.removeSuppression(to) == {"email": to, "removed": False, "domains": []}      # MailKite: a no-op success
    assert not [s for s in mk.listSuppressions()["suppressions"] if s["email"] == to]
    marker = f"again-{time.time_ns()}"
    assert mk.send({"from": f"agent@{DOMAIN}", "to": to, "subject": "hi", "text": marker})["status"] == "queued"
    arrived(w, marker, to)


def test_a_key_never_sees_or_changes_another_domains_suppressions(w):
    mine, theirs = address("mine"), address("theirs")
    suppress(w, mine)
    suppress(w, theirs, domain=SIDE_DOMAIN)
    side = mailkite.MailKite(SIDE, baseUrl=w["api"])
    emails = {(s["domain"], s["email"]) for s in side.listSuppressions()["suppressions"]}
    assert (SIDE_DOMAIN, theirs) in emails and not any(d == DOMAIN for d, _ in emails)
    assert http(w, "GET", f"/api/contacts/suppressions?domain={DOMAIN}", key=SIDE)[0] == 404
    status, body = http(w, "DELETE", f"/api/contacts/suppressions/{mine}?domain={DOMAIN}", key=SIDE)
    assert (status, body["code"]) == (404, "unknown_domain")
    assert side.removeSuppression(mine)["removed"] is False             # only its own domain is looked at
    status, body = http(w, "POST", "/api/contacts/suppressions", {"email": mine, "domain": DOMAIN}, key=SIDE)
    assert (status, body["code"]) == (404, "unknown_domain")
    assert w["store"].suppressed(DOMAIN, [mine]) and w["store"].suppressed(SIDE_DOMAIN, [theirs])
    # a key of two domains names one to add; without it, removal lifts the address on both
    status, body = http(w, "POST", "/api/contacts/suppressions", {"email": mine}, key=BOTH)
    assert (status, body["code"]) == (400, "missing_domain")
    assert http(w, "POST", "/api/contacts/suppressions", {"email": mine, "domain": SIDE_DOMAIN}, key=BOTH)[0] == 200
    both = mailkite.MailKite(BOTH, baseUrl=w["api"])
    assert both.removeSuppression(mine) == {"email": mine, "removed": True, "domains": [DOMAIN, SIDE_DOMAIN]}


def test_listing_pages_with_a_cursor(w):
    side = address("page").partition("@")[0]
    wanted = sorted(f"{side}-{n}@pages.test" for n in range(5))
    for to in wanted:
        suppress(w, to, domain=SIDE_DOMAIN)
    seen, cursor = [], None
    for _ in range(50):
        status, page = http(w, "GET", "/api/contacts/suppressions?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                            key=SIDE)
        assert status == 200 and len(page["suppressions"]) <= 2
        seen += [s["email"] for s in page["suppressions"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert [s for s in seen if s in wanted] == wanted and len(seen) == len(set(seen))


@pytest.mark.parametrize("body,code", [
    ({"email": "not an address"}, "bad_email"),
    ({"email": "a@b"}, "bad_email"),
    ({"email": "x" * 250 + "@remote.test"}, "bad_email"),
    ({"email": "ok@remote.test", "reason": "spam"}, "bad_reason"),
    ({"email": "ok@remote.test", "note": "two\nlines"}, "bad_note"),
    ({"email": "ok@remote.test", "note": "n" * 501}, "bad_note"),
    ({"email": "ok@remote.test", "note": 5}, "bad_note"),
    ({"email": "ok@remote.test", "color": "red"}, "bad_field"),
    (["ok@remote.test"], "bad_json"),
])
def test_bad_input_is_a_clear_400_and_nothing_is_kept(w, body, code):
    status, answer = http(w, "POST", "/api/contacts/suppressions", body)
    assert (status, answer["code"]) == (400, code) and answer["error"]
    assert not w["store"].suppressed(DOMAIN, ["ok@remote.test"])
    assert http(w, "GET", "/api/contacts/suppressions?cursor=garbage!")[1]["code"] == "bad_cursor"


def test_the_api_needs_a_key(w):
    req = urllib.request.Request(w["api"] + "/api/contacts/suppressions")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401


# --- the operator's CLI ------------------------------------------------------------------------------

def cli(w, *args) -> subprocess.CompletedProcess:
    """`agentmx suppressions ...` as the services' user (nobody here), as an operator runs it."""
    return subprocess.run([AGENTMX, "--config", str(w["cfg"]), "suppressions", *args], capture_output=True,
                          text=True, timeout=60, user="nobody", group="nogroup", extra_groups=[], cwd="/")


def test_the_cli_adds_lists_and_removes_on_the_same_store(w):
    to = address("cli")
    out = cli(w, "add", to.upper(), "--note", "asked by phone")      # one [domains] entry: no --domain needed
    assert out.returncode == 0 and f"{to} suppressed for {DOMAIN}" in out.stdout, out.stderr
    listed = cli(w, "list", "--domain", DOMAIN)
    assert re.search(rf"^{DOMAIN}  {re.escape(to)}  manual  since \S+Z  asked by phone$", listed.stdout, re.M)
    (shown,) = [json.loads(line) for line in cli(w, "list", "--json").stdout.splitlines() if to in line]
    assert (shown["email"], shown["reason"]) == (to, "manual")
    status, answer = http(w, "POST", "/v1/send", {"from": f"agent@{DOMAIN}", "to": to, "text": "no"})
    assert (status, answer["code"]) == (422, "suppressed")
    assert any(s["email"] == to for s in mailkite.MailKite(KEY, baseUrl=w["api"]).listSuppressions()["suppressions"])
    out = cli(w, "remove", to)
    assert out.returncode == 0 and "no longer suppressed" in out.stdout
    assert "was not suppressed" in cli(w, "remove", to).stdout
    assert cli(w, "add", "nobody", "--domain", DOMAIN).returncode == 2
    assert cli(w, "add", to, "--note", "a\x1bb").returncode == 2
    assert not w["store"].suppressed(DOMAIN, [to])
