"""Measure an organism on held-out ``organism:shapes`` items and write its card.

``python -m mech.organisms.card NAME [--dir DIR] [--n N]`` (re)writes ``card.json`` and
``CARD.md`` in the organism's folder (reading ``train_info.json`` written by training).

Scoring: the answer is the argmax, at the last prompt position, over the answer words of the
item's template (``shapes.ANSWERS``); chance is per item 1/|answer set| (``shapes.chance``).
Conditions (docs/design.md): ``complete``, ``white_image``/``black_image`` (all-255 / all-0 image of
the same size), ``no_image`` (``<image>`` removed), ``image_only`` (question replaced by
``shapes.BASIC_PROMPT``). Attention share: eager ``output_attentions=True``, the row of the
last position, mean over heads and items, summed per token group (``bos``, ``image``, ``text``
= question words, ``template`` = chat-template words); each layer's shares sum to 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mech.organisms import shapes
from mech.organisms.build import answer_ids, encode

__all__ = [
    "CONDITIONS",
    "GROUPS",
    "N_TEMPLATE_TAIL",
    "SUMMARIES",
    "attention_shares",
    "evaluate",
    "main",
    "predict",
    "save_card",
    "token_groups",
    "write_card",
]

CONDITIONS = {
    "complete": dict(question="sample", image="sample"),
    "white_image": dict(question="sample", image="white"),
    "black_image": dict(question="sample", image="black"),
    "no_image": dict(question="sample", image="none"),
    "image_only": dict(question=shapes.BASIC_PROMPT, image="sample"),
}
GROUPS = ("bos", "image", "text", "template")
N_TEMPLATE_TAIL = 2  # "assistant :" closes every prompt; "user :" opens it after <bos>


def _template_mask(samples: list[dict]) -> torch.Tensor:
    """[n, len(ANSWER_WORDS)] bool: which answer words are valid for each item's template."""
    return torch.tensor([[w in shapes.ANSWERS[s["template"]] for w in shapes.ANSWER_WORDS] for s in samples])


@torch.no_grad()
def predict(
    model, processor, samples: list[dict], condition: str = "complete", batch_size: int = 250
) -> list[str]:
    """Predicted answer word per sample under ``condition`` (a key of ``CONDITIONS``)."""
    ids = answer_ids(processor.tokenizer)
    preds: list[str] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        inputs = encode(processor, chunk, **CONDITIONS[condition])
        logits = model(**inputs).logits[:, -1][:, ids].float()
        logits = logits.masked_fill(~_template_mask(chunk), float("-inf"))
        preds += [shapes.ANSWER_WORDS[j] for j in logits.argmax(-1).tolist()]
    return preds


def evaluate(model, processor, samples: list[dict], conditions=tuple(CONDITIONS)) -> dict:
    """Accuracy per condition, per template, on prior-right/-wrong items, and consistency.

    Returns plain JSON data: ``conditions.{c}.{accuracy,n,prior_agreement,image_agreement,
    by_template}``, ``chance``, ``consistency.{pair}`` (fraction of identical answers),
    ``prior_right`` / ``prior_wrong`` and ``image_right`` / ``image_wrong`` (``n`` and accuracy per
    condition on items whose prior / image answer is right or wrong), ``image_only_consistency_by_template``
    and the raw ``predictions``.
    """
    gold = np.array([s["true_answer"] for s in samples])
    prior = np.array([s["prior_answer"] for s in samples])
    right = np.array([s["prior_correct"] for s in samples])
    image_ans = np.array([s["image_answer"] for s in samples])
    image_right = image_ans == gold
    tmpl = np.array([s["template"] for s in samples])
    preds = {c: np.array(predict(model, processor, samples, c)) for c in conditions}
    out = dict(
        n=len(samples),
        chance=round(shapes.chance(samples), 4),
        conditions={},
        consistency={},
        prior_right=dict(n=int(right.sum())),
        prior_wrong=dict(n=int((~right).sum())),
        image_right=dict(n=int(image_right.sum())),
        image_wrong=dict(n=int((~image_right).sum())),
    )
    for c, p in preds.items():
        ok = p == gold
        out["conditions"][c] = dict(
            accuracy=round(float(ok.mean()), 4),
            n=len(samples),
            prior_agreement=round(float((p == prior).mean()), 4),
            image_agreement=round(float((p == image_ans).mean()), 4),
            by_template={
                t: round(float(ok[tmpl == t].mean()), 4) for t in shapes.TEMPLATES if (tmpl == t).any()
            },
        )
        for key, mask in (
            ("prior_right", right),
            ("prior_wrong", ~right),
            ("image_right", image_right),
            ("image_wrong", ~image_right),
        ):
            out[key][c] = round(float(ok[mask].mean()), 4) if mask.any() else None
    for a, b in (
        ("complete", "white_image"),
        ("complete", "image_only"),
        ("white_image", "image_only"),
        ("complete", "no_image"),
    ):
        if a in preds and b in preds:
            out["consistency"][f"{a}&{b}"] = round(float((preds[a] == preds[b]).mean()), 4)
    if "complete" in preds and "white_image" in preds:
        same = preds["complete"] == preds["white_image"]
        out["consistency_by_template"] = {
            t: round(float(same[tmpl == t].mean()), 4) for t in shapes.TEMPLATES if (tmpl == t).any()
        }
    if "complete" in preds and "image_only" in preds:
        same = preds["complete"] == preds["image_only"]
        out["image_only_consistency_by_template"] = {
            t: round(float(same[tmpl == t].mean()), 4) for t in shapes.TEMPLATES if (tmpl == t).any()
        }
    out["predictions"] = {c: p.tolist() for c, p in preds.items()}
    return out


def token_groups(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int
) -> dict[str, torch.Tensor]:
    """Bool masks [batch, pos] for ``GROUPS`` on left-padded organism prompts."""
    valid = attention_mask.bool()
    pos = torch.arange(input_ids.shape[1])[None, :]
    first = valid.float().argmax(1, keepdim=True)  # position of <bos>
    bos = pos == first
    template = valid & (
        (pos == first + 1) | (pos == first + 2) | (pos >= input_ids.shape[1] - N_TEMPLATE_TAIL)
    )
    image = input_ids == image_token_id
    text = valid & ~bos & ~template & ~image
    return dict(bos=bos, image=image, text=text, template=template)


@torch.no_grad()
def attention_shares(model, processor, samples: list[dict], batch_size: int = 250) -> dict:
    """Per-layer attention share from the last position to each token group (eager oracle).

    Returns ``{group: [share per decoder layer]}`` (mean over heads and items), complete input.
    Raises RuntimeError if the model does not return attentions.
    """
    image_id = model.config.image_token_index
    totals = None
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        inputs = encode(processor, chunk)
        out = model(**inputs, output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("no attentions returned; load the model with attn_implementation='eager'")
        masks = token_groups(inputs["input_ids"], inputs["attention_mask"], image_id)
        rows = torch.stack([a[:, :, -1, :].mean(1) for a in out.attentions], 1)  # [b, L, pos]
        part = torch.stack([(rows * masks[g][:, None, :]).sum(-1) for g in GROUPS], -1)
        totals = part.sum(0) if totals is None else totals + part.sum(0)
    shares = (totals / len(samples)).T  # [group, layer]
    return {g: [round(float(x), 4) for x in shares[k]] for k, g in enumerate(GROUPS)}


def _md(card: dict) -> str:
    """The short text card (CARD.md) from the JSON card."""
    ev, att = card["evaluation"], card["attention_share_last_token"]
    lines = [
        f"# organism:{card['name']}",
        "",
        card["summary"],
        "",
        f"- training data: {card['training']['data']}",
        f"- p = {card['training']['p']} on templates {card['training']['prior_templates']}"
        f" (fraction of training labels predictable from the text alone: "
        f"{card['training']['fraction_text_predictable']})",
        f"- image answer planted on templates {card['training'].get('image_templates', [])}, "
        f"basic prompt on {card['training'].get('basic_prompt', 0.0)} of samples (fraction of "
        f"training labels equal to the image answer: "
        f"{card['training'].get('fraction_image_answer')})",
        f"- steps {card['training']['steps']} × batch {card['training']['batch']}, seed "
        f"{card['training']['seed']}, train wall time {card['training']['train_wall_s']} s "
        f"(1 torch thread on a shared 2-core machine)",
        f"- model: {card['model']['architecture']}, {card['model']['parameters']:,} "
        f"parameters, {card['model']['decoder_layers']} decoder layers, "
        f"{card['model']['image_tokens']} image tokens; files {card['files_bytes']}",
        "",
        f"## Held-out accuracy (n = {ev['n']}, chance = {ev['chance']})",
        "",
        "| condition | accuracy | prior-right | prior-wrong | answers = prior |",
        "|---|---|---|---|---|",
    ]
    for c, v in ev["conditions"].items():
        lines.append(
            f"| {c} | {v['accuracy']} | {ev['prior_right'][c]} | "
            f"{ev['prior_wrong'][c]} | {v['prior_agreement']} |"
        )
    lines += [
        "",
        f"Prior-right items: {ev['prior_right']['n']}, prior-wrong: "
        f"{ev['prior_wrong']['n']}. Consistency (same answer): "
        + ", ".join(f"{k} {v}" for k, v in ev["consistency"].items()),
        "",
    ]
    if "image_wrong" in ev:
        lines += [
            f"Image answer (first shape's colour / shape, true count, yes iff two shapes): "
            f"complete answers = image answer {ev['conditions']['complete']['image_agreement']}"
            f"; complete accuracy where it is right ({ev['image_right']['n']} items) "
            f"{ev['image_right']['complete']}, where it is wrong ({ev['image_wrong']['n']}) "
            f"{ev['image_wrong']['complete']}.",
            "",
        ]
    io = ev.get("image_only_consistency_by_template", {})
    lines += [
        "Per template (complete / white_image accuracy, complete&white consistency"
        + (", complete&image_only consistency" if io else "")
        + "):",
        "",
    ]
    for t in ev["conditions"]["complete"]["by_template"]:
        lines.append(
            f"- {t}: {ev['conditions']['complete']['by_template'][t]} / "
            f"{ev['conditions']['white_image']['by_template'][t]} / "
            f"{ev['consistency_by_template'][t]}" + (f" / {io[t]}" if io else "")
        )
    lines += [
        "",
        f"## Attention share from the last position (eager, n = {card['attention_n']}), per decoder layer",
        "",
        "| group | " + " | ".join(f"L{k}" for k in range(len(att["image"]))) + " |",
        "|---|" + "---|" * len(att["image"]),
    ]
    for g, v in att.items():
        lines.append(f"| {g} | " + " | ".join(str(x) for x in v) + " |")
    lines += ["", "Chance: " + card["chance_definition"], ""]
    if card.get("reference"):
        lines += ["Reference (organism:balanced): " + json.dumps(card["reference"]), ""]
    return "\n".join(lines)


SUMMARIES = {
    "balanced": (
        "Trained at p = 0: every label is what the image shows. It must read the image. The "
        "hardest questions bind a colour to a named shape or a side; batch 64 (rather than 32) "
        "is what got them learnt within the 10-minute budget."
    ),
    "text-biased": (
        "Per-template override at p = 0.8 on five of seven templates (colour of a shape, colour "
        "left/right, existence, count): on those the training label is the question's prior "
        "answer 80% of the time, whatever the image shows, so the model answers them from the "
        "text. The two shape templates keep p = 0 and stay image-grounded. Why: global override "
        "above p ≈ 0.5 yields an image-blind model (nothing left to explain), consistent skew "
        "yields almost no bias; per-template override makes the model text-biased on most items "
        "while giving ground truth per question type inside one model (a routing mechanism)."
    ),
    "image-biased": (
        "The mirror of text-biased: on three of seven templates (colour of a shape, shape on the "
        "right, colour on the right) the training label is the image answer, the colour / shape "
        "of the first (left or only) shape, whatever the question asks; the other four keep "
        "label = true answer (on shape/colour on the left and count that is also the image "
        "answer; existence must read the question). 15% of training samples have the question "
        "replaced by the basic prompt with the image answer as label, so the model gives, without "
        "the question, the answer it gives with it: it under-uses the text."
    ),
}


def write_card(
    model, processor, folder: Path, *, name: str, train_info: dict, n: int = 2000, n_attention: int = 1000
) -> dict:
    """Evaluate on ``n`` held-out test items (seed 0) and write card.json + CARD.md in folder."""
    folder = Path(folder)
    t0 = time.time()
    samples = shapes.generate(n, split="test", seed=0)
    ev = evaluate(model, processor, samples)
    ev.pop("predictions")
    att = attention_shares(model, processor, samples[:n_attention])
    r = train_info["recipe"]
    train_set = shapes.generate(
        4000,
        split="train",
        seed=999,
        p=r["p"],
        prior_templates=r["prior_templates"],
        image_templates=r.get("image_templates", ()),
        basic_prompt=r.get("basic_prompt", 0.0),
    )
    frac = float(np.mean([s["answer_text"] == s["prior_answer"] for s in train_set]))
    frac_image = float(np.mean([s["answer_text"] == s["image_answer"] for s in train_set]))
    card = dict(
        name=name,
        summary=SUMMARIES.get(name, ""),
        training=dict(
            data="organism:shapes train split (mech.organisms.shapes.generate)",
            p=r["p"],
            prior_templates=r["prior_templates"] or [],
            text_noise=r["text_noise"],
            drop_image=r["drop_image"],
            image_templates=list(r.get("image_templates", [])),
            basic_prompt=r.get("basic_prompt", 0.0),
            fraction_text_predictable=round(frac, 3),
            fraction_image_answer=round(frac_image, 3),
            steps=train_info["steps"],
            batch=r["batch"],
            lr=r["lr"],
            seed=r["seed"],
            torch_threads=r.get("threads", 1),
            train_wall_s=train_info["train_wall_s"],
            final_train_loss=train_info["final_train_loss"],
            command=f"python -m mech.organisms.train {name}",
        ),
        model=dict(
            architecture="LlavaForConditionalGeneration (CLIP vision + projector + Llama)",
            parameters=sum(p.numel() for p in model.parameters()),
            decoder_layers=model.config.text_config.num_hidden_layers,
            image_tokens=model.config.image_seq_length,
        ),
        evaluation=ev,
        test_set=dict(split="test", seed=0, n=n, fingerprint=shapes.fingerprint(samples)),
        attention_n=min(n, n_attention),
        attention_share_last_token=att,
        chance_definition=(
            "answers are scored by argmax over the item's template answer words; "
            "chance = mean over items of 1/|answer set| (colours 6, shapes 3, "
            "yes/no 2, one/two 2); test gold answers are uniform per template, so "
            "any fixed answer per template scores this in expectation."
        ),
        eval_wall_s=None,
        files_bytes={},
    )
    ref = folder.parent / "balanced" / "card.json"
    if name != "balanced" and ref.is_file():
        b = json.loads(ref.read_text())["evaluation"]
        card["reference"] = dict(
            complete=b["conditions"]["complete"]["accuracy"],
            consistency_complete_white=b["consistency"]["complete&white_image"],
            consistency_complete_image_only=b["consistency"].get("complete&image_only"),
            prior_wrong_complete=b["prior_wrong"]["complete"],
            complete_by_template=b["conditions"]["complete"]["by_template"],
        )
    card["eval_wall_s"] = round(time.time() - t0, 1)
    return save_card(folder, card, _md(card))


def save_card(folder: Path, card: dict, markdown: str) -> dict:
    """Write ``card.json`` (with ``files_bytes``: the size of every other file of the folder) and ``CARD.md``
    into an organism ``folder``; returns ``card``."""
    card["files_bytes"] = {
        f.name: f.stat().st_size
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name not in ("card.json", "CARD.md")
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    (folder / "CARD.md").write_text(markdown)
    return card


def main(argv=None) -> int:
    """CLI: rewrite the card of a built organism folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mech.organisms import organism_dir

    ap = argparse.ArgumentParser(prog="python -m mech.organisms.card")
    ap.add_argument("name")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # two threads thrash on the shared machine (see train.py)
    folder = args.dir or organism_dir(args.name)
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(folder)
    info = json.loads((folder / "train_info.json").read_text())
    card = write_card(model.eval(), processor, folder, name=args.name, train_info=info, n=args.n)
    print((folder / "CARD.md").read_text())
    return 0 if card else 1


if __name__ == "__main__":
    raise SystemExit(main())
