"""The import rules of docs/architecture.md: the rooms point inward, and no modules import in a loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports('setup.cfg', no_cache=True, no_logo=True))\n"
)


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package in `package_dir`, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _top_level(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements run when the module is imported: all but the bodies of functions."""
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _top_level([each for each in inner if isinstance(each, ast.stmt)])
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                yield from _top_level(handler.body)


def module_level_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """
    The modules of the package that module `name` imports when it is imported.

    Counted: ``import`` statements outside function bodies, those under ``if
    TYPE_CHECKING:`` included (a loop there is a loop for mypy and for a
    reader); ``from p import m`` counts ``p`` and, when ``m`` is a module,
    ``p.m``. Not counted: imports inside functions, and the parent packages
    Python runs on the way.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in _top_level(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)
    return {each for each in imported if each in modules and each != name}


def import_cycles(package_dir: Path) -> list[list[str]]:
    """The groups of modules that import each other in a loop (module-level imports), each sorted."""
    modules = module_names(package_dir)
    edges = {name: sorted(module_level_imports(name, path, modules)) for name, path in modules.items()}
    # Tarjan's strongly connected components, iteratively (no recursion limit to hit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                target = edges[node][child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(cycles)


def test_rooms_import_only_inward() -> None:
    """Every import in gateway/ keeps the room rules (setup.cfg's import-linter contracts)."""
    result = subprocess.run(
        [sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_import_cycles() -> None:
    """No modules of gateway/ import each other in a loop through their module-level imports."""
    assert import_cycles(ROOT / "gateway") == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_cycle_check_finds_a_loop(tmp_path: Path) -> None:
    """A loop of module-level imports (plain, relative, under TYPE_CHECKING) is reported by its members."""
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n",
            "pkg/c.py": "import pkg.a\nX = 1\n",
            "pkg/d.py": "from pkg.a import b\n",
        },
    )
    assert import_cycles(package) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_cycle_check_ignores_imports_inside_functions(tmp_path: Path) -> None:
    """An import inside a function body does not make a loop: it runs only when the function is called."""
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def late() -> None:\n    from pkg import a\n",
        },
    )
    assert import_cycles(package) == []
