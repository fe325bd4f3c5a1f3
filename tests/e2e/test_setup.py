"""`agentmx setup` against a private Postfix instance: a dry run changes nothing, a run gives a
working configuration (mail flows to the endpoint), a second run changes nothing more, and
--undo restores main.cf and master.cf byte for byte."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from e2e_helpers import message, send
from support.postfix import MilterProcess, PostfixInstance
from support.receiver import Receiver

AGENTMX = str(Path(sys.executable).with_name("agentmx"))


@pytest.fixture
def instance():
    pf = PostfixInstance("setup", "mx.agents.test")
    base = Path(tempfile.mkdtemp(prefix="agentmx-setup-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield pf, base
    pf.stop()
    shutil.rmtree(base, ignore_errors=True)


def setup_cmd(pf, base, receiver, *extra):
    return [AGENTMX, "setup", "--postfix-config", str(pf.etc), "--domain", "agents.test", "--endpoint", receiver.url,
            "--agentmx-dir", str(base / "etc-agentmx"), "--data-dir", str(base / "data"),
            "--socket", str(pf.base / "milter" / "milter.sock"), "--pipe-user", "nobody", *extra]


def test_setup_dry_run_apply_idempotent_undo(instance):
    pf, base = instance
    receiver = Receiver()
    try:
        original = {n: (pf.etc / n).read_bytes() for n in ("main.cf", "master.cf")}
        dry = subprocess.run(setup_cmd(pf, base, receiver, "--dry-run"), capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert f"+smtpd_milters = unix:{pf.base / 'milter' / 'milter.sock'}" in dry.stdout
        assert "+relay_domains = agents.test" in dry.stdout
        assert "+agentmx    unix  -       n       n       -       -       pipe flags=Rq" in dry.stdout
        assert "user=nobody argv=" in dry.stdout
        assert "+agentmx-submit unix n    -       n       -       -       smtpd" in dry.stdout
        assert "-o milter_macro_daemon_name=agentmx-api" in dry.stdout
        assert {n: (pf.etc / n).read_bytes() for n in original} == original           # nothing changed

        run = subprocess.run(setup_cmd(pf, base, receiver), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "ax1r._domainkey.agents.test." in run.stdout and "_dmarc.agents.test." in run.stdout
        after = {n: (pf.etc / n).read_bytes() for n in original}
        assert after != original
        again = subprocess.run(setup_cmd(pf, base, receiver), capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and {n: (pf.etc / n).read_bytes() for n in original} == after
        check = subprocess.run(["postfix", "-c", str(pf.etc), "check"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr

        # a working configuration: the milter with the generated config, mail in, an event out
        cfg = base / "etc-agentmx" / "agentmx.toml"
        text = cfg.read_text().replace("[milter]\n", '[milter]\nsocket_mode = "0666"\n')
        cfg.write_text(text)
        milter = MilterProcess(cfg, pf.base / "milter" / "milter.sock", base / "milter.log").start()
        try:
            pf.start()
            send(pf.port, "alice@sender.test", ["agent@agents.test"], message("Alice <alice@sender.test>", "agent@agents.test"))
            from support.postfix import wait_for
            wait_for(lambda: receiver.requests, timeout=30, what=f"the event\n{pf.log()[-2000:]}")
            assert receiver.events()[0]["recipient"] == "agent@agents.test"
            # the send path reaches Postfix through the submission service setup added, and the
            # milter knows it as the send API's
            from agentmx import send as send_path
            from agentmx.config import load_config
            config = load_config(cfg)
            assert str(config.send.submit) == f"unix:{pf.base / 'spool' / 'public' / 'agentmx-submit'}"
            assert config.postfix_config == pf.etc       # the console's queue page asks this Postfix
            req = send_path.parse_request({"from": "agent@agents.test", "to": "agent@agents.test", "text": "hi"})
            assert send_path.submit(send_path.build(req, None, config), config)
            wait_for(lambda: len(receiver.requests) == 2, timeout=30, what=f"the second event\n{pf.log()[-2000:]}")
            assert "submitted by the send API (service agentmx-api)" in milter.log()
        finally:
            pf.stop(remove=False)
            milter.stop()

        undo = subprocess.run([AGENTMX, "setup", "--undo", "--postfix-config", str(pf.etc)], capture_output=True,
                              text=True, timeout=60)
        assert undo.returncode == 0, undo.stderr
        assert {n: (pf.etc / n).read_bytes() for n in original} == original           # byte for byte
        assert not list(pf.etc.glob("*.agentmx-orig"))
        again = subprocess.run([AGENTMX, "setup", "--undo", "--postfix-config", str(pf.etc)], capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 1 and "nothing to undo" in again.stderr
    finally:
        receiver.stop()
