"""The console's deliveries, sends and agent pages in a real headless Chromium against a whole
install (tests/console/conftest.py): a message by SMTP, its delivery opened, the retry button
clicked, the new attempt seen (and the endpoint really POSTed to again); a send through the API
seen with its timeline; a screenshot of each page (artifacts/)."""
from __future__ import annotations

import time

import json

import requests

from agentmx import agentloop
from console.conftest import Console
from console.test_console_deliveries import KEY_A, put, world  # noqa: F401 (world: a fixture)
from support.install import DOMAIN, api_key
from support.postfix import wait_for


def _subject(what: str) -> str:
    return f"{what} {time.time_ns()}"


def _attempts(console) -> list:
    return console.find_all("#attempts tbody tr:not(.empty)")


def test_open_a_delivery_click_retry_and_see_the_new_attempt(signed_in, shot):
    event = signed_in.receive(_subject("Retry me"))
    receiver = signed_in.inst["receiver"]
    posts = [r for r in receiver.requests if r.headers.get("webhook-id") == event["id"]]
    assert len(posts) == 1
    signed_in.open("/console/deliveries")
    row = signed_in.find(f'#deliveries tr[data-id="{event["id"]}"]')
    assert "delivered" in row.text
    shot("deliveries")
    signed_in.submit(row.find_element("css selector", "a"))           # the delivery's page
    assert signed_in.path() == f"/console/deliveries/{event['id']}"
    assert len(_attempts(signed_in)) == 1 and "HTTP 200" in _attempts(signed_in)[0].text
    shot("delivery")
    signed_in.submit(signed_in.find("#retry"))
    assert signed_in.path() == f"/console/deliveries/{event['id']}"
    notice = signed_in.find("#notice").text
    assert "Retried: HTTP 200" in notice and "delivered" in notice
    rows = _attempts(signed_in)
    assert len(rows) == 2 and "HTTP 200" in rows[0].text
    posts = [r for r in receiver.requests if r.headers.get("webhook-id") == event["id"]]
    assert len(posts) == 2                                             # really POSTed again
    shot("delivery-retried")
    signed_in.submit(signed_in.find("#message"))                       # the link to the message
    assert signed_in.path() == f"/console/messages/{event['id']}"


def test_a_send_and_its_timeline(signed_in, shot):
    subject = _subject("Hello from the agent")
    r = requests.post(f"{signed_in.base}/v1/send", timeout=30,
                      headers={"authorization": f"Bearer {api_key(signed_in.inst)}"},
                      json={"from": f"agent@{DOMAIN}", "to": ["bob@remote.test"], "subject": subject,
                            "text": "Hello."})
    assert r.status_code == 200, r.text
    send_id = r.json()["id"]

    def listed():
        signed_in.open("/console/sends")
        rows = signed_in.find_all(f'#sends tr[data-id="{send_id}"]')
        return rows[0] if rows else None
    row = wait_for(listed, timeout=30, interval=0.5, what=f"{send_id} in the sends")
    assert "bob@remote.test" in row.text and "sent" in row.text
    shot("sends")
    signed_in.submit(row.find_element("css selector", "a"))
    assert signed_in.path() == f"/console/sends/{send_id}"
    line = signed_in.find('table.timeline[data-recipient="bob@remote.test"]')
    assert "sent" in line.text
    shot("send")


def test_the_agent_page(signed_in, shot):
    signed_in.open("/console/agent")
    assert signed_in.status() == 200
    # setup's route for the domain POSTs to the agent's endpoint: no agentmx agent jobs here
    empty = signed_in.find_all("#jobs tbody tr.empty")
    assert empty and 'action = "agent"' in empty[0].text
    shot("agent")


def test_an_agent_job_and_its_transcript(world, browser, shot):       # noqa: F811 (world: the fixture)
    """The install's route POSTs to an endpoint: the agent's pages are seen on a serve of their own
    with an action = "agent" route (test_console_deliveries.py's world), its job run against the
    scripted model: the transcript, with a hostile turn shown as text."""
    store, cfg = world["store"], world["cfg"]
    event_id = put(world, "Opening hours?", "agent@agent.test")
    world["model"].script = [{"role": "assistant", "content": '<img src=x onerror="document.title=1"> We open at 9.',
                              "tool_calls": [{"id": "call_1", "type": "function", "function": {
                                  "name": "done", "arguments": json.dumps({"summary": "answered"})}}]}]
    assert agentloop.process_one(cfg, store, agentloop.chat_client(cfg.agent),
                                 agentloop.send_effects(cfg, store)) == event_id
    console = Console({"api": world["url"]}, browser, {})
    browser.driver.get(world["url"] + "/console/signin")
    browser.driver.delete_all_cookies()
    console.sign_in(KEY_A)
    console.open("/console/agent")
    row = console.find(f'#jobs tr[data-id="{event_id}"]')
    assert "done" in row.text
    shot("agent-jobs")
    console.submit(row.find_element("css selector", "a"))
    assert console.path() == f"/console/agent/{event_id}"
    said = console.find_all("#transcript li.turn.assistant")
    assert len(said) == 1 and "calls done" in said[0].text
    assert '<img src=x onerror="document.title=1">' in said[0].text          # shown as text, not an image
    assert not console.find_all("#transcript img") and console.driver.title.startswith("Agent job")
    shot("agent-job")
