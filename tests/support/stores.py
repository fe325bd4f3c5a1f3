"""Fixtures that make postgres-backend stores on the session's private servers (pg.py, s3.py).

    postgres_store_factory(clock=..., pool_size=1, like=None) -> a migrated PostgresStore on a new
        database of its own and a key prefix of its own in the session's bucket; like=<a store>
        gives another store on the same database and prefix (a second process or MX host).
    postgres_store: one such store with the real clock.

    store_section(backend, where, pg_server=None, s3_server=None, owner="nobody", database=None)
        -> the [store] TOML for an agentmx.toml: "" for embedded; for postgres a new database (or
        `database`, to share one between hosts), a key prefix of its own in the session's bucket,
        and the URL and keys in files under `where` readable only by `owner` (the services' user).

Everything made is closed, and its database dropped, when the test ends. For the contract tests'
`store` fixture, the postgres parameter is one line:
    request.getfixturevalue("postgres_store_factory")(clock=clock)
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

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


def store_section(backend: str, where: Path, pg_server=None, s3_server=None, owner: str = "nobody",  # noqa: F811
                  database: str | None = None) -> str:
    """The [store] tables of an agentmx.toml for `backend` ("embedded" or "postgres"), as an
    operator writes them: the secrets in files of their own, mode 0400, owned by `owner` (the user
    deliver and serve run as in the test). `database`: an existing database name (a second host on
    the first one's database and key prefix); otherwise a new one is made."""
    if backend == "embedded":
        return '[store]\nbackend = "embedded"\n'
    if database is None:
        database = f"agentmx_{time.monotonic_ns() % 10**12}"
        pg_server.create_database(database)
    where.mkdir(parents=True, exist_ok=True)
    files = {"database.url": pg_server.url_for(database), "s3.access": s3_server.access_key,
             "s3.secret": s3_server.secret_key}
    for name, value in files.items():
        path = where / name
        path.write_text(value + "\n")
        shutil.chown(path, owner)
        os.chmod(path, 0o400)
    return (f'[store]\nbackend = "postgres"\ndatabase_url_file = "{where / "database.url"}"\n'
            f'[store.s3]\nendpoint = "{s3_server.endpoint}"\nbucket = "{s3_server.bucket}"\n'
            f'region = "{s3_server.region}"\nprefix = "{database}/"\n'
            f'access_key_file = "{where / "s3.access"}"\nsecret_key_file = "{where / "s3.secret"}"\n')
