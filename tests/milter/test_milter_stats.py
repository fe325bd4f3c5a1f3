"""The milter's counters: cumulative histogram, written at most once per interval, atomically."""
from __future__ import annotations

import json

import pytest

from agentmx.milter.stats import LATENCY_BUCKETS_MS, MilterStats, read

pytestmark = pytest.mark.unit


def test_counts_and_interval(tmp_path):
    now = [100.0]
    path = tmp_path / "stats" / "milter.json"
    stats = MilterStats(path, interval=5, clock=lambda: now[0])
    stats.count("accept", {"spf": "pass", "dmarc": "fail"}, 12.0)
    first = read(path)
    assert first["messages"] == {"accept": 1}                    # the first count writes at once
    stats.count("reject", {"spf": "fail"}, 3000.0)
    assert read(path) == first                                   # within the interval: not yet
    now[0] += 6
    stats.count("signed")
    data = read(path)
    assert data["messages"] == {"accept": 1, "reject": 1, "signed": 1}
    assert data["verdicts"] == {"spf=pass": 1, "dmarc=fail": 1, "spf=fail": 1}
    buckets = dict(zip(LATENCY_BUCKETS_MS, data["latency_ms"]["buckets"]))
    assert buckets[10] == 0 and buckets[25] == 1 and buckets[2500] == 1 and buckets[5000] == 2
    assert data["latency_ms"]["count"] == 2
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".milter-")]


def test_unwritable_path_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    stats = MilterStats(blocker / "stats" / "milter.json")
    stats.count("accept")
    stats.flush()
    assert json.loads(json.dumps(stats.data))["messages"] == {"accept": 1}


def test_the_stats_directory_is_usable_under_the_milters_socket_umask(tmp_path):
    """The milter runs with umask 0117 so that libmilter makes its socket 0660; a directory made
    under it had no x bit, and the second write failed."""
    import os
    path = tmp_path / "data" / "stats" / "milter.json"
    old = os.umask(0o117)
    try:
        stats = MilterStats(path, interval=0)
        stats.count("accept")
        stats.count("accept")
    finally:
        os.umask(old)
    assert (path.parent.stat().st_mode & 0o777) == 0o750
    assert read(path)["messages"] == {"accept": 2}
