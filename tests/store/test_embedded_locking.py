"""The embedded store's writers under contention: a write waits its turn, not past the busy timeout.

SQLite's own wait for its write lock (the busy timeout) polls with growing sleeps, up to 100 ms
apart: a writer that has waited long checks least often, and every newcomer gets in before it.
With `agentmx worker`'s pool of threads writing at once (2,000 deliveries, 20 at a time, on a
loaded 2-core machine), the lock was free a quarter of the time, yet a few writers a run waited
out the whole 20 s and their deliveries were deferred ("database is locked")."""
from __future__ import annotations

import threading
import time

from agentmx.store import embedded
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
