"""Scheduled sends without a mail server: parked with their attachments kept as uploads, and what a
refusal at send time leaves (status failed, with the reason), on a clock the test moves."""
from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from agentmx import send
from agentmx.api import scheduling
from agentmx.api.context import Context
from agentmx.config import parse_config
from agentmx.store.model import SendState
from agentmx.times import rfc3339

KEY = "amx_scheduling_test_key_0123456789"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def unit_context(tmp_path, key: str = KEY, allow: str = "agent@agents.test", more: str = "") -> Context:
    """serve's Context on an embedded store in tmp_path, on a Clock the test moves; no Postfix at
    [send] submit. `more`: TOML for the sections after [send] (its own keys first)."""
    config = parse_config(f"""[server]
authserv_id = "mx.agents.test"
data_dir = "{tmp_path / 'data'}"
url_secret = "unit-test-url-secret"
[send]
submit = "unix:{tmp_path / 'no-postfix-here'}"
{more}
[[api_keys]]
name = "agent"
key = "{key}"
allow = ["{allow}"]
""", tmp_path / "agentmx.toml")
    return Context.for_config(config, Clock())


@pytest.fixture
def ctx(tmp_path):
    c = unit_context(tmp_path)
    yield c
    c.store.close()


def request(ctx, **extra) -> dict:
    return {"from": "agent@agents.test", "to": "bob@remote.test", "text": "later",
            "scheduledAt": rfc3339(ctx.clock() + 60), **extra}


def test_a_parked_send_keeps_its_attachments_as_uploads_not_in_the_request(ctx):
    data = b"%PDF a file to send later"
    key = ctx.config.api_keys[0]
    got = scheduling.park(ctx, key, request(ctx, attachments=[{"filename": "r.pdf", "contentType": "application/pdf",
                                                              "content": base64.b64encode(data).decode()}]))
    rec = ctx.store.get_send(got["id"])
    assert (got["status"], rec.state, rec.scheduled_at) == ("scheduled", SendState.SCHEDULED, ctx.clock() + 60)
    kept = json.loads(rec.request)
    (att,) = kept["attachments"]
    assert "content" not in att and att["url"].startswith(ctx.config.public_url + "/v1/blobs/")
    assert base64.b64encode(data).decode() not in rec.request
    req = send.parse_request(kept)                                 # what send_one will read when it is due
    from agentmx.api.attachments import resolve_all
    assert resolve_all(ctx, req.attachments)[0].data == data


def test_a_refusal_at_send_time_leaves_the_send_failed_with_the_reason(ctx):
    key = ctx.config.api_keys[0]
    got = scheduling.park(ctx, key, request(ctx))
    ctx.clock.now += 61
    rec = ctx.store.claim_scheduled(scheduling.LEASE)
    assert scheduling.send_due(ctx, rec) is SendState.FAILED           # no Postfix at [send] submit
    rec = ctx.store.get_send(got["id"])
    assert rec.state is SendState.FAILED and rec.error.startswith("smtp_unavailable") and rec.request is None
    assert ctx.store.take([("to:bob@remote.test", 1)], 3600) is None    # the refused send gave its use back


def test_a_send_whose_key_left_the_config_fails_at_its_time(ctx):
    got = scheduling.park(ctx, ctx.config.api_keys[0], request(ctx))
    ctx.clock.now += 61
    gone = replace(ctx, config=replace(ctx.config, api_keys=()))
    assert scheduling.send_due(gone, ctx.store.claim_scheduled(scheduling.LEASE)) is SendState.FAILED
    assert "no longer in the config" in ctx.store.get_send(got["id"]).error


@pytest.mark.parametrize("offset,ok", [(-301, False), (-200, True), (30 * 86400, True), (30 * 86400 + 1, False)])
def test_the_schedule_window(ctx, offset, ok):
    when = rfc3339(ctx.clock() + offset)
    if ok:
        assert scheduling.park(ctx, ctx.config.api_keys[0], request(ctx, scheduledAt=when))["status"] == "scheduled"
    else:
        with pytest.raises(send.SendError) as err:
            scheduling.park(ctx, ctx.config.api_keys[0], request(ctx, scheduledAt=when))
        assert err.value.code == "bad_scheduled_at"


@pytest.mark.unit
@pytest.mark.parametrize("text,ts", [("2027-01-15T08:00:00Z", 1800000000.0),
                                     ("2027-01-15T09:00:00+01:00", 1800000000.0),
                                     ("2027-01-15t08:00:00.5z", 1800000000.5),
                                     ("2027-01-15T08:00:00.123456789Z", 1800000000.123457)])
def test_scheduled_at_is_rfc_3339_with_a_zone(text, ts):
    assert send.scheduled_time(text) == pytest.approx(ts, abs=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("text", ["2027-01-15T08:00:00", "2027-01-15", "tomorrow", "2027-13-01T00:00:00Z", 1800000000])
def test_scheduled_at_without_a_zone_or_not_a_time_is_400(text):
    with pytest.raises(send.SendError) as err:
        send.scheduled_time(text)
    assert err.value.code == "bad_scheduled_at"
