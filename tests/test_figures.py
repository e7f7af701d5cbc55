"""Figures (issue 16): every plot function returns a matplotlib Figure built without pyplot or a
backend choice, saving is one atomic step (``mech.figures.save_figure``), cells are annotated in a
colour readable on them, shared colour scales where panels are compared, chance from the data's own
option counts, and the report leaves out groups the model does not have and captions every figure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("image", "video", "audio", "text", "template", "bos")


def _am(batch=3, layers=6, heads=4, grid=(2, 2)):
    from mech.measure.attention import AttentionMass

    g = torch.Generator().manual_seed(0)
    mass = torch.rand(batch, layers, heads, len(GROUPS), generator=g)
    mass[..., 1:3] = 0  # no video, no audio
    mass = mass / mass.sum(-1, keepdim=True)
    counts = torch.tensor([[4, 0, 0, 6, 3, 1]] * batch)
    share = counts / counts.sum(-1, keepdim=True)
    n_img = grid[0] * grid[1]
    spatial = torch.rand(batch, layers, n_img, generator=g)
    spatial[:, 0] *= 0.01  # a layer that barely looks at the image
    return AttentionMass(
        mass=mass,
        density=mass / share.clamp_min(1e-9)[:, None, None],
        groups=GROUPS,
        token_share=share,
        counts=counts,
        spatial=spatial,
        n_image_tokens=torch.full((batch,), n_img),
        grid=grid,
        query="last",
        n_query=torch.ones(batch, dtype=torch.long),
    )


def _contrib():
    """A whole ``contrib.json`` content (:class:`ContribRecord` reads it): two estimators, 3 layers, 5 samples."""
    curves = {
        "attention": {
            "image": [0.2, 0.6, 0.7],
            "video": [0, 0, 0],
            "text": [0.7, 0.3, 0.2],
            "bos": [0.1, 0, 0],
        },
        "patching": {"image": [3.0, 1.0, 0.1], "text": [1.0, 0.2, 0.0]},
    }
    overall = {
        e: {
            "delta": 0.5,
            "ci95": [0.3, 0.8],
            "dominant": "image",
            "underutilized": "text",
            "contribution": {"text": 1.0, "image": 2.0},
            "n": 5,
            "coverage": {"coverage": 1.0, "n_estimated": 5, "n": 5, "missing": []},
        }
        for e in curves
    }
    return {
        "groups": ["image", "video", "audio", "text", "template", "bos"],
        "pool": {"attention": "mean", "patching": "first"},
        "ratio": "text/image",
        "curves": curves,
        "cumulative": {"attention": curves["attention"]},
        "imbalance_ratio": {"attention": [3.5, 0.5, 0.3], "patching": [0.33, 0.2, None]},
        "overall": overall,
        "n": 5,
    }


def _eval_result(n_options=(4, 3, 3, 2)):
    """A whole ``eval.json`` content (:class:`EvalRecord` reads it): four conditions on
    ``len(n_options)`` samples."""
    from mech.measure.evaluation.consistency import PAIRS, SUBSETS

    n = len(n_options)
    accs = (("complete", 0.75), ("white_image", 0.25), ("image_only", 0.5), ("no_image", 0.25))
    conds = {c: {"accuracy": a, "n": n, "correct": int(a * n), "drop": 0.0} for c, a in accs}
    cell = {"num": 2, "pct": 50.0, "inconsistent_num": 2, "inconsistent_pct": 50.0, "total": n}
    settings = {
        "model": "m",
        "model_fingerprint": "0",
        "data": "d",
        "method": "score",
        "scoring": "letter",
        "style": "bare",
        "parser": None,
        "batch_size": 8,
        "max_new_tokens": None,
        "seed": 0,
        "ids_hash": "0",
    }
    return {
        "model": "m",
        "data": "d",
        "conditions": conds,
        "settings": settings,
        "consistency": {s: {k: cell for k, _ in PAIRS} for s in SUBSETS},
        "skipped": {"count": 0, "reasons": {}, "items": []},
        "ids": [f"s{i}" for i in range(n)],
        "answers": ["A"] * n,
        "n_options": list(n_options),
        "predictions": {c: ["A"] * n for c, _ in accs},
        "correct": {c: [i < int(a * n) for i in range(n)] for c, a in accs},
        "unavailable": {},
        "data_notes": [],
    }


def test_every_plot_function_returns_a_figure_and_saves_nothing(tmp_path, monkeypatch):
    from mech import figures

    monkeypatch.chdir(tmp_path)
    am = _am()
    made = [
        figures.mass_curves(am),
        figures.head_heatmap(am, "image"),
        figures.image_overlay(am, Image.new("RGB", (8, 8), (200, 30, 30)), row=1, sample="s1"),
        figures.patching_heatmap(
            torch.tensor([[0.1, float("nan")], [0.9, -0.2]]), ("image", "text"), [0, 1], "t"
        ),
        figures.contribution_figure(_contrib(), "t"),
        figures.compare_figure({"a": _contrib(), "b": _contrib()}),
        figures.eval_figure(_eval_result(), title="t"),
    ]
    assert all(isinstance(f, Figure) for f in made)
    assert not list(tmp_path.iterdir())  # building writes nothing
    path = figures.save_figure(made[0], tmp_path / "sub" / "attention_mass.png")
    assert path == tmp_path / "sub" / "attention_mass.png" and Image.open(path).format == "PNG"
    assert [p.name for p in path.parent.iterdir()] == ["attention_mass.png"]  # no temporary file left


def test_save_figure_is_atomic(tmp_path):
    """A failing write leaves the previous file untouched and no temporary file behind."""
    from mech import figures

    path = figures.save_figure(figures.mass_curves(_am()), tmp_path / "a.png")
    before = path.read_bytes()

    class Broken(Figure):
        def savefig(self, *a, **k):
            Path(a[0]).write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        figures.save_figure(Broken(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_no_backend_and_no_pyplot():
    """Building and saving every figure imports no pyplot and leaves the backend unresolved; no
    library module, probe or notebook calls ``matplotlib.use``."""
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); sys.path.insert(0, {str(ROOT)!r})\n"
        "import matplotlib, tempfile, test_figures as t\n"
        "from mech import figures\n"
        "am = t._am()\n"
        "figures.save_figure(figures.mass_curves(am), tempfile.mktemp(suffix='.png'))\n"
        "figures.save_figure(figures.eval_figure(t._eval_result()), tempfile.mktemp(suffix='.png'))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get_backend_or_none() is None\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"PATH": "", "MPLBACKEND": ""})
    for f in [
        *(ROOT / "mech").rglob("*.py"),
        *(ROOT / "probes").glob("*.py"),
        *(ROOT / "notebooks").glob("*.ipynb"),
    ]:
        text = f.read_text(encoding="utf-8")
        assert not re.search(
            r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot", text
        ), f


def test_patching_heatmap_text_readable_and_centred():
    from mech.figures import patching_heatmap
    from mech.figures.style import text_color

    assert text_color((0.4, 0.0, 0.05, 1)) == "white" and text_color((0.97, 0.97, 0.97, 1)) == "black"
    fig = patching_heatmap(torch.tensor([[1.0, 0.0], [-1.0, float("nan")]]), ("image", "text"), [0, 1])
    ax = fig.axes[0]
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["1.00"] == "white" and colours["0.00"] == "black" and colours["-1.00"] == "white"
    assert "–" in colours  # the NaN cell
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi  # centred at 0
    assert patching_heatmap(torch.tensor([[0.2]]), ("image",), [0], lim=3.0).axes[0].images[0].get_clim() == (
        -3.0,
        3.0,
    )


def test_image_overlay_one_scale_all_layers_and_the_sample():
    from mech.figures import image_overlay

    am = _am()
    fig = image_overlay(am, Image.new("RGB", (8, 8)), row=2, sample="sample-7")
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "inferno"]
    assert len(heat) == am.n_layers + 1  # every layer and the mean
    assert len({im.get_clim() for im in heat}) == 1  # one colour scale
    assert sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>") == 1  # one colour bar
    assert "sample-7" in fig.get_suptitle() and "all layers" in fig.get_suptitle()


def test_mass_curves_leave_out_groups_without_tokens():
    from mech.figures import mass_curves

    labels = mass_curves(_am()).legends[0].get_texts()
    names = {t.get_text() for t in labels}
    assert {"image", "text", "template", "bos"} <= names and not names & {"video", "audio"}


def test_contribution_figure_leaves_out_all_zero_groups():
    from mech.figures import contribution_figure

    fig = contribution_figure(_contrib(), "t")
    names = {t.get_text() for t in fig.legends[0].get_texts()}
    assert names == {"image", "text", "bos"}


def test_eval_chance_from_the_data():
    from mech.figures import eval_figure
    from mech.measure.evaluation.tables import chance_level

    result = _eval_result((4, 3, 3, 2))
    expected = (1 / 4 + 1 / 3 + 1 / 3 + 1 / 2) / 4
    assert chance_level(result) == pytest.approx(expected)
    ax = eval_figure(result).axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "--")
    assert np.allclose(line.get_ydata(), 100 * expected)
    assert f"chance {expected:.3f}" in ax.get_legend().get_texts()[0].get_text()
    assert chance_level({**_eval_result((0, 0)), "n_options": [0, 0]}) is None


def test_report_omits_absent_groups_and_captions_every_figure():
    from mech.measure.attention.job import present_groups
    from mech.measure.attention.record import AttentionRecord
    from mech.measure.evaluation.record import EvalRecord
    from mech.measure.patching.record import PatchRecord
    from mech.runs.jobs import job_class

    att = {
        "groups": list(GROUPS),
        "layers": [0, 1],
        "query": "last",
        "n": 7,
        "mass": [[0.5, 0.0, 0.0, 0.4, 0.1, 0.0], [0.6, 0.0, 0.0, 0.3, 0.05, 0.05]],
        "token_share": {"image": 0.5, "video": 0.0, "audio": 0.0, "text": 0.3, "template": 0.15, "bos": 0.05},
        "efficiency": [[0.1, None, None, 0.2, 0.1, 0.0], [0.1, None, None, 0.1, 0.05, 0.05]],
        "grid": None,
    }
    assert present_groups(att) == ["image", "text", "template", "bos"]
    att = AttentionRecord.from_json(att)
    assert present_groups(att) == ["image", "text", "template", "bos"]
    e = _eval_result()
    ev = EvalRecord.from_json({**e, "settings": {**e["settings"], "chance": 0.307}})
    pa = PatchRecord.from_json(
        {
            "model": "m",
            "data": "d",
            "n": 7,
            "corruption": "white_image",
            "direction": "denoising",
            "metric": "logit_diff",
            "clean_metric": 1.0,
            "corrupted_metric": 0.0,
            "layers": [0, 1],
            "groups": ["image"],
            "align": "strict",
            "effect": {"resid_post": {"image": [0.5, 1.0]}},
            "forward_equivalents_per_patched_run": 0.5,
            "n_patched_runs": 4,
            "answer": None,
            "counterfactual": None,
            "clean_metric_per_sample": [1.0] * 7,
            "corrupted_metric_per_sample": [0.0] * 7,
        }
    )
    results = {"eval": ev, "attention": att, "patch": pa, "contrib": {**_contrib(), "corruption": "resample"}}
    caps = {k: v for command, r in results.items() for k, v in job_class(command).captions(r).items()}
    for name in (
        "eval.png",
        "attention_mass.png",
        "attention_heads.png",
        "attention_image.png",
        "patch_resid_post.png",
        "contrib.png",
    ):
        assert "n = " in caps[name], name
    assert "chance 0.307" in caps["eval.png"] and "video" not in caps["attention_mass.png"]
