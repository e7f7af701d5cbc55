"""README.md's ```python blocks run as written, top to bottom in one namespace, on the CPU with the
organisms, and what they compute satisfies the invariants their comments state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import mech

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, source)`` of every ```python block of ``text``, in order."""
    return [(text.count("\n", 0, b.start(1)) + 1, b.group(1)) for b in FENCE.finditer(text)]


@pytest.fixture(scope="module")
def ns() -> dict:
    """The namespace after executing every README block in order (a later block sees earlier names)."""
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    namespace: dict = {"__name__": "__readme__"}
    for line, src in blocks:
        # pad so that a traceback points at the README's own line numbers
        exec(compile("\n" * (line - 1) + src, str(README), "exec"), namespace)
    return namespace


def test_blocks_are_found():
    text = "a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = x\n")]


def test_inputs_come_from_the_organisms_data(ns):
    m, inputs, groups, data = ns["m"], ns["inputs"], ns["groups"], ns["data"]
    assert isinstance(m, mech.MechModel) and m.arch.model_type == "llava"
    assert len(data) == inputs["input_ids"].shape[0] > 0
    assert groups.mask("image").shape == inputs["input_ids"].shape
    assert (groups.mask("image").sum(1) == 16).all()  # the organisms' 16 image tokens per sample
    assert (groups.mask("text").sum(1) > 0).all()


def test_attention_mass(ns):
    m, am, inputs = ns["m"], ns["am"], ns["inputs"]
    cfg = m.model.config.text_config
    batch = inputs["input_ids"].shape[0]
    assert am.mass.shape == (batch, cfg.num_hidden_layers, cfg.num_attention_heads, len(mech.GROUPS))
    assert am.groups == mech.GROUPS
    torch.testing.assert_close(am.mass.sum(-1), torch.ones(am.mass.shape[:-1]), atol=1e-5, rtol=0)
    assert (am.mass >= 0).all()


def test_white_image_is_the_same_sequence(ns):
    clean, corrupted = ns["clean"], ns["corrupted"]
    assert torch.equal(clean["input_ids"], corrupted["input_ids"])
    assert not torch.equal(clean["pixel_values"], corrupted["pixel_values"])
    white = corrupted["pixel_values"]  # [image, channel, H, W]: one value per channel
    assert all(torch.unique(white[:, c]).numel() == 1 for c in range(white.shape[1]))


def test_activation_patching(ns):
    m, pe = ns["m"], ns["pe"]
    n = m.model.config.text_config.num_hidden_layers
    eff = pe.effect["resid_post"]
    assert pe.groups == ("image",) and eff.shape == (n, 1) and torch.isfinite(eff).all()
    # the default answer is the clean run's top token, so the clean logit difference is >= 0
    assert (pe.clean_metric >= 0).all()
    # the last layer's residual at the image positions never reaches the answer position
    assert float(eff[-1, 0]) == pytest.approx(0.0, abs=1e-5)


def test_attention_knockout(ns):
    m, ko = ns["m"], ns["ko"]
    n = m.model.config.text_config.num_hidden_layers
    assert list(ko.edges) == ["image->last"]
    assert ko.change.shape == (n, 1)
    assert ((ko.p_clean > 0) & (ko.p_clean <= 1)).all() and ((ko.p_knocked >= 0) & (ko.p_knocked <= 1)).all()
    expected = 100 * (ko.p_knocked - ko.p_clean) / ko.p_clean
    torch.testing.assert_close(ko.change, expected.mean(-1), atol=1e-3, rtol=1e-4)


def test_run_with_cache_and_hooks(ns):
    m, inputs, groups = ns["m"], ns["inputs"], ns["groups"]
    logits, cache, ablated = ns["logits"], ns["cache"], ns["ablated"]
    cfg = m.model.config.text_config
    batch, pos = inputs["input_ids"].shape
    with torch.no_grad():
        plain = m.model(**inputs).logits  # also: no hook of the README's calls stayed registered
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    assert set(cache) == {"blocks.3.hook_resid_post", "blocks.3.attn.hook_z"}
    assert cache["blocks.3.hook_resid_post"].shape == (batch, pos, cfg.hidden_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert cache["blocks.3.attn.hook_z"].shape == (batch, pos, cfg.num_attention_heads, head_dim)
    # the hook zeroes the image positions' residual after layer 3: positions before the first image
    # token are untouched (causal attention), the answer position changes
    assert ablated.shape == logits.shape
    first = int(groups.mask("image").float().argmax(1).min())
    assert first > 0
    torch.testing.assert_close(ablated[:, :first], logits[:, :first], atol=1e-5, rtol=1e-5)
    last = groups.last()
    rows = torch.arange(batch)
    assert not torch.allclose(ablated[rows, last], logits[rows, last])
    fn = ns["fn"]
    x = cache["blocks.3.hook_resid_post"]
    assert (fn(x, None)[groups.mask("image")] == 0).all()
