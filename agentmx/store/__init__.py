"""Everything agentmx keeps, behind one interface (base.Store), with two backends:

    embedded   SQLite (WAL) + a blob folder in data_dir: one host, the default and the demo
    postgres   PostgreSQL (psycopg 3, a pool) + an S3-compatible bucket: several MX hosts

    model.py       every record a frozen dataclass, every state an enum
    base.py        the interface, and its one error type (StoreError: StoreUnavailable, SchemaMismatch, DuplicateEvent)
    migrations.py  the schema's versions, each with its DDL per backend
    embedded.py    the embedded backend; legacy.py imports an earlier version's data directory into it
    listener.py    serve's wake-ups (deliver's datagrams, agentmx/notify.py); pglisten.py adds LISTEN/NOTIFY
    transfer.py    moving a store to another backend, verified (`agentmx store migrate --to postgres`)
    (the `agentmx store` commands are agentmx/cli/storage.py, beside the other commands)

`open_store(config)` gives the configured backend. Nothing is imported here that deliver's
per-message path does not need: the backends are imported when opened.
"""
from __future__ import annotations

import importlib
import time
from typing import Callable

from agentmx.config import StoreBackend

from .base import DuplicateEvent, SchemaMismatch, Store, StoreError, StoreUnavailable  # noqa: F401

__all__ = ["DuplicateEvent", "SchemaMismatch", "Store", "StoreError", "StoreUnavailable", "open_store"]


def open_store(config, clock: Callable[[], float] = time.time, pool_size: int = 1) -> Store:
    """The store `config.store` names (the postgres backend imported only when configured).
    `pool_size`: PostgreSQL connections the process may use at once (1: one connection, no pool,
    for a process that makes one call at a time; serve's threads take a pool)."""
    backend = config.store.backend
    if backend is StoreBackend.EMBEDDED:
        from .embedded import EmbeddedStore     # lazy: sqlite3 and the backend, ~2 ms a message on a postgres host
        return EmbeddedStore(config.data_dir, clock)
    if backend is StoreBackend.POSTGRES:
        try:
            postgres = importlib.import_module(f"{__name__}.postgres")
        except ImportError as exc:
            raise StoreError(f"[store] backend = \"postgres\" is not available in this agentmx "
                             f"({exc.name or exc}): install agentmx[postgres], or set backend = \"embedded\"") from None
        return postgres.PostgresStore.from_config(config.store, clock, pool_size=pool_size)
    raise StoreError(f"unknown store backend {backend!r}")
