"""Times as the API, the events and the CLI write them: RFC 3339 in UTC, whole seconds."""
from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(ts: float) -> str:
    """Unix seconds as 2026-12-05T09:30:00Z."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
