"""Webhook signatures: ours verify with the Standard Webhooks packages from PyPI and npm,
unchanged, and agentmx.webhook.verify() refuses what it must."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError as SWError

from conftest import TESTS

from agentmx.webhook import WebhookVerificationError, sign_headers, verify, verify_mailkite

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another key, another key, here!!").decode()
BODY = json.dumps({"id": "msg_abc", "type": "email.received", "subject": "Grüße ☃"}, ensure_ascii=False).encode()
NODE_MODULES = Path(os.environ.get("AGENTMX_NODE", "/opt/agentmx/node")) / "node_modules"


def test_pypi_standardwebhooks_verifies_ours():
    headers = sign_headers(SECRET, "msg_abc", BODY)
    assert Webhook(SECRET).verify(BODY, headers)["subject"] == "Grüße ☃"


def test_pypi_standardwebhooks_rejects_a_changed_body():
    headers = sign_headers(SECRET, "msg_abc", BODY)
    with pytest.raises(SWError):
        Webhook(SECRET).verify(BODY.replace(b"abc", b"abd"), headers)


def test_key_rotation_any_signature_matches():
    headers = sign_headers([OTHER, SECRET], "msg_abc", BODY)
    assert len(headers["webhook-signature"].split()) == 2
    Webhook(SECRET).verify(BODY, headers)
    verify(headers, BODY, SECRET)
    verify(headers, BODY, OTHER)


def _node_verify(secret, headers, body: bytes) -> str:
    node = shutil.which("node")
    assert node, "node is required (scripts/bootstrap installs it)"
    assert NODE_MODULES.joinpath("standardwebhooks").is_dir(), "npm standardwebhooks (scripts/bootstrap installs it)"
    out = subprocess.run([node, str(TESTS / "node" / "verify.js")], capture_output=True, text=True, timeout=30,
                         input=json.dumps({"secret": secret, "headers": headers, "body": body.decode()}),
                         env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    return out.stdout.strip()


def test_npm_standardwebhooks_verifies_ours():
    assert _node_verify(SECRET, sign_headers(SECRET, "msg_abc", BODY), BODY) == "ok"


def test_npm_standardwebhooks_rejects_the_wrong_secret():
    assert _node_verify(OTHER, sign_headers(SECRET, "msg_abc", BODY), BODY).startswith("error")


@pytest.mark.parametrize("mutate,why", [
    (lambda h, b: (h, b + b" "), "no signature matches"),
    (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) - 3600)}, b), "outside the tolerance"),
    (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no signature matches"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing"),
    (lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b), "no signature matches"),
])
def test_verify_refuses(mutate, why):
    headers, body = mutate(sign_headers(SECRET, "msg_abc", BODY), BODY)
    with pytest.raises(WebhookVerificationError, match=why):
        verify(headers, body, SECRET)


def test_verify_refuses_the_wrong_secret():
    with pytest.raises(WebhookVerificationError):
        verify(sign_headers(SECRET, "msg_abc", BODY), BODY, OTHER)


def test_mailkite_header():
    headers = sign_headers(SECRET, "msg_abc", BODY, mailkite=True)
    t, v1 = headers["x-mailkite-signature"].split(",")
    assert t.startswith("t=") and len(t) == 2 + 13 and v1.startswith("v1=") and len(v1) == 3 + 64
    verify_mailkite(headers, BODY, SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_mailkite(headers, BODY + b"x", SECRET)


def test_mailkite_sdk_verifies_what_deliver_sends_by_default(tmp_path):
    """MailKite's own SDK (mailkite-dev, unchanged): mailkite.verify_webhook(signature, body,
    secret) accepts the x-mailkite-signature deliver sends with a route's default config (no
    mailkite_signature line). The issue: without that line it was not sent, and a handler
    written for MailKite answered 401 to every delivery, which piled up in Postfix's queue."""
    import mailkite

    from agentmx.config import parse_config
    from agentmx.deliver.control import exchange
    from agentmx.deliver.http import Response
    cfg = parse_config(f'[server]\nauthserv_id = "mx.agentmx.test"\ndata_dir = "{tmp_path}"\n'
                       f'url_secret = "0123456789abcdef0123"\n[[routes]]\nmatch = "agent@agentmx.test"\n'
                       f'endpoint = "http://127.0.0.1:9/"\nsecret = "{SECRET}"\n', tmp_path / "agentmx.toml")
    sent = {}

    def post(url, body, headers, timeout):
        sent.update(headers=headers, body=body)
        return Response(200)
    exchange(cfg.routes[0], "msg_abc", BODY, time.time, post)
    signature = sent["headers"]["x-mailkite-signature"]
    assert mailkite.verify_webhook(signature, sent["body"], SECRET) is True
    assert mailkite.verify_webhook(signature, sent["body"].decode(), SECRET) is True          # str or bytes
    assert mailkite.verify_webhook(signature, sent["body"] + b" ", SECRET) is False
    assert mailkite.verify_webhook(signature, sent["body"], OTHER) is False
    Webhook(SECRET).verify(sent["body"], sent["headers"])            # Standard Webhooks still verify beside it
    assert _node_verify(SECRET, sent["headers"], sent["body"]) == "ok"
    off = dataclasses.replace(cfg.routes[0], mailkite_signature=False)
    exchange(off, "msg_abc", BODY, time.time, post)
    assert "x-mailkite-signature" not in sent["headers"] and "webhook-signature" in sent["headers"]
