"""The milter's counters, shared by its connection threads, written for `GET /metrics` to read.

One object per milter process (made in service.run and handed to every connection, not a module
global). It is written to <data_dir>/stats/milter.json at most every `interval` seconds, from the
end-of-message callback that just counted, atomically; serve's /metrics reads that file.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("agentmx.milter.stats")

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class MilterStats:
    def __init__(self, path: Path | None, interval: float = 5.0, clock=time.monotonic):
        self.path, self.interval, self.clock = path, interval, clock
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._warned = False
        self.data: dict = {"messages": {}, "verdicts": {}, "latency_ms": {"buckets": [0] * len(LATENCY_BUCKETS_MS),
                                                                          "count": 0, "sum": 0.0}}

    def count(self, action: str, verdicts: dict[str, str] | None = None, ms: float | None = None) -> None:
        with self._lock:
            msgs = self.data["messages"]
            msgs[action] = msgs.get(action, 0) + 1
            for check, result in (verdicts or {}).items():
                key = f"{check}={result}"
                self.data["verdicts"][key] = self.data["verdicts"].get(key, 0) + 1
            if ms is not None:
                lat = self.data["latency_ms"]
                lat["count"] += 1
                lat["sum"] += ms
                for i, bound in enumerate(LATENCY_BUCKETS_MS):
                    if ms <= bound:
                        lat["buckets"][i] += 1
            due = self.clock() - self._last_write >= self.interval
            snapshot = json.dumps(self.data) if due else None
            if due:
                self._last_write = self.clock()
        if snapshot is not None:
            self._write(snapshot)

    def flush(self) -> None:
        with self._lock:
            snapshot = json.dumps(self.data)
        self._write(snapshot)

    def _write(self, snapshot: str) -> None:
        if self.path is None:
            return
        try:
            if not self.path.parent.is_dir():
                # The milter runs with umask 0117 (its socket is made 0660 by it), which would give a
                # directory no x bit: the mode is set explicitly.
                self.path.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(self.path.parent, 0o750)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".milter-")
            with os.fdopen(fd, "w") as f:
                f.write(snapshot)
            os.chmod(tmp, 0o640)              # counters only; serve reads them through the group
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:          # metrics are optional: say so once, keep filtering mail
                log.warning("cannot write %s (%s); /metrics will not show the milter", self.path, exc.strerror)
                self._warned = True


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
