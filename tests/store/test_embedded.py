"""The embedded backend's own promises, beyond the contract: file modes and owners, links refused,
the schema's versions, the import of an earlier version's data directory, forks and threads."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentmx.config import parse_config
from agentmx.deliver.core import EX_TEMPFAIL, Envelope, deliver
from agentmx.store import SchemaMismatch, StoreError, StoreUnavailable, migrations, open_store
from agentmx.store.counters import rebuild_counters
from agentmx.store.embedded import EmbeddedStore
from agentmx.store.model import Attempt, DeliveryState, JobState

from store.test_contract import event, put

AGENTMX = str(Path(sys.executable).with_name("agentmx"))


def config(tmp_path: Path, backend: str = "embedded"):
    text = (f'[server]\nauthserv_id = "mx.agents.test"\ndata_dir = "{tmp_path / "data"}"\n'
            'url_secret = "a-test-url-secret-0123"\n'
            f'[[routes]]\nmatch = "@agents.test"\nmode = "pull"\n')
    if backend != "embedded":
        text += f'[store]\nbackend = "{backend}"\ndatabase_url = "postgresql://u:p@127.0.0.1:1/x"\n' \
                '[store.s3]\nendpoint = "http://127.0.0.1:1"\nbucket = "agentmx-test"\naccess_key = "a"\nsecret_key = "s"\n'
    path = tmp_path / "agentmx.toml"
    path.write_text(text)
    return parse_config(text, path)


RAW = b"From: bob@remote.test\r\nTo: agent@agents.test\r\nSubject: hi\r\nMessage-ID: <1@remote.test>\r\n\r\nhello\r\n"


# --- files: modes, owners, links --------------------------------------------------------------------

@pytest.mark.unit
def test_files_are_not_readable_by_others_whatever_the_umask(tmp_path):
    """Postfix runs pipe programs with umask 022: senders, subjects and mail are nobody else's."""
    old = os.umask(0o022)
    try:
        store = EmbeddedStore(tmp_path / "data")
        put(store, 1)
        sha = store.put_blob(b"an attachment")
    finally:
        os.umask(old)
    data = tmp_path / "data"
    files = [*data.glob("agentmx.sqlite*"), data / "blobs" / sha[:2] / sha]
    assert {p.name for p in files} >= {"agentmx.sqlite", "agentmx.sqlite-wal", "agentmx.sqlite-shm"}
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o640, p
    for d in (data / "blobs", data / "blobs" / sha[:2]):
        assert d.stat().st_mode & 0o777 == 0o750, d
    store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the case is a root process led by a planted link")
def test_a_link_planted_in_the_data_directory_is_never_followed_by_root(tmp_path):
    """The data directory is user agentmx's: a link it plants (`agentmx.sqlite-wal -> /etc/passwd`,
    a blob folder, a blob) must not lead a root process (a test, the CLI by hand) to write, chown
    or chmod the target; root's own new files are handed over to the directory's owner."""
    victim = tmp_path / "victim"
    victim.write_text("root:x:0:0\n")
    os.chmod(victim, 0o644)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)                 # the data directory's owner (nobody, in the test)
    (data / "agentmx.sqlite-wal").symlink_to(victim)
    with pytest.raises(StoreUnavailable, match="symbolic link"):
        EmbeddedStore(data).last_seq()
    os.unlink(data / "agentmx.sqlite-wal")
    store = EmbeddedStore(data)
    put(store, 1)
    sha = store.put_blob(b"a blob")
    (data / "blobs" / "ab").symlink_to(elsewhere)
    into_ab = next(str(n).encode() for n in range(100_000) if hashlib.sha256(str(n).encode()).hexdigest()[:2] == "ab")
    with pytest.raises(StoreUnavailable, match="refused"):
        store.put_blob(into_ab)
    assert list(elsewhere.iterdir()) == []
    blob = data / "blobs" / sha[:2] / sha
    blob.unlink()
    blob.symlink_to(victim)
    assert store.get_blob(sha) is None and store.open_blob(sha) is None
    with pytest.raises(StoreUnavailable, match="refused"):
        store.put_blob(b"a blob")
    st = victim.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777, victim.read_text()) == (0, 0, 0o644, "root:x:0:0\n")
    for p in [*data.glob("agentmx.sqlite*"), data / "blobs", data / "blobs" / sha[:2]]:
        assert (p.stat().st_uid, p.stat().st_gid) == (65534, 65534), p      # our own files are handed over
    store.close()


# --- the schema's versions --------------------------------------------------------------------------

NOW = migrations.LATEST


def one_migration_later(monkeypatch) -> None:
    """This agentmx, as the next version with one more migration will be."""
    later = migrations.Migration(NOW + 1, "a test table", {"embedded": ("CREATE TABLE test_later (x INTEGER)",)})
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + (later,))
    monkeypatch.setattr(migrations, "LATEST", NOW + 1)


@pytest.mark.unit
def test_a_new_file_gets_the_schema_without_a_step(tmp_path):
    store = EmbeddedStore(tmp_path / "data")
    store.check_schema()
    put(store, 1)
    assert store.migrate() == migrations.LATEST
    store.close()


@pytest.mark.unit
def test_an_older_schema_waits_for_store_migrate(tmp_path, monkeypatch):
    store = EmbeddedStore(tmp_path / "data")
    e = put(store, 1)
    store.close()
    one_migration_later(monkeypatch)
    newer = EmbeddedStore(tmp_path / "data")
    with pytest.raises(SchemaMismatch, match=f"version {NOW}, this agentmx needs {NOW + 1}: run `agentmx store migrate`"):
        newer.check_schema()
    with pytest.raises(SchemaMismatch):
        newer.get_event(e)
    assert newer.migrate() == NOW + 1
    newer.check_schema()
    assert newer.get_event(e) is not None and newer.migrate() == NOW + 1
    newer.close()


@pytest.mark.unit
def test_a_newer_schema_is_refused(tmp_path, monkeypatch):
    one_migration_later(monkeypatch)
    EmbeddedStore(tmp_path / "data").migrate()
    monkeypatch.undo()
    with pytest.raises(SchemaMismatch, match="newer than this agentmx"):
        EmbeddedStore(tmp_path / "data").check_schema()


@pytest.mark.unit
def test_deliver_defers_while_the_store_is_not_migrated(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    EmbeddedStore(cfg.data_dir).check_schema()
    one_migration_later(monkeypatch)
    out = deliver(RAW, Envelope("bob@remote.test", "agent@agents.test", "Q1"), cfg)
    assert out.exit_code == EX_TEMPFAIL and "agentmx store migrate" in out.reason


@pytest.mark.unit
def test_a_broken_file_is_unavailable_and_deliver_defers(tmp_path):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir()
    (cfg.data_dir / "agentmx.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailable, match="data directory"):
        EmbeddedStore(cfg.data_dir).last_seq()
    out = deliver(RAW, Envelope("bob@remote.test", "agent@agents.test", "Q1"), cfg)
    assert out.exit_code == EX_TEMPFAIL and "store" in out.reason


@pytest.mark.unit
def test_postgres_without_its_driver_is_a_clear_store_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "agentmx.store.postgres", None)       # as if psycopg were not installed
    with pytest.raises(StoreError, match=r'backend = "postgres" is not available.*agentmx\[postgres\]'):
        open_store(config(tmp_path, "postgres"))


# --- processes and threads ----------------------------------------------------------------------------

@pytest.mark.unit
def test_a_forked_child_uses_connections_of_its_own(tmp_path):
    store = EmbeddedStore(tmp_path / "data")
    put(store, 1)
    pid = os.fork()
    if pid == 0:                                      # the child: the parent's connection is not touched
        code = 1
        try:
            put(store, 2)
            code = 0 if store.last_seq() == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    put(store, 3)
    assert [r.id for r in store.inbox_query(("@agents.test",), oldest_first=True)] == \
        [f"msg_{n:016d}" for n in (1, 2, 3)]
    store.close()


@pytest.mark.unit
def test_connections_of_threads_that_ended_are_closed(tmp_path):
    """A worker serves each message in a thread of its own: connections must not pile up."""
    store = EmbeddedStore(tmp_path / "data")
    for n in range(30):
        t = threading.Thread(target=put, args=(store, n + 1))
        t.start()
        t.join()
    assert len(store._conns) <= 2 and store.last_seq() == 30
    store.close()
    assert store._conns == {}


# --- the counters --------------------------------------------------------------------------------------

@pytest.mark.unit
def test_the_counters_say_what_the_records_say(tmp_path):
    now = [time.time() - 30 * 86400]
    store = EmbeddedStore(tmp_path / "data", lambda: now[0])
    for n in range(1, 40):
        e = put(store, n, auth={"spf": ["pass", "fail", "none"][n % 3], "dkim": "pass", "dmarc": "none", "arc": "none"})
        for state in [DeliveryState.DEFERRED, DeliveryState.DELIVERED, DeliveryState.REFUSED][: n % 4]:
            now[0] += 1
            store.record_attempt(e, Attempt(now[0], state, 200), "x")
        now[0] += 86400 * (n % 2)
    store.gc(now[0] - 10 * 86400)
    kept = store.metrics()
    with store._tx() as db:
        rebuild_counters(db)
    rebuilt = store.metrics()
    assert kept.received == rebuilt.received and kept.by_state == rebuilt.by_state
    assert kept.verdicts == rebuilt.verdicts
    assert kept.received == len(store.inbox_query(("@agents.test",), limit=500)) > 0
    store.close()


# --- an earlier version's data directory --------------------------------------------------------------

def legacy_directory(data: Path) -> dict:
    """The files agentmx kept before the store (commit e1054b7), as it wrote them."""
    ids = {name: f"msg_legacy{name:a<12}"[:26] for name in ("delivered", "deferred", "stored", "read", "queued")}
    for d in ("events", "state", "sent", "transcripts"):
        (data / d).mkdir(parents=True, exist_ok=True)
    states = {"delivered": "delivered", "deferred": "deferred", "stored": "stored", "read": "stored", "queued": "queued"}
    inbox = sqlite3.connect(data / "inbox.sqlite")
    inbox.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, address TEXT "
                  "NOT NULL, recipient TEXT NOT NULL, sender TEXT NOT NULL, subject TEXT NOT NULL, thread_id TEXT, "
                  "received REAL NOT NULL, state TEXT NOT NULL, read INTEGER NOT NULL DEFAULT 0)")
    for n, (name, event_id) in enumerate(ids.items()):
        ev = event(n + 1, recipient=f"{'pull' if 'stored' in states[name] else 'agent'}@agents.test",
                   subject=f"legacy {name}")
        ev["id"] = event_id
        (data / "events" / f"{event_id}.json").write_text(json.dumps(ev))
        (data / "state" / f"{event_id}.json").write_text(json.dumps({
            "state": states[name], "attempts": 2 if name == "deferred" else 1,
            "status": {"delivered": 200, "deferred": 500}.get(name), "reason": f"reason {name}",
            "updatedAt": f"2026-11-27T19:4{n}:00Z", "recipient": ev["recipient"], "queueId": f"Q{n}"}))
        if name != "queued":                                  # an event the old index never saw
            inbox.execute("INSERT INTO messages (id, address, recipient, sender, subject, thread_id, received, state, "
                          "read) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (event_id, ev["recipient"], ev["recipient"], "bob@remote.test", ev["subject"], ev["threadId"],
                           1_790_000_000 + n, states[name], int(name == "read")))
    inbox.commit()
    inbox.close()
    (data / "events" / "msg_legacybroken00000000.json").write_text("{not json")
    (data / "sent" / ("snd_" + "s" * 26 + ".json")).write_text(json.dumps({
        "id": "snd_" + "s" * 26, "messageId": "<s@agents.test>", "queueId": "QS", "threadId": "<t@x>", "inReplyTo": None,
        "recipients": ["bob@x.test"], "key": "agent", "from": "agent@agents.test", "replyToEvent": None}))
    (data / "transcripts" / f"{ids['queued']}.json").write_text(json.dumps({"id": ids["queued"], "attempts": []}))
    jobs = sqlite3.connect(data / "agent-jobs.sqlite")
    jobs.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
                 "next_at REAL NOT NULL, lease_until REAL NOT NULL DEFAULT 0, actions TEXT NOT NULL DEFAULT '[]', "
                 "last_error TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL)")
    jobs.execute("CREATE TABLE sends (id INTEGER PRIMARY KEY, route TEXT NOT NULL, job TEXT NOT NULL, action TEXT NOT NULL, "
                 "at REAL NOT NULL)")
    jobs.execute("INSERT INTO jobs VALUES (?, 'parked', 3, 5, 0, '[\"replied\"]', 'model down', 1, 2)", (ids["queued"],))
    jobs.execute("INSERT INTO sends (route, job, action, at) VALUES ('@agents.test', ?, 'replied', ?)",
                 (ids["queued"], time.time() - 60))
    jobs.commit()
    jobs.close()
    return ids


def test_store_migrate_imports_an_earlier_data_directory_once(tmp_path):
    cfg = config(tmp_path)
    ids = legacy_directory(cfg.data_dir)
    before = sorted(p.relative_to(cfg.data_dir) for p in cfg.data_dir.rglob("*"))
    store = EmbeddedStore(cfg.data_dir)
    with pytest.raises(SchemaMismatch, match="earlier agentmx.*agentmx store migrate"):
        store.check_schema()                                 # no new mail before the old
    out = deliver(RAW, Envelope("bob@remote.test", "agent@agents.test", "Q1"), cfg)
    assert out.exit_code == EX_TEMPFAIL and "agentmx store migrate" in out.reason

    run = subprocess.run([AGENTMX, "--config", str(cfg.path), "store", "migrate"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "imported the earlier data directory: 5 events, 1 skipped, 1 sends, 1 transcripts, 1 jobs, 1 uses" in run.stdout
    again = subprocess.run([AGENTMX, "--config", str(cfg.path), "store", "migrate"], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and "imported" not in again.stdout, again.stdout
    assert set(before) <= {p.relative_to(cfg.data_dir) for p in cfg.data_dir.rglob("*")}     # the old files stay

    store = EmbeddedStore(cfg.data_dir)
    store.check_schema()
    rows = store.inbox_query(("@agents.test",), oldest_first=True)
    assert [r.id for r in rows] == [ids[n] for n in ("delivered", "deferred", "stored", "read", "queued")]
    assert [r.read for r in rows] == [False, False, False, True, False]
    assert rows[0].received == 1_790_000_000
    d = store.delivery(ids["deferred"])
    assert (d.state, d.attempts, d.status, d.reason, d.queue_id, d.route) == (
        DeliveryState.DEFERRED, 2, 500, "reason deferred", "Q1", "@agents.test")
    assert json.loads(store.get_event(ids["delivered"]))["subject"] == "legacy delivered"
    assert store.get_send("snd_" + "s" * 26).recipients == ("bob@x.test",)
    assert store.get_transcript(ids["queued"]) == {"id": ids["queued"], "attempts": []}
    job = store.job(ids["queued"])
    assert (job.state, job.attempts, job.actions, job.last_error) == (JobState.PARKED, 3, ("replied",), "model down")
    assert store.take([("agent:@agents.test", 1)], 3600) is not None        # the last hour's agent send counts
    m = store.metrics()
    assert m.received == 5 and m.by_state[DeliveryState.STORED] == 2 and m.attempts == 6
    put(store, 99)                                                          # new mail after the old
    assert store.inbox_query(("@agents.test",))[0].id == "msg_0000000000000099"
    store.close()


@pytest.mark.unit
def test_a_version_1_store_migrates_to_fingerprints(tmp_path, monkeypatch):
    """An upgraded host: `agentmx store migrate` adds the column; events kept since carry it."""
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    monkeypatch.setattr(migrations, "LATEST", 1)
    EmbeddedStore(tmp_path / "data").check_schema()
    monkeypatch.undo()
    store = EmbeddedStore(tmp_path / "data")
    with pytest.raises(SchemaMismatch):
        store.check_schema()
    assert store.migrate() == migrations.LATEST
    ev = event(1)
    store.put_event(ev, json.dumps(ev).encode(), "@agents.test", DeliveryState.RECEIVED, "f" * 64, 0)
    assert store.find_event("agent@agents.test", "<1@remote.test>", "f" * 64, 0) == ev["id"]
    store.close()


def _as_nobody(data, code: str) -> subprocess.CompletedProcess:
    """`code` (with `store`, an EmbeddedStore on `data`) run as the data directory's owner, as
    deliver runs: a process of its own, not root."""
    prog = ("import sys\nfrom agentmx.store.embedded import EmbeddedStore\n"
            f"store = EmbeddedStore({str(data)!r})\n" + code + "\nstore.close()\n")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", prog],
                          capture_output=True, text=True, timeout=60, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the store's files are made as another user")
def test_a_side_file_left_read_only_gets_its_owner_write_bit_back():
    """SQLite makes a new -shm with the database file's mode of that moment: one made while the
    data directory was being made writable again (chmod -R a-w, then u+w, racing a delivery)
    stayed read-only, and every later delivery failed with "attempt to write a readonly database"
    until someone chmodded it by hand (seen in the fault tests under load)."""
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="agentmx-side-", dir="/tmp"))       # pytest's own is root's 0700
    os.chmod(base, 0o755)
    data = base / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)
    try:
        _side_file_case(data)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _side_file_case(data: Path) -> None:
    first = _as_nobody(data, "store.put_blob(b'one'); print(store.last_seq())")
    assert first.returncode == 0, first.stderr
    shm = data / "agentmx.sqlite-shm"
    if not shm.exists():
        shm.write_bytes(b"")
        os.chown(shm, 65534, 65534)
    os.chmod(shm, 0o440)                        # as SQLite leaves it when the database was r--r-----
    os.chmod(data / "agentmx.sqlite", 0o640)    # the database itself is writable again
    ev = {"id": "msg_side", "recipient": "agent@agents.test", "subject": "s", "from": {"address": "b@x.test"},
          "auth": {}, "attachments": []}
    second = _as_nobody(data, "from agentmx.store.model import DeliveryState\nimport json\n"
                              f"ev = {ev!r}\n"
                              "print(store.put_event(ev, json.dumps(ev).encode(), '@agents.test', DeliveryState.RECEIVED))")
    assert second.returncode == 0 and second.stdout.strip() == "True", second.stderr[-2000:]
    assert not shm.exists() or shm.stat().st_mode & 0o777 == 0o640      # (SQLite removes it at the last close)
