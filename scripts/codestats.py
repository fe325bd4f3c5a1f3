"""Counts the code's shape (issue 20's before/after figures): function-local imports, the largest
functions, modules and lines per package. Run from the checkout: python3 scripts/codestats.py
(stdlib only; reads the source, imports nothing of it)."""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"agentmx": "agentmx", "agentmx.milter": "milter", "agentmx.deliver": "deliver"}


def modules() -> list[tuple[str, Path]]:
    out = []
    for name, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if folder == "agentmx" and rel.parts[0] in ("milter", "deliver"):
                continue
            out.append((".".join((name, *rel.parts)).removesuffix(".__init__"), path))
    return out


def stats() -> dict:
    local_imports, functions, per_package, lines = [], [], Counter(), Counter()
    for name, path in modules():
        tree = ast.parse(path.read_text(), str(path))
        package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
        per_package[package] += 1
        lines[package] += len(path.read_text().splitlines())
        def visit(node, in_function: bool, name: str = name) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((child.end_lineno - child.lineno + 1, f"{name}.{child.name}"))
                    visit(child, True)
                    continue
                if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                    local_imports.append(f"{name}:{child.lineno}")
                visit(child, in_function)
        visit(tree, False)
    functions.sort(reverse=True)
    return {"local_imports": local_imports, "functions": functions, "per_package": per_package, "lines": lines}


def main() -> int:
    s = stats()
    print(f"function-local imports: {len(s['local_imports'])}")
    print(f"functions: {len(s['functions'])}; over 60 lines: {sum(1 for n, _ in s['functions'] if n > 60)}; "
          f"over 100: {sum(1 for n, _ in s['functions'] if n > 100)}")
    print("largest functions:")
    for n, f in s["functions"][:10]:
        print(f"  {n:5} {f}")
    print("modules (lines) per package:")
    for p in sorted(s["per_package"]):
        print(f"  {p:28} {s['per_package'][p]:3} ({s['lines'][p]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
