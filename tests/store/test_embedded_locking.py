"""The embedded store's writers under contention: a write waits its turn, not past the busy timeout.

SQLite's own wait for its write lock (the busy timeout) polls with growing sleeps, up to 100 ms
apart: a writer that has waited long checks least often, and every newcomer gets in before it.
With `agentmx worker`'s pool of threads writing at once (2,000 deliveries, 20 at a time, on a
loaded 2-core machine), the lock was free a quarter of the time, yet a few writers a run waited
out the whole 20 s and their deliveries were deferred ("database is locked")."""
from __future__ import annotations

import threading
import time

import pytest

from agentmx.store import StoreUnavailable, embedded
from agentmx.store.embedded import EmbeddedStore


def test_a_writer_gets_its_turn_among_a_stream_of_others(tmp_path, monkeypatch):
    """Six threads keep the write lock busy with back-to-back 5 ms transactions (what the
    worker's deliveries do under load); one more writer that starts among them must get its turn
    after those queued before it, not wait out the busy timeout (2 s here: 20 s in production)."""
    monkeypatch.setattr(embedded, "BUSY_TIMEOUT", 2.0)
    store = EmbeddedStore(tmp_path / "data")
    store.migrate()
    stop = threading.Event()
    errors: list[BaseException] = []

    def hog(n: int) -> None:
        try:
            while not stop.is_set():
                with store._tx() as db:            # a delivery's write transaction
                    db.execute("INSERT INTO uses (key, at) VALUES (?, ?)", (f"hog-{n}", time.time()))
                    time.sleep(0.005)
        except BaseException as exc:               # noqa: BLE001  (reported below)
            errors.append(exc)

    hogs = [threading.Thread(target=hog, args=(n,), daemon=True) for n in range(6)]
    for t in hogs:
        t.start()
    try:
        time.sleep(0.2)                            # the stream is flowing
        waits = []
        for i in range(3):
            t0 = time.monotonic()
            store.put_transcript(f"msg_{i}", {"turn": i})   # raised StoreUnavailable (database is locked)
            waits.append(time.monotonic() - t0)
    finally:
        stop.set()
        for t in hogs:
            t.join(10)
        store.close()
    assert not errors, errors
    assert max(waits) < 1.0, waits                  # ~6 x 5 ms in turn; it was the whole busy timeout


def test_a_writer_behind_a_stuck_one_gives_up_at_the_busy_timeout(tmp_path, monkeypatch):
    """Waiting for a turn is bounded like SQLite's own wait: a write behind one that does not end
    is StoreUnavailable after the busy timeout (the delivery deferred, not hung), and the turns
    go on once the stuck one ends."""
    monkeypatch.setattr(embedded, "BUSY_TIMEOUT", 0.3)
    store = EmbeddedStore(tmp_path / "data")
    store.migrate()
    inside, finish = threading.Event(), threading.Event()

    def stuck() -> None:
        with store._tx():
            inside.set()
            finish.wait(10)

    t = threading.Thread(target=stuck, daemon=True)
    t.start()
    try:
        assert inside.wait(10)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database is locked"):
            store.put_transcript("msg_1", {})
        assert 0.25 < time.monotonic() - t0 < 2.0
    finally:
        finish.set()
        t.join(10)
    store.put_transcript("msg_1", {"after": True})
    assert store.get_transcript("msg_1") == {"after": True}
    store.close()
