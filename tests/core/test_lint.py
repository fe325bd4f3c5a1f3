"""The lint gate: `ruff check` over the checkout (agentmx/, milter/, deliver/, scripts/, tests/,
examples/) with the rules of [tool.ruff] in pyproject.toml finds nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_finds_nothing():
    run = subprocess.run([str(RUFF), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_sees_a_late_bound_loop_variable_and_an_undefined_name(tmp_path):
    """The gate itself, with our configuration: two defects it is there for."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("def f(items):\n    out = []\n    for i in items:\n"
                                     "        out.append(lambda: i)\n    return out, undefined_name\n")
    run = subprocess.run([str(RUFF), "check", "--no-cache", "--output-format", "concise", "."], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "B023" in run.stdout and "F821" in run.stdout, run.stdout
