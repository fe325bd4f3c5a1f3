"""The layers import only downward: the milter and deliver never import each other, the store
imports neither, nothing below the commands imports them. Read from the source with ast (no
import runs), so a lazy import inside a function counts too."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"agentmx": "agentmx", "milter": "agentmx.milter", "deliver": "agentmx.deliver"}

# Higher numbers may import lower ones; one unit never imports another of its own layer, except
# the small shared modules of layer 0 (config, resolver, address, notify, ...).
LAYERS = {
    "agentmx.store": 1,
    "agentmx.sendevents": 1.5,     # send events: made of the store's values, for the send path and deliver alike
    "agentmx.milter": 2, "agentmx.deliver": 2,
    "agentmx.suppression": 2,                          # the send paths' check (api, agentloop), on the store's values
    "agentmx.sendpath": 2.5,                           # the one send path every door calls (api, agentloop)
    "agentmx.ops": 3, "agentmx.mcpserver": 3,          # MCP tools on a Mailbox: HTTP (stdio) or serve in process (api/mcp.py)
    "agentmx.api": 4, "agentmx.agentloop": 4,
    "agentmx.setup": 5,
    "agentmx.cli": 6,                                  # the command groups (agentmx/cli/*.py): one unit
    "agentmx.__main__": 7,
}


def unit(module: str) -> str:
    """The unit a module belongs to: a package of ours (agentmx.store.embedded -> agentmx.store),
    else the module itself (agentmx.config)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer(name: str) -> float:
    return LAYERS.get(name, 0)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts[1:] if p != "__init__"]
    return ".".join([PACKAGES[rel.parts[0]], *parts])


def imports(path: Path) -> set[str]:
    """Every agentmx module `path` imports, anywhere in it (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)   # `from agentmx import notify`
    return {m for m in found if m == "agentmx" or m.startswith("agentmx.")}


def sources() -> list[Path]:
    return sorted(p for top in PACKAGES for p in (ROOT / top).rglob("*.py"))


def violations(path: Path) -> list[str]:
    me = unit(module_name(path))
    out = []
    for target in sorted(imports(path)):
        other = unit(target)
        if other in (me, "agentmx"):
            continue
        if layer(other) > layer(me) or (layer(other) == layer(me) and layer(me) > 0):
            out.append(f"{module_name(path)} (layer {layer(me)}) imports {target} (layer {layer(other)})")
    return out


@pytest.mark.unit
def test_the_layers_import_only_downward():
    found = [v for path in sources() for v in violations(path)]
    assert not found, "\n".join(found)


@pytest.mark.unit
def test_the_check_sees_a_sideways_and_an_upward_import(tmp_path, monkeypatch):
    """The check itself: deliver importing the milter, and the store importing serve, are caught,
    also when the import is relative or inside a function."""
    fake = tmp_path / "deliver"
    fake.mkdir()
    (fake / "x.py").write_text("def f():\n    from agentmx.milter import spam_check\n")
    store = tmp_path / "agentmx" / "store"
    store.mkdir(parents=True)
    (store / "y.py").write_text("from ..api import app\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations(fake / "x.py") == ["agentmx.deliver.x (layer 2) imports agentmx.milter (layer 2)",
                                         "agentmx.deliver.x (layer 2) imports agentmx.milter.spam_check (layer 2)"]
    assert violations(store / "y.py") == ["agentmx.store.y (layer 1) imports agentmx.api (layer 4)",
                                          "agentmx.store.y (layer 1) imports agentmx.api.app (layer 4)"]
    (fake / "x.py").write_text("from agentmx.store import open_store\nfrom agentmx import address\n")
    assert violations(fake / "x.py") == []
