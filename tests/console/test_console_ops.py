"""The console's operator pages over real HTTP (serve, its store, the DNS server on loopback, a
private Postfix): suppressions, blocks, domains, queue, stats. Each: what one key sees another
does not, every form refused without its CSRF token, bad input a clear error page."""
from __future__ import annotations

import html
from contextlib import closing
import json
import re
import smtplib
import subprocess
import sys
import time

import pytest
import requests

from agentmx import dnsrecords
from agentmx.api.server import start
from agentmx.config import parse_config
from agentmx.deliver.core import deliver
from agentmx.deliver.outcome import Envelope
from agentmx.store import open_store
from agentmx.store.model import SendEvent, SendEventType, PostState

from support.console import csrf_of, sign_in
from support.dnszone import zone_from_records
from support.postfix import PostfixInstance, free_tcp_port, wait_for

KEY_A = "ops-console-key-a-0123456789abcdef"
KEY_B = "ops-console-key-b-0123456789abcdef"
ADMIN = "ops-console-admin-key-0123456789abcdef"


def _config(tmp_path, dns_port: int = 9, extra: str = ""):
    text = f'''[server]
authserv_id = "mx.agents.test"
data_dir = "{tmp_path / 'data'}"
key_dir = "{tmp_path / 'keys'}"
listen = "127.0.0.1:0"
url_secret = "ops-console-url-secret-0123456789"
admin_key = "{ADMIN}"
{extra}
[dns]
servers = ["127.0.0.1:{dns_port}"]
timeout = 1.0
[domains."agents.test"]
[domains."other.test"]
[[routes]]
match = "a@agents.test"
mode = "pull"
block_senders = ["@config-blocked.test"]
[[routes]]
match = "@agents.test"
mode = "pull"
[[routes]]
match = "@other.test"
mode = "pull"
[[api_keys]]
name = "a"
key = "{KEY_A}"
allow = ["a@agents.test"]
[[api_keys]]
name = "b"
key = "{KEY_B}"
allow = ["@other.test"]
'''
    (tmp_path / "data").mkdir(exist_ok=True)
    return parse_config(text, tmp_path / "agentmx.toml")


@pytest.fixture
def serve(tmp_path):
    running = []

    def go(**kw):
        cfg = _config(tmp_path, **kw)
        running.append(start(cfg))
        return running[-1].url, cfg
    yield go
    for r in running:
        r.stop()


def post(s: requests.Session, url: str, data: dict, csrf_from: str | None = None) -> requests.Response:
    """A console form, with the CSRF token of the page it is on (`csrf_from`, default `url`)."""
    data = {**data, "csrf": csrf_of(s.get(csrf_from or url, timeout=5).text)}
    return s.post(url, data=data, timeout=10, allow_redirects=False)


def rows_of(page: str, table: str) -> list[str]:
    body = re.search(rf'<table id="{table}".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [html.unescape(re.sub(r"<[^>]+>", " ", r)) for r in re.findall(r"<tr data-.*?</tr>", body, re.S)]


def refused_without_csrf(s: requests.Session, url: str, data: dict) -> None:
    for token in (None, "forged-token"):
        r = s.post(url, data={**data, **({"csrf": token} if token else {})}, timeout=5, allow_redirects=False)
        assert r.status_code == 403 and "form expired" in r.text, (url, r.status_code)


# --- suppressions ----------------------------------------------------------------------------------

def test_suppressions_add_list_remove_in_the_keys_domains_only(serve):
    base, cfg = serve()
    a, b, admin = sign_in(base, KEY_A), sign_in(base, KEY_B), sign_in(base, ADMIN)
    page = a.get(f"{base}/console/suppressions", timeout=5)
    assert page.status_code == 200 and '<form id="suppress"' in page.text
    assert re.search(r'<label for="address">', page.text) and 'id="add"' in page.text
    assert 'href="/console/suppressions" aria-current="page"' in page.text          # in the navigation
    refused_without_csrf(a, f"{base}/console/suppressions", {"address": "bob@remote.test"})

    r = post(a, f"{base}/console/suppressions", {"address": " Bob@Remote.TEST ", "reason": "manual", "note": "asked"})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/suppressions?done=added")
    page = a.get(base + r.headers["location"], timeout=5).text
    assert "bob@remote.test is suppressed" in page
    [row] = rows_of(page, "suppressions")
    assert "bob@remote.test" in row and "agents.test" in row and "manual" in row and "asked" in row
    # what the JSON API does: the store has it, and a send from the domain to it is refused
    with closing(open_store(cfg)) as store:
        assert [s.address for s in store.suppressed("agents.test", ("bob@remote.test",))] == ["bob@remote.test"]
    r = requests.post(f"{base}/v1/send", headers={"authorization": f"Bearer {KEY_A}"}, timeout=5,
                      json={"from": "a@agents.test", "to": "bob@remote.test", "subject": "x", "text": "x"})
    assert r.status_code == 422 and r.json()["code"] == "suppressed"
    # a second add keeps the first; another key (another domain) sees none of it; the admin does
    r = post(a, f"{base}/console/suppressions", {"address": "bob@remote.test"})
    assert "done=already" in r.headers["location"]
    assert rows_of(b.get(f"{base}/console/suppressions", timeout=5).text, "suppressions") == []
    assert len(rows_of(admin.get(f"{base}/console/suppressions", timeout=5).text, "suppressions")) == 1
    # b cannot lift a's (not its domain: as if it were not there), nor add for a's domain
    r = post(b, f"{base}/console/suppressions/remove", {"address": "bob@remote.test", "domain": "agents.test"},
             f"{base}/console/suppressions")
    assert r.status_code == 404 and "no domain" in r.text and 'class="error"' in r.text
    r = post(b, f"{base}/console/suppressions", {"address": "x@remote.test", "domain": "agents.test"})
    assert r.status_code == 404 and "no domain" in r.text
    # bad input: a clear page, nothing stored
    for bad, words in (({"address": "not an address"}, "must be an email address"),
                       ({"address": "x@remote.test", "reason": "because"}, "manual, bounced or complained"),
                       ({"address": "x@remote.test", "note": "two\nlines"}, "one line of text")):
        r = post(a, f"{base}/console/suppressions", bad)
        assert r.status_code == 400 and words in html.unescape(r.text) and 'class="error"' in r.text, bad
    refused_without_csrf(a, f"{base}/console/suppressions/remove", {"address": "bob@remote.test"})
    # removed by its button's form
    page = a.get(f"{base}/console/suppressions", timeout=5).text
    assert page.count('class="remove') == 1
    r = post(a, f"{base}/console/suppressions/remove", {"address": "bob@remote.test", "domain": "agents.test"},
             f"{base}/console/suppressions")
    assert r.status_code == 303 and "done=removed" in r.headers["location"]
    assert rows_of(a.get(f"{base}/console/suppressions", timeout=5).text, "suppressions") == []
    r = post(a, f"{base}/console/suppressions/remove", {"address": "bob@remote.test"}, f"{base}/console/suppressions")
    assert "done=absent" in r.headers["location"]


# --- blocks ------------------------------------------------------------------------------------------

def test_blocks_add_list_remove_for_the_keys_routes_only(serve):
    base, cfg = serve()
    a, b = sign_in(base, KEY_A), sign_in(base, KEY_B)
    page = a.get(f"{base}/console/blocks", timeout=5).text
    assert '<form id="block"' in page and '<label for="sender">' in page
    [config_row] = rows_of(page, "blocks")                # the route's block_senders: shown, not removable
    assert "@config-blocked.test" in config_row and "config" in config_row and 'class="remove' not in page
    refused_without_csrf(a, f"{base}/console/blocks", {"sender": "spammer@bad.test"})

    r = post(a, f"{base}/console/blocks", {"sender": "Spammer@Bad.test"})
    assert r.status_code == 303 and "done=added" in r.headers["location"]
    rows = rows_of(a.get(base + r.headers["location"], timeout=5).text, "blocks")
    assert any("spammer@bad.test" in row and "a@agents.test" in row and "api" in row for row in rows)
    blocks = json.loads((cfg.data_dir / "blocks.json").read_text())["blocks"]      # the milter's list, at once
    assert ["spammer@bad.test", "a@agents.test"] in blocks
    # another key: none of a's; a scope not the key's is refused as if it were not there
    assert not any("spammer" in row for row in rows_of(b.get(f"{base}/console/blocks", timeout=5).text, "blocks"))
    r = post(a, f"{base}/console/blocks", {"sender": "x@bad.test", "scope": "@other.test"})
    assert r.status_code == 404 and "no route" in html.unescape(r.text)
    r = post(b, f"{base}/console/blocks/remove", {"sender": "spammer@bad.test", "scope": "a@agents.test"},
             f"{base}/console/blocks")
    assert r.status_code == 404
    # bad input; the config's block is the operator's
    r = post(a, f"{base}/console/blocks", {"sender": "not a sender"})
    assert r.status_code == 400 and "sender must be" in html.unescape(r.text) and 'class="error"' in r.text
    r = post(a, f"{base}/console/blocks/remove", {"sender": "@config-blocked.test"}, f"{base}/console/blocks")
    assert r.status_code == 409 and "only the operator lifts it" in r.text
    refused_without_csrf(a, f"{base}/console/blocks/remove", {"sender": "spammer@bad.test"})
    r = post(a, f"{base}/console/blocks/remove", {"sender": "spammer@bad.test", "scope": "a@agents.test"},
             f"{base}/console/blocks")
    assert r.status_code == 303 and "done=removed" in r.headers["location"]
    assert not any("spammer" in row for row in rows_of(a.get(f"{base}/console/blocks", timeout=5).text, "blocks"))
    assert ["spammer@bad.test", "a@agents.test"] not in json.loads((cfg.data_dir / "blocks.json").read_text())["blocks"]


# --- domains -----------------------------------------------------------------------------------------

def states(page: str, domain: str) -> dict[str, str]:
    section = re.search(rf'<section class="domain" id="domain-{re.escape(domain)}".*?</section>', page, re.S).group(0)
    return dict(re.findall(r'<tr data-purpose="([^"]+)" data-status="([^"]+)">', section))


def test_domains_show_each_records_state_and_check_now_looks_again(serve, zone, dns_server):
    base, cfg = serve(dns_port=dns_server.port)
    recs = dnsrecords.records(cfg, "agents.test")
    published = zone_from_records([r for r in recs if r.what != "DMARC"], {"mx.agents.test": {"A": ["192.0.2.25"]}})
    zone(published)
    a, b = sign_in(base, KEY_A), sign_in(base, KEY_B)
    page = a.get(f"{base}/console/domains", timeout=10).text
    assert 'id="domain-other.test"' not in page                   # b's domain
    got = states(page, "agents.test")
    assert got["DMARC"] == "missing" and got["MX"] == "ok" and got["SPF"] == "ok"
    dmarc = next(r for r in recs if r.what == "DMARC")
    assert f"<pre class=\"record\">{html.escape(dmarc.value)}</pre>" in page      # the value to publish, copyable
    assert "<code>_dmarc.agents.test</code>" in page or f"<code>{dmarc.name}</code>" in page
    # published now: the page keeps its checked answer (a minute) until Check now
    zone(zone_from_records(recs, {"mx.agents.test": {"A": ["192.0.2.25"]}}))
    assert states(a.get(f"{base}/console/domains", timeout=10).text, "agents.test")["DMARC"] == "missing"
    refused_without_csrf(a, f"{base}/console/domains/check", {"domain": ""})
    r = post(a, f"{base}/console/domains/check", {}, f"{base}/console/domains")
    assert r.status_code == 303 and "done=checked" in r.headers["location"]
    assert states(a.get(base + r.headers["location"], timeout=10).text, "agents.test")["DMARC"] == "ok"
    # the JSON API shares the check: it says the same without a check of its own
    api = requests.get(f"{base}/api/domains/agents.test", headers={"authorization": f"Bearer {KEY_A}"}, timeout=10).json()
    assert {r["purpose"]: r["status"] for r in api["records"]}["DMARC"] == "ok"
    # DNS silent: unknown (temperror), never missing
    dns_server.resolver.silent = True
    r = post(a, f"{base}/console/domains/check", {"domain": "agents.test"}, f"{base}/console/domains")
    assert r.status_code == 303
    got = states(a.get(f"{base}/console/domains", timeout=10).text, "agents.test")
    assert set(got.values()) <= {"unknown", "unchecked", "published"} and got["DMARC"] == "unknown"
    dns_server.resolver.silent = False
    # b sees its own domain, not a's; a domain not yours is refused
    page = b.get(f"{base}/console/domains", timeout=10).text
    assert 'id="domain-other.test"' in page and 'id="domain-agents.test"' not in page
    r = post(b, f"{base}/console/domains/check", {"domain": "agents.test"}, f"{base}/console/domains")
    assert r.status_code == 404 and "no domain agents.test" in r.text


# --- queue -------------------------------------------------------------------------------------------

@pytest.fixture
def held_postfix():
    """A private Postfix that relays agents.test and other.test to a closed port: what it takes stays
    in its queue, deferred, with a delay reason."""
    closed = free_tcp_port()
    pf = PostfixInstance("cq", "mx.queue.test", relay_domains="agents.test other.test",
                         main={"transport_maps": f"inline:{{ agents.test=smtp:[127.0.0.1]:{closed}, "
                                                 f"other.test=smtp:[127.0.0.1]:{closed} }}",
                               "smtp_connect_timeout": "2s"}).start()
    try:
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as smtp:
            smtp.sendmail("sender@remote.test", ["a@agents.test", "c@agents.test"],
                          b"From: sender@remote.test\r\nSubject: held\r\n\r\nheld\r\n")
            smtp.sendmail("other-sender@remote.test", ["b@other.test"],
                          b"From: other-sender@remote.test\r\nSubject: held too\r\n\r\nheld\r\n")
        wait_for(lambda: pf.queue().count("Connection refused") >= 2, timeout=30, what="two deferred messages")
        yield pf
    finally:
        pf.stop()


def queue_rows(page: str) -> list[str]:
    return rows_of(page, "queue")


@pytest.mark.e2e                # a private Postfix holds the message
def test_queue_lists_what_waits_for_the_viewers_addresses_only(serve, held_postfix):
    base, cfg = serve(extra=f'postfix_config = "{held_postfix.etc}"')
    a, b, admin = sign_in(base, KEY_A), sign_in(base, KEY_B), sign_in(base, ADMIN)
    page = a.get(f"{base}/console/queue", timeout=20)
    assert page.status_code == 200
    text = " ".join(queue_rows(page.text))
    assert "a@agents.test" in text and "sender@remote.test" in text and "Connection refused" in text
    assert "c@agents.test" not in text and "b@other.test" not in text          # not a's addresses
    assert re.search(r"<code>[0-9A-Za-z]{6,}</code>", page.text) and "deferred" in text
    text = " ".join(queue_rows(b.get(f"{base}/console/queue", timeout=20).text))
    assert "b@other.test" in text and "a@agents.test" not in text
    assert "other-sender@remote.test" in text and " sender@remote.test" not in text
    text = " ".join(queue_rows(admin.get(f"{base}/console/queue", timeout=20).text))
    assert all(x in text for x in ("a@agents.test", "c@agents.test", "b@other.test"))


def test_queue_without_postfix_says_so(serve, tmp_path):
    base, cfg = serve(extra=f'postfix_config = "{tmp_path / "no-postfix-here"}"')
    page = sign_in(base, KEY_A).get(f"{base}/console/queue", timeout=20)
    assert page.status_code == 200 and "Postfix's queue cannot be read: postqueue failed" in html.unescape(page.text)
    assert 'id="queue"' not in page.text


@pytest.mark.e2e                # a private Postfix holds the message
def test_postqueue_as_serves_unit_user(held_postfix):
    """serve runs as agentmx with the group postdrop and NoNewPrivileges (systemd/agentmx-serve.service):
    postqueue's setgid bit does nothing then, and the showq socket (public/, group postdrop) is
    reached through the supplementary group. ops.read_queue as that user, with -c."""
    script = ("import json, sys\nfrom agentmx import ops\n"
              "got = ops.read_queue(sys.argv[1])\nprint(json.dumps([got.error, [i['queue_id'] for i in got.items]]))\n")

    def as_agentmx(*groups: str):
        out = subprocess.run(["setpriv", "--reuid", "agentmx", "--regid", "agentmx",
                              *(["--groups", ",".join(groups)] if groups else ["--clear-groups"]), "--no-new-privs",
                              sys.executable, "-c", script, str(held_postfix.etc)],
                             capture_output=True, text=True, timeout=60, cwd="/")
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)
    error, ids = as_agentmx("postdrop")
    assert error == "" and len(ids) == 2
    error, ids = as_agentmx()                   # without the unit's SupplementaryGroups: said, not raised
    assert ids == [] and "postqueue failed" in error


@pytest.mark.e2e                # a private Postfix holds the message
def test_postqueue_is_bounded_in_output_and_time(held_postfix, tmp_path, monkeypatch):
    """ops.read_queue reads at most max_bytes (the cut line dropped, `truncated` said) and waits at
    most `timeout` (then postqueue is killed); a missing postqueue is said, not raised."""
    from agentmx import ops
    whole = ops.read_queue(str(held_postfix.etc))
    assert len(whole.items) == 2 and not whole.truncated and whole.error == ""
    first = len(subprocess.run(["postqueue", "-c", str(held_postfix.etc), "-j"], capture_output=True).stdout.split(b"\n")[0])
    cut = ops.read_queue(str(held_postfix.etc), max_bytes=first + 10)
    assert cut.truncated and len(cut.items) == 1 and cut.error == ""
    hung = tmp_path / "bin"                    # a Postfix whose showq never answers: a postqueue that sleeps
    hung.mkdir()
    (hung / "postqueue").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    (hung / "postqueue").chmod(0o755)
    monkeypatch.setenv("PATH", str(hung))
    t0 = time.monotonic()
    got = ops.read_queue(None, timeout=0.5)
    assert got.error == "postqueue did not answer within 0.5 seconds" and time.monotonic() - t0 < 5
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert ops.read_queue(None).error == "postqueue is not installed here (is Postfix?)"


# --- stats -------------------------------------------------------------------------------------------

MESSAGE = b"From: Bob <bob@remote.test>\r\nTo: {rcpt}\r\nSubject: n\r\nMessage-ID: <{n}@remote.test>\r\n\r\nhi\r\n"


def test_stats_counts_and_chart_in_the_viewers_scope(serve):
    base, cfg = serve()
    with closing(open_store(cfg)) as store:
        for n, rcpt in enumerate(["a@agents.test", "a+tag@agents.test", "c@agents.test", "b@other.test"]):
            raw = MESSAGE.replace(b"{rcpt}", rcpt.encode()).replace(b"{n}", str(n).encode())
            out = deliver(raw, Envelope(sender="bob@remote.test", recipient=rcpt, queue_id=f"Q{n}"), cfg, store=store)
            assert out.exit_code == 0
        now = store.clock()
        for name, type_ in (("1", SendEventType.SENT), ("2", SendEventType.SENT), ("3", SendEventType.BOUNCED)):
            store.put_send_event(SendEvent(f"evt_{name}", "snd_" + "a" * 26, type_, "x@remote.test", now,
                                           "a@agents.test", "a@agents.test", b"{}", PostState.KEPT))
    a, b, admin = sign_in(base, KEY_A), sign_in(base, KEY_B), sign_in(base, ADMIN)
    page = a.get(f"{base}/console/stats", timeout=10).text

    def count(page: str, what: str) -> tuple[int, int]:
        m = re.search(rf'<tr data-count="{re.escape(what)}">.*?<td>(\d+)</td><td>(\d+)</td>', page, re.S)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    assert count(page, "received") == (2, 2)                           # a and a+tag, not c nor b
    assert count(page, "state-stored") == (2, 2)
    assert count(page, "dmarc-none") == (2, 2)
    assert count(page, "sent") == (2, 2) and count(page, "email.bounced") == (1, 1)
    # the chart: inline SVG, labelled, with the same numbers as a table, no script
    svg = re.search(r'<svg class="chart"[^>]*aria-label="([^"]+)"[^>]*>\s*<title id="chart-deliveries-title">', page)
    assert svg and "by what became of their delivery" in svg.group(1)
    assert re.search(r'<rect [^>]*fill="#1a7f37"><title>[^<]*delivered, stored or queued for the agent: 2</title>', page)
    assert '<details id="chart-table">' in page and "<script" not in page
    assert count(b.get(f"{base}/console/stats", timeout=10).text, "received") == (1, 1)
    assert count(b.get(f"{base}/console/stats", timeout=10).text, "sent") == (0, 0)
    assert count(admin.get(f"{base}/console/stats?range=7d", timeout=10).text, "received") == (4, 4)
    r = a.get(f"{base}/console/stats?range=1y", timeout=10)
    assert r.status_code == 400 and "range is 24h or 7d" in r.text
