"""MailKite's seed handler on Node, unchanged, as a route's endpoint (tests/node/mailkite_handler.js):
mail sent into our Postfix reaches it with the route's DEFAULT config (no mailkite_signature
line), its own x-mailkite-signature check (node:crypto: HMAC-SHA256 keyed with the whole whsec_
string, a 5-minute window, timingSafeEqual) passes, and its reply (POST /v1/send from
event.to[0].address to the sender, inReplyTo the event id) arrives at the remote Postfix
DKIM-signed and threaded. The issue: by default it answered 401 and the mail piled up in
Postfix's queue."""
from __future__ import annotations

import base64
import email
import os
import shutil
import subprocess
import time

import pytest

from conftest import TESTS
from e2e_helpers import our_results, send, verdicts
from support.postfix import free_tcp_port, wait_for
from support.world import build, delivered_at_rx

from agentmx.store import open_store
from agentmx.store.model import DeliveryState

DOMAIN = "hooks.agents.test"
KEY = "amx_node_handler_key_0123456789abc"
SECRET = "whsec_" + base64.b64encode(b"node-handler-secret-0123456789ab").decode()
NODE_MODULES = os.path.join(os.environ.get("AGENTMX_NODE", "/opt/agentmx/node"), "node_modules")


@pytest.fixture(scope="module")
def world(dns_server, tmp_path_factory):
    node = shutil.which("node")
    assert node, "node is required (scripts/bootstrap installs it)"
    assert os.path.isdir(os.path.join(NODE_MODULES, "express")), "npm express (scripts/bootstrap installs it)"
    port = free_tcp_port()
    w = build(dns_server, "n", DOMAIN, f"""
[[routes]]
match = "agent@{DOMAIN}"
endpoint = "http://127.0.0.1:{port}/hooks/mailkite"
secret = "{SECRET}"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}"]
""")
    log = tmp_path_factory.mktemp("node") / "handler.log"
    with open(log, "wb") as out:
        handler = subprocess.Popen([node, str(TESTS / "node" / "mailkite_handler.js")], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "NODE_PATH": NODE_MODULES, "PORT": str(port),
                                        "MAILKITE_WEBHOOK_SECRET": SECRET, "MAILKITE_API_KEY": KEY,
                                        "MAILKITE_BASE_URL": w["api"]})
    w["handler_log"] = log
    try:
        wait_for(lambda: f"listening {port}" in log.read_text(), timeout=30, what="the Node handler listening")
        yield w
    finally:
        handler.terminate()
        handler.wait(timeout=10)
        w.close()


def test_the_seed_node_handler_verifies_and_replies_with_the_default_config(world, dns_server):
    dns_server.set_zone(world["zone"])
    assert world["config"].routes[0].mailkite_signature is True          # the default: no line in the file
    subject = f"Where is my order {time.time_ns()}"
    message_id = f"<order{time.time_ns()}@remote.test>"
    raw = (f"From: Ada <ada@remote.test>\r\nTo: agent@{DOMAIN}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
           f"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\nOrder 1042 has not arrived.\r\n").encode()
    assert send(world["ox"].port, "ada@remote.test", [f"agent@{DOMAIN}"], raw) == {}

    reply = email.message_from_bytes(delivered_at_rx(world, b"Re: " + subject.encode(), timeout=90))
    log = world["handler_log"].read_text()
    assert "signature: ok" in log and "signature: refused" not in log, log
    (header,) = our_results(reply.as_bytes(), "mx.remote.test")
    v = verdicts(header)
    assert v["dkim"][0].result == "pass" and v["dkim"][0].header_d == DOMAIN and v["dmarc"][0].result == "pass"
    assert reply["From"] == f"agent@{DOMAIN}" and "ada@remote.test" in reply["To"]
    assert reply["In-Reply-To"] == message_id and message_id in reply["References"]

    store = open_store(world["config"])
    (row,) = [r for r in store.inbox_query((f"agent@{DOMAIN}",)) if r.subject == subject]
    delivery = wait_for(lambda: (d := store.delivery(row.id)) and d.state is DeliveryState.DELIVERED and d,
                        timeout=30, what="the delivery recorded as delivered")
    assert delivery.status == 200 and store.attempts(row.id)[-1].excerpt == '{"status":"ok"}'
    assert f"({row.id})" in reply.get_payload(decode=True).decode()
    store.close()
