"""docs/operator.md, run: every line of every `sh` block, block by block in order, in bash with
`set -e`, against a private Postfix instance, a DNS server on loopback and a sandbox for
/etc/agentmx and /var/lib/agentmx. Between blocks the test does what the reader does outside the
shell: it publishes the records `agentmx dns` printed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT
from support.dnszone import zone_from_records
from support.postfix import PostfixInstance
from support.receiver import Receiver

from agentmx import dnsrecords
from agentmx.config import load_config

GUIDE = ROOT / "docs" / "operator.md"


def sh_blocks(path: Path) -> list[tuple[str, str]]:
    """(the heading above it, the block) for every ```sh block."""
    text = path.read_text()
    out = []
    for m in re.finditer(r"^```sh\n(.*?)^```", text, re.S | re.M):
        heading = re.findall(r"^## (.+)$", text[:m.start()], re.M)
        out.append((heading[-1] if heading else "", m.group(1)))
    return out


def test_every_command_in_the_operators_guide_runs(dns_server):
    blocks = sh_blocks(GUIDE)
    assert len(blocks) >= 7
    pf = PostfixInstance("docs", "mx.docs.test")
    sandbox = Path(tempfile.mkdtemp(prefix="agentmx-docs-", dir="/tmp"))
    os.chmod(sandbox, 0o755)
    receiver = Receiver()
    try:
        (sandbox / "scripts").symlink_to(ROOT / "scripts")
        (sandbox / "systemd").symlink_to(ROOT / "systemd")
        shutil.copy(ROOT.parent / "shared" / "corpus" / "sisimai-set-of-emails" / "maildir" / "bsd" / "lhost-gmail-01.eml",
                    sandbox / "message.eml")
        (sandbox / "systemd-units").mkdir()
        original = {n: (pf.etc / n).read_bytes() for n in ("main.cf", "master.cf")}
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "MAIL_CONFIG": str(pf.etc), "AGENTMX_DIR": str(sandbox / "etc-agentmx"),
               "AGENTMX_DATA_DIR": str(sandbox / "data"), "AGENTMX_SOCKET": str(pf.base / "milter" / "milter.sock"),
               "AGENTMX_PIPE_USER": "nobody", "AGENTMX_DNS": f"127.0.0.1:{dns_server.port}",
               "SYSTEMD_DIR": str(sandbox / "systemd-units"), "DOMAIN": "agents.docs.test", "ENDPOINT": receiver.url}
        env.pop("AGENTMX_CONFIG", None)
        exported = sandbox / "env.sh"
        exported.write_text("")
        for heading, block in blocks:
            script = f"set -euo pipefail\nsource {exported}\n{block}\nexport -p > {exported}\n"
            out = subprocess.run(["bash", "-c", script], cwd=sandbox, env=env, capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, f"## {heading}\n{block}\n--- stdout\n{out.stdout[-2000:]}\n--- stderr\n{out.stderr[-2000:]}"
            if heading.startswith("2."):
                # what the reader does next, outside the shell: publish the DNS records
                config = load_config(sandbox / "etc-agentmx" / "agentmx.toml")
                dns_server.set_zone(zone_from_records(dnsrecords.records(config, "agents.docs.test"),
                                                      {"mx.docs.test": {"A": ["127.0.0.1"]}}))
        assert {n: (pf.etc / n).read_bytes() for n in original} == original      # section 8 undid it all
        assert sorted(p.name for p in (sandbox / "systemd-units").iterdir()) == [
            "agentmx-gc.service", "agentmx-gc.timer", "agentmx-milter.service", "agentmx-serve.service"]
    finally:
        receiver.stop()
        pf.stop()
        shutil.rmtree(sandbox, ignore_errors=True)


@pytest.mark.parametrize("doc", ["operator.md", "agent-developer.md"])
def test_guides_name_only_commands_that_exist(doc):
    """Every `agentmx <command>` in a guide's code (blocks and `spans`) is a real subcommand."""
    from agentmx.cli import build_parser
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    text = (ROOT / "docs" / doc).read_text()
    code = " ".join(re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text))
    mentioned = set(re.findall(r"\bagentmx (?:--config \S+ )?([a-z][a-z-]+)", code))
    assert mentioned and mentioned <= commands, mentioned - commands


def test_every_command_in_the_agent_developers_guide_runs():
    blocks = sh_blocks(ROOT / "docs" / "agent-developer.md")
    assert blocks
    sandbox = Path(tempfile.mkdtemp(prefix="agentmx-docs-", dir="/tmp"))
    try:
        shutil.copy(ROOT.parent / "shared" / "corpus" / "cpython-email" / "data" / "msg_01.txt", sandbox / "message.eml")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "AGENTMX_CONFIG": "/nonexistent/agentmx.toml"}
        for heading, block in blocks:
            out = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=sandbox, env=env,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"## {heading}\n{block}\n{out.stderr[-2000:]}"
            if "agentmx parse" in block:
                import json
                assert json.loads(out.stdout)["mailboxHash"] == "orders"
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
