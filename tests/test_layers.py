"""Imports run only down the layers of the data path (docs/design.md, "Layout"): :data:`LAYERS`.

The imports are those of tests/test_layout.py (every ``import`` and ``from ... import`` read with
``ast``, at module level and inside functions), plus ``importlib.import_module("mech....")`` with a
literal name: a lazy alias is a dependency too. The check is shown failing on made-up modules
(:func:`test_an_upward_import_fails`).
"""

from __future__ import annotations

from pathlib import Path

from test_layout import MODS, ROOT, imports_of

#: The layers, bottom first: a module may import its own layer and the layers below it, never one above
#: (function-local imports included). This is the data path of docs/design.md ("load -> prepare ->
#: conditions -> engines -> measure -> curves -> results -> runs -> figures -> report -> cli") read as
#: "who may call whom", with what is shared by every step at the bottom and what uses everything at the
#: top. Where the import order differs from the order a sample travels, the code says why:
#:   * foundation, storage: errors, the vocabulary, the device checks (``mech.load`` and the run layer's
#:     preflight) and the writers of results are used by every step;
#:   * data sets: the organisms' data (shapes, varied) and where the shipped organisms lie, read by
#:     ``prepare`` (``organism:shapes``) and ``load`` (``organism:<name>``);
#:   * prepare below load: preparing needs only a processor (passed in); ``MechModel.prepare`` binds it.
#:     Targets (answer and decision tokens, from the loaded model's vocabulary) come after load;
#:   * engines below conditions: the feature conditions (``visual_noise``, resample) edit the forward
#:     through the engines' hooks; splice.py (visual features into the embeddings) is one of them;
#:   * repair above curves: it selects what to edit from the curves' decomposition;
#:   * figures, words, jobs: a command's job draws its figures and words, the report reads the jobs;
#:   * the package root ``mech`` (the public face: every verb, imported lazily) sits above the library,
#:     so a library module imports the module that defines a name, not ``mech.<verb>``;
#:   * tools: the tiny test models and the organisms' builders and trainers use everything.
#: A module takes the layer of the longest entry naming it or a package above it (``"mech"`` names the
#: root only); a new module is placed by its package, and one outside every entry fails the test. An entry
#: ``"*.name"`` is a pattern: every module whose last part is ``name`` (a command's ``job`` or
#: ``instrument`` module, wherever its package is), and it wins over the packages above the module.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("mech.errors", "mech.words", "mech.deprecation", "mech.devices")),
    ("storage", ("mech.results", "mech.frames", "mech.contract")),
    (
        "data sets",
        ("mech.organisms", "mech.organisms.scenes", "mech.organisms.shapes", "mech.organisms.varied"),
    ),
    ("prepare", ("mech.prepare",)),
    ("load", ("mech.models",)),
    ("targets", ("mech.prepare.targets",)),
    ("engines", ("mech.engines",)),
    ("conditions", ("mech.splice", "mech.feature_conditions", "mech.conditions")),
    ("measure", ("mech.measure",)),
    ("curves", ("mech.curves",)),
    ("repair", ("mech.measure.repair",)),
    ("runs", ("mech.runs",)),
    ("figures", ("mech.figures", "mech.measure.evaluation.tables")),
    ("words", ("mech.report_words", "mech.measure.repair.section")),
    ("jobs", ("*.job", "*.instrument")),  # by pattern: a new instrument's module is placed without an edit
    ("report", ("mech.report",)),
    ("public face", ("mech",)),
    ("cli", ("mech.cli",)),  # (mech.__main__ too, where there is one)
    (
        "tools",
        (
            "mech.testing",
            "mech.organisms.build",
            "mech.organisms.train",
            "mech.organisms.card",
            "mech.organisms.qwen",
            "mech.organisms.qwen_card",
        ),
    ),
)

#: Upward imports still in the code, each with the fix; an entry that no longer occurs fails the test
#: (remove it), and a new upward import fails it too. ``(importing module, imported module): why``.
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    ("mech.results", "mech"): "provenance's fallback reads mech.__version__ when mech is not installed; "
    "the fix: define __version__ in a foundation module that the root re-exports",
    ("mech.runs.loop", "mech"): "load_model calls mech.load (tests monkeypatch mech.load); the fix: "
    "call mech.models.load.load and patch that in tests/test_{parallel,run_layer,evaluation,reliability}",
    ("mech.measure.repair.result", "mech.figures"): "RepairResult.save draws its figure; the fix: the "
    "result contract draws figures in the run layer (or figures move below measure)",
    ("mech.measure.repair.result", "mech.figures.repair"): "as the line above",
    ("mech.engines.nnsight_remote", "mech.measure.attention.remote"): "the deprecated alias of "
    "attention_mass_nnsight at its old path (issue 25), kept for one release: delete it then",
}


def _layer_index() -> dict[str, tuple[int, str]]:
    return {key: (rank, name) for rank, (name, keys) in enumerate(LAYERS) for key in keys}


def layer_of(m: str) -> tuple[int, str] | None:
    """``(rank, layer name)`` of module ``m`` (the longest :data:`LAYERS` entry naming it or a package
    above it), or None when no entry does."""
    index = _layer_index()
    patterns = [k for k in index if k.startswith("*.") and m.rpartition(".")[2] == k[2:]]
    if patterns:
        return index[patterns[0]]
    names = [k for k in index if m == k or (k != "mech" and m.startswith(k + "."))]
    return index[max(names, key=len)] if names else None


def upward_imports(sources: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """``(importing module, imported module, message)`` for every import that runs up the layers.

    ``sources`` (module -> source text) replaces the files (a test's made-up modules); the message
    names the file, the line, the import and both layers. A package ``__init__`` re-exporting its own
    submodules is not upward (it is the package's face)."""
    found = []
    for m in sorted(sources or MODS):
        where = MODS[m].relative_to(ROOT.parent) if m in MODS else Path(*m.split(".")).with_suffix(".py")
        low = layer_of(m)
        for line, t, name in imports_of(m, None if sources is None else sources[m], dynamic=True):
            high = layer_of(t)
            if t == m or low is None or high is None or high[0] <= low[0] or t.startswith(m + "."):
                continue
            what = f"from {t} import {name}" if name else f"import {t}"
            found.append(
                (
                    m,
                    t,
                    f"{where}:{line}: `{what}` runs up the layers: {m} is in layer "
                    f"{low[1]!r}, {t} in layer {high[1]!r} above it",
                )
            )
    return found


def test_imports_run_only_down_the_layers():
    found = upward_imports()
    new = [msg for m, t, msg in found if (m, t) not in KNOWN_UPWARD]
    gone = sorted(k for k in KNOWN_UPWARD if k not in {(m, t) for m, t, _ in found})
    assert not new, (
        "imports up the layers (tests/test_layout.py LAYERS; move the shared code down, "
        "never hide the import):\n" + "\n".join(new)
    )
    assert not gone, f"KNOWN_UPWARD entries that no longer occur (remove them): {gone}"


def test_every_module_has_a_layer():
    loose = sorted(m for m in MODS if layer_of(m) is None)
    assert not loose, f"modules in no layer (add them to LAYERS in tests/test_layout.py): {loose}"
    stale = sorted(  # a typo places nothing
        k
        for _, keys in LAYERS
        for k in keys
        if (k not in MODS if not k.startswith("*.") else not any(m.rpartition(".")[2] == k[2:] for m in MODS))
    )
    assert not stale, f"LAYERS entries naming no module or package (remove them): {stale}"


def test_an_upward_import_fails():
    """The check can fail: made-up modules importing up the layers, at module level and inside a
    function, are found with file, line, import and both layers; a downward one is not."""
    sources = {
        "mech.prepare.made_up": "import torch\n\ndef f():\n    from mech.report import build_report\n",
        "mech.engines.made_up": "from mech.measure import attention\n",
        "mech.curves.made_up": "from mech.prepare.targets import answer_tokens\nimport mech.engines.hooks\n",
        "mech.models.made_up": "import importlib\nx = importlib.import_module('mech.runs.loop')\n",
    }
    found = {m: msg for m, _, msg in upward_imports(sources)}
    assert set(found) == {"mech.prepare.made_up", "mech.engines.made_up", "mech.models.made_up"}, found
    assert found["mech.prepare.made_up"] == (
        "mech/prepare/made_up.py:4: `from mech.report import build_report` runs up the layers: "
        "mech.prepare.made_up is in layer 'prepare', mech.report in layer 'report' above it"
    )
    assert found["mech.engines.made_up"].startswith(
        "mech/engines/made_up.py:1: `import mech.measure.attention`"
    )
    assert layer_of("mech")[1] == "public face" and layer_of("mech.measure.repair.plan")[1] == "repair"
    assert (
        layer_of("mech.organisms.shapes")[1] == "data sets" and layer_of("mech.organisms.train")[1] == "tools"
    )


def test_jobs_and_instruments_are_placed_by_pattern():
    """A command's ``job`` / ``instrument`` module is in the "jobs" layer wherever its package is (a new
    instrument needs no LAYERS edit); its package's other modules keep their package's layer."""
    assert layer_of("mech.measure.made_up.instrument")[1] == "jobs"
    assert layer_of("mech.curves.made_up.job")[1] == "jobs"
    assert layer_of("mech.measure.made_up.result")[1] == "measure"
    assert layer_of("mech.runs.jobs")[1] == "runs" and layer_of("mech.runs.instruments")[1] == "runs"
