"""The command line as Postfix and developers use it: `agentmx deliver` (stdin, exit 0 or 75),
`agentmx parse`, `agentmx postfix-map`, and the example receiver."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CORPUS, ROOT
from support.receiver import Receiver

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
SECRET = "whsec_" + base64.b64encode(b"cli-secret-cli-secret-cli-secret").decode()
MESSAGE = (b"From: Bob <bob@example.org>\r\nTo: agent@agentmx.test\r\nSubject: Your code\r\n"
           b"Message-ID: <c1@example.org>\r\n\r\nYour verification code is 889911.\r\n")


def write_config(tmp_path: Path, endpoint: str) -> Path:
    cfg = tmp_path / "agentmx.toml"
    cfg.write_text(f'[server]\nauthserv_id = "mx.agentmx.test"\ndata_dir = "{tmp_path / "data"}"\n'
                   f'url_secret = "cli-url-secret-0123456"\n'
                   f'[[routes]]\nmatch = "agent@agentmx.test"\nendpoint = "{endpoint}"\nsecret = "{SECRET}"\ntimeout = 2\n'
                   f'[[routes]]\nmatch = "@support.agentmx.test"\nendpoint = "{endpoint}"\nsecret = "{SECRET}"\n')
    return cfg


def run_deliver(cfg: Path, recipient: str = "agent@agentmx.test", data: bytes = MESSAGE, sender: str = "",
                queue_id: str = "4XYZ"):
    args = [AGENTMX, "--config", str(cfg), "deliver", f"--sender={sender}", f"--recipient={recipient}",
            f"--queue-id={queue_id}"]
    return subprocess.run(args, input=data, capture_output=True, timeout=30)


def test_deliver_exit_codes(tmp_path):
    receiver = Receiver()
    try:
        cfg = write_config(tmp_path, receiver.url)
        ok = run_deliver(cfg)
        assert ok.returncode == 0, ok.stderr
        assert b"4XYZ: delivered to=agent@agentmx.test" in ok.stderr
        receiver.default = (503, 0)
        deferred = run_deliver(cfg)
        assert deferred.returncode == 75 and b"HTTP 503, Retry-After 120" in deferred.stderr
        receiver.default = (406, 0)
        assert run_deliver(cfg).returncode == 0
        assert run_deliver(cfg, recipient="nobody@elsewhere.test").returncode == 75
        event = json.loads(receiver.requests[0].body)
        assert event["autoSubmitted"] == "bounce" and event["codes"] == []     # null sender: a bounce
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    finally:
        receiver.stop()


def test_a_broken_config_keeps_the_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nauthserv_id = 'x'\nnonsense = 1\n")
    out = run_deliver(bad)
    assert out.returncode == 75 and b"[server] nonsense: unknown key (deferred)" in out.stderr
    assert run_deliver(tmp_path / "missing.toml").returncode == 75


def test_secrets_never_reach_the_output(tmp_path):
    receiver = Receiver()
    try:
        cfg = write_config(tmp_path, receiver.url)
        receiver.default = (500, 0)
        out = run_deliver(cfg)
        assert SECRET.encode() not in out.stderr + out.stdout
        assert b"cli-url-secret" not in out.stderr + out.stdout
    finally:
        receiver.stop()


def test_parse_prints_the_event(tmp_path):
    path = tmp_path / "m.eml"
    path.write_bytes(MESSAGE)
    out = subprocess.run([AGENTMX, "parse", str(path), "--recipient", "agent+sales@agentmx.test"],
                         capture_output=True, timeout=30, env={**os.environ, "AGENTMX_CONFIG": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout)
    assert event["subject"] == "Your code" and event["mailboxHash"] == "sales" and event["codes"] == ["889911"]
    assert event["auth"]["dmarc"] == "none"


def test_parse_a_corpus_tnef_message():
    tnef_mail = next(p for p in (CORPUS / "sisimai-set-of-emails").rglob("*.eml") if b"winmail.dat" in p.read_bytes())
    out = subprocess.run([AGENTMX, "parse", str(tnef_mail)], capture_output=True, timeout=60,
                         env={**os.environ, "AGENTMX_CONFIG": "/nonexistent"})
    assert out.returncode == 0
    names = [a["filename"] for a in json.loads(out.stdout)["attachments"]]
    assert "winmail.dat" not in names


def test_postfix_map(tmp_path):
    cfg = write_config(tmp_path, "http://127.0.0.1:9/")
    out = subprocess.run([AGENTMX, "--config", str(cfg), "postfix-map"], capture_output=True, text=True, check=True)
    entries = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    # and where delivery reports to what agents send come back ([send] bounce_local), per routed domain
    assert entries == ["agent@agentmx.test\tOK", "@support.agentmx.test\tOK", "bounces@agentmx.test\tOK",
                       "bounces@support.agentmx.test\tOK"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_example_receiver_verifies_acks_and_dedupes(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "receiver.py"), "--port", str(port)],
                            env={**os.environ, "AGENTMX_WEBHOOK_SECRET": SECRET}, stdout=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stdout.readline()
        cfg = write_config(tmp_path, f"http://127.0.0.1:{port}/")
        assert run_deliver(cfg, sender="bob@example.org").returncode == 0
        assert run_deliver(cfg, sender="bob@example.org").returncode == 0   # a retry: a duplicate
        assert run_deliver(cfg, queue_id="5BNC").returncode == 0   # a bounce (null sender): 406, kept
        line = proc.stdout.readline()
        assert "from bob@example.org (NOT authenticated)" in line and "['889911']" in line
        from agentmx.store.embedded import EmbeddedStore
        state = [str(d.state) for d in EmbeddedStore(tmp_path / "data").recent_deliveries()]
        assert sorted(state) == ["delivered", "refused"]
        import urllib.error
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"{}", method="POST",
                                     headers={"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
                                              "webhook-signature": "v1,AAAA"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 401
    finally:
        proc.kill()
        proc.wait()


def test_deliver_never_exits_with_anything_but_0_or_75(tmp_path):
    """Postfix bounces on any other exit status: a broken command line, a config the pipe user
    cannot read, keys it may not see must all keep the message (75)."""
    bad_args = subprocess.run([AGENTMX, "deliver", "--no-such-flag"], input=MESSAGE, capture_output=True, timeout=30)
    assert bad_args.returncode == 75 and b"bad command line" in bad_args.stderr
    no_recipient = subprocess.run([AGENTMX, "deliver"], input=MESSAGE, capture_output=True, timeout=30)
    assert no_recipient.returncode == 75


def test_deliver_as_the_pipe_user_with_keys_it_cannot_read():
    import shutil
    import tempfile
    from agentmx import dkimkeys
    tmp_path = Path(tempfile.mkdtemp(prefix="agentmx-pipeuser-", dir="/tmp"))   # readable by nobody
    os.chmod(tmp_path, 0o755)
    receiver = Receiver()
    try:
        key_dir = tmp_path / "keys"
        dkimkeys.write(key_dir, dkimkeys.generate("agentmx.test", "s1", "rsa"))       # 0750 dir, 0600 key
        os.chmod(key_dir, 0o700)
        data = tmp_path / "data"
        data.mkdir()
        os.chown(data, 65534, 65534)
        cfg = write_config(tmp_path, receiver.url)
        cfg.write_text(cfg.read_text().replace("[server]\n", f'[server]\nkey_dir = "{key_dir}"\n', 1)
                       + '[domains."agentmx.test"]\ndkim_selectors = ["s1"]\n')
        os.chmod(cfg, 0o644)
        out = subprocess.run([AGENTMX, "--config", str(cfg), "deliver", "--sender=bob@example.org",
                              "--recipient=agent@agentmx.test", "--queue-id=5NOBODY"],
                             input=MESSAGE, capture_output=True, timeout=30, user=65534, group=65534)
        assert out.returncode == 0, out.stderr
        assert len(receiver.requests) == 1
    finally:
        receiver.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
