"""The package's layout (docs/design.md, "Layout"): no import cycle between files, the library never
imports the command line, no file over 400 lines, no module imports another module's private names.
The order of the layers is tests/test_layers.py, on the import graph read here.

The import graph is read with ``ast`` from the source (nothing is imported): every ``import`` and
``from ... import`` anywhere in a file, at module level or inside a function, is an edge from that
file's module to the mech module it names (``from mech.x import y`` names ``mech.x.y`` when that is
a module, else ``mech.x``). A package ``__init__`` importing its own submodules (re-exports) and a
submodule importing its package's ``__init__`` are not cycles: Python resolves both without a
partially initialised module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mech"
MAX_LINES = 400
CLI = ("mech.cli", "mech.__main__")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODS = _modules()


def _resolve(name: str) -> str | None:
    """The mech module ``name`` lives in (``mech.a.b.func`` -> ``mech.a.b``)."""
    while name and name not in MODS:
        name = name.rpartition(".")[0]
    return name or None


def _is_pkg(m: str) -> bool:
    return MODS[m].name == "__init__.py"


def imports_of(m: str, source: str | None = None, *, dynamic: bool = False):
    """``(line, target module, imported name or None)`` for every mech import in module ``m`` (its file,
    or ``source`` when given: a module the tests make up). ``dynamic``: also ``import_module("mech.x")``
    with a literal name (a lazy alias is a dependency too, though it cannot make an import-order cycle)."""
    pkg = m if m in MODS and _is_pkg(m) else m.rpartition(".")[0]
    tree = ast.parse(MODS[m].read_text(encoding="utf-8") if source is None else source)
    for node in ast.walk(tree):
        if dynamic and isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            named = node.args[0].value
            func = getattr(node.func, "attr", getattr(node.func, "id", None))
            if func == "import_module" and isinstance(named, str) and named.split(".")[0] == "mech":
                t = _resolve(named)
                if t:
                    yield node.lineno, t, None
        elif isinstance(node, ast.Import):
            for a in node.names:
                t = _resolve(a.name) if a.name.split(".")[0] == "mech" else None
                if t:
                    yield node.lineno, t, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "mech":
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODS:  # a submodule
                    yield node.lineno, full, None
                else:
                    t = _resolve(base)
                    if t:
                        yield node.lineno, t, a.name


def _edges() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}; self-imports left out."""
    edges: dict[str, dict[str, int]] = {m: {} for m in MODS}
    for m in MODS:
        for line, t, _ in imports_of(m):
            if t != m:
                edges[m].setdefault(t, line)
    return edges


EDGES = _edges()


def _counts(m: str, t: str) -> bool:
    """Whether the edge m -> t can form a cycle (a package and its own submodules are exempt)."""
    return not (t.startswith(m + ".") and _is_pkg(m)) and not (m.startswith(t + ".") and _is_pkg(t))


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on, stack, comps = {}, {}, set(), [], []

    def visit(u: str) -> None:
        index[u] = low[u] = len(index)
        stack.append(u)
        on.add(u)
        for v in sorted(EDGES[u]):
            if not _counts(u, v):
                continue
            if v not in index:
                visit(v)
                low[u] = min(low[u], low[v])
            elif v in on:
                low[u] = min(low[u], index[v])
        if low[u] == index[u]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == u:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for m in sorted(MODS):
        if m not in index:
            visit(m)
    return sorted(comps)


def _describe(comp: list[str]) -> str:
    inside = set(comp)
    return "; ".join(
        f"{MODS[m].relative_to(ROOT.parent)}:{line} imports {t}"
        for m in comp
        for t, line in sorted(EDGES[m].items())
        if t in inside and _counts(m, t)
    )


def test_no_import_cycle_between_files():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c) for c in cycles)


def test_the_library_never_imports_the_command_line():
    leaks = [
        f"{MODS[m].relative_to(ROOT.parent)}:{line} imports {t}"
        for m in MODS
        if m not in CLI
        for t, line in EDGES[m].items()
        if t in CLI
    ]
    assert not leaks, "library modules import the command line:\n" + "\n".join(sorted(leaks))


def test_no_file_over_400_lines():
    long = [
        f"{f.relative_to(ROOT.parent)}: {n} lines"
        for f in MODS.values()
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, f"files over {MAX_LINES} lines:\n" + "\n".join(sorted(long))


def _private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]`` (None unless the chain starts at a name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def private_imports() -> list[str]:
    """``file:line imports <module>.<_name>``: a private name taken from another mech module, by
    ``from m import _x`` or as ``m._x`` on a module imported by name (``import mech.m``,
    ``from mech import m as M``)."""
    found = []
    for m, f in MODS.items():
        where = f.relative_to(ROOT.parent)
        tree = ast.parse(f.read_text(encoding="utf-8"))
        bound: dict[str, str] = {}  # local name -> the mech module (or package) it is bound to
        for line, t, name in imports_of(m):
            if t != m and _private(name):
                found.append(f"{where}:{line} imports {t}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODS:
                        bound[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODS:
                        bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        for node in ast.walk(tree):
            chain = _dotted(node) if isinstance(node, ast.Attribute) else None
            if not chain or chain[0] not in bound:
                continue
            full = [*bound[chain[0]].split("."), *chain[1:]]
            for k in range(len(full) - 1, 0, -1):  # the longest prefix that is a module
                owner = ".".join(full[:k])
                if owner in MODS:
                    if owner != m and _private(full[k]):
                        found.append(f"{where}:{node.lineno} uses {owner}.{full[k]}")
                    break
    return sorted(set(found))


def test_no_module_imports_another_modules_private_names():
    found = private_imports()
    assert not found, "private names used across modules (make them public):\n" + "\n".join(found)


def test_the_checks_see_the_imports():
    """The graph is not empty by accident: known edges are found, including function-level ones."""
    assert "mech.runs.jobs" in EDGES["mech.cli"] and "mech.errors" in EDGES["mech.prepare.data"]
    assert any(EDGES[m] for m in MODS if m.startswith("mech.runs"))
    assert len(MODS) > 40


def test_every_module_imports_on_its_own():
    """Importing any one module first works (a cycle through a package ``__init__`` shows up only in
    the import order, which the ast graph does not see): each module is imported in a clean
    ``mech.*`` namespace, torch and transformers staying loaded to keep it fast."""
    import subprocess
    import sys

    names = sorted(m for m in MODS if not m.startswith("mech.organisms.") or m.count(".") == 2)
    code = (
        "import importlib, sys, torch, transformers\n"
        f"names = {names!r}\nbad = []\n"
        "for name in names:\n"
        "    for k in [k for k in sys.modules if k == 'mech' or k.startswith('mech.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout
