"""Every notebook in notebooks/ executes top to bottom on the organisms, on a CPU (as einops'
scripts/test_notebooks.py does): a cell that raises fails the test, and so does a cell that plots
but shows no figure inline (no ``image/png`` output). The notebooks choose no matplotlib backend,
write no files to /tmp and import only mech's public API."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: a call to a mech.figures plot function or a matplotlib drawing method
PLOT_CALL = re.compile(r"\b(mass_curves|head_heatmap|image_overlay|patching_heatmap|contribution_figure|"
                       r"compare_figure|eval_figure)\s*\(|\.(plot|imshow|bar|barh|scatter|hist|pcolormesh|"
                       r"matshow)\s*\(")


def plots(cell) -> bool:
    """Whether a code cell draws a figure: it is tagged ``figure`` or calls a plot function."""
    return cell.cell_type == "code" and ("figure" in cell.metadata.get("tags", []) or bool(PLOT_CALL.search(cell.source)))


def has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def missing_figures(nb) -> list[str]:
    """The first line of every plotting cell of ``nb`` that has no ``image/png`` output."""
    return [c.source.splitlines()[0] for c in nb.cells if plots(c) and not has_image(c)]


def _python(cell) -> str:
    """A code cell's source without IPython magics (``%...``, ``!...``)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


def test_the_figure_check_can_fail():
    """A plotting cell without an image output is reported; a cell that does not plot is not."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("fig = contribution_figure(c)\nfig"), nbformat.v4.new_code_cell("x = 1")]
    assert missing_figures(nb) == ["fig = contribution_figure(c)"]
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "F"})]
    assert missing_figures(nb) == []
    tagged = nbformat.v4.new_code_cell("show(x)")
    tagged.metadata["tags"] = ["figure"]
    nb.cells.append(tagged)
    assert missing_figures(nb) == ["show(x)"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_the_public_api(path):
    """No backend chosen, no /tmp file, no import of a private name, the command line or the run layer."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(plots(c) for c in code), "a notebook shows at least one figure"
    for c in code:
        assert "matplotlib.use" not in c.source and "/tmp" not in c.source, c.source
        for node in ast.walk(ast.parse(_python(c))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mech"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not any(p.startswith("_") for p in name.split(".")), name
                assert not name.startswith(("mech.cli", "mech.runs", "mech.testing")), name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("TQDM_DISABLE", "1")
    # the kernel is a separate process: let it import this checkout's mech even when not installed
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(ROOT)!r})"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert not missing_figures(nb), "plotting cells without an inline figure"
    assert not list(tmp_path.iterdir()), "the notebook wrote files"
