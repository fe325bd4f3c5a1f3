"""The layers import only downward and no package's modules import each other in a cycle: the
contracts in pyproject.toml ([tool.importlinter]: the milter and deliver never import each other,
the store imports none of the applications, every module of agentmx placed in a layer), checked
by import-linter on the installed package. It reads every import from the source (none runs), a
function-local one and a relative one too."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import agentmx

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(*pythonpath: Path) -> subprocess.CompletedProcess:
    """lint-imports on the agentmx that `pythonpath` (else the venv) holds, from outside the checkout
    (whose folders would shadow the installed package)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(map(str, pythonpath))}
    return subprocess.run([str(LINT), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")], cwd="/", env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    run = lint_imports()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 2 kept, 0 broken." in run.stdout, run.stdout


def test_the_contracts_catch_a_sideways_an_upward_an_unplaced_and_a_cyclic_import(tmp_path):
    """The contracts themselves, on a copy of the package: deliver importing the milter inside a
    function, the store importing serve, a module in no layer, and two modules of the api
    importing each other are each reported."""
    copy = tmp_path / "agentmx"
    shutil.copytree(Path(agentmx.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert lint_imports(tmp_path).returncode == 0
    with (copy / "deliver" / "route.py").open("a") as f:
        f.write("\n\ndef _sideways():\n    from agentmx.milter import spam_check  # noqa\n")
    with (copy / "store" / "model.py").open("a") as f:
        f.write("\nfrom ..api import app  # noqa\n")
    (copy / "unplaced.py").write_text("")
    with (copy / "api" / "sendnow.py").open("a") as f:
        f.write("\nfrom . import sending  # noqa\n")
    run = lint_imports(tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "agentmx.deliver.route -> agentmx.milter.spam_check" in out
    assert "agentmx.store.model -> agentmx.api.app" in out
    assert "agentmx.unplaced" in out
    assert "No cycles are allowed in agentmx.api." in out
