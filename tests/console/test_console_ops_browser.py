"""The console's operator pages in Chromium, against the install (serve as its unit's user, the
install's own Postfix): add a suppression and see it listed, lift it; a block likewise; the
domains' records and Check now; the queue holding a message for the agent while its endpoint
fails (postqueue run by serve's unprivileged user, as in production); the stats chart. A
screenshot of each page (artifacts/)."""
from __future__ import annotations

from support.install import inbound
from support.postfix import wait_for

from .conftest import AGENT


def rows(console, table: str, attr: str, value: str) -> list:
    return console.find_all(f'#{table} tbody tr[{attr}="{value}"]')


def test_add_a_suppression_see_it_listed_then_remove_it(signed_in, shot):
    c = signed_in
    c.open("/console/suppressions")
    c.find("#suppress #address").send_keys("Someone@Remote.test")
    c.submit(c.find("#suppress #add"))
    assert c.path() == "/console/suppressions" and "someone@remote.test is suppressed" in c.find("main").text
    [row] = rows(c, "suppressions", "data-address", "someone@remote.test")
    assert "manual" in row.text and "agents.test" in row.text
    shot("suppressions")
    c.submit(row.find_element("css selector", "button.remove"))
    assert "no longer suppressed" in c.find("main").text
    assert rows(c, "suppressions", "data-address", "someone@remote.test") == []


def test_block_a_sender_then_lift_it(signed_in, shot):
    c = signed_in
    c.open("/console/blocks")
    c.find("#block #sender").send_keys("spammer@bad.test")
    c.submit(c.find("#block #add"))
    [row] = rows(c, "blocks", "data-sender", "spammer@bad.test")
    assert "@agents.test" in row.text and "api" in row.text
    shot("blocks")
    c.submit(row.find_element("css selector", "button.remove"))
    assert rows(c, "blocks", "data-sender", "spammer@bad.test") == []


def test_domains_records_and_check_now(signed_in, shot):
    c = signed_in
    c.open("/console/domains")
    states = {r.get_attribute("data-purpose"): r.get_attribute("data-status")
              for r in c.find_all("#domain-agents\\.test tr[data-purpose]")}
    assert states["MX"] == "ok" and states["DMARC"] == "ok", states       # the install's zone publishes them
    assert c.find_all("#domain-agents\\.test pre.record")
    c.submit(c.find("#check"))
    assert "Checked every domain now." in c.find("main").text
    shot("domains")


def test_the_queue_shows_a_message_waiting_for_the_agent(signed_in, shot, inst):
    """The endpoint answers 503: deliver exits 75 and Postfix keeps the message, deferred; serve
    (user agentmx, group postdrop, NoNewPrivileges) reads it with postqueue -j."""
    c = signed_in
    inst["receiver"].default = (503, 0.0)
    try:
        inbound(inst, "held for the queue page")

        def deferred():
            c.open("/console/queue")
            return c.find_all('#queue tbody tr[data-queue="deferred"]')
        [row] = wait_for(deferred, timeout=60, interval=1, what="the deferred message on the queue page")
        assert AGENT in row.text and "alice@remote.test" in row.text and "HTTP 503" in row.text
        shot("queue")
    finally:
        inst["receiver"].default = (200, 0.0)
        wait_for(lambda: inst["ix"].flush() or inst["ix"].queue_is_empty(), timeout=60, interval=1,
                 what="the queue flushed to the agent")


def test_stats_page_draws_its_chart(signed_in, shot):
    c = signed_in
    c.open("/console/stats")
    assert int(c.find('#counts tr[data-count="received"] td').text) >= 1
    svg = c.find("#chart-deliveries svg")
    assert "by what became of their delivery" in svg.get_attribute("aria-label")
    assert c.find_all("#chart-deliveries rect[fill='#1a7f37']")
    shot("stats")
