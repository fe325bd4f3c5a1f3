"""MailKite's own SDK (mailkite-dev, unchanged) against a running `agentmx serve`: the platform calls
(me, listEvents, listEventNames, createRealtimeToken with GET /v1/realtime), every failure as the
JSON the SDK reads (MailKiteError with our status and message, never a JSONDecodeError or a hang),
and a table of EVERY public method of mailkite.MailKite: a method missing from it fails, every
method the table calls 501 is called here and must answer 501 with a reason.

serve runs in a thread of this process (tests/api/test_serve_limits.Served: the real app on Hypercorn,
a real socket, an embedded store); messages come in through deliver itself."""
from __future__ import annotations

import inspect
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mailkite
import pytest

from support.mcpclient import mcp_calls
from test_serve_limits import KEY, OTHER, Served, config_text

from agentmx.api import mailkite as platform
from agentmx.api import realtime
from agentmx.config import parse_config

# Every public method of mailkite.MailKite and what it does against agentmx:
#   ("works", where its test is)   ("local",): no network, works as is   ("501",): a JSON 501 with the reason
#   ("raw",): the SDK's low-level transport, used by all the others
OTHERS = {"sending": "tests/e2e/test_sdk_send.py", "reading": "tests/e2e/test_mailkite_reading.py",
          "webhooks": "tests/core/test_webhook.py", "suppressions": "tests/e2e/test_suppressions.py"}
HERE = "tests/api/test_mailkite_platform.py"
TABLE: dict[str, tuple] = {
    "request": ("raw",), "requestBinary": ("raw",),
    # sending (the sending helper's tests)
    "send": ("works", OTHERS["sending"]), "sendBatch": ("works", OTHERS["sending"]),
    "uploadAttachment": ("works", OTHERS["sending"]),
    # reading (the reading helper's tests)
    "listMessages": ("works", OTHERS["reading"]), "getMessage": ("works", OTHERS["reading"]),
    "retryDelivery": ("works", OTHERS["reading"]), "retryDeliveries": ("works", OTHERS["reading"]),
    "listDeliveryAttempts": ("works", OTHERS["reading"]), "listRoutes": ("works", OTHERS["reading"]),
    "listDomains": ("works", OTHERS["reading"]), "getDomain": ("works", OTHERS["reading"]),
    "verifyDomain": ("works", OTHERS["reading"]), "testWebhook": ("works", OTHERS["reading"]),
    "deliverToRoute": ("works", OTHERS["reading"]), "listRouteCandidates": ("works", OTHERS["reading"]),
    # the platform (this file)
    "me": ("works", HERE), "createRealtimeToken": ("works", HERE), "listEvents": ("works", HERE),
    "listEventNames": ("works", HERE),
    # suppressions (issue 16)
    "listSuppressions": ("works", OTHERS["suppressions"]), "addSuppression": ("works", OTHERS["suppressions"]),
    "removeSuppression": ("works", OTHERS["suppressions"]),
    # no network: the webhook side (the webhooks helper checks them against our deliveries)
    "verifyWebhook": ("local",), "verify_webhook": ("local",), "reply_ok": ("local",), "reply_spam": ("local",),
    "reply_drop": ("local",), "reply_block_sender": ("local",), "encrypt": ("local",), "decrypt": ("local",),
    # not offered: agentmx/api/mailkite.py says why
    **{name: ("501",) for name in (
        "agent", "route", "semanticSearch", "sendEvent",
        "listTemplates", "listBaseTemplates", "getTemplate", "createTemplate",
        "createDomain", "deleteDomain", "suggestSubdomain", "checkSubdomain", "claimSubdomain",
        "checkDomainAvailability", "registerDomain", "getWebhookSecret",
        "setWebhook", "deleteWebhook", "setTrackingWebhook", "deleteTrackingWebhook", "setWebhookEvents",
        "deleteWebhookEvents", "createRoute", "deleteRoute",
        "listLists", "createList", "getList", "updateList", "deleteList", "listListContacts", "addListContacts",
        "removeListContact",
        "listBroadcasts", "createBroadcast", "getBroadcast", "updateBroadcast", "deleteBroadcast", "sendBroadcast",
        "register", "registerOauthClient", "exchangeOauthToken", "getApiKey", "rotateApiKey", "listScopedKeys",
        "createScopedKey", "deleteScopedKey",
        "listAppPasswords", "createAppPassword", "updateAppPassword", "rotateAppPassword", "deleteAppPassword",
        "listMailboxMessages", "getMailboxMessageRaw", "setMailboxMessageFlags",
        "getUsage",
        "listSequences", "createSequence", "getSequence", "updateSequence", "deleteSequence", "startSequence",
        "stopSequence", "listTriggers", "createTrigger", "updateTrigger", "deleteTrigger",
        "listEnrollments", "getEnrollment", "listEnrollmentRuns", "cancelEnrollment")},
}
PUBLIC_AT_MAILKITE = {"register", "registerOauthClient", "exchangeOauthToken", "semanticSearch"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("platform"), max_requests=2)
    yield s
    s.running.stop()


def finished_within(seconds: float, fn, *args):
    """fn(*args) in a thread: its answer, or the test fails when it hangs (the SDK sets no timeout)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:        # noqa: BLE001 - handed to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {seconds}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def sdk_error(fn, *args) -> mailkite.MailKiteError:
    with pytest.raises(mailkite.MailKiteError) as err:
        finished_within(10, fn, *args)
    return err.value


# --- the table ----------------------------------------------------------------------------------

def test_every_sdk_method_is_in_the_table():
    public = {name for name, _ in inspect.getmembers(mailkite.MailKite, callable) if not name.startswith("_")}
    assert public - set(TABLE) == set(), "new MailKite SDK methods: say what each does here (TABLE, docs)"
    assert set(TABLE) - public == set(), "methods the SDK no longer has"
    assert all(entry[0] in ("works", "local", "501", "raw") for entry in TABLE.values())


def test_every_method_that_works_is_called_through_the_sdk_by_the_test_named():
    """A "works" entry names the test file that calls the SDK method itself (mk.<method>): the
    claim is checked, not taken on trust."""
    root = Path(__file__).resolve().parents[2]
    for name, entry in TABLE.items():
        if entry[0] == "works":
            text = (root / entry[1]).read_text()
            assert re.search(rf"\.{name}\b", text), f"{name}: {entry[1]} does not call it"


def test_every_501_method_answers_501_with_its_reason_through_the_sdk(served):
    mk = mailkite.MailKite(KEY, baseUrl=served.url)
    reasons = set(platform.REASONS.values())
    for name, entry in TABLE.items():
        if entry[0] != "501":
            continue
        method = getattr(mk, name)
        args = ["x1" for p in inspect.signature(method).parameters.values() if p.default is inspect.Parameter.empty
                and p.kind is p.POSITIONAL_OR_KEYWORD]
        err = sdk_error(method, *args)
        assert err.status == 501 and err.message in reasons, (name, err.status, err.message)
        assert err.body == {"error": err.message, "code": "not_supported"}, name


def test_a_501_asks_for_the_key_first_unless_mailkite_serves_it_without_one(served):
    nobody = mailkite.MailKite("amx_not_a_key_of_ours_0000000000", baseUrl=served.url)
    assert sdk_error(nobody.listTemplates).status == 401
    for name in PUBLIC_AT_MAILKITE:
        method = getattr(nobody, name)
        args = ["x1" for p in inspect.signature(method).parameters.values() if p.default is inspect.Parameter.empty]
        assert sdk_error(method, *args).status == 501, name


def test_local_methods_need_no_network(monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def no_network(*a, **kw):
        raise AssertionError("a local method used the network")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    mk = mailkite.MailKite(KEY, baseUrl="http://127.0.0.1:9")
    assert [json.loads(r())["status"] for r in (mk.reply_ok, mk.reply_spam, mk.reply_drop)] == ["ok", "spam", "drop"]
    assert json.loads(mk.reply_block_sender())["actions"] == [{"type": "block-sender"}]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    assert mk.decrypt(mk.encrypt("at rest", public_pem), private_pem) == "at rest"
    import hashlib
    import hmac
    t = str(int(time.time() * 1000))
    v1 = hmac.new(b"secret", t.encode() + b".{}", hashlib.sha256).hexdigest()
    assert mk.verifyWebhook(f"t={t},v1={v1}", b"{}", "secret") and mailkite.MailKite.verify_webhook(
        f"t={t},v1={v1}", b"{}", "secret")
    assert not mk.verifyWebhook(f"t=1,v1={v1}", b"{}", "secret")          # stale: refused, locally


# --- the platform calls -------------------------------------------------------------------------

def test_me_says_who_the_key_is_without_its_secret(served):
    me = finished_within(10, mailkite.MailKite(KEY, baseUrl=served.url).me)
    assert me["name"] == "agent" and me["email"] == "agent@pull.agents.test" and me["verified"] is True
    assert me["allow"] == ["agent@pull.agents.test"] and me["version"]
    assert KEY not in json.dumps(me)


def test_list_events_answers_json_at_once_newest_first_with_mailkites_filters(served):
    """listEvents() asked GET /v1/events, which was agentmx's event stream: the SDK read it
    forever. Now it is JSON unless the client asks for text/event-stream."""
    first, second = served.deliver("events one"), served.deliver("events two")
    mk = mailkite.MailKite(KEY, baseUrl=served.url)
    events = finished_within(10, mk.listEvents)["events"]
    ours = [e["id"] for e in events if e["id"] in (first, second)]
    assert ours == [second, first]                                  # newest first
    e = next(e for e in events if e["id"] == second)
    assert e["name"] == "email.received" and e["email"] == "noreply@shop.test" and e["data"]["subject"] == "events two"
    assert {e["id"] for e in finished_within(10, mk.listEvents, "email.received", "noreply@shop.test")["events"]} >= {
        first, second}
    assert finished_within(10, mk.listEvents, "email.bounced")["events"] == []
    assert finished_within(10, mk.listEvents, None, "someone@else.test")["events"] == []
    assert finished_within(10, mailkite.MailKite(OTHER, baseUrl=served.url).listEvents)["events"] == []
    assert sdk_error(mk.listEvents, None, "not-an-address").status == 400
    names = [n["name"] for n in finished_within(10, mk.listEventNames)["names"]]
    assert names[0] == "email.received" and {"email.sent", "email.bounced"} <= set(names)


def sse(url: str, headers: dict | None = None, until: str | None = None, timeout: float = 20) -> list[str]:
    """The lines of an event stream up to the first `data:` line with `until` in it (or the head)."""
    lines = []
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        for raw in resp:
            lines.append(raw.decode())
            if (until is None and len(lines) == 3) or (until and raw.startswith(b"data: ") and until in raw.decode()):
                return lines
    return lines


def test_a_realtime_token_opens_the_keys_event_stream_once_without_a_header(served):
    mk = mailkite.MailKite(KEY, baseUrl=served.url)
    answer = finished_within(10, mk.createRealtimeToken)
    assert answer["token"].startswith("rt_") and answer["url"].startswith("/v1/realtime?token=")
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(sse(served.url + answer["url"], until="realtime mail")),
                              daemon=True)
    reader.start()
    time.sleep(0.5)
    served.deliver("realtime mail")
    reader.join(20)
    data = json.loads(next(line for line in got if line.startswith("data: "))[6:])
    assert data["subject"] == "realtime mail"
    with pytest.raises(urllib.error.HTTPError) as err:               # single use
        urllib.request.urlopen(served.url + answer["url"], timeout=10)
    assert err.value.code == 401 and json.loads(err.value.read())["code"] == "bad_token"


def test_expired_forged_and_foreign_realtime_tokens_are_401_json(served):
    key = served.config.api_keys[0]
    expired, _ = realtime.mint(key, time.time() - realtime.TTL - 1)
    good, _ = realtime.mint(key, time.time())
    body, sig = good.split(".")
    forged = body + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    other_body = realtime.PREFIX + realtime._b64(json.dumps(["other", int(time.time()) + 60, "n"]).encode())
    claimed = other_body + "." + sig                                  # another key's name, this key's signature
    for token in (expired, forged, claimed, "", "rt_x", "rt_" + "a" * 700 + ".b"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(served.url + "/v1/realtime?token=" + urllib.parse.quote(token), timeout=10)
        assert err.value.code == 401 and json.loads(err.value.read())["code"] == "bad_token", token
    assert sse(served.url + "/v1/realtime?token=" + urllib.parse.quote(good))[0] == "retry: 2000\n"


def test_not_found_method_and_handler_bug_are_json_the_sdk_reads(served, monkeypatch):
    mk = mailkite.MailKite(KEY, baseUrl=served.url)
    err = sdk_error(mk.request, "GET", "/v1/no/such/path")
    assert (err.status, err.message, err.body["code"]) == (404, "no such path", "not_found")
    err = sdk_error(mk.request, "PUT", "/v1/me")
    assert err.status == 405 and err.body["code"] == "method_not_allowed"
    monkeypatch.setattr(platform, "EVENT_NAMES", None)                # a bug in a handler
    err = sdk_error(mk.listEventNames)
    assert err.status == 500 and err.body == {"error": "internal error (logged); try again later", "code": "internal"}


# --- MCP on the API's port ----------------------------------------------------------------------

def test_an_mcp_wait_holds_a_stream_slot_not_one_of_the_request_slots(served):
    """serve allows max_requests (2 here) ordinary requests at once; a wait_for_message of MCP
    holds a stream slot (per key, like GET /v1/messages/wait) instead, so MCP waits cannot take
    every request slot of the API from everyone else."""
    waits = [threading.Thread(target=mcp_calls, args=(served.url, KEY, [("wait_for_message", {
        "subject": "nothing like it", "timeout_seconds": 4})]), daemon=True) for _ in range(2)]
    for t in waits:
        t.start()
    deadline = time.monotonic() + 10
    while served.ctx.streams.open.get("agent", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.ctx.streams.open.get("agent") == 2
    answer = finished_within(10, mailkite.MailKite(KEY, baseUrl=served.url).me)   # no 503 busy
    assert answer["name"] == "agent"
    for t in waits:
        t.join(15)


def test_mcp_tools_wait_in_process_and_a_request_without_a_key_is_401(served):
    served.deliver("mcp platform")
    listed, waited, unknown = mcp_calls(served.url, KEY, [
        ("list_messages", {"subject": "mcp platform"}),
        ("wait_for_message", {"subject": "mcp platform", "timeout_seconds": 5}),
        ("read_message", {"message_id": "msg_not_there"})])
    # a refusal reaches the model with its reason (a ValueError's text the SDK keeps to itself)
    assert unknown.is_error and "404 unknown_message" in unknown.content[0].text
    assert [m["subject"] for m in json.loads(listed.content[0].text)] == ["mcp platform"]
    assert json.loads(waited.content[0].text.split("\n\n")[0])["codes"] == ["424242"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(served.url + "/mcp", data=b"{}", method="POST"), timeout=10)
    assert err.value.code == 401 and json.loads(err.value.read())["code"] == "unauthorized"
    # MCP's GET opened a stream that sent nothing, holding a request slot of the API for good: 405 now
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(served.url + "/mcp", headers={
            "authorization": f"Bearer {KEY}", "accept": "text/event-stream"}), timeout=5)
    assert err.value.code == 405 and json.loads(err.value.read())["code"] == "method_not_allowed"


# --- the retired MCP port -------------------------------------------------------------------------

def test_an_old_mcp_listen_still_loads_with_a_warning_naming_the_key_and_file(tmp_path, caplog):
    path = tmp_path / "agentmx.toml"
    with caplog.at_level(logging.WARNING, logger="agentmx.config"):
        parse_config(config_text(tmp_path, mcp_listen="127.0.0.1:8026"), path)
    assert any("mcp_listen" in r.getMessage() and str(path) in r.getMessage() and "/mcp" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentmx.config"):
        parse_config(config_text(tmp_path, mcp_listen=""), path)      # the old example file's "" (off)
    assert not caplog.records


def test_openapi_documents_the_platform_paths_their_error_codes_and_every_501():
    from conftest import ROOT
    doc = json.loads((ROOT / "docs" / "openapi.json").read_text())
    for path in ("/v1/me", "/v1/events", "/v1/events/names", "/v1/realtime/token", "/v1/realtime", "/mcp"):
        assert path in doc["paths"], path
    codes = {c for op in doc["paths"]["/v1/realtime"].values() for r in op["responses"].values()
             for c in (r.get("description", "").partition("(error codes: ")[2].rstrip(")").split(", "))}
    assert "bad_token" in codes
    assert "not_supported" in json.dumps(doc["paths"]["/v1/events"]["post"])
    listed = [(tuple(p["methods"]), p["path"], p["reason"], not p.get("public")) for p in doc["x-not-offered"]["paths"]]
    assert listed == list(platform.NOT_OFFERED) and doc["x-not-offered"]["reasons"] == platform.REASONS


def test_the_developers_guide_table_names_every_sdk_method_as_the_test_table_does():
    from conftest import ROOT
    text = (ROOT / "docs" / "agent-developer.md").read_text().partition("## Moving from MailKite")[2]
    rows = dict(re.findall(r"^\| `(\w+)` \| (works|local|501) \|", text, re.M))
    assert set(rows) == set(TABLE)
    for name, entry in TABLE.items():
        assert rows[name] == {"raw": "works"}.get(entry[0], entry[0]), name
