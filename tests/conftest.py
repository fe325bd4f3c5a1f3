"""Shared fixtures: the suites' location, a loopback DNS server, DNS sessions on it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED = Path(__import__("os").environ.get("AGENTMX_SHARED", ROOT.parent / "shared"))
SUITES = SHARED / "suites"
CORPUS = SHARED / "corpus"

sys.path.insert(0, str(TESTS))          # tests/support as the package `support`

from support import unitguard  # noqa: E402
from support.dnszone import DnsServer  # noqa: E402
from support.pg import pg_server  # noqa: E402,F401  (session fixtures: a private PostgreSQL, SeaweedFS S3,
from support.s3 import s3_server  # noqa: E402,F401   and postgres-backend stores on them)
from support.stores import postgres_store, postgres_store_factory  # noqa: E402,F401

from agentmx.resolver import Resolver  # noqa: E402


_REPORT: list[str] = []


def report(line: str) -> None:
    """A measured figure (suite counts, agreement rates) printed at the end of the run."""
    _REPORT.append(line)


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("agentmx measurements")
        for line in _REPORT:
            terminalreporter.write_line(f"REPORT {line}")


_BOUNDARY = pytest.StashKey[unitguard.Boundary]()


@pytest.hookimpl(tryfirst=True)        # before -m selects: the marks must be final by then
def pytest_collection_modifyitems(config, items):
    """tests/e2e/ is `e2e`; `unit` is checked (tests/support/unitguard.py)."""
    unitguard.mark_items(items, TESTS / "e2e")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """A test is held to its marks from before its first fixture is set up (unitguard.Boundary)."""
    if item.get_closest_marker("e2e") is None:
        unit = item.get_closest_marker("unit") is not None
        item.stash[_BOUNDARY] = unitguard.Boundary(unit).__enter__()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    boundary = item.stash.get(_BOUNDARY, None)
    if boundary is not None:
        boundary.__exit__(None, None, None)
    yield


def pytest_report_header(config):
    return f"shared: {SHARED} ({'present' if SUITES.is_dir() else 'MISSING'})"


@pytest.fixture(scope="session")
def dns_server():
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def zone(dns_server):
    """Set the zone for one test: zone({...}); the server is emptied afterwards."""
    def set_zone(data: dict):
        dns_server.set_zone(data)
        return dns_server
    yield set_zone
    dns_server.set_zone({})
    dns_server.resolver.silent = False
    dns_server.resolver.timeout_mode = "servfail"


@pytest.fixture(scope="session")
def resolver(dns_server):
    return Resolver(dns_server.servers, timeout=1.0)


@pytest.fixture
def lookups(resolver):
    return resolver.session(budget=200)
