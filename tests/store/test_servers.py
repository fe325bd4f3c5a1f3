"""The private PostgreSQL and SeaweedFS that tests start are gone after the run, also when the run
is killed: coreutils `timeout` sends SIGTERM to pytest and then to its process group, and the
servers (in sessions of their own) must still be stopped and their files removed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.postfix import alive

TESTS = Path(__file__).resolve().parent.parent

INNER_CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from support.pg import pg_server  # noqa
from support.s3 import s3_server  # noqa
"""

INNER_TEST = """
import json, os, time
def test_hold(pg_server, s3_server, tmp_path_factory):
    info = {"pg": str(pg_server.base), "pg_pid": int((pg_server.data / "postmaster.pid").read_text().split()[0]),
            "s3": str(s3_server.base), "weed_pid": s3_server.proc.pid,
            "sockets": [f"/tmp/seaweedfs-{n}-grpc-{p}.sock" for n, p in s3_server.grpc_ports.items()]}
    with open(os.environ["INFO"], "w") as f:
        json.dump(info, f)
    time.sleep(600)
"""


def test_servers_are_stopped_when_the_run_is_killed(tmp_path):
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    info_path = tmp_path / "info.json"
    pytest_bin = str(Path(sys.executable).parent / "pytest")
    proc = subprocess.Popen([pytest_bin, "-q", "-p", "no:cacheprovider", "-o", "timeout=0", str(tmp_path)],
                            cwd=tmp_path, env={**os.environ, "INFO": str(info_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not info_path.exists() or not info_path.read_text():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the inner run did not start its servers"
        time.sleep(0.2)
    time.sleep(0.2)
    info = json.loads(info_path.read_text())
    assert alive(info["pg_pid"]) and alive(info["weed_pid"])
    assert any(os.path.exists(s) for s in info["sockets"])
    # What `timeout` does: SIGTERM to the child, then to its whole process group.
    os.kill(proc.pid, signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while (alive(info["pg_pid"]) or alive(info["weed_pid"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(info["pg_pid"]), out.decode()[-3000:]
    assert not alive(info["weed_pid"]), out.decode()[-3000:]
    assert not os.path.exists(info["pg"]) and not os.path.exists(info["s3"])
    assert not any(os.path.exists(s) for s in info["sockets"])
