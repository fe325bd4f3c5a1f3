"""The end-to-end worlds on either store backend (issue 14: the end-to-end, fault, pull and MCP
tests run on both). A module-scoped world takes `params=BACKENDS` and appends store_config()'s
TOML to the agentmx.toml it writes, then calls migrate() once the file is complete:

    @pytest.fixture(scope="module", params=BACKENDS)
    def world(request, ...):
        toml = ... + store_config(request, request.param, pf.base / "secrets")
        ...; migrate(cfg_path)

postgres: a database of its own on the session's PostgreSQL and a key prefix of its own in the
session's bucket (support/stores.store_section), the URL and keys in 0400 files owned by the
services' user; the schema applied by `agentmx store migrate` as that user, as an operator does."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .stores import store_section

BACKENDS = ["embedded", "postgres"]
AGENTMX = str(Path(sys.executable).with_name("agentmx"))


def store_config(request, backend: str, where: Path, owner: str = "nobody", pg_server=None, s3_server=None) -> str:
    """The [store] tables for `backend`; for postgres on the session's servers unless given others."""
    if backend == "embedded":
        return store_section("embedded", where)
    pg_server = pg_server or request.getfixturevalue("pg_server")
    s3_server = s3_server or request.getfixturevalue("s3_server")
    return store_section("postgres", where, pg_server, s3_server, owner=owner)


def migrate(cfg_path: Path, user: str = "nobody") -> str:
    """`agentmx store migrate` for the config at `cfg_path`, as `user` (the services' user, who
    owns the embedded store's files and may read the postgres backend's secrets); its output."""
    r = subprocess.run([AGENTMX, "--config", str(cfg_path), "store", "migrate"], capture_output=True, text=True,
                       timeout=120, user=user, group="nogroup", extra_groups=[], cwd="/")
    assert r.returncode == 0, f"agentmx store migrate: {r.stdout}{r.stderr}"
    return r.stdout
