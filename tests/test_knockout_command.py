"""``mech knockout`` end to end on organism:balanced: registered by discovery alone (its instrument module,
no edit of the run layer), its ``knockout.json`` against the Python API ``mech.attention_knockout`` on the
same samples in one batch (an independent path: no batches, parts, ``concat`` or JSON), and resume and
identity like the other commands.

Tolerances: the command measures in batches of 4 (other padding, other stacked shapes) where the API
measures all samples at once, so the two are two float32 evaluations through different kernels:
:func:`mech.testing.tolerance.probability_rel_bound` bounds each probability's relative difference, and
the percent change ``100 · (p_knocked / p_clean − 1)`` then differs by at most ``100 · ratio · 2r / (1 − r)``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mech
import mech.cli
from mech.conditions import condition_inputs
from mech.errors import ConfigError
from mech.figures import knockout_curves
from mech.measure.knockout import ANCHORS, SOURCES, TARGETS, KnockoutResult
from mech.measure.knockout.instrument import ENDS, Anchor, KnockoutJob, KnockoutSettings, edge_sets
from mech.runs import settings as S
from mech.runs.jobs import COMMANDS, JOBS, STEPS
from mech.testing.tolerance import probability_rel_bound

MODEL, DATA, N, BATCH, WINDOW = "organism:balanced", "organism:shapes", 6, 4, 2
EDGES = ["image->last", "text->last", "image->last+bos->last"]
PAIRS = [("image", "last"), ("text", "last"), [("image", "last"), ("bos", "last")]]  # EDGES, by hand


def _argv(out, *extra):
    return [
        "knockout",
        "--model",
        MODEL,
        "--data",
        DATA,
        "--n",
        str(N),
        "--batch-size",
        str(BATCH),
        "--window",
        str(WINDOW),
        "--edges",
        *EDGES,
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _bytes(out):
    return {n: (out / n).read_bytes() for n in ("knockout.json", "knockout.safetensors", "knockout.png")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("knockout")
    assert mech.cli.main(_argv(out)) == 0
    return out


def test_registered_by_its_instrument_module_alone():
    """The command, its job and its settings come from ``INSTRUMENT`` in its module; it is not a report
    step (``mech report`` is unchanged) and ``mech.runs.settings`` does not name it."""
    assert COMMANDS["knockout"] is KnockoutSettings
    assert JOBS["knockout"] == "mech.measure.knockout.instrument:KnockoutJob"
    assert "knockout" not in {cls.command for cls in STEPS} and "knockout" not in S.COMMANDS
    assert ENDS == SOURCES == TARGETS and S.allowed(Anchor) == ANCHORS  # the settings' names = the verb's
    args = mech.cli.parser().parse_args(["knockout"])
    assert mech.runs.args.settings_from(KnockoutSettings, args) == KnockoutSettings()  # defaults: the class's
    assert edge_sets(EDGES) == [[p] if isinstance(p, tuple) else p for p in PAIRS]
    for bad in ("image", "image->nowhere", "image-last"):
        with pytest.raises(ConfigError, match="SOURCE->TARGET"):
            KnockoutSettings(edges=(bad,))
    with pytest.raises(ConfigError, match="window"):
        KnockoutSettings(window=0)


def test_the_command_equals_the_python_api(run):
    """knockout.json and knockout.safetensors (batches of 4, assembled by concat) equal
    ``mech.attention_knockout`` on the same 6 samples in one batch, per sample and in the means."""
    got = json.loads((run / "knockout.json").read_text())
    per = KnockoutResult.load(run / "knockout.safetensors")
    m = mech.load(MODEL)
    samples = list(mech.load_data(DATA, n=N))
    inputs = condition_inputs(m, samples, "complete")
    want = mech.attention_knockout(m, inputs, edges=PAIRS, window=WINDOW)
    rel = probability_rel_bound(m, inputs)
    assert got["edges"] == EDGES == want.edges and got["layers"] == want.layers == list(
        range(m.arch.n_layers)
    )
    assert got["windows"] == [list(w) for w in want.windows] and got["n"] == got["n_kept"] == N
    assert got["answer"] == want.answer.tolist() and torch.equal(per.answer, want.answer)
    assert ((per.p_clean - want.p_clean).abs() <= rel * want.p_clean).all()
    assert ((per.p_knocked - want.p_knocked).abs() <= rel * want.p_knocked).all()
    ratio = (want.p_knocked / want.p_clean).max().item()
    bound = 100 * ratio * 2 * rel / (1 - rel)
    change = torch.tensor([got["change"][e] for e in EDGES]).T  # [window, edge]
    diff = (change - want.change).abs().max().item()
    print(f"max |change difference| {diff:.3g} points (bound {bound:.3g}); rel bound {rel:.3g}")
    assert diff <= bound, (change, want.change, bound)
    assert want.change.abs().max().item() > 10 * bound  # not vacuous: knockout moves p(answer) far more
    assert got["figures"] == ["knockout.png"] and (run / "knockout.png").stat().st_size > 0
    for source in (got, per):  # the figure draws the numbers it is given, from the JSON or the result
        drawn = {ln.get_label(): list(ln.get_ydata()) for ln in knockout_curves(source).axes[0].get_lines()}
        assert {e: drawn[e] for e in EDGES} == {e: per.change[:, i].tolist() for i, e in enumerate(EDGES)}
    lines = KnockoutJob.section(KnockoutJob.record.from_json(got), "k/")
    assert (
        "![knockout](k/knockout.png)" in lines
        and f"| 0 | 0–0 | {got['change'][EDGES[0]][0]:.1f} |" in " ".join(lines)
    )


def test_resume_and_identity(run, monkeypatch):
    """A finished run is read back without a model; a lost batch and JSON are recomputed to the same
    bytes; other settings into the folder are refused and leave its files as they were."""
    before = _bytes(run)
    monkeypatch.setattr(mech, "load", lambda *a, **k: pytest.fail("a finished run loaded a model"))
    assert mech.cli.main(_argv(run)) == 0 and _bytes(run) == before
    monkeypatch.undo()
    (run / ".knockout.parts" / "000001.safetensors").unlink()
    (run / "knockout.json").unlink()
    assert mech.cli.main(_argv(run)) == 0 and _bytes(run) == before
    assert mech.cli.main(_argv(run, "--window", "3")) == 1  # ConfigError: other settings in --out
    assert _bytes(run) == before


def test_help_is_light():
    """``mech knockout --help`` discovers the instrument module without its package's ``__init__``:
    neither torch nor the verb's package is imported."""
    code = (
        "import sys, contextlib, io, mech.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    mech.cli.main(['knockout', '--help'])\n"
        "assert '--edges' in out.getvalue() and '--only-correct' in out.getvalue(), out.getvalue()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        "or m == 'mech.measure.knockout'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr)


def test_two_shards_equal_one_process(run, tmp_path):
    """``--shard 1/2`` computes its batch and writes no result; ``--shard 0/2`` then finds every batch and
    writes the files of the single-process run, byte for byte."""
    assert mech.cli.main(_argv(tmp_path, "--shard", "1/2")) == 0
    assert not (tmp_path / "knockout.json").exists()
    assert mech.cli.main(_argv(tmp_path, "--shard", "0/2")) == 0
    assert _bytes(tmp_path) == _bytes(run)
