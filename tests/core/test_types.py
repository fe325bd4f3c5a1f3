"""The type check as CI runs it: mypy over the whole package with [tool.mypy] of pyproject.toml
(the core modules strict; the rest at mypy's default level, less the debt listed there).

The source folders are mapped onto agentmx.* at install time (milter/ -> agentmx.milter,
deliver/ -> agentmx.deliver), so mypy reads them through a tree of links laid out as the
installed package is: its messages name agentmx/milter/x.py for milter/x.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())


def _package_tree(into: Path) -> Path:
    pkg = into / "agentmx"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "agentmx").iterdir():
        (pkg / entry.name).symlink_to(entry)
    (pkg / "milter").symlink_to(ROOT / "milter")
    (pkg / "deliver").symlink_to(ROOT / "deliver")
    return into


def test_mypy_passes(tmp_path):
    tree = _package_tree(tmp_path / "src")
    run = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--hide-error-context",
                          "-p", "agentmx"],
                         cwd=tree, capture_output=True, text=True, timeout=120)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert run.returncode == 0 and not errors, "mypy:\n" + run.stdout + run.stderr
