"""The `store` fixture: one fresh, migrated store per backend, on a clock the test moves.

A backend is one entry of BACKENDS: its name and a function (request, tmp_path, clock) -> Store.
A backend that needs a server asks for that server's fixture by name
(`request.getfixturevalue("pg")`), so adding one is one line here."""
from __future__ import annotations

import time

import pytest

from agentmx.store.embedded import EmbeddedStore


class Clock:
    """The store's clock: starts at the real time (blob files carry it as their mtime) and moves
    only when the test says."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


BACKENDS = {
    "embedded": lambda request, tmp_path, clock: EmbeddedStore(tmp_path / "data", clock),
    # its own migrated database and its own key prefix in the shared bucket (tests/support/stores.py)
    "postgres": lambda request, tmp_path, clock: request.getfixturevalue("postgres_store_factory")(clock=clock,
                                                                                                    pool_size=4),
}


@pytest.fixture
def clock():
    return Clock(float(int(time.time())))


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path, clock):
    s = BACKENDS[request.param](request, tmp_path, clock)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def other_store(request, store, tmp_path, clock):
    """A second fresh, migrated store of the same backend as `store` (the target of an import)."""
    s = BACKENDS[request.node.callspec.params["store"]](request, tmp_path / "other", clock)
    s.migrate()
    yield s
    s.close()
