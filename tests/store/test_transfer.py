"""`agentmx store migrate --to postgres`: an embedded store moved to the session's real PostgreSQL
and SeaweedFS by the real command, verified; run twice; killed (-9) mid-run and run again; a
target row or blob changed afterwards is named by the verification, which exits 1."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentmx.config import load_config
from agentmx.store import open_store
from agentmx.store.embedded import EmbeddedStore
from agentmx.store.model import DeliveryState, RecordKind
from agentmx.store.s3 import S3Client

from store.test_contract import SEND, blob_names, event, export_all, populate, send_event
from support.stores import store_section

AGENTMX = str(Path(sys.executable).with_name("agentmx"))


class Clock:
    def __init__(self):
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def host(tmp_path, pg_server, s3_server):
    """An agentmx.toml whose [store] names a new PostgreSQL database and key prefix, its data_dir
    holding an embedded store (the host before the move)."""
    name = f"agentmx_move_{time.monotonic_ns() % 10**9}"
    pg_server.create_database(name)
    data = tmp_path / "data"
    text = (f'[server]\nauthserv_id = "mx.agents.test"\ndata_dir = "{data}"\nurl_secret = "a-test-url-secret-0123"\n'
            '[[routes]]\nmatch = "@agents.test"\nmode = "pull"\n'
            + store_section("postgres", tmp_path / "secrets", pg_server, s3_server, owner="root", database=name))
    path = tmp_path / "agentmx.toml"
    path.write_text(text)
    yield {"config": path, "data": data, "database": name, "prefix": f"{name}/"}
    pg_server.drop_database(name)


def migrate(host, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTMX, "--config", str(host["config"]), "store", "migrate", "--to", "postgres", *args],
                          capture_output=True, text=True, timeout=timeout)


def target(host):
    return open_store(load_config(host["config"]))


def same_records(source, target) -> None:
    """Every record of the source in the target, equal (text as PostgreSQL holds it: no NUL)."""
    ours, theirs = export_all(source, 500), export_all(target, 500)
    for kind in RecordKind:
        if kind is RecordKind.EVENTS:
            ours[kind] = [dataclasses.replace(e, subject=e.subject.replace("\x00", "\ufffd")) for e in ours[kind]]
        assert theirs[kind] == ours[kind], kind


def test_an_embedded_store_moves_verified_and_a_second_run_changes_nothing(host, s3_server, pg_server):
    clock = Clock()
    source = EmbeddedStore(host["data"], clock)
    ids = populate(source, clock)
    for n in range(10, 16):                               # more mail, each with a raw message and an attachment
        raw, att = source.put_blob(f"raw {n}".encode() * 100), source.put_blob(os.urandom(20_000 + n))
        ev = event(n, blobs=(raw, att))
        source.put_event(ev, repr(ev).encode(), "@agents.test", DeliveryState.STORED)
    source.ack("msg_0000000000000012")
    blobs = blob_names(source)
    assert len(blobs) == 14

    run = migrate(host)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = {line.split()[0]: line.split() for line in run.stdout.splitlines() if line.split()}
    assert lines["blobs"][1] == "14" and lines["events"][1] == "11" and lines["uses"][1] == "3", run.stdout
    assert lines["send_events"][1] == "3" and lines["suppressions"][1] == "3", run.stdout
    for table in ("blobs", "events", "sends", "jobs", "transcripts", "uses", "send_events", "suppressions"):
        row = lines[table]                                 # name, rows, sha256, rows, sha256, only-in-target, ok
        assert row[1] == row[3] and row[2] == row[4] and row[-1] == "ok", run.stdout
    assert "verified: the target holds everything" in run.stdout

    moved = target(host)
    try:
        same_records(source, moved)
        for sha, size in blobs:
            data = moved.get_blob(sha)
            assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
        scope = ("@agents.test",)
        assert [(r.seq, r.id, r.read) for r in moved.inbox_query(scope, limit=100)] == \
            [(r.seq, r.id, r.read) for r in source.inbox_query(scope, limit=100)]
        assert moved.metrics().by_state == source.metrics().by_state
        assert moved.get_transcript(ids["agent"]) == source.get_transcript(ids["agent"])

        again = migrate(host)                              # twice: nothing new, nothing doubled, verified
        assert again.returncode == 0, again.stdout + again.stderr
        assert "new in the target: 0 events, 0 sends, 0 jobs, 0 transcripts, 0 uses" in again.stdout
        same_records(source, moved)

        # the target's services carry on: new mail after the old, an ack; a third run keeps them
        ev = event(40)
        moved.put_event(ev, b"{}", "@agents.test", DeliveryState.STORED)
        assert moved.inbox_row(ev["id"]).seq == source.last_seq() + 1
        moved.ack(ids["delivered"])
        third = migrate(host)
        assert third.returncode == 1
        assert "events: 1 different (first: seq 1)" in third.stderr and "Nothing in the target was overwritten" in \
            third.stderr, third.stderr
        assert moved.inbox_row(ids["delivered"]).read is True
        assert [line for line in third.stdout.splitlines() if line.startswith("events")][-1].split()[5] == "1"
    finally:
        moved.close()
        source.close()


def test_a_changed_row_or_blob_in_the_target_is_named(host, s3_server, pg_server):
    clock = Clock()
    source = EmbeddedStore(host["data"], clock)
    populate(source, clock)
    assert migrate(host).returncode == 0
    pg_server.psql("UPDATE attempts SET excerpt = 'forged' WHERE status = 503", database=host["database"])
    sha = max(blob_names(source), key=lambda name: name[1])[0]
    S3Client(s3_server.endpoint, s3_server.bucket, s3_server.region, s3_server.access_key, s3_server.secret_key).put(
        f"{host['prefix']}blobs/{sha[:2]}/{sha}", b"not the attachment")

    check = migrate(host, "--verify-only")
    assert check.returncode == 1
    assert "the target does NOT match the source" in check.stderr
    assert "events: 1 different (first: seq 2)" in check.stderr, check.stderr
    assert f"blobs: 1 different (first: {sha})" in check.stderr, check.stderr
    table = {line.split()[0]: line.split()[-1] for line in check.stdout.splitlines() if line.split()}
    assert (table["events"], table["blobs"], table["sends"]) == ("MISMATCH", "MISMATCH", "ok")
    source.close()


def test_killed_mid_run_then_run_again_completes_verified(host):
    """kill -9 while blobs are copied, then while events are: the third run completes, verified,
    nothing doubled."""
    clock = Clock()
    source = EmbeddedStore(host["data"], clock)
    shas = [source.put_blob(os.urandom(50_000) + bytes([n])) for n in range(60)]
    for n in range(1, 1201):
        ev = event(n, blobs=(shas[n % 60], shas[(n + 1) % 60]))
        source.put_event(ev, repr(ev).encode(), "@agents.test", DeliveryState.STORED)
    source.close()

    def killed_at(prefix: str, *args) -> str:
        proc = subprocess.Popen([AGENTMX, "--config", str(host["config"]), "store", "migrate", "--to", "postgres",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(prefix):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)
        return line

    assert killed_at("blobs:", "--batch", "10", "--workers", "1").startswith("blobs: 10 copied")
    moved = target(host)
    assert 10 <= len(blob_names(moved)) < 60
    assert killed_at("events:").startswith("events: 500 read")
    assert 500 <= moved.last_seq() and len(export_all(moved, 500)[RecordKind.EVENTS]) < 1200

    run = migrate(host)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verified: the target holds everything" in run.stdout
    source = EmbeddedStore(host["data"])
    same_records(source, moved)
    assert len(blob_names(moved)) == 60 and moved.metrics().received == 1200
    moved.close()
    source.close()


def test_the_target_must_be_a_postgres_store(tmp_path):
    cfg = tmp_path / "agentmx.toml"
    cfg.write_text(f'[server]\nauthserv_id = "mx.agents.test"\ndata_dir = "{tmp_path / "data"}"\n')
    run = subprocess.run([AGENTMX, "--config", str(cfg), "store", "migrate", "--to", "postgres"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 78 and '[store] backend is "embedded"' in run.stderr, run.stderr


def test_a_target_that_took_mail_of_its_own_first_is_refused(host):
    source = EmbeddedStore(host["data"])
    for n in (1, 2):
        ev = event(n)
        source.put_event(ev, b"{}", "@agents.test", DeliveryState.STORED)
    used = target(host)
    used.migrate()
    ev = event(7)
    used.put_event(ev, b"{}", "@agents.test", DeliveryState.STORED)       # seq 1, before any move
    run = migrate(host)
    assert run.returncode == 1
    assert "refused: the target holds msg_0000000000000007 at inbox position 1" in run.stderr, run.stderr
    assert used.inbox_row("msg_0000000000000001") is None and used.inbox_row("msg_0000000000000002") is None
    used.close()
    source.close()


def test_a_damaged_source_blob_is_named_and_not_copied(host):
    source = EmbeddedStore(host["data"])
    good, bad = source.put_blob(b"a good attachment"), source.put_blob(b"an attachment the disk will damage")
    ev = event(1, blobs=(good, bad))
    source.put_event(ev, b"{}", "@agents.test", DeliveryState.STORED)
    path = host["data"] / "blobs" / bad[:2] / bad
    os.chmod(path, 0o600)
    path.write_bytes(b"an attachment the disk has damaged")
    run = migrate(host)
    assert run.returncode == 1
    assert f"blob {bad}: damaged in the source (its bytes do not hash to its name): not copied" in run.stderr
    assert f"blobs: 1 missing in the target (first: {bad})" in run.stderr, run.stderr
    moved = target(host)
    assert moved.get_blob(bad) is None and moved.get_blob(good) == b"a good attachment"
    assert moved.inbox_row(ev["id"]) is not None                    # the event itself moved
    moved.close()
    source.close()


def test_the_same_code_moves_back_from_postgres_to_embedded(tmp_path, postgres_store_factory):
    """transfer.move is backend-neutral: embedded -> postgres -> a new embedded store, verified both
    times, gives back what the first held: send events (their seq, body and POST state) and
    suppressions too, each store's next send event after the moved ones."""
    from agentmx.store import transfer
    clock = Clock()
    first = EmbeddedStore(tmp_path / "first", clock)
    populate(first, clock)
    middle = postgres_store_factory(clock=clock, pool_size=4)
    there = transfer.move(first, middle)
    assert there.ok, there.problems
    assert there.copied["send_events"] == 3 and there.copied["suppressions"] == 3
    assert {c.name for c in there.checks} >= {"send_events", "suppressions"}
    last = EmbeddedStore(tmp_path / "last", clock)
    back = transfer.move(middle, last)
    assert back.ok, back.problems
    assert [c.source_hash for c in back.checks] == [c.target_hash for c in back.checks]
    same_records(first, last)
    assert blob_names(last) == blob_names(first)
    for store in (middle, last):
        assert store.send_events(SEND) == first.send_events(SEND)
        assert store.suppressions() == first.suppressions()
        assert [e.id for e in store.claim_send_events(60)] == ["evt_bounced"]       # its POST is still due there
        assert store.put_send_event(send_event("after the move", SEND, at=clock.now))
        assert store.send_events(SEND)[-1].seq > max(e.seq for e in export_all(first)[RecordKind.SEND_EVENTS])
    first.close()
    last.close()


class Recording:
    """A target store that notes the records each import_records call was given."""

    def __init__(self, store):
        self.store, self.imports = store, []

    def import_records(self, kind, records):
        self.imports.append((kind, [record.seq if kind in (RecordKind.EVENTS, RecordKind.SEND_EVENTS) else None
                                    for record in records]))
        return self.store.import_records(kind, records)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_send_events_move_newest_first_and_a_target_that_sent_on_its_own_is_refused(tmp_path):
    """As events: the newest first (the target's next send event comes after every moved one,
    whatever the target's services keep meanwhile), then in seq order; a target holding send
    events of its own at the source's positions is refused before anything is copied."""
    from agentmx.store import transfer
    clock = Clock()
    source = EmbeddedStore(tmp_path / "source", clock)
    moved = [dataclasses.replace(send_event(str(seq), at=clock.now), seq=seq) for seq in (3, 7, 12, 13, 40)]
    assert source.import_records(RecordKind.SEND_EVENTS, moved) == 5          # seqs with gaps, as gc leaves them
    target = Recording(EmbeddedStore(tmp_path / "target", clock))
    report = transfer.move(source, target, batch=2)
    assert report.ok, report.problems
    assert [seqs for kind, seqs in target.imports if kind is RecordKind.SEND_EVENTS] == [[40], [3, 7], [12, 13], [40]]
    assert target.send_events(SEND) == moved

    used = EmbeddedStore(tmp_path / "used", clock)
    assert used.put_send_event(send_event("its own", at=clock.now))         # seq 1: not the source's
    source.put_blob(b"a blob")
    with pytest.raises(transfer.Refused, match="send event evt_its own at position 1"):
        transfer.move(source, used)
    assert used.blob_names() == [] and [e.id for e in used.send_events(SEND)] == ["evt_its own"]
    for store in (source, target.store, used):
        store.close()
