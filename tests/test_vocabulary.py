"""One word per concept (issue 25, item 2): :mod:`mech.words` loads no torch and names what the instruments
implement; every older spelling (:data:`mech.words.RENAMED`) still works for one release, warns naming
the new one, and gives the same result as the new spelling; the new spellings warn nothing, and mech's own
code, tests, probes and benchmarks use no old spelling (read with ``ast``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mech
from mech.deprecation import MechDeprecationWarning
from mech.errors import ConfigError
from mech.testing.tiny import tiny_inputs, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def no_deprecation():
    """The block must not use an old spelling, mech's internal calls included."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MechDeprecationWarning)
        yield


def old(match: str):
    """The block uses an old spelling: a MechDeprecationWarning naming the new one."""
    return pytest.warns(MechDeprecationWarning, match=match)


@pytest.fixture(scope="module")
def llava():
    m = mech.load(tiny_model("llava"))
    return m, m.inputs(tiny_inputs("llava", m.processor, batch=2))


def _ids(m, batch=2):
    a = torch.randint(0, m.arch.vocab_size, (batch,), generator=torch.Generator().manual_seed(1))
    return a, (a + 1) % m.arch.vocab_size


def _same(x, y):
    """Bitwise equal tensors (one CPU computation run twice), NaN where NaN."""
    assert x.shape == y.shape and torch.equal(torch.nan_to_num(x, 7.0), torch.nan_to_num(y, 7.0))


# ---- the table -----------------------------------------------------------------------------------------


def test_import_mech_words_loads_no_torch():
    code = (
        "import sys, mech.words, mech.deprecation, mech.runs.settings\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_words_name_what_the_instruments_implement():
    from mech import words as W
    from mech.conditions import CONDITIONS, FEATURE_CONDITIONS, INPUT_CONDITIONS
    from mech.curves import ESTIMATORS, REMOVALS
    from mech.engines.hooks import SITE_HOOKS
    from mech.measure.patching.align import POSITION_GROUPS
    from mech.measure.patching.metrics import DIRECTIONS, METRICS
    from mech.prepare.groups import GROUPS

    assert W.names(W.SITES) == tuple(SITE_HOOKS)  # the hook table: every site has a hook, no more
    assert W.names(W.TOKEN_GROUPS) == GROUPS
    assert W.names(W.POSITION_GROUPS) == POSITION_GROUPS
    assert W.names(W.METRICS) == METRICS and W.names(W.DIRECTIONS) == DIRECTIONS
    assert W.names(W.ESTIMATORS) == ESTIMATORS and W.names(W.REMOVALS) == REMOVALS
    assert W.names(W.CONDITIONS) == CONDITIONS == INPUT_CONDITIONS + FEATURE_CONDITIONS
    for table in (
        W.CONDITIONS,
        W.REMOVALS,
        W.SITES,
        W.TOKEN_GROUPS,
        W.POSITION_GROUPS,
        W.DIRECTIONS,
        W.METRICS,
        W.ESTIMATORS,
        W.WORDS,
        W.RENAMED,
    ):
        assert table and all(isinstance(v, str) and v and "\n" not in v for v in table.values())
        with pytest.raises(TypeError):  # immutable
            table["x"] = "y"  # type: ignore[index]


def test_every_feature_condition_changes_the_forward(llava):
    """The feature conditions of the table are applied in the forward (input conditions are not)."""
    from mech import words as W
    from mech.conditions import feature_condition

    m, inp = llava
    clean = m.logits(inp)
    for c in W.FEATURE_CONDITIONS:
        with no_deprecation(), feature_condition(m, inp, c, seed=1):
            assert not torch.allclose(m.logits(inp), clean), c
    with feature_condition(m, inp, "white_image"):
        torch.testing.assert_close(m.logits(inp), clean, rtol=0, atol=0)


def test_renamed_module_constants_warn():
    import mech.curves as C
    import mech.runs.settings as S

    with old(r"mech\.curves\.CORRUPTIONS is deprecated .*use mech\.curves\.REMOVALS"):
        assert C.CORRUPTIONS == C.REMOVALS == ("resample", "noise")
    with old(r"mech\.runs\.settings\.Ablation is deprecated .*Removal"):
        assert S.Ablation == S.Removal
    with pytest.raises(AttributeError, match="NOPE"):
        C.NOPE  # noqa: B018
    from mech.curves import donors  # noqa: F401  (a submodule still imports through the module's __getattr__)


# ---- settings and the command line -------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["ContribSettings", "ReportSettings"])
def test_settings_ablation_is_removal(cls):
    from mech.runs import settings as S

    Cls = getattr(S, cls)
    with no_deprecation():
        new = Cls(removal="noise")
    with old(r"ablation=\.\.\.\) is deprecated .*use removal="):
        assert Cls(ablation="noise") == new
    with old(r"\.ablation is deprecated .*removal"):
        assert new.ablation == "noise"
    with old(r"replace\(ablation=\.\.\.\).*use removal="):
        assert Cls().replace(ablation="noise") == new
    with pytest.raises(ConfigError, match="pass removal= only"):
        Cls(ablation="noise", removal="noise")
    with old("ablation"), pytest.raises(ConfigError, match="allowed: resample, noise"):
        Cls(ablation="zero")
    assert new.identity()["removal"] == "noise" and "ablation" not in new.identity()
    assert S.ReportSettings(removal="noise").step(S.ContribSettings, "a", "o").removal == "noise"


def _main(argv):
    import mech.cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = mech.cli.main(argv)
    return rc, err.getvalue()


@pytest.mark.parametrize("command", ["contrib", "report"])
def test_cli_removal_and_the_hidden_deprecated_ablation(command):
    import mech.cli
    from mech.cli import parser
    from mech.runs.args import settings_from
    from mech.runs.jobs import COMMANDS

    p = parser()
    with no_deprecation():
        new = settings_from(COMMANDS[command], p.parse_args([command, "--removal", "noise"]))
    with old(r"--ablation is deprecated .*use --removal"):
        assert settings_from(COMMANDS[command], p.parse_args([command, "--ablation", "noise"])) == new
    assert new.removal == "noise"
    helptext = io.StringIO()
    with contextlib.redirect_stdout(helptext), pytest.raises(SystemExit):
        mech.cli.main([command, "--help"])
    assert "--removal" in helptext.getvalue() and "--ablation" not in helptext.getvalue()
    # a bad value under the old option: the warning and the error, one line each, no traceback
    rc, err = _main([command, "--ablation", "zero", "--out", "unused"])
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert (
        lines[0].startswith(f"mech {command}: warning: --ablation is deprecated")
        and "use --removal" in lines[0]
    )
    assert lines[1].startswith(f"mech {command}: error:") and "allowed: resample, noise" in lines[1]
    assert len(lines) == 2 and "Traceback" not in err


def test_mech_contrib_old_and_new_option_write_the_same_results(tmp_path):
    """``mech contrib --ablation noise`` runs (one warning line) and writes what ``--removal noise`` writes."""
    from mech.results import without_provenance

    base = [
        "contrib",
        "--model",
        "organism:balanced",
        "--data",
        "organism:shapes",
        "--n",
        "4",
        "--batch-size",
        "4",
        "--estimators",
        "patching",
        "--no-progress",
    ]
    rc, err = _main(base + ["--removal", "noise", "--out", str(tmp_path / "new")])
    assert rc == 0 and "warning" not in err, err
    rc, err = _main(base + ["--ablation", "noise", "--out", str(tmp_path / "old")])
    assert rc == 0, err
    assert [ln for ln in err.splitlines() if "--ablation" in ln] == [
        "mech contrib: warning: --ablation is deprecated and will be removed in the next release; use --removal"
    ]
    new, was = (json.loads((tmp_path / d / "contrib.json").read_text()) for d in ("new", "old"))
    assert new["corruption"] == "noise"  # the contrib.json key stays
    assert without_provenance(new) == without_provenance(was)
    assert (tmp_path / "new/contrib.safetensors").read_bytes() == (
        tmp_path / "old/contrib.safetensors"
    ).read_bytes()


# ---- the Python API ------------------------------------------------------------------------------------


def test_activation_patching_site_is_sites(llava):
    m, inp = llava
    kw = dict(positions=["image", "last"], condition="visual_noise", layers=[0, 1], normalize=False)
    with no_deprecation():
        new = mech.activation_patching(m, inp, inp, sites=["resid_post", "z"], **kw)
    with old(r"activation_patching\(site=\.\.\.\) is deprecated .*use sites="):
        was = mech.activation_patching(m, inp, inp, site=["resid_post", "z"], **kw)
    for s in ("resid_post", "z"):
        _same(new.patched[s], was.patched[s])
    _same(new.clean_metric, was.clean_metric)
    with pytest.raises(ConfigError, match="pass sites= only"):
        mech.activation_patching(m, inp, inp, site="z", sites="z", **kw)


def test_modality_contributions_corruption_is_removal(llava):
    from mech.curves import modality_contributions

    m, inp = llava
    a, b = _ids(m)
    kw = dict(estimators=("patching",), seed=3)
    with no_deprecation():
        new = modality_contributions(m, inp, a, b, removal="noise", **kw)
    with old(r"modality_contributions\(corruption=\.\.\.\) is deprecated .*use removal="):
        was = modality_contributions(m, inp, a, b, corruption="noise", **kw)
    _same(new.per_sample["patching"], was.per_sample["patching"])
    assert torch.isfinite(new.per_sample["patching"][..., mech.GROUPS.index("image")]).all()


def test_contributions_for_rows_corruption_is_removal():
    from mech.curves import PATCHED_GROUPS
    from mech.curves.donors import contributions_for_rows, pair_donors
    from mech.organisms import organism_dir
    from mech.prepare.data import load_data

    try:
        organism_dir("balanced")
    except mech.MechError:
        pytest.skip("organism:balanced not built")
    m = mech.load("organism:balanced")
    samples = list(load_data("organism:shapes", n=4))
    pairs = {g: pair_donors(samples, g) for g in PATCHED_GROUPS}
    with no_deprecation():  # mech contrib's path: modality_contributions, activation_patching, the removal
        new, a, b = contributions_for_rows(
            m, samples, range(4), pairs, estimators=("patching",), removal="resample"
        )
    with old(r"contributions_for_rows\(corruption=\.\.\.\).*use removal="):
        was, a2, b2 = contributions_for_rows(
            m, samples, range(4), pairs, estimators=("patching",), corruption="resample"
        )
    _same(new.per_sample["patching"], was.per_sample["patching"])
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_corrupt_features_is_feature_condition(llava):
    from mech.conditions import corrupt_features, feature_condition

    m, inp = llava
    with no_deprecation(), feature_condition(m, inp, "visual_noise", seed=2):
        new = m.logits(inp)
    with old(r"corrupt_features is deprecated .*use feature_condition"):
        with corrupt_features(m, inp, "visual_noise", seed=2):
            was = m.logits(inp)
    _same(new, was)
    assert not torch.allclose(new, m.logits(inp))  # the alias applies the condition, and removes its hook


def test_dla_answer_ids_are_answer_and_counterfactual(llava):
    from mech.measure.dla import direct_logit_attribution, frozen_readout

    m, inp = llava
    a, b = _ids(m)
    with no_deprecation():
        new = direct_logit_attribution(m, inp, answer=a, counterfactual=b)
    with old(r"direct_logit_attribution\(answer_ids=\.\.\.\) is deprecated .*use answer="):
        was = direct_logit_attribution(m, inp, answer_ids=a, counterfactual_ids=b)
    for k in ("attn", "mlp", "embed", "logit_diff"):
        _same(getattr(new, k), getattr(was, k))
    x = torch.randn(2, m.arch.d_model, generator=torch.Generator().manual_seed(0))
    with no_deprecation():
        r_new = frozen_readout(m, x, answer=a, counterfactual=b)
    with old(r"frozen_readout\(counterfactual_ids=\.\.\.\) is deprecated"):
        r_was = frozen_readout(m, x, a, counterfactual_ids=b)
    _same(r_new.direction, r_was.direction)
    _same(r_new.bias, r_was.bias)


def test_knockout_answer_ids_is_answer(llava):
    m, inp = llava
    a, _ = _ids(m)
    with no_deprecation():
        new = mech.attention_knockout(m, inp, window=1, layers=[0], answer=a)
    with old(r"attention_knockout\(answer_ids=\.\.\.\) is deprecated .*use answer="):
        was = mech.attention_knockout(m, inp, window=1, layers=[0], answer_ids=a)
    _same(new.p_knocked, was.p_knocked)
    assert torch.equal(new.answer, a) and torch.equal(was.answer, a)


# ---- nobody else uses an old spelling --------------------------------------------------------------------

#: the older spellings of mech.words.RENAMED, as code writes them
#: renamed functions and module constants
OLD_NAMES = {"corrupt_features", "CORRUPTIONS", "Ablation"}
#: function -> its deprecated keywords
OLD_KEYWORDS = {
    "activation_patching": {"site"},
    "modality_contributions": {"corruption"},
    "contributions_for_rows": {"corruption"},
    "direct_logit_attribution": {"answer_ids", "counterfactual_ids"},
    "frozen_readout": {"answer_ids", "counterfactual_ids"},
    "attention_knockout": {"answer_ids"},
    "ContribSettings": {"ablation"},
    "ReportSettings": {"ablation"},
}


def _old_spellings(path: Path, imports: bool = True) -> list[str]:
    """Old spellings used in ``path``; ``imports=False``: an import of an old name is no use (mech's
    modules re-export the deprecated aliases)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            bad = OLD_KEYWORDS.get(name, set()) & {k.arg for k in node.keywords}
            found += [f"{path.name}:{node.lineno}: {name}({k}=)" for k in sorted(bad)]
        if isinstance(node, ast.Attribute) and node.attr == "ablation":
            found.append(f"{path.name}:{node.lineno}: .ablation")
        used = (
            node.id
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            else (node.attr if isinstance(node, ast.Attribute) else None)
        )
        if imports and isinstance(node, ast.ImportFrom):
            used = next((a.name for a in node.names if a.name in OLD_NAMES), None)
        if used in OLD_NAMES:
            found.append(f"{path.name}:{node.lineno}: {used}")
        if isinstance(node, ast.Constant) and node.value == "--ablation":
            found.append(f"{path.name}:{node.lineno}: --ablation")
    return found


def test_no_old_spelling_in_mech_tests_probes_or_benchmarks():
    skip = {ROOT / "tests" / "test_vocabulary.py"}
    files = [
        f
        for d in ("mech", "tests", "probes", "benchmarks")
        for f in sorted((ROOT / d).rglob("*.py"))
        if f not in skip
    ]
    found = [hit for f in files for hit in _old_spellings(f, imports=ROOT / "mech" not in f.parents)]
    assert not found, found
