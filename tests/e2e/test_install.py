"""The install, as an operator gets it: `agentmx setup` on a private Postfix, then every service
started exactly as its systemd unit says (User, Group, SupplementaryGroups, UMask, ExecStartPre,
ExecStart read from the unit files themselves, run through setpriv: tests/support/units.py). Mail
flows in (a verified event reaches the endpoint) and out (the agent's reply, through serve and the
send API's submission service, arrives at a remote Postfix with dkim=pass); and serve's user cannot
read a private key, nor the milter's user the application's secrets.

Nothing here runs as root but Postfix itself (as on a real host), setup, and the units' "+" lines.
"""
from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from e2e_helpers import our_results, verdicts
from support.install import DOMAIN, UNITS, VENV, api_key, inbound, installed
from support.install import log as _log
from support.postfix import wait_for
from support.units import Unit

from agentmx.client import Client


@pytest.fixture(scope="module")
def install(dns_server):
    with installed(dns_server) as inst:       # tests/support/install.py: setup, then the units
        yield inst


@pytest.fixture
def inst(install, dns_server):
    dns_server.set_zone(install["zone"])
    return install


def test_the_services_run_as_their_units_say(inst):
    import pwd
    for proc, name in zip(inst["procs"], ("milter", "serve")):
        assert proc.poll() is None, f"{name} exited: {_log(inst['base'], name)}"
        # sh execs setpriv, which execs agentmx: the same process, now the unit's user
        uid = os.stat(f"/proc/{proc.pid}").st_uid
        assert pwd.getpwuid(uid).pw_name == inst["units"][name].user, name


def test_mail_flows_in_as_a_verified_event(inst):
    event = inbound(inst, "Install check")
    assert (event["auth"]["spf"], event["auth"]["dkim"], event["auth"]["dmarc"]) == ("pass", "pass", "pass")
    assert event["codes"] == ["318273"]
    # stored by deliver (user agentmx, through pipe) where nobody else can read it
    data = inst["data"]
    files = [*data.glob("agentmx.sqlite*"), *(data / "blobs").glob("*/*")]
    # the database and the raw message's blob at least (SQLite's -wal and -shm files exist only
    # while a connection is open: counting them made this test depend on serve's timing)
    assert data / "agentmx.sqlite" in files and any(p.parent.parent == data / "blobs" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o007 == 0, p


def test_mail_flows_out_signed_through_the_submission_service(inst):
    event = inbound(inst, "Please answer")
    key = api_key(inst)
    result = Client(inst["api"], key).reply(event, text="Thanks, received.")
    assert result["queueId"]

    def arrived():
        for p in inst["rx"].delivered():
            raw = p.read_bytes()
            if result["messageId"].encode() in raw:
                return raw
        return None
    raw = wait_for(arrived, timeout=60, what=f"the reply at the remote MX\n{inst['ix'].log()[-3000:]}\n"
                                             f"{_log(inst['base'], 'milter')}")
    (header,) = our_results(raw, "mx.remote.test")
    v = verdicts(header)
    assert {(d.result, d.header_d) for d in v["dkim"]} == {("pass", DOMAIN)}
    assert v["dmarc"][0].result == "pass"


def test_serve_cannot_read_a_private_key_and_the_milter_no_app_secret(inst):
    keys = sorted((inst["etc"] / "keys" / DOMAIN).iterdir())
    assert keys
    serve, milter = inst["units"]["serve"], inst["units"]["milter"]
    for key in keys:
        denied = serve.run_as(["cat", str(key)])
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert milter.run_as(["cat", str(key)]).returncode == 0
    for secret in ("webhook.secret", "url.secret", "api.key", "admin.key"):
        denied = milter.run_as(["cat", str(inst["etc"] / secret)])
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, secret
        assert serve.run_as(["cat", str(inst["etc"] / secret)]).returncode == 0
    # the milter's counters (for /metrics): written by the milter, readable by serve
    inbound(inst, "Counters")
    stats = inst["data"] / "stats"
    wait_for(lambda: list(stats.glob("milter-*.json")), timeout=30, what="the milter's counters")
    for path in stats.glob("milter-*.json"):
        assert serve.run_as(["cat", str(path)]).returncode == 0
    # and read as /metrics reads them, as serve's user: a glob of the directory (which cat does not
    # need: a stats directory serve can enter but not list shows no milter counters at all); -I:
    # not the worktree's agentmx/ folder (the cwd) instead of the installed package
    read = serve.run_as([sys.executable, "-I", "-c", "import pathlib, sys; from agentmx.ops import _milter_metrics; "
                                                     "print('\\n'.join(_milter_metrics(pathlib.Path(sys.argv[1]))))",
                         str(stats)])
    assert read.returncode == 0 and 'agentmx_milter_messages_total{action="accept"} ' in read.stdout, read
    for unit_name in ("agent", "worker", "lmtp", "gc"):
        other = Unit.read(UNITS / f"agentmx-{unit_name}.service")
        assert other.run_as(["cat", str(keys[0])]).returncode != 0, unit_name


def test_a_milter_process_stopped_alone_leaves_the_socket_to_the_others(inst):
    """[milter] processes (2 here: the default on 2 CPUs). libmilter unlinks its socket path when
    it stops, if it is not root: one process stopped alone (SIGTERM by hand, or libmilter giving
    up) took the socket away from the others and from its successor, and mail got 4xx until the
    service was restarted. The socket is now bound at a temporary name and renamed into place."""
    milter = inst["procs"][0]
    sock = inst["ix"].base / "milter" / "milter.sock"
    children = Path(f"/proc/{milter.pid}/task/{milter.pid}/children")
    victim = int(children.read_text().split()[0])
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: len(children.read_text().split()) == 2 and str(victim) not in children.read_text().split(),
             timeout=30, what=f"a new milter process\n{_log(inst['base'], 'milter')}")
    assert sock.exists(), _log(inst["base"], "milter")
    event = inbound(inst, "After a milter process stopped")
    assert event["auth"]["dkim"] == "pass"


def test_every_file_setup_made_has_the_documented_owner_and_mode(inst):
    import grp
    import pwd
    etc, data = inst["etc"], inst["data"]

    def owner(p: Path) -> tuple[str, str, int]:
        st = p.stat()
        return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)
    assert owner(etc) == ("root", "agentmx", 0o750)
    assert owner(etc / "agentmx.toml") == ("root", "agentmx", 0o640)
    for secret in ("webhook.secret", "url.secret", "api.key", "admin.key"):
        assert owner(etc / secret) == ("agentmx", "agentmx", 0o400)
    assert owner(etc / "keys") == ("root", "agentmx-milter", 0o750)
    assert owner(etc / "keys" / DOMAIN) == ("root", "agentmx-milter", 0o750)
    for key in (etc / "keys" / DOMAIN).iterdir():
        assert owner(key) == ("root", "agentmx-milter", 0o640)
    assert owner(data) == ("agentmx", "agentmx", 0o750)
    assert owner(data / "stats") == ("agentmx-milter", "agentmx", 0o2750)
    assert owner(inst["ix"].base / "milter") == ("agentmx-milter", "postfix", 0o750)


@pytest.mark.parametrize("name", ["agent", "worker", "lmtp", "gc"])
def test_every_other_unit_checks_its_config_as_its_own_user(inst, name):
    """ExecStartPre (check-config --service app) of the units not started above, under each
    unit's own identity, on setup's files."""
    unit = Unit.read(UNITS / f"agentmx-{name}.service")
    paths = {"/opt/agentmx/venv": VENV, "/etc/agentmx/agentmx.toml": str(inst["cfg"])}
    unit.run_pre(paths)               # raises with the command's output if one fails
    out = unit.run_as([str(Path(VENV) / "bin" / "agentmx"), "--config", str(inst["cfg"]), "check-config",
                       "--service", "app"])
    assert out.returncode == 0, out.stderr
