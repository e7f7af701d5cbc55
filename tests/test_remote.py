"""nnsight path of attention mass (issue 8, :mod:`mech.measure.attention.remote` over
:mod:`mech.engines.nnsight_remote`), the part of NDIF's ``remote=True``
that can be tested offline: the trace gives mech's recorder's numbers on every decoder-sequence
family (with padding, either side, for the last position and for every text row); the request
serialized as for NDIF and run here with mech hidden (nnsight's ``remote="local"``) gives them too;
the model is left as it was; a weightless model for NDIF is built from config and processor.

Untested (no network here): submitting to NDIF, the model being hosted there, the server's
transformers naming the attention call ``attention_interface_<k>`` as this one does.

Oracle: :func:`mech.attention_mass` (transformers' attention registry), itself tested against eager
``output_attentions`` in tests/test_attention.py.
"""

from __future__ import annotations

import pytest
import torch

import mech
from mech.testing import tiny as T
from mech.testing.tiny import save_tiny, tiny_model

pytest.importorskip("nnsight")
from mech.engines.nnsight_remote import RemoteModel, load_remote  # noqa: E402
from mech.measure.attention.remote import attention_mass_nnsight  # noqa: E402

FAMILIES = [f for f in T.FAMILIES if f not in ("mllama", "qwen2_audio")]


def _padded(m, family, side):
    size = T.IMAGE_SIZES[family]
    return m.prepare(
        [[T._image(0, size)], [T._image(1, size)]],
        ["what colour is the shape ?", "what ?"],
        padding_side=side,
    )


def _same(got, want):
    for k in ("mass", "density", "spatial", "token_share", "counts", "n_image_tokens", "n_query"):
        torch.testing.assert_close(
            getattr(got, k), getattr(want, k), atol=1e-6, rtol=1e-5, equal_nan=True, msg=k
        )
    assert (got.groups, got.grid, got.query) == (want.groups, want.grid, want.query)


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_equals_the_recorder(family):
    m = mech.load(tiny_model(family))
    for side in ("left", "right"):
        inputs = _padded(m, family, side)
        assert inputs["attention_mask"].sum(1).unique().numel() == 2  # the rows really are padded
        for query in ("last", "text"):
            _same(attention_mass_nnsight(m, inputs, query=query), mech.attention_mass(m, inputs, query=query))


def test_request_serialized_as_for_ndif_gives_the_same_numbers():
    """``remote="local"``: nnsight serializes the trace exactly as for NDIF, deserializes it with every
    non-installed module (mech included) hidden, and runs it here."""
    m = mech.load(tiny_model("qwen2_vl"))
    inputs = _padded(m, "qwen2_vl", "left")
    _same(attention_mass_nnsight(m, inputs, remote="local"), mech.attention_mass(m, inputs))


def test_the_model_is_left_as_it_was():
    m = mech.load(tiny_model("llava"))
    inputs = _padded(m, "llava", "left")
    before = m.logits(inputs)
    state = [
        (set(mod.__dict__), len(mod._forward_hooks), len(mod._forward_pre_hooks)) for mod in m.model.modules()
    ]
    attention_mass_nnsight(m, inputs)
    assert [
        (set(mod.__dict__), len(mod._forward_hooks), len(mod._forward_pre_hooks)) for mod in m.model.modules()
    ] == state
    assert torch.equal(m.logits(inputs), before)


def test_load_remote_builds_a_weightless_model(tmp_path):
    """What ``remote=True`` starts from: the architecture on the meta device (no weights read), the
    processor, inputs on the CPU (they travel with the request) and the same token groups."""
    save_tiny("llava", tmp_path / "model")
    m = load_remote(str(tmp_path / "model"))
    local = mech.load(str(tmp_path / "model"))
    assert isinstance(m, RemoteModel) and {p.device.type for p in m.model.parameters()} == {"meta"}
    assert m.arch == local.arch and m.device == torch.device("cpu")
    inputs, ref = _padded(m, "llava", "left"), _padded(local, "llava", "left")
    assert inputs["input_ids"].device.type == "cpu" and torch.equal(inputs.groups.labels, ref.groups.labels)
    assert (
        m.meta["nnsight"].model.language_model.layers[0].self_attn.source.names
    )  # the attention call is found


def test_the_old_path_warns_and_is_the_same_function():
    """``mech.engines.nnsight_remote.attention_mass_nnsight`` (before issue 25) still works for one release."""
    import mech.engines.nnsight_remote as old

    with pytest.warns(DeprecationWarning, match="mech.measure.attention.remote.attention_mass_nnsight"):
        assert old.attention_mass_nnsight is attention_mass_nnsight
