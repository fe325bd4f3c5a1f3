"""MailKite's own SDK (mailkite-dev) sends through agentmx unchanged: send, sendBatch,
uploadAttachment in its four modes, attachments by URL, scheduledAt, plus Idempotency-Key and
GET/DELETE /v1/send/{id} (no SDK method: raw HTTP, as a MailKite user would call them).

One world (tests/support/world.py): our Postfix with serve and DKIM signing, a remote Postfix whose
own milter verifies what arrives. What the SDK sends is checked where it arrives: headers,
attachment bytes, DKIM. Attachment URLs point at a web server on 127.0.0.1 named through the
loopback DNS server; the world's config allows 127.0.0.0/8 and http for fetches
([send] fetch_allow_networks, fetch_allow_http: off by default), and nothing else."""
from __future__ import annotations

import base64
import email
import email.policy
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import mailkite
import pytest

from e2e_helpers import our_results, verdicts
from support.postfix import wait_for
from support.webfiles import WebFiles
from support.world import build, delivered_at_rx

from agentmx.api.server import start

KEY = "amx_sdk_send_key_for_the_agent_01"
OTHER = "amx_sdk_send_key_for_another_0123"
DOMAIN = "send.agents.test"
PDF = b"%PDF-1.4 quarterly report " + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def web():
    server = WebFiles({"/files/report.pdf": (200, {"Content-Type": "application/pdf"}, PDF),
                       "/files/40k.bin": (200, {}, b"z" * 40_000)}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(dns_server, web):
    w = build(dns_server, "k", DOMAIN, f"""
fetch_allow_networks = ["127.0.0.0/8"]
fetch_allow_http = true
fetch_max_bytes = 100000
max_upload_bytes = 200000
max_request_bytes = 100000
[[routes]]
match = "@{DOMAIN}"
mode = "pull"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}"]
[[api_keys]]
name = "other"
key = "{OTHER}"
allow = ["other@{DOMAIN}"]
""")
    w["zone"].update({"files.remote.test": {"A": ["127.0.0.1"]}, "inner.remote.test": {"A": ["10.0.0.5"]},
                      "meta.remote.test": {"A": ["169.254.169.254"]}})
    yield w
    w.close()


@pytest.fixture
def w(world, dns_server):
    dns_server.set_zone(world["zone"])
    return world


@pytest.fixture
def mk(w):
    return mailkite.MailKite(KEY, baseUrl=w["api"])


def marker(what: str) -> str:
    return f"{what}-{time.time_ns()}"


def http(w, method: str, path: str, body=None, key: str = KEY, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(w["api"] + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def parts(raw: bytes) -> dict[str, bytes]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return {p.get_filename(): p.get_content() for p in msg.iter_attachments()}


def test_send_answers_id_and_status_and_the_send_can_be_looked_up(w, mk):
    text = marker("hello")
    res = mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "subject": "Hello", "text": text,
                   "headers": {"List-Unsubscribe": "<https://agents.test/u/1>, <mailto:u@agents.test>",
                               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "X-Campaign": "welcome"}})
    assert res["status"] == "queued" and res["id"].startswith("snd_") and res["queueId"]
    status, got, _ = http(w, "GET", f"/v1/send/{res['id']}")
    assert status == 200 and (got["id"], got["status"], got["recipients"]) == (res["id"], "queued", ["bob@remote.test"])
    assert got["messageId"] == res["messageId"]
    status, got, _ = http(w, "GET", f"/v1/send/{res['id']}", key=OTHER)      # another key's send is not there
    assert (status, got["code"]) == (404, "unknown_send")
    msg = email.message_from_bytes(delivered_at_rx(w, text.encode()))
    assert msg["List-Unsubscribe"] == "<https://agents.test/u/1>, <mailto:u@agents.test>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and msg["X-Campaign"] == "welcome"


def test_from_a_plus_address_of_an_allowed_address_is_sent_and_signed(w, mk):
    text = marker("plus")
    res = mk.send({"from": f"agent+orders@{DOMAIN}", "to": "bob@remote.test", "subject": "Order", "text": text})
    assert res["status"] == "queued"
    raw = delivered_at_rx(w, text.encode())
    (header,) = our_results(raw, "mx.remote.test")
    v = verdicts(header)
    assert v["dkim"][0].result == "pass" and v["dmarc"][0].result == "pass"
    assert email.message_from_bytes(raw)["From"] == f"agent+orders@{DOMAIN}"
    with pytest.raises(mailkite.MailKiteError) as err:           # another address's plus address is not
        mk.send({"from": f"other+x@{DOMAIN}", "to": "bob@remote.test", "text": "no"})
    assert err.value.status == 403


@pytest.mark.parametrize("headers", [{"Received": "from x"}, {"DKIM-Signature": "v=1"}, {"From": "a@b"},
                                     {"List-Id": "x" * 1000}, {"X-Bad": "a\x07b"}])
def test_headers_outside_the_allowlist_are_400(mk, headers):
    with pytest.raises(mailkite.MailKiteError) as err:
        mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": "x", "headers": headers})
    assert err.value.status == 400 and err.value.body["code"] == "bad_header"


def test_templates_are_a_clear_501(mk):
    for extra in ({"templateId": "tpl_1"}, {"templateData": {"a": 1}}, {"baseId": "b"}):
        with pytest.raises(mailkite.MailKiteError) as err:
            mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": "x", **extra})
        assert err.value.status == 501 and err.value.body["code"] == "not_supported"
        assert "template" in err.value.message


def test_an_attachment_by_url_is_fetched_and_arrives(w, mk, web):
    text = marker("byurl")
    mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "subject": "Report", "text": text,
             "attachments": [{"url": f"http://files.remote.test:{web.port}/files/report.pdf"}]})
    got = parts(delivered_at_rx(w, text.encode()))
    assert got == {"report.pdf": PDF}


def test_an_attachment_url_to_a_private_or_metadata_address_is_refused(w, mk, web):
    for host in ("inner.remote.test", "meta.remote.test"):
        before = web.connections
        with pytest.raises(mailkite.MailKiteError) as err:
            mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": "x",
                     "attachments": [{"url": f"http://{host}:{web.port}/files/report.pdf"}]})
        assert err.value.status == 400 and err.value.body["code"] == "url_refused"
        assert web.connections == before


def test_attachments_by_url_are_bounded_together(mk, web):
    url = f"http://files.remote.test:{web.port}/files/40k.bin"
    with pytest.raises(mailkite.MailKiteError) as err:           # 3 x 40 kB > fetch_max_bytes (100 kB)
        mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": "x",
                 "attachments": [{"url": url, "filename": f"{i}.bin"} for i in range(3)]})
    assert (err.value.status, err.value.body["code"]) == (502, "fetch_failed") and "larger than" in err.value.message


def test_upload_attachment_in_all_four_modes_then_send_by_its_url(w, mk, web, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"notes from a file\n")
    data = tmp_path / "data.json"                                 # uploaded raw as application/json: a file
    data.write_bytes(b'{"not": "a request"}')
    assert mk.uploadAttachment({"path": str(data)})["contentType"] == "application/json"
    uploads = {
        "bytes": mk.uploadAttachment({"bytes": b"raw bytes", "filename": "raw.bin", "retentionDays": 30}),
        "path": mk.uploadAttachment({"path": str(path)}),
        "content": mk.uploadAttachment({"content": base64.b64encode(b"base64 body").decode(), "filename": "b.txt",
                                        "contentType": "text/plain", "retentionDays": 90}),
        "url": mk.uploadAttachment({"url": f"http://files.remote.test:{web.port}/files/report.pdf"}),
    }
    assert {k: (u["filename"], u["contentType"], u["size"]) for k, u in uploads.items()} == {
        "bytes": ("raw.bin", "application/octet-stream", 9), "path": ("notes.txt", "text/plain", 18),
        "content": ("b.txt", "text/plain", 11), "url": ("report.pdf", "application/pdf", len(PDF))}
    for u in uploads.values():
        assert u["id"].startswith("att_") and "/v1/blobs/" in u["url"] and "sig=" in u["url"]
    days = {k: (datetime.fromisoformat(u["expiresAt"].replace("Z", "+00:00")) - datetime.now(timezone.utc)).days
            for k, u in uploads.items()}
    assert days == {"bytes": 29, "path": 6, "content": 89, "url": 6}
    with pytest.raises(mailkite.MailKiteError) as err:
        mk.uploadAttachment({"bytes": b"x", "filename": "x", "retentionDays": 12})
    assert err.value.body["code"] == "bad_retention"
    text = marker("uploaded")
    mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "subject": "Files", "text": text,
             "attachments": [{"url": u["url"]} for u in uploads.values()]})
    got = parts(delivered_at_rx(w, text.encode()))
    assert got == {"raw.bin": b"raw bytes", "notes.txt": "notes from a file\n", "b.txt": "base64 body\n"[:-1],
                   "report.pdf": PDF}
    tampered = uploads["bytes"]["url"].replace("name=raw.bin", "name=evil.exe")
    with pytest.raises(mailkite.MailKiteError) as err:          # one of our URLs, altered: not fetched, refused
        mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": "x", "attachments": [{"url": tampered}]})
    assert err.value.body["code"] == "bad_attachment_url"
    with pytest.raises(mailkite.MailKiteError) as err:          # an agentmx URL kept a year past its own expiry
        mk.uploadAttachment({"url": uploads["path"]["url"], "retentionDays": 365})
    assert (err.value.status, err.value.body["code"]) == (400, "own_url")


def test_uploads_have_their_own_bound_above_the_send_limit(mk):
    big = bytes(150_000)                                          # above max_request_bytes, within max_upload_bytes
    assert mk.uploadAttachment({"bytes": big, "filename": "a.bin"})["size"] == 150_000
    assert mk.uploadAttachment({"content": base64.b64encode(big).decode(), "filename": "b.bin"})["size"] == 150_000
    for file in ({"bytes": bytes(200_001), "filename": "c.bin"},
                 {"content": base64.b64encode(bytes(200_001)).decode(), "filename": "d.bin"}):
        with pytest.raises(mailkite.MailKiteError) as err:
            mk.uploadAttachment(file)
        assert (err.value.status, err.value.body["code"]) == (413, "too_large")


def test_send_batch_one_send_per_recipient_results_in_order(w, mk):
    text = marker("batch")
    res = mk.sendBatch({"from": f"agent@{DOMAIN}", "subject": "News", "text": text,
                        "headers": {"X-Campaign": "news", "List-Id": "<news.agents.test>"},
                        "recipients": [{"to": "ann@remote.test", "headers": {"x-campaign": "news-ann"}},
                                       {"to": "not an address"},
                                       {"to": "cy@remote.test"}]})
    assert [r["status"] for r in res["results"]] == ["queued", "failed", "queued"]
    assert (res["queued"], res["failed"]) == (2, 1) and res["results"][1]["code"] == "bad_address"
    ids = [r["id"] for r in res["results"] if "id" in r]
    assert len(set(ids)) == 2

    def arrived():
        found = {}
        for p in w["rx"].delivered():
            data = p.read_bytes()
            if text.encode() in data:
                m = email.message_from_bytes(data)
                found[m["To"]] = m
        return found if len(found) == 2 else None
    found = wait_for(arrived, timeout=60, what="both batch messages at rx")
    assert found["ann@remote.test"]["X-Campaign"] == "news-ann" and found["cy@remote.test"]["X-Campaign"] == "news"
    assert found["cy@remote.test"]["List-Id"] == "<news.agents.test>"
    with pytest.raises(mailkite.MailKiteError) as err:           # more than 50: malformed, nothing sent
        mk.sendBatch({"from": f"agent@{DOMAIN}", "text": "x", "recipients": [{"to": f"r{i}@remote.test"}
                                                                            for i in range(51)]})
    assert (err.value.status, err.value.body["code"]) == (400, "bad_batch")


def at(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_scheduled_sends_go_when_due_and_can_be_canceled(w, mk, web):
    text = marker("later")
    res = mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "subject": "Later", "text": text,
                   "scheduledAt": at(2), "attachments": [{"url": f"http://files.remote.test:{web.port}/files/report.pdf"}]})
    assert res["status"] == "scheduled"
    assert http(w, "GET", f"/v1/send/{res['id']}")[1]["status"] == "scheduled"
    parked = mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": marker("never"),
                      "scheduledAt": at(3600)})
    status, got, _ = http(w, "DELETE", f"/v1/send/{parked['id']}")
    assert (status, got["status"]) == (200, "canceled")
    assert http(w, "DELETE", f"/v1/send/{parked['id']}", key=OTHER)[0] == 404
    raw = delivered_at_rx(w, text.encode())                      # sent by serve when due, attachment kept
    assert parts(raw) == {"report.pdf": PDF}
    got = wait_for(lambda: (g := http(w, "GET", f"/v1/send/{res['id']}")[1])["status"] == "queued" and g,
                   timeout=10, what="the scheduled send queued")
    assert got["queueId"] and got["scheduledAt"]
    status, body, _ = http(w, "DELETE", f"/v1/send/{res['id']}")
    assert (status, body["code"]) == (409, "not_cancelable")
    for when in ("tomorrow", at(-3600), at(40 * 86400)):
        with pytest.raises(mailkite.MailKiteError) as err:
            mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": "x", "scheduledAt": when})
        assert err.value.body["code"] == "bad_scheduled_at"
    batch = mk.sendBatch({"from": f"agent@{DOMAIN}", "text": "x", "scheduledAt": at(3600),
                          "recipients": [{"to": "a@remote.test"}, {"to": "b@remote.test"}]})
    assert [r["status"] for r in batch["results"]] == ["scheduled", "scheduled"]


def test_scheduled_sends_go_out_once_with_two_serves_on_one_store(w, mk):
    second = start(w["config"])                                   # another serve process on the same store
    try:
        texts = [marker(f"once{i}") for i in range(6)]
        for t in texts:
            mk.send({"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "text": t, "scheduledAt": at(1)})

        def all_arrived():
            seen = {t: 0 for t in texts}
            for p in w["rx"].delivered():
                data = p.read_bytes()
                for t in texts:
                    seen[t] += t.encode() in data
            return seen if all(seen.values()) else None
        wait_for(all_arrived, timeout=60, what="every scheduled send")
        time.sleep(3)                                             # a second copy would have come by now
        assert set(all_arrived().values()) == {1}
    finally:
        second.stop()


def test_idempotency_key_answers_the_first_answer(w):
    body = {"from": f"agent@{DOMAIN}", "to": "bob@remote.test", "subject": "Once", "text": marker("idem")}
    key = {"Idempotency-Key": marker("order")}
    first = http(w, "POST", "/v1/send", body, headers=key)
    again = http(w, "POST", "/v1/send", body, headers=key)
    assert first[0] == again[0] == 200 and first[1] == again[1] and again[2].get("idempotent-replayed") == "true"
    second = start(w["config"])                                   # another serve process: the store has the key
    try:
        elsewhere = http({"api": second.url}, "POST", "/v1/send", body, headers=key)
        assert elsewhere[:2] == first[:2]
    finally:
        second.stop()
    other = http(w, "POST", "/v1/send", {**body, "text": "changed"}, headers=key)
    assert (other[0], other[1]["code"]) == (422, "idempotency_key_reused")
    assert http(w, "POST", "/v1/send", body, key=OTHER, headers=key)[0] == 403    # per API key: its own run
    bad = http(w, "POST", "/v1/send", body, headers={"Idempotency-Key": "x" * 300})
    assert (bad[0], bad[1]["code"]) == (400, "bad_idempotency_key")
    delivered_at_rx(w, body["text"].encode())
    time.sleep(2)
    assert sum(body["text"].encode() in p.read_bytes() for p in w["rx"].delivered()) == 1
