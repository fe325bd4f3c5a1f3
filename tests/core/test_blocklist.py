"""blocks.json, the block list the milter reads (agentmx/blocklist.py): written atomically and only
when it changes, re-read when it changes, and failing open whatever is (or is not) there."""
from __future__ import annotations

import os

import pytest

from agentmx import blocklist
from agentmx.config import Route


SECRET = "whsec_" + "A" * 24
# vip@ has a route of its own (another agent); every other address of agents.test is the domain's.
ROUTES = (Route("vip@agents.test", "http://127.0.0.1:1/vip", SECRET),
          Route("agent@agents.test", "http://127.0.0.1:1/a", SECRET),
          Route("@agents.test", "http://127.0.0.1:1/all", SECRET))


@pytest.mark.unit
def test_written_atomically_once_and_read_again_when_it_changes(tmp_path):
    path = blocklist.path_in(tmp_path)
    assert blocklist.write(path, [("a@x.test", "agent@agents.test")]) is True
    assert blocklist.write(path, [("a@x.test", "agent@agents.test")]) is False          # no change, no rewrite
    assert oct(path.stat().st_mode & 0o777) == "0o640" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    snap = blocklist.Snapshot(path, ROUTES)
    assert snap.blocked("<A@X.test>", "Agent+tag@Agents.test") == "agent@agents.test"
    assert snap.blocked("a@x.test", "other@agents.test") is None and snap.blocked("", "agent@agents.test") is None
    blocklist.write(path, [("a@x.test", "@agents.test"), ("b@y.test", "agent@agents.test")])
    assert snap.blocked("a@x.test", "other@agents.test") == "@agents.test"
    assert snap.blocked("b@y.test", "agent@agents.test") == "agent@agents.test"


@pytest.mark.unit
def test_a_domain_block_covers_only_the_addresses_its_route_takes(tmp_path):
    """The @domain route's agent blocks a sender: mail from it to addresses with routes of their own
    (other agents) still passes; they never reached the blocking agent (found by review)."""
    path = blocklist.path_in(tmp_path)
    blocklist.write(path, [("a@x.test", "@agents.test")])
    snap = blocklist.Snapshot(path, ROUTES)
    assert snap.blocked("a@x.test", "support@agents.test") == "@agents.test"
    assert snap.blocked("a@x.test", "vip@agents.test") is None
    assert snap.blocked("a@x.test", "vip+x@agents.test") is None
    assert snap.blocked("a@x.test", "agent@agents.test") is None
    assert snap.blocked("a@x.test", "someone@elsewhere.test") is None                   # no route: nothing to block


@pytest.mark.unit
@pytest.mark.parametrize("content", [b"", b"not json", b'{"version": 1}', b'{"blocks": [[1, 2, 3]]}', b"[]",
                                     b'{"blocks": "a@x.test"}', b"\xff\xfe"])
def test_a_bad_file_blocks_nothing(tmp_path, content, caplog):
    path = blocklist.path_in(tmp_path)
    path.write_bytes(content)
    snap = blocklist.Snapshot(path)
    assert snap.blocked("a@x.test", "agent@agents.test") is None
    assert snap.blocked("a@x.test", "agent@agents.test") is None
    assert len([r for r in caplog.records if "no sender blocked" in r.getMessage()]) == 1      # once per change


@pytest.mark.unit
def test_a_missing_unreadable_or_oversized_file_blocks_nothing(tmp_path, monkeypatch):
    path = blocklist.path_in(tmp_path)
    snap = blocklist.Snapshot(path, ROUTES)
    assert snap.blocked("a@x.test", "agent@agents.test") is None                        # missing
    blocklist.write(path, [("a@x.test", "agent@agents.test")])
    monkeypatch.setattr(blocklist, "MAX_BYTES", 10)
    assert snap.blocked("a@x.test", "agent@agents.test") is None                        # too big: not read
    monkeypatch.setattr(blocklist, "MAX_BYTES", 1 << 20)
    os.utime(path, ns=(1, 1))
    assert snap.blocked("a@x.test", "agent@agents.test") == "agent@agents.test"
    path.unlink()
    assert snap.blocked("a@x.test", "agent@agents.test") is None                        # removed again


@pytest.mark.skipif(os.geteuid() != 0, reason="switches users: run as root (CI does)")
def test_written_by_the_app_user_and_read_by_another_user_of_its_group():
    """As installed: deliver (the app's user) writes blocks.json into its data directory (0750);
    the milter, another user whose groups include the app's group, reads it. Here nobody:nogroup
    writes and uid 65533 with group nogroup (no other right) reads: the file must be 0640, group
    nogroup, and the milter's Snapshot must see the block."""
    import shutil
    import tempfile
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="agentmx-blocks-", dir="/tmp"))      # pytest's tmp_path is root's 0700
    top.chmod(0o755)
    data = top / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)
    data.chmod(0o750)
    try:
        _write_then_read_as_two_users(data)
    finally:
        shutil.rmtree(top)


def _write_then_read_as_two_users(data) -> None:
    import subprocess
    import sys
    write = ("import sys; from agentmx import blocklist; "
             "blocklist.write(blocklist.path_in(sys.argv[1]), [('a@x.test', '@agents.test')])")
    subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c",
                    write, str(data)], check=True, cwd="/")
    st = blocklist.path_in(data).stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (65534, 65534, "0o640")
    read = ("import sys; from agentmx import blocklist; from agentmx.config import Route; "
            "r = (Route('@agents.test', 'http://127.0.0.1:1/', 'whsec_' + 'A' * 24),); "
            "print(blocklist.Snapshot(blocklist.path_in(sys.argv[1]), r).blocked('a@x.test', 'b@agents.test'))")
    out = subprocess.run(["setpriv", "--reuid", "65533", "--regid", "65533", "--groups", "65534", sys.executable,
                          "-c", read, str(data)], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "@agents.test", out.stderr
