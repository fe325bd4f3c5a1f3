"""agentmx/verp.py: the signed envelope sender of each send, and its check on what comes back."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from agentmx import verp

pytestmark = pytest.mark.unit

KEY = verp.key_from("operator-url-secret-0123456789")
SEND = "snd_" + "abcdefghijklmnopqrstuvwxy2"


def test_key_is_separated_by_purpose():
    secret = "operator-url-secret-0123456789"
    assert KEY == hmac.new(secret.encode(), b"agentmx verp v1", hashlib.sha256).digest()
    assert KEY != hashlib.sha256(secret.encode()).digest() and len(KEY) == 32
    assert verp.key_from("another secret") != KEY


def test_address_shape():
    addr = verp.address(SEND, "agents.example.com", KEY)
    local, _, domain = addr.partition("@")
    assert domain == "agents.example.com"
    assert re.fullmatch(r"bounces\+abcdefghijklmnopqrstuvwxy2-[a-z2-7]{16}", local), local
    assert len(local) == 51 <= 64
    sig = base64.b32encode(hmac.new(KEY, SEND.encode(), hashlib.sha256).digest()[:10]).decode().lower()
    assert local.endswith("-" + sig)
    assert verp.address(SEND, "x.test", KEY, local="dsn").startswith("dsn+abcdefghijklmnopqrstuvwxy2-")


def test_address_refuses_what_is_not_a_send_id():
    for bad in ("snd_short", "msg_abcdefghijklmnopqrstuvwxy2", "snd_ABCDEFGHIJKLMNOPQRSTUVWXY2", "snd_" + "1" * 26):
        with pytest.raises(ValueError):
            verp.address(bad, "x.test", KEY)


def test_round_trip_and_case_and_brackets():
    addr = verp.address(SEND, "agents.example.com", KEY)
    assert verp.check(addr, KEY) == SEND
    assert verp.check(addr.upper(), KEY) == SEND            # some MTAs upper-case what they return
    assert verp.check(f"  <{addr}>\r\n", KEY) == SEND
    assert verp.check(verp.address(SEND, "x.test", KEY, local="dsn"), KEY, local="DSN") == SEND


@pytest.mark.parametrize("recipient,reason", [
    ("bounces@agents.example.com", "no token"),
    ("bounces+@agents.example.com", "no token"),
    ("someone@agents.example.com", "no token"),
    ("bouncesx+abc@agents.example.com", "no token"),
    ("no-at-sign", "no token"),
    ("", "no token"),
    ("bounces+abc@agents.example.com", "malformed token"),
    ("bounces+abcdefghijklmnopqrstuvwxy2@agents.example.com", "malformed token"),
    ("bounces+abcdefghijklmnopqrstuvwxy2-aaaaaaaaaaaaaaaa-x@agents.example.com", "malformed token"),
    ("bounces+abcdefghijklmnopqrstuvwxy2-aaaaaaaaaaaaaaa1@agents.example.com", "malformed token"),
    ("bounces+abcdefghijklmnopqrstuvwxy2-aaaaaaaaaaaaaaaa@agents.example.com", "bad signature"),
    ("bounces+" + "a" * 400 + "@x.test", "malformed token"),
])
def test_check_refuses(recipient, reason):
    with pytest.raises(verp.ForgedToken) as err:
        verp.check(recipient, KEY)
    assert str(err.value) == reason and isinstance(err.value, ValueError)


def test_a_token_is_bound_to_its_send_and_its_key():
    addr = verp.address(SEND, "x.test", KEY)
    other = "snd_" + "b" * 26
    swapped = addr.replace("abcdefghijklmnopqrstuvwxy2", "b" * 26)     # another send's id, this one's signature
    with pytest.raises(verp.ForgedToken, match="bad signature"):
        verp.check(swapped, KEY)
    with pytest.raises(verp.ForgedToken, match="bad signature"):
        verp.check(addr, verp.key_from("another secret"))
    assert verp.check(verp.address(other, "x.test", KEY), KEY) == other


def test_is_report_address():
    assert verp.is_report_address("bounces@x.test")
    assert verp.is_report_address("Bounces+anything@x.test")
    assert verp.is_report_address(" <BOUNCES+abc-def@X.TEST> ")
    assert verp.is_report_address("dsn+abc@x.test", local="dsn")
    assert not verp.is_report_address("bounces+abc@x.test", local="dsn")
    assert not verp.is_report_address("bouncesx@x.test")
    assert not verp.is_report_address("agent@x.test")
    assert not verp.is_report_address("bounces")
    assert not verp.is_report_address("bounces+" + "a" * 400 + "@x.test")
