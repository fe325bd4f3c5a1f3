"""A private PostgreSQL cluster for tests (Debian's `postgresql` package; ../shared/STORE-IN-TESTS.md).

initdb runs as user postgres in a temporary folder; the server listens on 127.0.0.1 and a free
port only, with its unix socket in that folder, scram-sha-256 passwords and fsync off (tests
only). `stop()` and `start()` take it down and bring it back with its data (the fault tests);
`close()` stops it and removes the folder.

    pg = PgServer().start()
    url = pg.create_database()      postgresql://agentmx:...@127.0.0.1:PORT/agentmx_1, owned by agentmx
    pg.stop(); pg.start()           or: with pg.down(): ...
    pg.close()
"""
from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from . import reaper
from .postfix import free_tcp_port

def _bin() -> Path:
    """Debian's server binaries: /usr/lib/postgresql/<major>/bin, the newest installed (15 on Debian 12)."""
    if os.environ.get("AGENTMX_PG_BIN"):
        return Path(os.environ["AGENTMX_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()
ROLE = "agentmx"


class PgServer(reaper.Server):
    def __init__(self, port: int | None = None):
        self.base = Path(tempfile.mkdtemp(prefix="agentmx-pg-", dir="/tmp"))
        os.chmod(self.base, 0o711)                # postgres must reach its folders inside
        self.data = self.base / "data"
        self.sockets = self.base / "run"
        self.log = self.sockets / "postgres.log"
        self.port = port or free_tcp_port()
        self.admin_password = secrets.token_hex(16)
        self.password = secrets.token_hex(16)
        self._names = itertools.count(1)
        self._initialised = False
        self.url = ""                              # the agentmx role on database "agentmx"

    def __repr__(self) -> str:
        return f"PgServer(port={self.port}, base={self.base})"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "PgServer":
        reaper.register(self)
        if not self._initialised:
            self._initdb()
        self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "40", "-o",
                          f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockets} -c fsync=off "
                          "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB "
                          "-c max_connections=100", "start")
        if not self._initialised:
            self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
            self.url = self.create_database("agentmx")
            self._initialised = True
        return self

    def stop(self) -> None:
        """A fast shutdown (~0.1 s): open connections are cut, as when the database goes down."""
        if self.running:
            self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-w", "-t", "30", "-m", "fast", "stop")

    def close(self) -> None:
        try:
            if self.running:
                self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-w", "-t", "30", "-m", "immediate", "stop")
        finally:
            self._forget()

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    # --- databases ------------------------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the agentmx role; its URL."""
        name = name or f"agentmx_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url_for(self, database: str, password: str | None = None) -> str:
        return f"postgresql://{ROLE}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over TCP; its output (unaligned, tuples only)."""
        r = subprocess.run([BIN / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                            "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PGPASSWORD": self.admin_password, "PGCONNECT_TIMEOUT": "10"})
        if r.returncode:
            raise RuntimeError(f"psql {sql!r}: {r.stderr.strip()}")
        return r.stdout

    # --- internals ------------------------------------------------------------------------------

    def _initdb(self) -> None:
        for d in (self.data, self.sockets):
            d.mkdir(mode=0o700)
            shutil.chown(d, "postgres", "postgres")
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        os.chmod(pwfile, 0o400)
        shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._as_postgres(BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=scram-sha-256",
                              f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        finally:
            pwfile.unlink()

    def _as_postgres(self, *cmd) -> None:
        r = subprocess.run([str(c) for c in cmd], user="postgres", group="postgres", extra_groups=[],
                           cwd=self.base, capture_output=True, text=True, timeout=120,
                           start_new_session=True)   # the postmaster outlives no signal meant for pytest
        if r.returncode:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(str(cmd[0])).name} failed ({r.returncode}): {r.stderr.strip()}\n{tail}")


@pytest.fixture(scope="session")
def pg_server():
    """One private PostgreSQL cluster for the whole run; tests take databases of their own from it
    (pg_server.create_database()). A test that stops it must start it again."""
    yield from reaper.session(PgServer())
