"""Open long-polls and event streams, counted per API key and in all: each holds a connection for
minutes, so each key gets at most `per_key` of them and the server at most `total`; the next one
is refused at once (429 for the key's own cap, 503 for the server's) rather than queued."""
from __future__ import annotations

from contextlib import contextmanager

from .errors import ApiError


class StreamSlots:
    def __init__(self, per_key: int, total: int):
        self.per_key, self.total = per_key, total
        self.open: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.open.values())

    def acquire(self, key_name: str) -> None:
        if self.open.get(key_name, 0) >= self.per_key:
            raise ApiError(429, "too_many_streams", f"at most {self.per_key} open waits and event streams "
                                                    "per API key; close one first", retry_after=5)
        if self.count >= self.total:
            raise ApiError(503, "busy", "too many open waits and event streams; try again shortly", retry_after=5)
        self.open[key_name] = self.open.get(key_name, 0) + 1

    def release(self, key_name: str) -> None:
        left = self.open.get(key_name, 0) - 1
        if left > 0:
            self.open[key_name] = left
        else:
            self.open.pop(key_name, None)

    @contextmanager
    def slot(self, key_name: str):
        self.acquire(key_name)
        try:
            yield
        finally:
            self.release(key_name)
