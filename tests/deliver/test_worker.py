"""`agentmx worker` behind the lean pipe client (agentmx/pipeclient.py, installed as
<venv>/share/agentmx/pipeclient.py and run with python3 -I -S, as master.cf.worker.fragment
does): the same exit-code contract as `agentmx deliver`, the fallback to it when the worker is
down, a worker killed mid-delivery, config reloads, and the whole thing under a private Postfix."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from e2e_helpers import send
from support.postfix import PostfixInstance, agentmx_config, fragment_settings, wait_for
from support.receiver import Receiver
from test_cli_deliver import MESSAGE, SECRET, write_config

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
PYTHON = str(Path(sys.executable).with_name("python3"))
CLIENT = str(Path(sys.prefix) / "share" / "agentmx" / "pipeclient.py")


class Worker:
    def __init__(self, cfg: Path, sock: Path, processes: int = 2):
        self.cfg, self.sock = cfg, sock
        self.log = cfg.parent / "worker.log"
        self.proc = subprocess.Popen([AGENTMX, "--config", str(cfg), "worker", "--socket", str(sock),
                                      "--processes", str(processes)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), start_new_session=True)
        wait_for(lambda: sock.exists() or self.proc.poll() is not None, timeout=20, what="the worker's socket")
        assert self.proc.poll() is None, self.log.read_text()

    def kill(self, sig=signal.SIGKILL):
        os.killpg(self.proc.pid, sig)
        self.proc.wait(10)


def timeless(event: dict) -> dict:
    """The event without what depends on the clock (createdAt, URL expiry signatures)."""
    event = {k: v for k, v in event.items() if k != "createdAt"}
    event["raw"] = {k: v for k, v in event["raw"].items() if k != "url"}
    event["attachments"] = [{k: v for k, v in a.items() if k != "url"} for a in event["attachments"]]
    return event


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def client(cfg: Path, sock: Path, recipient="agent@agentmx.test", data=MESSAGE, queue_id="4WRK", timeout=30):
    return subprocess.run([PYTHON, "-I", "-S", CLIENT, "--socket", str(sock), "--agentmx", AGENTMX,
                           "--config", str(cfg), "deliver", "--sender=bob@example.org", f"--recipient={recipient}",
                           f"--queue-id={queue_id}"], input=data, capture_output=True, timeout=timeout)


def test_the_client_keeps_the_deliver_contract(tmp_path, receiver):
    cfg = write_config(tmp_path, receiver.url)
    w = Worker(cfg, tmp_path / "w.sock")
    try:
        ok = client(cfg, w.sock)
        assert ok.returncode == 0 and b"4WRK: delivered to=agent@agentmx.test" in ok.stderr, ok.stderr
        receiver.default = (503, 0)
        assert client(cfg, w.sock).returncode == 75
        receiver.default = (406, 0)
        assert client(cfg, w.sock).returncode == 0
        assert client(cfg, w.sock, recipient="nobody@elsewhere.test").returncode == 75
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1      # one message, one id
        # The event is the one `agentmx deliver` makes for the same message.
        receiver.default = (200, 0)
        direct = subprocess.run([AGENTMX, "--config", str(cfg), "deliver", "--sender=bob@example.org",
                                 "--recipient=agent@agentmx.test", "--queue-id=4WRK"], input=MESSAGE,
                                capture_output=True, timeout=30)
        assert direct.returncode == 0
        by_worker, by_process = (timeless(json.loads(r.body)) for r in (receiver.requests[0], receiver.requests[-1]))
        assert by_worker == by_process
    finally:
        w.kill()


def test_the_worker_reads_deliver_s_command_line_as_deliver_does(tmp_path, receiver):
    """`--recipient X --queue-id Y` (separate arguments, which `agentmx deliver` accepts) used to reach
    the worker as no recipient and no queue id: every attempt deferred while the worker was up, and
    the webhook-id (made from the queue id) differed from the fallback's."""
    cfg = write_config(tmp_path, receiver.url)
    argv = [PYTHON, "-I", "-S", CLIENT, "--socket", str(tmp_path / "w.sock"), "--agentmx", AGENTMX, "--config", str(cfg),
            "deliver", "--sender", "bob@example.org", "--recipient", "agent@agentmx.test", "--queue-id", "4SPC"]
    w = Worker(cfg, tmp_path / "w.sock", processes=1)
    try:
        by_worker = subprocess.run(argv, input=MESSAGE, capture_output=True, timeout=30)
        assert by_worker.returncode == 0 and by_worker.stderr.startswith(b"4SPC: delivered"), by_worker.stderr
    finally:
        w.kill()
    by_fallback = subprocess.run(argv, input=MESSAGE, capture_output=True, timeout=30)     # worker gone
    assert by_fallback.returncode == 0, by_fallback.stderr
    assert len(receiver.requests) == 2 and len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert "4SPC: delivered to=agent@agentmx.test" in w.log.read_text()


def test_worker_down_the_client_delivers_itself(tmp_path, receiver):
    cfg = write_config(tmp_path, receiver.url)
    out = client(cfg, tmp_path / "nobody-listens.sock")
    assert out.returncode == 0, out.stderr
    assert b"delivered" in out.stderr and len(receiver.requests) == 1


def test_worker_killed_mid_delivery_is_a_tempfail(tmp_path, receiver):
    cfg = write_config(tmp_path, receiver.url)
    w = Worker(cfg, tmp_path / "w.sock", processes=1)
    receiver.default = (200, 1.5)            # the POST is in flight when the worker dies
    proc = subprocess.Popen([PYTHON, "-I", "-S", CLIENT, "--socket", str(w.sock), "--agentmx", AGENTMX,
                             "--config", str(cfg), "deliver", "--recipient=agent@agentmx.test", "--queue-id=4KIL"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(MESSAGE)
    proc.stdin.close()
    wait_for(lambda: receiver.requests, timeout=20, what="the POST")
    w.kill()
    assert proc.wait(20) == 75
    receiver.default = (200, 0)
    again = client(cfg, tmp_path / "w.sock", queue_id="4KIL")    # Postfix's retry (worker gone: fallback)
    assert again.returncode == 0
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[-1].headers["webhook-id"]


def test_worker_reloads_a_changed_config(tmp_path, receiver):
    cfg = write_config(tmp_path, receiver.url)
    w = Worker(cfg, tmp_path / "w.sock", processes=1)     # each process reloads on its own next message
    try:
        assert client(cfg, w.sock, recipient="new@agentmx.test").returncode == 75     # no route yet
        cfg.write_text(cfg.read_text() + f'[[routes]]\nmatch = "new@agentmx.test"\nendpoint = "{receiver.url}"\n'
                                          f'secret = "{SECRET}"\n')
        assert client(cfg, w.sock, recipient="new@agentmx.test").returncode == 0
        cfg.write_text(cfg.read_text() + "[bogus]\n")                     # a broken edit: keep the old one
        assert client(cfg, w.sock, recipient="new@agentmx.test").returncode == 0
        assert "configuration not reloaded" in w.log.read_text()
    finally:
        w.kill()


@pytest.mark.e2e
def test_worker_behind_postfix(tmp_path, dns_server):
    """The transport line we ship for the worker, on a private Postfix, the pipe run as nobody."""
    dns_server.set_zone({})
    receiver = Receiver()
    pf = PostfixInstance("wk", "mx.agentmx.test")
    try:
        data = pf.base / "data-agentmx"
        data.mkdir()
        import shutil
        shutil.chown(data, "nobody", "nogroup")
        route = f'[[routes]]\nmatch = "agent@agentmx.test"\nendpoint = "{receiver.url}"\nsecret = "{SECRET}"\n'
        sock = pf.base / "run" / "deliver.sock"
        cfg, _ = agentmx_config(pf, "mx.agentmx.test", dns_server.port, server=f'data_dir = "{data}"\nurl_secret = "worker-url-secret-0123456"',
                                rest=f'[worker]\nsocket = "{sock}"\nsocket_mode = "0666"\n{route}')
        pf.postconf("smtpd_milters =", "non_smtpd_milters =")
        recipients = pf.base / "recipients"
        recipients.write_text("agent@agentmx.test OK\n")
        pf.postconf(*fragment_settings(ROOT / "postfix" / "main.cf.deliver.fragment", relay_domains="agentmx.test",
                                       transport_maps="inline:{ agentmx.test=agentmx: }",
                                       relay_recipient_maps=f"texthash:{recipients}"))
        (entry,) = [line for line in (ROOT / "postfix" / "master.cf.worker.fragment").read_text().splitlines()
                    if line and not line.startswith("#")]
        pf.postconf_master(entry.replace("user=agentmx", "user=nobody").replace("/opt/agentmx/venv/bin/python3", PYTHON)
                           .replace("/opt/agentmx/venv/share/agentmx/pipeclient.py", CLIENT)
                           .replace("/opt/agentmx/venv/bin/agentmx", AGENTMX).replace("/run/agentmx/deliver.sock", str(sock))
                           .replace("/etc/agentmx/agentmx.toml", str(cfg)))
        sock.parent.mkdir()
        w = Worker(cfg, sock)
        os.chmod(sock.parent, 0o755)
        pf.start()
        for i in range(20):
            send(pf.port, "bob@example.org", ["agent@agentmx.test"],
                 MESSAGE.replace(b"Your code", b"Your code %d" % i).replace(b"<c1@", b"<c1-%d@" % i))
        wait_for(lambda: len(receiver.requests) >= 20, timeout=60, what="20 events")
        wait_for(pf.queue_is_empty, timeout=20, what="an empty queue")
        assert len({json.loads(r.body)["subject"] for r in receiver.requests}) == 20
        assert pf.log().count("status=sent") >= 20 and "delivered to=agent@agentmx.test" in pf.log()
        assert "worker" not in pf.log() or "unreachable" not in pf.log()
        assert w.log.read_text().count("delivered to=agent@agentmx.test") == 20       # the worker did them all
        w.kill()
    finally:
        pf.stop()
        receiver.stop()
