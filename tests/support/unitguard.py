"""The `unit` and `e2e` markers, checked rather than trusted (issue 20).

`pytest -m unit` must stay seconds, with no root, no Postfix, no server and no process of its own.
tests/conftest.py calls these:

- at collection (`mark_items`): every test under tests/e2e/ is marked `e2e`, and every test on a
  fixture that sets up the whole system (E2E_FIXTURES: the console's browser tests); a test both `unit` and
  `e2e` is an error, as is a `unit` test skipped unless it runs as root; a `unit` test that runs servers
  loses `unit` for that case alone (the store contract is `unit` for the embedded backend; its postgres
  cases start PostgreSQL and SeaweedFS);
- while a `unit` test is set up and runs (`Boundary`): starting a program (Postfix, the milter, any
  subprocess; a bare os.fork is allowed) or changing user, group, root or a file's owner raises UnitBoundary. Installed
  before the test's fixtures of every scope are set up, removed before its teardown.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support.postfix import MilterProcess, PostfixInstance

# fixtures that start a server (the loopback DNS server, PostgreSQL, SeaweedFS); a case parametrized
# with the postgres backend gets those servers through request.getfixturevalue, out of sight of
# the fixture closure
SERVER_FIXTURES = frozenset({"dns_server", "zone", "resolver", "lookups", "pg_server", "s3_server",
                             "postgres_store", "postgres_store_factory"})
SERVER_PARAMS = frozenset({"postgres"})
# fixtures that set up the whole system (Postfix, the milter, deliver, serve) for tests outside tests/e2e/
E2E_FIXTURES = frozenset({"console_install"})
ROOT_REASON = re.compile(r"\broot\b", re.I)


class UnitBoundary(AssertionError):
    """A `unit` test did what only an integration or e2e test may, or a test not marked `e2e`
    started Postfix."""


def _runs_servers(item: pytest.Item) -> bool:
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v in SERVER_PARAMS for v in callspec.params.values())


def mark_items(items: list[pytest.Item], e2e_folder: Path) -> None:
    demoted = []
    for item in items:
        if e2e_folder in item.path.parents or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("unit") is None:
            continue
        if item.get_closest_marker("e2e") is not None:
            raise pytest.UsageError(f"{item.nodeid}: marked both unit and e2e")
        for skip in item.iter_markers("skipif"):
            if ROOT_REASON.search(str(skip.kwargs.get("reason", ""))):
                raise pytest.UsageError(f"{item.nodeid}: a unit test needs no root (skipif: "
                                        f"{skip.kwargs['reason']!r}); mark it otherwise")
        if _runs_servers(item):
            demoted.append(item)
    if not demoted:
        return
    # A mark on the module or class covers every case: take it off there and put it back on each
    # case but the demoted ones.
    keep = [item for item in items if item.get_closest_marker("unit") is not None and item not in demoted]
    for item in demoted + keep:
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers if m.name != "unit"]
    for item in keep:
        item.add_marker(pytest.mark.unit)


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise UnitBoundary(f"a unit test may not {what}: mark it otherwise (tests/support/unitguard.py)")
    return refuse


def _refuse_postfix(*args, **kwargs):
    raise UnitBoundary("a test that starts Postfix is an e2e test: move it to tests/e2e/ or mark it "
                       "@pytest.mark.e2e (tests/support/unitguard.py)")


def _chown(real):
    def chown(path, uid, gid, *args, **kwargs):
        if uid not in (-1, os.geteuid()) or gid not in (-1, os.getegid(), *os.getgroups()):
            raise UnitBoundary(f"a unit test may not give a file to another user ({uid}:{gid}): it needs root")
        return real(path, uid, gid, *args, **kwargs)
    return chown


class Boundary:
    """The patches that hold one test to its marks: a `unit` test to all of them, any test that is
    not `e2e` to no Postfix."""

    def __init__(self, unit: bool) -> None:
        self.unit = unit
        self.patch = pytest.MonkeyPatch()

    def __enter__(self) -> "Boundary":
        p = self.patch
        if not self.unit:
            p.setattr(PostfixInstance, "start", _refuse_postfix)
            return self
        p.setattr(PostfixInstance, "__init__", _refuse("set up Postfix"))
        p.setattr(PostfixInstance, "start", _refuse("start Postfix"))
        p.setattr(MilterProcess, "start", _refuse("start the milter"))
        p.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
        # os.fork alone stays allowed: it starts no program (the store's fork-safety tests fork)
        for name in ("system", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp", "execvpe"):
            p.setattr(os, name, _refuse(f"start a process (os.{name})"))
        for name in ("setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid",
                     "setresgid", "setgroups", "initgroups", "chroot"):
            p.setattr(os, name, _refuse(f"change user, groups or root (os.{name}): it needs root"))
        for name in ("chown", "lchown", "fchown"):
            p.setattr(os, name, _chown(getattr(os, name)))
        return self

    def __exit__(self, *exc) -> None:
        self.patch.undo()
