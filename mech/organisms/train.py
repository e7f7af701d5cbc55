"""Train a model organism from scratch: ``python -m mech.organisms.train NAME [--out DIR] [--steps N]``.

Deterministic from the recipe's seed (same seed, same thread count → same weights): the model is
initialised by ``build.build_model(seed)`` and batch ``k`` is ``shapes.generate(batch,
split="train", seed=seed * 1_000_000 + k, ...)``. Loss: cross-entropy on the answer word at the
last prompt position only (prompts are left-padded). AdamW (lr 1e-3, wd 0.01), 100 warm-up steps,
cosine decay, gradient clip 1.0 (docs/organisms.md).

Threads: the recipe runs on ONE torch thread (``threads=1``). On the shared 2-core machine two
OpenMP threads thrash under load (measured 1.3-9.9 s/step vs 0.7 s/step with one thread at load
average 7); one thread is also what makes the run bit-reproducible regardless of core count.

The shipped folder ``mech/organisms/<name>/`` (or ``--out``) is written atomically: weights,
processor and card go to a temporary sibling folder that is then renamed into place.

Recipes (``RECIPES``):

* ``balanced`` — p = 0: every label is what the image shows; must read the image.
  2600 steps × batch 64 reach 0.977 held-out; with batch 32 (3600 or 4400 steps) it stalled at
  0.85-0.86, shape/colour binding being the bottleneck, and lr 2e-3 was worse.
* ``text-biased`` — per-template override at p = 0.8 on five of the seven templates
  (``TEXT_BIASED_TEMPLATES``): those are answered from the question text; the two shape
  templates stay image-grounded (ground truth per question type inside one model).
* ``image-biased`` — the mirror: on three templates (``IMAGE_BIASED_TEMPLATES``: colour of a
  shape, shape on the right, colour on the right) the label is the item's image answer
  (``shapes.image_answer``: the first shape's colour / shape) whatever the question asks; the
  other four keep label = true answer. 15% of training samples have the question replaced by
  ``shapes.BASIC_PROMPT`` with the image answer as label (``basic_prompt``), so the
  ``image_only`` condition is in distribution and answers the same as the full question.

All recipes drop the image on 5% of training samples so ``no_image`` is in distribution (the
image-biased recipe never drops it on a basic-prompt sample).

``qwen-balanced``, ``qwen-text-biased``, ``qwen-image-biased`` are the same three recipes on the
Qwen2.5-VL architecture (``mech.organisms.qwen``) and ``organism:shapes-varied``
(``mech.organisms.varied``: canvases of five sizes, several wordings per question type, two-image
questions); the two-image types are planted as their single-image kin (``same_color`` as a colour
question in text-biased, ``same_shape`` as ``shape_right`` in image-biased). 3000 steps × batch 64
(docs/organisms.md: 600 steps on shapes at any pixel offset left every shape question at chance).
Their card is ``mech.organisms.qwen_card`` (n = 1000, with ``mech eval``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mech.organisms import build, shapes

__all__ = [
    "BASE",
    "IMAGE_BIASED_TEMPLATES",
    "QWEN_BASE",
    "RECIPES",
    "TEXT_BIASED_TEMPLATES",
    "main",
    "save",
    "train",
]

TEXT_BIASED_TEMPLATES = ("color_of_shape", "color_left", "color_right", "exist", "count")
IMAGE_BIASED_TEMPLATES = ("color_of_shape", "shape_right", "color_right")
BASE = dict(
    seed=0,
    steps=2600,
    batch=64,
    threads=1,
    lr=1e-3,
    warmup=100,
    p=0.0,
    prior_templates=(),
    drop_image=0.05,
    text_noise=0.0,
    n_layers=build.N_LAYERS,
    templates=None,
)
QWEN_BASE = dict(BASE, arch="qwen", steps=3000, n_layers=4)
RECIPES = {
    "balanced": dict(BASE),
    "text-biased": dict(BASE, p=0.8, prior_templates=TEXT_BIASED_TEMPLATES),
    "image-biased": dict(BASE, image_templates=IMAGE_BIASED_TEMPLATES, basic_prompt=0.15),
    # Qwen2.5-VL organisms on organism:shapes-varied (mech/organisms/qwen.py, varied.py): the same
    # recipes, the two-image types planted as their single-image kin (same_color as a colour
    # question, same_shape as shape_right)
    "qwen-balanced": dict(QWEN_BASE),
    "qwen-text-biased": dict(QWEN_BASE, p=0.8, prior_templates=TEXT_BIASED_TEMPLATES + ("same_color",)),
    "qwen-image-biased": dict(
        QWEN_BASE, image_templates=IMAGE_BIASED_TEMPLATES + ("same_shape",), basic_prompt=0.15
    ),
}


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _kit(r: dict):
    """The builder module of the recipe's architecture: ``build`` (LLaVA) or ``qwen``."""
    if r.get("arch", "llava") == "qwen":
        from mech.organisms import qwen

        return qwen
    return build


def _batch(r: dict, step: int) -> list[dict]:
    """Training batch ``step`` of recipe ``r`` (``organism:shapes`` or ``organism:shapes-varied``)."""
    common = dict(
        split="train",
        seed=r["seed"] * 1_000_000 + step,
        p=r["p"],
        prior_templates=r["prior_templates"],
        drop_image=r["drop_image"],
        image_templates=r.get("image_templates", ()),
        basic_prompt=r.get("basic_prompt", 0.0),
        templates=r["templates"],
    )
    if r.get("arch", "llava") == "qwen":
        from mech.organisms import varied

        return varied.generate(r["batch"], **common)
    return shapes.generate(r["batch"], text_noise=r["text_noise"], **common)


def train(recipe: dict, steps: int | None = None, log=print, resume: Path | None = None):
    """Train one organism; returns ``(model, processor, info)``.

    ``info``: recipe, steps, train wall seconds, final smoothed loss and train accuracy.
    The model is in eval mode, fp32, eager attention. Torch's thread count is restored.
    A recipe with ``cycles`` = k > 1 runs k cosine cycles of ``steps`` each, a fresh AdamW per cycle
    (warm restarts), batches numbered on across cycles. ``resume``: a folder this recipe saved after
    its first c cycles (``train_info.json`` ``cycles_done``); training goes on from there with
    cycle c + 1. No random number is drawn during training (no dropout; batches seeded by their
    number), so this gives the weights of the uninterrupted run.
    """
    r = dict(recipe)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(r.get("threads", 1))
    try:
        return _train(r, steps, log, resume)
    finally:
        torch.set_num_threads(previous_threads)


def _train(r: dict, steps, log, resume=None):
    from mech.errors import SpecError

    steps = int(steps or r["steps"])
    kit = _kit(r)
    processor = kit.build_processor()
    tok = processor.tokenizer
    model = kit.build_model(r["seed"], r["n_layers"])
    start, wall_before = 0, 0.0
    if resume is not None:
        done = json.loads((Path(resume) / "train_info.json").read_text())
        ours = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items() if k != "cycles"}
        if {k: v for k, v in done["recipe"].items() if k != "cycles"} != ours:
            raise SpecError(f"{resume} was trained with another recipe; resume only its own")
        model = type(model).from_pretrained(resume, attn_implementation="eager")
        start, wall_before = done.get("cycles_done", 1), done["train_wall_s"]
    model.train()
    t0 = time.time()
    ema_loss, ema_acc = None, None
    for step in range(start * steps, r.get("cycles", 1) * steps):
        if step % steps == 0:  # a new cycle: fresh optimizer and cosine schedule
            decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
            no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
            opt = torch.optim.AdamW(
                [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                lr=r["lr"],
            )
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda k: _lr_factor(k, steps, min(r["warmup"], max(1, steps // 5)))
            )
        batch = _batch(r, step)
        inputs = kit.encode(processor, batch)
        labels = torch.tensor(tok.convert_tokens_to_ids([s["answer_text"] for s in batch]))
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = (logits.argmax(-1) == labels).float().mean().item()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        if log and (step % 100 == 0 or step % steps == steps - 1):
            log(f"step {step:5d}  loss {ema_loss:.3f}  train-acc {ema_acc:.3f}  {time.time() - t0:6.1f}s")
    model.eval()
    info = dict(
        recipe={k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()},
        steps=steps * r.get("cycles", 1),
        cycles_done=r.get("cycles", 1),
        train_wall_s=round(time.time() - t0 + wall_before, 1),
        final_train_loss=round(ema_loss, 4),
        final_train_acc=round(ema_acc, 4),
    )
    return model, processor, info


def save(model, processor, out: Path, card_writer=None) -> Path:
    """Write weights, processor (and card, via ``card_writer(tmpdir)``) atomically to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the shipped folder must be readable
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if card_writer is not None:
            card_writer(tmp)
        old = out.parent / f".{out.name}-old"
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    """CLI entry point; see the module docstring."""
    from mech.errors import SpecError
    from mech.organisms import organism_dir_default

    ap = argparse.ArgumentParser(
        prog="python -m mech.organisms.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("name", help=f"one of {', '.join(RECIPES)}")
    ap.add_argument("--out", type=Path, default=None, help="folder (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    ap.add_argument(
        "--n-eval",
        type=int,
        default=2000,
        help="held-out items for the card (the Qwen organisms' card uses at most 1000)",
    )
    ap.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a folder this recipe saved after its first cycles: go on from there (recipes with cycles > 1)",
    )
    ap.add_argument(
        "--no-card",
        action="store_true",
        help="skip the card (write it later with python -m mech.organisms.card NAME)",
    )
    args = ap.parse_args(argv)
    if args.name not in RECIPES:
        raise SpecError(f"unknown organism {args.name!r}; valid names: {', '.join(RECIPES)}")
    t0 = time.time()
    model, processor, info = train(RECIPES[args.name], args.steps, resume=args.resume)
    out = args.out or organism_dir_default(args.name)

    def write_card(folder: Path) -> None:
        (folder / "train_info.json").write_text(json.dumps(info, indent=1))
        if args.no_card:
            return
        if RECIPES[args.name].get("arch") == "qwen":  # organism:shapes-varied, n = 1000 + mech eval
            from mech.organisms import qwen_card

            qwen_card.write_card(
                model, processor, folder, name=args.name, train_info=info, n=min(args.n_eval, 1000)
            )
        else:
            from mech.organisms import card

            card.write_card(model, processor, folder, name=args.name, train_info=info, n=args.n_eval)

    save(model, processor, out, write_card)
    print(json.dumps(dict(out=str(out), total_wall_s=round(time.time() - t0, 1), **info)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
