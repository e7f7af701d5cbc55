"""Measure a Qwen2.5-VL organism on held-out ``organism:shapes-varied`` items and write its card.

``python -m mech.organisms.qwen_card NAME [--dir DIR] [--n N]`` (re)writes ``card.json`` and
``CARD.md`` in the organism's folder (reading ``train_info.json`` written by training).

Two measurements, both on the test split (seed 0):

* **word-level** (as the LLaVA cards, :mod:`mech.organisms.card`): the answer is the argmax at the
  last prompt position over the answer words of the item's template (``varied.ANSWERS``); per
  condition accuracy, per template, per image-token count, per number of images, agreement of the
  complete answer with the white-image / image-only / no-image answers;
* **mech eval** (the package's own behavioural measurement, :func:`mech.measure.evaluation.run.
  evaluate`, ``scoring="option_text"``: argmax over the item's 4 or 10 option words): accuracy per
  condition and the paper's Table 2 agreement pairs, in percent.

Attention share: eager ``output_attentions=True``, the row of the last position, mean over heads
and items, summed per token group (``image`` = ``<|image_pad|>`` tokens, ``text`` = question words,
``template`` = chat-template tokens: specials, role words and newlines); each layer sums to 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mech.organisms import qwen, shapes, varied
from mech.organisms.card import CONDITIONS, save_card  # the same five conditions as the LLaVA cards

__all__ = [
    "CONDITIONS",
    "GROUPS",
    "MECH_EVAL_CONDITIONS",
    "SUMMARIES",
    "attention_shares",
    "evaluate",
    "main",
    "mech_eval",
    "predict",
    "token_groups",
    "write_card",
]

MECH_EVAL_CONDITIONS = ("complete", "white_image", "no_image", "image_only")
GROUPS = ("image", "text", "template")
SUMMARIES = {
    "qwen-balanced": "The Qwen2.5-VL twin of organism:balanced: every training label is what the "
    "image(s) show; it must read the image.",
    "qwen-text-biased": "The Qwen2.5-VL twin of organism:text-biased: on the colour questions, "
    "existence, count and same-colour (two images) the training label is the "
    "question's prior answer 80% of the time, whatever the image shows; the "
    "shape questions (left, right, same shape) stay image-grounded.",
    "qwen-image-biased": "The Qwen2.5-VL twin of organism:image-biased: on colour of a shape, shape "
    "and colour on the right and same-shape (two images) the label is the image "
    "answer whatever the question asks; 15% of training samples carry the basic "
    "prompt with the image answer as label.",
}


def _word_ids(tokenizer) -> torch.Tensor:
    return torch.tensor(tokenizer.convert_tokens_to_ids(list(shapes.ANSWER_WORDS)))


@torch.no_grad()
def predict(
    model, processor, samples: list[dict], condition: str = "complete", batch_size: int = 100
) -> list[str]:
    """Predicted answer word per sample under ``condition`` (argmax over the template's words)."""
    ids = _word_ids(processor.tokenizer)
    preds: list[str] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        mask = torch.tensor(
            [[w in varied.ANSWERS[s["template"]] for w in shapes.ANSWER_WORDS] for s in chunk]
        )
        logits = model(**qwen.encode(processor, chunk, **CONDITIONS[condition])).logits[:, -1]
        logits = logits[:, ids].float().masked_fill(~mask, float("-inf"))
        preds += [shapes.ANSWER_WORDS[j] for j in logits.argmax(-1).tolist()]
    return preds


def evaluate(model, processor, samples: list[dict], conditions=tuple(CONDITIONS)) -> dict:
    """Word-level accuracy and agreement (plain JSON data; see the module docstring)."""
    gold = np.array([s["true_answer"] for s in samples])
    prior = np.array([s["prior_answer"] for s in samples])
    image_ans = np.array([s["image_answer"] for s in samples])
    tmpl = np.array([s["template"] for s in samples])
    n_img = np.array([len(s["images"]) for s in samples])
    tokens = np.array([sum(s["image_tokens"]) for s in samples])
    preds = {c: np.array(predict(model, processor, samples, c)) for c in conditions}

    def by(key: np.ndarray, ok: np.ndarray) -> dict:
        return {str(k): round(float(ok[key == k].mean()), 4) for k in sorted(set(key.tolist()))}

    out = dict(
        n=len(samples),
        chance=round(varied.chance(samples), 4),
        conditions={},
        agreement={},
        agreement_by_template={},
    )
    for c, p in preds.items():
        ok = p == gold
        out["conditions"][c] = dict(
            accuracy=round(float(ok.mean()), 4),
            prior_agreement=round(float((p == prior).mean()), 4),
            image_agreement=round(float((p == image_ans).mean()), 4),
            prior_wrong=round(float(ok[prior != gold].mean()), 4),
            by_template=by(tmpl, ok),
            by_images=by(n_img, ok),
            by_image_tokens=by(tokens, ok),
        )
    for other in ("white_image", "image_only", "no_image"):
        if "complete" in preds and other in preds:
            same = preds["complete"] == preds[other]
            out["agreement"][f"complete&{other}"] = round(float(same.mean()), 4)
            out["agreement_by_template"][f"complete&{other}"] = by(tmpl, same)
    return out


def token_groups(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, processor, samples: list[dict]
) -> dict[str, torch.Tensor]:
    """Bool masks [batch, pos]: image pads, question words (the words of each item's question,
    found as the tokens between ``<|vision_end|>``/``user\\n`` and the closing ``<|im_end|>``),
    and the chat template (every other valid token)."""
    tok = processor.tokenizer
    image = input_ids == processor.image_token_id
    text = torch.zeros_like(image)
    for b, s in enumerate(samples):
        n = len(tok(s["question"], add_special_tokens=False)["input_ids"])
        # the question ends just before "<|im_end|> \n <|im_start|> assistant \n" (5 tokens)
        end = input_ids.shape[1] - 5
        text[b, end - n : end] = True
    template = attention_mask.bool() & ~image & ~text
    return dict(image=image, text=text, template=template)


@torch.no_grad()
def attention_shares(model, processor, samples: list[dict], batch_size: int = 100) -> dict:
    """Per decoder layer, the last position's attention share per group (``GROUPS``), complete
    input; ``{group: [share per layer]}``. Raises RuntimeError without attention weights."""
    totals = None
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        inputs = qwen.encode(processor, chunk)
        out = model(**inputs, output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("no attentions returned; load with attn_implementation='eager'")
        masks = token_groups(inputs["input_ids"], inputs["attention_mask"], processor, chunk)
        rows = torch.stack([a[:, :, -1, :].mean(1) for a in out.attentions], 1)  # [b, L, pos]
        part = torch.stack([(rows * masks[g][:, None, :]).sum(-1) for g in GROUPS], -1)
        totals = part.sum(0) if totals is None else totals + part.sum(0)
    shares = (totals / len(samples)).T
    return {g: [round(float(x), 4) for x in shares[k]] for k, g in enumerate(GROUPS)}


def mech_eval(folder: Path, n: int = 1000, name: str | None = None) -> dict:
    """``mech eval`` numbers (library call) on ``n`` test items: accuracy per condition and the
    Table 2 agreement (percent), plus the test split's image-token counts and two-image share."""
    from mech.measure.evaluation.run import evaluate as mech_evaluate
    from mech.models.load import load
    from mech.prepare.data import load_data

    m = load(str(folder))
    data = load_data("organism:shapes-varied", n=n)
    res = mech_evaluate(m, data, conditions=MECH_EVAL_CONDITIONS, batch_size=50, progress=False)
    counts = [tuple(s["image_tokens"]) for s in data.samples]
    return dict(
        command=f"mech eval --model organism:{name or folder.name} --data organism:shapes-varied --n {n} "
        f"--conditions {' '.join(MECH_EVAL_CONDITIONS)}",
        n=len(data.samples),
        scoring="option_text",
        accuracy={c: round(v["accuracy"], 4) for c, v in res["conditions"].items()},
        agreement_pct={k: round(v["pct"], 2) for k, v in res["consistency"]["all"].items() if v is not None},
        image_token_counts=sorted({t for c in counts for t in c}),
        two_image_share=round(float(np.mean([len(c) == 2 for c in counts])), 4),
    )


def _md(card: dict) -> str:
    ev, me, att = card["evaluation"], card["mech_eval"], card["attention_share_last_token"]
    t = card["training"]
    lines = [
        f"# organism:{card['name']}",
        "",
        card["summary"],
        "",
        f"- data: {t['data']}; p = {t['p']} on {t['prior_templates']}; image answer planted "
        f"on {t['image_templates']}; basic prompt on {t['basic_prompt']}; image dropped on "
        f"{t['drop_image']}",
        f"- steps {t['steps']} × batch {t['batch']}, seed {t['seed']}, train wall time "
        f"{t['train_wall_s']} s (1 torch thread, shared 2-core machine); `{t['command']}`",
        f"- model: {card['model']['architecture']}, {card['model']['parameters']:,} parameters, "
        f"{card['model']['decoder_layers']} decoder layers; files {card['files_bytes']}",
        "",
        f"## mech eval (n = {me['n']}, option scoring)",
        "",
        "accuracy: " + ", ".join(f"{k} {v}" for k, v in me["accuracy"].items()),
        "",
        "agreement (%): " + ", ".join(f"{k} {v}" for k, v in me["agreement_pct"].items()),
        "",
        f"test split: image token counts {me['image_token_counts']}, two-image share {me['two_image_share']}",
        "",
        f"## Word-level (n = {ev['n']}, chance {ev['chance']})",
        "",
        "| condition | accuracy | prior-wrong | answers = prior | answers = image answer |",
        "|---|---|---|---|---|",
    ]
    for c, v in ev["conditions"].items():
        lines.append(
            f"| {c} | {v['accuracy']} | {v['prior_wrong']} | {v['prior_agreement']} | "
            f"{v['image_agreement']} |"
        )
    lines += [
        "",
        "Agreement: " + ", ".join(f"{k} {v}" for k, v in ev["agreement"].items()),
        "",
        "| template | complete | white | complete&white | complete&image_only |",
        "|---|---|---|---|---|",
    ]
    c, w = ev["conditions"]["complete"]["by_template"], ev["conditions"]["white_image"]["by_template"]
    aw = ev["agreement_by_template"]["complete&white_image"]
    ai = ev["agreement_by_template"].get("complete&image_only", {})
    for k in c:
        lines.append(f"| {k} | {c[k]} | {w[k]} | {aw[k]} | {ai.get(k, '–')} |")
    comp = ev["conditions"]["complete"]
    lines += [
        "",
        "Complete accuracy by image tokens: "
        + json.dumps(comp["by_image_tokens"])
        + "; by number of images: "
        + json.dumps(comp["by_images"]),
        "",
        f"## Attention share from the last position (eager, n = {card['attention_n']})",
        "",
        "| group | " + " | ".join(f"L{k}" for k in range(len(att["image"]))) + " |",
        "|---|" + "---|" * len(att["image"]),
    ]
    lines += [f"| {g} | " + " | ".join(str(x) for x in v) + " |" for g, v in att.items()]
    return "\n".join(lines + [""])


def write_card(
    model, processor, folder: Path, *, name: str, train_info: dict, n: int = 1000, n_attention: int = 500
) -> dict:
    """Evaluate on ``n`` test items and write card.json + CARD.md into ``folder`` (which must hold
    the saved organism: ``mech eval`` loads it from there)."""
    folder = Path(folder)
    t0 = time.time()
    samples = varied.generate(n, split="test", seed=0)
    ev = evaluate(model, processor, samples)
    att = attention_shares(model, processor, samples[:n_attention])
    me = mech_eval(folder, n, name)
    r = train_info["recipe"]
    card = dict(
        name=name,
        summary=SUMMARIES.get(name, ""),
        training=dict(
            data="organism:shapes-varied train split (mech.organisms.varied.generate)",
            p=r["p"],
            prior_templates=list(r["prior_templates"] or []),
            image_templates=list(r.get("image_templates", [])),
            basic_prompt=r.get("basic_prompt", 0.0),
            drop_image=r["drop_image"],
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
            architecture="Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL vision transformer "
            "+ patch merger + Qwen2 decoder with M-RoPE)",
            parameters=sum(p.numel() for p in model.parameters()),
            decoder_layers=model.config.text_config.num_hidden_layers,
        ),
        evaluation=ev,
        mech_eval=me,
        test_set=dict(split="test", seed=0, n=n, fingerprint=varied.fingerprint(samples)),
        attention_n=min(n, n_attention),
        attention_share_last_token=att,
        eval_wall_s=None,
        files_bytes={},
    )
    card["eval_wall_s"] = round(time.time() - t0, 1)
    return save_card(folder, card, _md(card))


def main(argv=None) -> int:
    """CLI: (re)write the card of a built Qwen organism folder."""
    from mech.organisms import organism_dir

    ap = argparse.ArgumentParser(prog="python -m mech.organisms.qwen_card")
    ap.add_argument("name")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.dir or organism_dir(args.name)
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mech.models.processor import load_processor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, attn_implementation="eager")
    info = json.loads((folder / "train_info.json").read_text())
    write_card(
        model.eval(), load_processor(str(folder))[0], folder, name=args.name, train_info=info, n=args.n
    )
    print((folder / "CARD.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
