"""Every notebook in notebooks/ executes top to bottom on the organisms, on a CPU (as einops'
scripts/test_notebooks.py does): a cell that raises fails the test, and so does a cell that plots
but shows no figure inline (no ``image/png`` output). The notebooks choose no matplotlib backend,
write no files to /tmp, import only ``mech`` and ``mech.figures`` (issue 25), and assert a
number they show."""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: a call to a mech.figures plot function or a matplotlib drawing method
PLOT_CALL = re.compile(
    r"\b(mass_curves|head_heatmap|image_overlay|patching_heatmap|contribution_figure|"
    r"compare_figure|eval_figure)\s*\(|\.(plot|imshow|bar|barh|scatter|hist|pcolormesh|"
    r"matshow)\s*\("
)


def plots(cell) -> bool:
    """Whether a code cell draws a figure: it is tagged ``figure`` or calls a plot function."""
    return cell.cell_type == "code" and (
        "figure" in cell.metadata.get("tags", []) or bool(PLOT_CALL.search(cell.source))
    )


def has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def missing_figures(nb) -> list[str]:
    """The first line of every plotting cell of ``nb`` that has no ``image/png`` output."""
    return [c.source.splitlines()[0] for c in nb.cells if plots(c) and not has_image(c)]


def _python(cell) -> str:
    """A code cell's source without IPython magics (``%...``, ``!...``)."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()
    )


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


def test_the_figure_check_can_fail():
    """A plotting cell without an image output is reported; a cell that does not plot is not."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("fig = contribution_figure(c)\nfig"),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    assert missing_figures(nb) == ["fig = contribution_figure(c)"]
    nb.cells[0].outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "F"})
    ]
    assert missing_figures(nb) == []
    tagged = nbformat.v4.new_code_cell("show(x)")
    tagged.metadata["tags"] = ["figure"]
    nb.cells.append(tagged)
    assert missing_figures(nb) == ["show(x)"]


#: what a notebook may import besides the standard library: mech's public face (issue 25) and the tools
#: a reader has anyway; anything deeper in mech (``mech.curves``, ``mech.measure...``) or torch is not
PUBLIC_MECH = ("mech", "mech.figures")
THIRD_PARTY = ("IPython", "numpy", "pandas", "matplotlib")


def foreign_imports(source: str) -> list[str]:
    """Every module a code cell's ``source`` imports (read with ``ast``, imports inside functions
    included) that is neither ``mech`` / ``mech.figures``, nor the standard library, nor
    :data:`THIRD_PARTY`. ``from mech import load`` imports ``mech``; ``from mech.curves import x``
    imports ``mech.curves``; a relative import is never allowed."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            modules = ["." * node.level + (node.module or "")]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for name in modules:
            top = name.split(".")[0]
            if name in PUBLIC_MECH or (
                top != "mech" and (top in sys.stdlib_module_names or top in THIRD_PARTY)
            ):
                continue
            bad.append(name)
    return bad


def test_the_import_check_can_fail():
    cell = "import mech\nfrom mech.figures import mass_curves\nimport numpy as np\nimport os, json\n"
    assert foreign_imports(cell) == []
    deep = "from mech.curves import Contributions\nimport torch\nimport mech.measure.dla\ndef f():\n    import mech.cli\n"
    assert foreign_imports(deep) == ["mech.curves", "torch", "mech.measure.dla", "mech.cli"]
    assert foreign_imports("from . import x") == ["."]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_the_public_api(path):
    """No backend chosen, no /tmp file, and imports of mech / mech.figures only (plus the standard library,
    IPython, numpy, pandas, matplotlib): every verb a notebook uses is public at the top level."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(plots(c) for c in code), "a notebook shows at least one figure"
    for c in code:
        assert "matplotlib.use" not in c.source and "/tmp" not in c.source, c.source
        assert not foreign_imports(_python(c)), (
            f"imports beyond mech / mech.figures: {foreign_imports(_python(c))}"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_asserts_what_it_shows(path):
    """Each notebook checks at least one number it shows against an independent computation (an
    ``assert`` statement in a code cell; issue 25, "Must show")."""
    nb = nbformat.read(path, as_version=4)
    code = [_python(c) for c in nb.cells if c.cell_type == "code"]
    assert any(isinstance(n, ast.Assert) for src in code for n in ast.walk(ast.parse(src)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("TQDM_DISABLE", "1")
    # the kernel is a separate process: let it import this checkout's mech even when not installed
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(ROOT)!r})"))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    assert not missing_figures(nb), "plotting cells without an inline figure"
    assert not list(tmp_path.iterdir()), "the notebook wrote files"
