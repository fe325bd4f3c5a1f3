"""Fixtures that make postgres-backend stores on the session's private servers (pg.py, s3.py).

    postgres_store_factory(clock=..., pool_size=1, like=None) -> a migrated PostgresStore on a new
        database of its own and a key prefix of its own in the session's bucket; like=<a store>
        gives another store on the same database and prefix (a second process or MX host).
    postgres_store: one such store with the real clock.

Everything made is closed, and its database dropped, when the test ends. For the contract tests'
`store` fixture, the postgres parameter is one line:
    request.getfixturevalue("postgres_store_factory")(clock=clock)
"""
from __future__ import annotations

import time

import pytest

from .pg import pg_server  # noqa: F401  (the fixtures these depend on, for tests that import only these)
from .s3 import s3_server  # noqa: F401


@pytest.fixture
def postgres_store_factory(pg_server, s3_server):  # noqa: F811
    from agentmx.store.postgres import PostgresStore
    from agentmx.store.s3 import BlobStore, S3Client

    made: list = []
    databases: list[str] = []

    def make(clock=time.time, pool_size: int = 1, like=None, **kwargs) -> PostgresStore:
        if like is None:
            name = f"agentmx_{len(databases) + 1}_{time.monotonic_ns() % 10**9}"
            url = pg_server.create_database(name)
            databases.append(name)
            root = f"{name}/"
        else:
            url, root = like.url, like.blobs.root
        client = S3Client(s3_server.endpoint, s3_server.bucket, s3_server.region, s3_server.access_key,
                          s3_server.secret_key, timeout=5.0)
        store = PostgresStore(url, BlobStore(client, root=root), clock, pool_size=pool_size, **kwargs)
        made.append(store)
        if like is None:
            store.migrate()
        return store

    yield make
    for store in made:
        store.close()
    if pg_server.running:
        for name in databases:
            pg_server.drop_database(name)


@pytest.fixture
def postgres_store(postgres_store_factory):
    return postgres_store_factory()
