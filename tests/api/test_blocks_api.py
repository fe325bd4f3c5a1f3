"""Inbound blocks (issue 16) by config, by the API and by the operator's CLI: a blocked sender (an
address, or every sender of an @domain) is refused at RCPT with 550 5.7.1 by the milter for the
blocked route's addresses, through a real Postfix, and never delivered; lifting an API block
lets it in again at once. A key reads and changes the blocks of its own routes only. deliver keeps
aside what got past the milter from a sender the config blocks.

The stack: a private Postfix (mx.blocks.test, mail for blocks.test to a sink), `agentmx milter` as
a real process, and `agentmx serve` (in a thread) on the same config and data directory, on each
store backend."""
from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from e2e_helpers import message, send
from support.backends import BACKENDS, migrate, store_config
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, settled
from deliver.test_deliver import ENV, config as deliver_config, raw, receiver  # noqa: F401  (receiver: a fixture)

from agentmx import blocklist
from agentmx.api.server import start
from agentmx.config import ConfigError, Route, load_config, parse_config
from agentmx.deliver.core import EX_OK, deliver
from agentmx.store.model import DeliveryState

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
AUTHSERV = "mx.blocks.test"
KEY = "amx_blocks_key_for_the_agent_0123"
OTHER = "amx_blocks_key_for_someone_else_01"
ADMIN = "amx_blocks_key_for_the_whole_domain"
SECRET = "whsec_" + "A" * 24


# --- the milter's view: config entries and @domain patterns ---------------------------------------

ROUTES = (Route("agent@agents.test", "http://127.0.0.1:1/a", SECRET, block_senders=("spam@x.test", "@junk.test")),
          Route("@agents.test", "http://127.0.0.1:1/all", SECRET))


@pytest.mark.unit
def test_config_blocks_and_domain_patterns_in_the_snapshot(tmp_path):
    path = blocklist.path_in(tmp_path)
    snap = blocklist.Snapshot(path, ROUTES)
    assert snap.blocked("<Spam@X.test>", "agent+t@agents.test") == "agent@agents.test"
    assert snap.blocked("anyone@JUNK.test", "agent@agents.test") == "agent@agents.test"
    assert snap.blocked("anyone@sub.junk.test", "agent@agents.test") is None          # not its subdomains
    assert snap.blocked("spam@x.test", "other@agents.test") is None                   # another route's address
    assert snap.blocked("", "agent@agents.test") is None                              # the null sender: never
    assert blocklist.senders("<Postmaster>") == ("postmaster",)                        # no domain to block by
    blocklist.write(path, [("@pest.test", "@agents.test")])                           # a domain in the file
    assert snap.blocked("a@pest.test", "other@agents.test") == "@agents.test"
    assert snap.blocked("a@pest.test", "agent@agents.test") is None


@pytest.mark.unit
def test_the_file_fails_open_the_config_never(tmp_path):
    path = blocklist.path_in(tmp_path)
    path.write_bytes(b'{"version": 1, "blocks": [["a@x.test"')                        # torn
    snap = blocklist.Snapshot(path, ROUTES)
    assert snap.blocked("a@x.test", "agent@agents.test") is None
    assert snap.blocked("spam@x.test", "agent@agents.test") == "agent@agents.test"


@pytest.mark.unit
@pytest.mark.parametrize("value", [["not-an-address"], ["@nodot"], ["a b@x.test"], ["@"], [5], "spam@x.test",
                                   [f"s{n}@x.test" for n in range(1001)], ["x" * 250 + "@x.test"]])
def test_block_senders_are_validated(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        parse_config(f'[server]\nauthserv_id = "mx.test"\nurl_secret = "0123456789abcdef0123"\n'
                     f'[[routes]]\nmatch = "@agents.test"\nmode = "pull"\nblock_senders = {json.dumps(value)}\n',
                     tmp_path / "agentmx.toml")
    assert "routes[0]" in str(err.value) and "block_senders" in str(err.value)


@pytest.mark.unit
def test_block_senders_are_lower_cased_once(tmp_path):
    cfg = parse_config('[server]\nauthserv_id = "mx.test"\nurl_secret = "0123456789abcdef0123"\n'
                       '[[routes]]\nmatch = "@agents.test"\nmode = "pull"\n'
                       'block_senders = ["Spam@X.test", "spam@x.test", "@Junk.TEST"]\n', tmp_path / "agentmx.toml")
    assert cfg.routes[0].block_senders == ("spam@x.test", "@junk.test")


def test_deliver_keeps_aside_what_a_config_block_names(tmp_path, receiver):  # noqa: F811
    """Mail from a sender the route's block_senders name that reached deliver (past the milter) is
    kept aside, not POSTed; another route's mail from it is delivered."""
    cfg = deliver_config(tmp_path, receiver.url, block_senders=["@sender.test"])
    out = deliver(raw(), ENV, cfg)
    assert (out.exit_code, out.state) == (EX_OK, DeliveryState.HELD) and "by config" in out.reason
    assert receiver.requests == []


# --- Postfix + milter + serve ------------------------------------------------------------------------

@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, dns_server):
    dns_server.set_zone({"mail.sender.test": {"A": ["127.0.0.1"]}})
    pf = PostfixInstance("blk", AUTHSERV, relay_domains="blocks.test",
                         main={"transport_maps": "inline:{ blocks.test=sink: }"})
    data = pf.base / "data-agentmx"
    rest = f"""[[routes]]
match = "agent@blocks.test"
mode = "pull"
block_senders = ["spammer@bad-sender.test", "@junk-domain.test"]
[[routes]]
match = "@blocks.test"
mode = "pull"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@blocks.test"]
[[api_keys]]
name = "other"
key = "{OTHER}"
allow = ["other@blocks.test"]
[[api_keys]]
name = "admin"
key = "{ADMIN}"
allow = ["@blocks.test"]
""" + store_config(request, request.param, pf.base / "secrets")
    cfg, sock = agentmx_config(pf, AUTHSERV, dns_server.port, dns_timeout=0.5, milter="trusted_networks = []",
                               server=f'data_dir = "{data}"\nurl_secret = "blocks-test-url-secret-01"\n'
                                      f'listen = "127.0.0.1:0"', rest=rest)
    if request.param != "embedded":
        migrate(cfg)
    milter = MilterProcess(cfg, sock, pf.base / "milter.log").start()
    pf.start()
    server = start(load_config(cfg))
    yield {"pf": pf, "milter": milter, "cfg": cfg, "api": server.url, "data": data}
    server.stop()
    milter.stop()
    pf.stop()


@pytest.fixture
def mx(stack, dns_server):
    dns_server.set_zone({"mail.sender.test": {"A": ["127.0.0.1"]}})
    return stack


def smtp(mx, sender: str, rcpts: list[str]) -> tuple[dict, bytes]:
    """(the refused recipients, the marker of the message) for one SMTP transaction."""
    marker = f"marker-{time.time_ns()}".encode()
    raw = message(f"Someone <{sender}>", rcpts[0], body=marker.decode() + "\n")
    try:
        return send(mx["pf"].port, sender, rcpts, raw), marker
    except smtplib.SMTPRecipientsRefused as exc:
        return exc.recipients, marker


def delivered(mx, marker: bytes, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(marker in p.read_bytes() for p in mx["pf"].delivered()):
            return True
        time.sleep(0.1)
    return False


def refused_for_block(answer) -> bool:
    code, text = answer
    return code == 550 and text.startswith(b"5.7.1") and b"blocked" in text


def http(mx, method: str, path: str, body=None, key: str = KEY):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(mx["api"] + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.e2e
def test_config_blocks_are_refused_at_rcpt_and_never_delivered(mx):
    since = time.time()
    for sender in ("spammer@bad-sender.test", "Anyone@Junk-Domain.test"):
        refused, marker = smtp(mx, sender, ["agent@blocks.test", "agent+tag@blocks.test", "other@blocks.test"])
        assert set(refused) == {"agent@blocks.test", "agent+tag@blocks.test"}, refused
        assert all(refused_for_block(a) for a in refused.values())
        assert delivered(mx, marker)                                   # other@ (another route) took it
        settled(mx["pf"], since=since)             # one copy per recipient: other@'s alone
        assert len([p for p in mx["pf"].delivered() if marker in p.read_bytes()]) == 1
    refused, marker = smtp(mx, "friend@good-sender.test", ["agent@blocks.test"])
    assert refused == {} and delivered(mx, marker)
    assert "sender spammer@bad-sender.test is blocked for agent@blocks.test" in mx["milter"].log()


@pytest.mark.e2e
def test_an_api_block_is_refused_at_rcpt_at_once_and_lifted_again(mx):
    sender = f"pest{time.time_ns()}@annoying.test"
    status, got = http(mx, "POST", "/v1/blocks", {"sender": sender.upper()})      # the key's own route
    assert status == 200 and (got["sender"], got["scope"], got["source"], got["key"], got["created"],
                              got["published"]) == (sender, "agent@blocks.test", "api", "agent", True, True)
    refused, marker = smtp(mx, sender, ["agent@blocks.test"])
    assert refused_for_block(refused["agent@blocks.test"]) and not delivered(mx, marker, timeout=2)
    listed = http(mx, "GET", "/v1/blocks")[1]["blocks"]
    assert {"sender": sender, "scope": "agent@blocks.test", "source": "api", "key": "agent", "eventId": None,
            "createdAt": got["createdAt"]} in listed
    assert {"sender": "@junk-domain.test", "scope": "agent@blocks.test", "source": "config", "key": None,
            "eventId": None, "createdAt": None} in listed
    status, gone = http(mx, "DELETE", f"/v1/blocks/{urllib.parse.quote(sender)}")
    assert (status, gone["removed"], gone["published"]) == (200, True, True)
    refused, marker = smtp(mx, sender, ["agent@blocks.test"])
    assert refused == {} and delivered(mx, marker)
    assert http(mx, "DELETE", f"/v1/blocks/{urllib.parse.quote(sender)}")[1]["removed"] is False


@pytest.mark.e2e
def test_an_api_domain_block_covers_every_sender_of_it_for_that_route_only(mx):
    domain = f"d{time.time_ns()}.test"
    assert http(mx, "POST", "/v1/blocks", {"sender": f"@{domain}", "scope": "@blocks.test"}, key=ADMIN)[0] == 200
    refused, marker = smtp(mx, f"anyone@{domain}", ["other@blocks.test", "agent@blocks.test"])
    assert set(refused) == {"other@blocks.test"} and refused_for_block(refused["other@blocks.test"])
    assert delivered(mx, marker)                                       # agent@ has its own route: not covered
    assert http(mx, "DELETE", f"/v1/blocks/@{domain}", key=ADMIN)[1]["removed"] is True
    refused, marker = smtp(mx, f"anyone@{domain}", ["other@blocks.test"])
    assert refused == {} and delivered(mx, marker)


@pytest.mark.e2e
def test_a_key_sees_and_changes_only_its_own_routes_blocks(mx):
    sender = f"x{time.time_ns()}@annoying.test"
    assert http(mx, "POST", "/v1/blocks", {"sender": sender}, key=KEY)[0] == 200
    # other@ is routed by @blocks.test, which its key may not read as a whole: no route of its own
    assert http(mx, "GET", "/v1/blocks", key=OTHER) == (200, {"blocks": [], "nextCursor": None})
    for method, path, body in (("POST", "/v1/blocks", {"sender": sender, "scope": "agent@blocks.test"}),
                               ("DELETE", f"/v1/blocks/{sender}?scope=agent@blocks.test", None),
                               ("GET", "/v1/blocks?scope=agent@blocks.test", None)):
        status, got = http(mx, method, path, body, key=OTHER)
        assert (status, got["code"]) == (404, "unknown_scope"), (method, got)
    status, got = http(mx, "POST", "/v1/blocks", {"sender": sender}, key=OTHER)
    assert (status, got["code"]) == (400, "missing_scope")
    assert http(mx, "DELETE", f"/v1/blocks/{sender}", key=KEY)[1]["removed"] is True
    status, got = http(mx, "DELETE", "/v1/blocks/@junk-domain.test", key=KEY)        # the config's: the operator's
    assert (status, got["code"]) == (409, "config_block")
    refused, _ = smtp(mx, "someone@junk-domain.test", ["agent@blocks.test"])
    assert refused_for_block(refused["agent@blocks.test"])


@pytest.mark.parametrize("body,code", [({"sender": "nobody"}, "bad_sender"), ({"sender": "@x"}, "bad_sender"),
                                       ({"sender": "a@b.test", "why": "x"}, "bad_field"),
                                       ({"sender": ["a@b.test"]}, "bad_sender"), ([], "bad_json")])
@pytest.mark.e2e
def test_bad_input_is_a_clear_400(mx, body, code):
    status, got = http(mx, "POST", "/v1/blocks", body)
    assert (status, got["code"]) == (400, code)


@pytest.mark.e2e
def test_listing_pages_with_a_cursor(mx):
    base = f"p{time.time_ns()}"
    for n in range(4):
        assert http(mx, "POST", "/v1/blocks", {"sender": f"{base}-{n}@pages.test", "scope": "@blocks.test"},
                    key=ADMIN)[0] == 200
    seen, cursor = [], None
    for _ in range(50):
        status, page = http(mx, "GET", "/v1/blocks?limit=3" + (f"&cursor={cursor}" if cursor else ""), key=ADMIN)
        assert status == 200 and len(page["blocks"]) <= 3
        seen += [(b["scope"], b["sender"], b["source"]) for b in page["blocks"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and {s for _, s, _ in seen} >= {f"{base}-{n}@pages.test" for n in range(4)}
    assert ("agent@blocks.test", "@junk-domain.test", "config") in seen
    for n in range(4):
        http(mx, "DELETE", f"/v1/blocks/{base}-{n}@pages.test?scope=@blocks.test", key=ADMIN)


def cli(mx, *args) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTMX, "--config", str(mx["cfg"]), "blocks", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.e2e
def test_the_operators_cli_blocks_and_lifts_at_once(mx):
    sender = f"cli{time.time_ns()}@annoying.test"
    out = cli(mx, "add", sender, "--scope", "agent@blocks.test")
    assert out.returncode == 0 and f"{sender} blocked for agent@blocks.test" in out.stdout, out.stderr
    refused, marker = smtp(mx, sender, ["agent@blocks.test"])
    assert refused_for_block(refused["agent@blocks.test"])
    listed = cli(mx, "list", "--scope", "agent@blocks.test").stdout.splitlines()
    assert any(line.startswith(f"agent@blocks.test  {sender}  operator  since ") for line in listed)
    assert "agent@blocks.test  spammer@bad-sender.test  config" in listed
    api = http(mx, "GET", "/v1/blocks")[1]["blocks"]
    assert any(b["sender"] == sender and b["source"] == "operator" for b in api)
    assert cli(mx, "add", "nobody", "--scope", "agent@blocks.test").returncode == 2
    assert cli(mx, "add", sender).returncode == 2                      # two routes: --scope is needed
    assert cli(mx, "add", sender, "--scope", "@elsewhere.test").returncode == 2
    out = cli(mx, "remove", sender, "--scope", "agent@blocks.test")
    assert out.returncode == 0 and "no longer blocked" in out.stdout
    refused, marker = smtp(mx, sender, ["agent@blocks.test"])
    assert refused == {} and delivered(mx, marker)
    out = cli(mx, "remove", "spammer@bad-sender.test", "--scope", "agent@blocks.test")
    assert "by the config" in out.stdout
