"""The milter's counters, shared by its connection threads, written for `GET /metrics` to read.

One object per milter process (made in service.run and handed to every connection, not a module
global). Milter process n ([milter] processes, milter/procs.py) writes <data_dir>/stats/milter-<n>.json
at most every `interval` seconds, from the end-of-message callback that just counted, atomically;
serve's /metrics sums every such file (total()).

Counters never go backwards while the milter runs: a process started again in the same slot (after
a crash) carries on from its slot's file, and the files of slots no longer running (fewer processes
configured) stay and are still summed: they count messages that were answered. What a killed
process counted since its last write (at most `interval` seconds of it) is lost: an undercount,
never a step back. docs/decisions.md.
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


PREFIX = "milter-"


def path_for(stats_dir: Path, slot: int) -> Path:
    """Milter process `slot`'s file (0 .. processes - 1)."""
    return stats_dir / f"{PREFIX}{slot}.json"


def _empty() -> dict:
    return {"messages": {}, "verdicts": {}, "latency_ms": {"buckets": [0] * len(LATENCY_BUCKETS_MS),
                                                           "count": 0, "sum": 0.0}}


def _valid(data) -> bool:
    try:
        return (all(isinstance(n, int) for n in data["messages"].values())
                and all(isinstance(n, int) for n in data["verdicts"].values())
                and len(data["latency_ms"]["buckets"]) == len(LATENCY_BUCKETS_MS)
                and all(isinstance(n, int) for n in data["latency_ms"]["buckets"])
                and isinstance(data["latency_ms"]["count"], int)
                and isinstance(data["latency_ms"]["sum"], (int, float)))
    except (KeyError, TypeError, AttributeError):
        return False


class MilterStats:
    def __init__(self, path: Path | None, interval: float = 5.0, clock=time.monotonic):
        """Counts from where `path` left them (the same slot's previous process), else from 0."""
        self.path, self.interval, self.clock = path, interval, clock
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._warned = False
        before = read(path) if path is not None else None
        self.data: dict = before if _valid(before) else _empty()

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


def total(stats_dir: Path) -> dict | None:
    """The sum of every milter process's file in `stats_dir` (None: there is none); a file that is
    not a counters object (hand-edited, another version's buckets) is left out."""
    found = [d for p in sorted(stats_dir.glob(f"{PREFIX}*.json")) if _valid(d := read(p))]
    if not found:
        return None
    out = _empty()
    for d in found:
        for part in ("messages", "verdicts"):
            for key, n in d[part].items():
                out[part][key] = out[part].get(key, 0) + n
        lat = out["latency_ms"]
        lat["buckets"] = [a + b for a, b in zip(lat["buckets"], d["latency_ms"]["buckets"])]
        lat["count"] += d["latency_ms"]["count"]
        lat["sum"] += d["latency_ms"]["sum"]
    return out
