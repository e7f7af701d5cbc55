"""mech's public face (issue 25, item 3; docs/design.md, "Layout"): the everyday verbs at the top level,
each documented; ``__all__`` in every package, every name in it real; ``import mech`` loads no torch.

The list of verbs below is the issue's, written here by hand rather than read from ``mech._PUBLIC``, so
that dropping a verb from the package fails the test. Packages are found on disk and their ``__all__``
read with ``ast`` (nothing imported to find them), so a new package without ``__all__`` fails too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import mech

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mech"

#: the everyday verbs a notebook needs (issue 25, "Build" 3), in data-path order
VERBS = (
    "load",
    "load_data",
    "condition_inputs",
    "decision_tokens",
    "answer_tokens",
    "attention_mass",
    "activation_patching",
    "attribution_patching",
    "attention_knockout",
    "direct_logit_attribution",
    "modality_contributions",
    "evaluate",
    "repair",
    "run_with_cache",
    "run_with_hooks",
    "token_groups",
)
#: the classes those verbs return, also at the top level
RESULTS = (
    "MechModel",
    "AttentionMass",
    "PatchingResult",
    "AtPResult",
    "KnockoutResult",
    "DLA",
    "Contributions",
    "RepairResult",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def declared_all(source: str) -> list[str] | None:
    """The names of a module-level ``__all__ = [...]`` (or ``(...)``, ``[*X, ...]`` of literals only) in
    ``source``, or None when there is no ``__all__`` assignment. ``__all__ = sorted(_PUBLIC)`` and other
    computed forms give ``[]`` here: :func:`unresolved` then checks the imported module's value."""
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            if isinstance(value, (ast.List, ast.Tuple)):
                return [e.value for e in value.elts if isinstance(e, ast.Constant)]
            return []
    return None


PACKAGES = sorted(_module_name(p) for p in PACKAGE.rglob("__init__.py"))
#: every module (package or not) that declares ``__all__``
DECLARING = sorted(
    _module_name(p)
    for p in PACKAGE.rglob("*.py")
    if declared_all(p.read_text(encoding="utf-8")) is not None and _module_name(p) != "mech.__main__"
)


def unresolved(module, names) -> list[str]:
    """The names in ``names`` that are neither an attribute of ``module`` (PEP 562 ``__getattr__``
    included) nor one of its submodules (found with ``find_spec``, not imported: ``engines``'
    ``transformerlens`` must not need TransformerLens to be listed)."""
    bad = []
    for name in names:
        if not isinstance(name, str):
            bad.append(repr(name))
            continue
        try:
            getattr(module, name)
            continue
        except AttributeError:
            pass
        is_pkg = hasattr(module, "__path__")
        if not (is_pkg and importlib.util.find_spec(f"{module.__name__}.{name}") is not None):
            bad.append(name)
    return bad


def test_there_are_packages_to_check():
    assert {"mech", "mech.models", "mech.prepare", "mech.measure", "mech.figures"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_declares_all(package):
    path = PACKAGE.parent.joinpath(*package.split("."), "__init__.py")
    assert declared_all(path.read_text(encoding="utf-8")) is not None, (
        f"{path.relative_to(ROOT)} has no __all__: list its public names (or public submodules) there"
    )


@pytest.mark.parametrize("name", DECLARING)
def test_every_name_in_all_resolves(name):
    module = importlib.import_module(name)
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{name}.__all__ lists a name twice"
    assert not unresolved(module, names), f"{name}.__all__ names what {name} does not have"
    private = [n for n in names if n.startswith("_") and n != "__version__"]
    assert not private, f"{name}.__all__ lists private names {private}"


def test_the_resolution_check_can_fail():
    """A name that is neither an attribute nor a submodule is reported; a submodule not yet imported
    and a lazy (PEP 562) name are not."""
    import mech.engines

    assert unresolved(mech.engines, ["hooks", "no_such_module"]) == ["no_such_module"]
    assert unresolved(mech, ["evaluate", "figures", "evaluat"]) == ["evaluat"]
    assert declared_all("x = 1\n") is None
    assert declared_all("__all__ = ['a', 'b']\n") == ["a", "b"]


@pytest.mark.parametrize("name", VERBS + RESULTS)
def test_the_everyday_verbs_are_top_level_and_documented(name):
    assert name in mech.__all__, f"mech.__all__ lacks {name}"
    assert name in dir(mech)
    value = getattr(mech, name)
    doc = inspect.getdoc(value) or ""
    assert len(doc.split()) >= 8, f"mech.{name} has no docstring worth the name: {doc!r}"
    if name in VERBS:
        assert callable(value) and not inspect.isclass(value)
        # help(mech.X) shows the verb's own docstring, not a wrapper's
        import pydoc

        assert doc.splitlines()[0] in pydoc.render_doc(value, renderer=pydoc.plaintext)


def test_every_top_level_name_is_documented():
    """Everything in ``mech.__all__`` that can carry a docstring has one (constants are data)."""
    missing = [
        n
        for n in mech.__all__
        if (inspect.isfunction(getattr(mech, n)) or inspect.isclass(getattr(mech, n)))
        and not inspect.getdoc(getattr(mech, n))
    ]
    assert not missing


def _loaded_after(statement: str) -> set[str]:
    """The top-level names of the modules in ``sys.modules`` after running ``statement`` in a fresh
    interpreter (this test's own process has torch loaded already)."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


HEAVY = {"torch", "transformers", "matplotlib", "numpy", "PIL", "safetensors"}


def test_import_mech_loads_no_torch():
    loaded = _loaded_after("import mech, mech.figures\nmech.__all__; dir(mech); mech.__version__")
    assert not loaded & HEAVY, f"import mech loaded {sorted(loaded & HEAVY)}"


def test_the_torch_check_can_fail():
    """Touching a verb loads its module, and the check sees torch then."""
    assert "torch" in _loaded_after("import mech\nmech.direct_logit_attribution")


def test_the_package_docstring_example_runs():
    """The example in ``help(mech)`` runs as written (on the shipped organisms), with only the imports it
    shows, and gives the shapes its comments claim."""
    from matplotlib.figure import Figure

    lines = []  # the indented block after "::", up to the first line that is not indented
    for line in mech.__doc__.split("::", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line[4:])
    code = "\n".join(lines)
    assert "import mech" in code and "mech.attention_mass" in code
    scope: dict = {}
    exec(compile(code, "mech.__doc__", "exec"), scope)
    am, data = scope["am"], scope["data"]
    assert tuple(am.mass.shape)[0] == len(data) == 32 and am.mass.shape[-1] == len(mech.GROUPS)
    assert isinstance(scope["fig"], Figure)
