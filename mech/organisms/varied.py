"""``organism:shapes-varied`` — ``organism:shapes`` in the variety of real data (issue 24).

The sibling of :mod:`mech.organisms.shapes` that the Qwen2.5-VL organisms are trained and measured
on. The scenes, colours, shapes, answer sets, prior answers and image answers are those of
``organism:shapes`` (so the planted biases, and the ground truth per question type, carry over);
what varies is what varies in MMMU-Pro:

* **canvas size**: each image is drawn on one of ``CANVASES`` (32×32, 48×32, 32×48, 64×32, 48×48,
  width × height), so with Qwen2.5-VL's processor (patch 8, 2×2 merge: 16 px a decoder token, as
  the real model's patch 14 makes 28 px) an image is 4, 6, 8 or 9 decoder tokens
  (``image_tokens``: ``(w // 16) * (h // 16)``);
* **wording**: every question type has several wordings of different lengths (``WORDINGS``);
  no question type has a single wording;
* **two images**: ``same_color`` / ``same_shape`` show one shape in each of two images and ask
  whether the two have the same colour / shape (yes/no);
* **options**: MMMU-Pro's standard formats, 4 or 10 options per item (drawn per item).

Question types (``TEMPLATES``) are those of ``organism:shapes`` plus the two two-image ones:

================  ==========================================  =============  ==============
template          prior answer (text alone)                   image answer   images
================  ==========================================  =============  ==============
``same_color``    "no"                                        same colour?   2
``same_shape``    "yes"                                       same colour?   2
================  ==========================================  =============  ==============

The image answer of a two-image question is "yes" iff the two shapes have the same colour: a
property of the pair alone, as ``shapes.image_answer`` is of one picture (the first shape's colour,
"yes" iff two shapes for existence). So ``same_color`` is image-answered by its truth, and planting
the image answer on ``same_shape`` is the mirror of planting it on ``shape_right``.

Knobs (``p``, ``prior_templates``, ``image_templates``, ``basic_prompt``, ``drop_image``) mean what
they mean in :func:`mech.organisms.shapes.generate`. A dropped sample loses all its images.
Test/val template weights put ``TWO_IMAGE_WEIGHT`` on each two-image type (≈ 30% of items).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mech.errors import ConfigError
from mech.organisms import shapes

__all__ = [
    "ANSWERS",
    "CANVASES",
    "FIXED_PRIOR",
    "TEMPLATES",
    "TOKEN_PX",
    "TWO_IMAGE",
    "TWO_IMAGE_WEIGHT",
    "WIDE",
    "WORDINGS",
    "chance",
    "fingerprint",
    "generate",
    "image_answer",
    "image_tokens",
    "prior_answer",
]

#: (width, height) of the canvases; multiples of 16 (= the organisms' patch 8 × merge 2)
CANVASES = ((32, 32), (48, 32), (32, 48), (64, 32), (48, 48))
TOKEN_PX = 16
#: the canvases wide enough for two shapes side by side
WIDE = tuple(c for c in CANVASES if c[0] >= 32)
TWO_IMAGE = ("same_color", "same_shape")
TEMPLATES = shapes.TEMPLATES + TWO_IMAGE
ANSWERS = dict(shapes.ANSWERS, same_color=("yes", "no"), same_shape=("yes", "no"))
FIXED_PRIOR = dict(shapes.FIXED_PRIOR, same_color="no", same_shape="yes")
TWO_IMAGE_WEIGHT = 1.5
_TRAIN_WEIGHTS = dict(zip(shapes.TEMPLATES, shapes.TRAIN_WEIGHTS.tolist()), same_color=1.0, same_shape=1.5)
_SPLIT_STREAM = {"train": 13, "val": 29, "test": 41}

#: several wordings of different lengths per question type ({shape}, {color} filled in)
WORDINGS = {
    "color_of_shape": (
        "what color is the {shape} ?",
        "which color does the {shape} have ?",
        "tell me the color of the {shape} in the image .",
        "looking at the picture , what is the color of the {shape} shown ?",
    ),
    "shape_left": (
        "what shape is on the left ?",
        "which shape is on the left side ?",
        "name the shape that you can see on the left of the image .",
    ),
    "shape_right": (
        "what shape is on the right ?",
        "which shape is on the right side ?",
        "name the shape that you can see on the right of the image .",
    ),
    "color_left": (
        "what color is the shape on the left ?",
        "left shape : which color ?",
        "tell me the color of the shape that is on the left side of the picture .",
    ),
    "color_right": (
        "what color is the shape on the right ?",
        "right shape : which color ?",
        "tell me the color of the shape that is on the right side of the picture .",
    ),
    "exist": (
        "is there a {color} {shape} ?",
        "do you see a {color} {shape} ?",
        "does the picture show a {color} {shape} anywhere in it ?",
    ),
    "count": (
        "how many shapes are there ?",
        "count the shapes .",
        "how many shapes can you see in the picture ?",
    ),
    "same_color": (
        "is the shape in the first image the same color as the shape in the second image ?",
        "same color in both images ?",
        "do the two images show shapes of the same color ?",
    ),
    "same_shape": (
        "is the shape in the first image the same shape as the shape in the second image ?",
        "same shape in both images ?",
        "do the two images show the same kind of shape ?",
    ),
}


def image_tokens(width: int, height: int) -> int:
    """Decoder tokens of a ``width``×``height`` canvas under patch 8 and 2×2 merging."""
    return (width // TOKEN_PX) * (height // TOKEN_PX)


def prior_answer(template: str, shape: str | None = None, color: str | None = None) -> str:
    """The answer the question text alone predicts (``shapes.prior_answer`` for the shared types)."""
    if template in TWO_IMAGE:
        return FIXED_PRIOR[template]
    return shapes.prior_answer(template, shape, color)


def image_answer(template: str, objs: list[tuple[str, str]]) -> str:
    """The answer the image(s) alone give: ``shapes.image_answer`` for one image; for two images
    (``objs`` = the shape of the first image, then of the second) "yes" iff the colours match."""
    if template in TWO_IMAGE:
        return "yes" if objs[0][0] == objs[1][0] else "no"
    return shapes.image_answer(template, objs)


def _place(n: int, w: int, h: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Centres and radii (5-7 px). Each shape sits in one 16-px merged-token cell (the cell's
    centre ± 1 px), so it lies inside the four patches the 2×2 merger concatenates: the Qwen2.5-VL
    vision tower has no absolute position embedding (2-D rotary only), and with shapes at any pixel
    offset its tiny organisms stayed at chance on shape questions (docs/organisms.md). Two shapes: the
    first in a cell of the left half of the columns, the second in the right half."""
    cols, rows = w // TOKEN_PX, h // TOKEN_PX

    def centre(lo: int, hi: int) -> int:  # a cell in [lo, hi), then the ± 1 px jitter (in this draw order)
        return TOKEN_PX * int(rng.integers(lo, hi)) + TOKEN_PX // 2 + int(rng.integers(-1, 2))

    r = [int(rng.integers(5, 8)) for _ in range(n)]
    ys = [centre(0, rows) for _ in range(n)]
    if n == 1:
        return [(centre(0, cols), ys[0], r[0])]
    if cols < 2:
        raise ConfigError(f"two shapes need a canvas at least 32 px wide, not {w}")
    half = cols // 2
    return [(centre(0, half), ys[0], r[0]), (centre(cols - half, cols), ys[1], r[1])]


def _two_image_scene(template: str, gold: str, rng: np.random.Generator):
    """One shape per image, drawn so that ``gold`` is true; the other attribute is free."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    c1, s1 = pick(shapes.COLOR_NAMES), pick(shapes.SHAPES)
    key, pool = (0, shapes.COLOR_NAMES) if template == "same_color" else (1, shapes.SHAPES)
    first = (c1, s1)
    same = first[key]
    other = same if gold == "yes" else pick([v for v in pool if v != same])
    c2, s2 = (other, pick(shapes.SHAPES)) if key == 0 else (pick(shapes.COLOR_NAMES), other)
    return [first, (c2, s2)]


def generate(
    n: int,
    *,
    split: str = "test",
    seed: int = 0,
    p: float = 0.0,
    prior_templates: tuple[str, ...] | None = None,
    image_templates: tuple[str, ...] = (),
    basic_prompt: float = 0.0,
    drop_image: float = 0.0,
    templates: tuple[str, ...] | None = None,
) -> list[dict]:
    """Draw ``n`` samples from the ``split`` stream of ``seed`` (deterministic).

    Keys as :func:`mech.organisms.shapes.generate` (``id``, ``question``, ``options``, ``answer``,
    ``answer_text``, ``true_answer``, ``images`` (list of PIL RGB, 0-2), ``image`` (the first or
    None), ``template``, ``prior_answer``, ``prior_correct``, ``overridden``, ``image_answer``,
    ``image_correct``, ``image_planted``, ``prompt_style`` = ``"bare"``, ``attributes``) plus
    ``wording`` (index into ``WORDINGS[template]``), ``canvases`` ([(w, h)] per image) and
    ``image_tokens`` ([decoder tokens] per image). ``attributes.objects[k]`` carries ``image``
    (which image) and ``patch`` (row-major merged-token index of the centre in that image).

    Raises ConfigError: unknown split or template, p or basic_prompt outside [0, 1], a template
    both overridden (p > 0) and image-planted.
    """
    if split not in _SPLIT_STREAM:
        raise ConfigError(f"split {split!r}; allowed: {', '.join(_SPLIT_STREAM)}")
    templates, prior_templates, image_templates = shapes.check_recipe(
        TEMPLATES, p, basic_prompt, templates, prior_templates, image_templates
    )
    rng = np.random.default_rng([_SPLIT_STREAM[split], seed])
    w = np.array(
        [
            _TRAIN_WEIGHTS[t] if split == "train" else (TWO_IMAGE_WEIGHT if t in TWO_IMAGE else 1.0)
            for t in templates
        ]
    )
    tmpl_idx = rng.choice(len(templates), size=n, p=w / w.sum())
    out = []
    for i in range(n):
        template = templates[tmpl_idx[i]]
        gold = ANSWERS[template][int(rng.integers(len(ANSWERS[template])))]
        shape = color = None
        if template in TWO_IMAGE:
            objs = _two_image_scene(template, gold, rng)
            groups = [[objs[0]], [objs[1]]]
        else:
            objs, shape, color = shapes.draw_scene(template, gold, rng)
            groups = [objs]
        canv = [
            (WIDE if len(g) == 2 else CANVASES)[int(rng.integers(len(WIDE if len(g) == 2 else CANVASES)))]
            for g in groups
        ]
        objects, arrays = [], []
        for k, (grp, (cw, ch)) in enumerate(zip(groups, canv)):
            placed = _place(len(grp), cw, ch, rng)
            objs_k = [
                dict(
                    color=c,
                    shape=s,
                    x=x,
                    y=y,
                    r=r,
                    image=k,
                    patch=(cw // TOKEN_PX) * (y // TOKEN_PX) + x // TOKEN_PX,
                )
                for (c, s), (x, y, r) in zip(grp, placed)
            ]
            objects += objs_k
            arrays.append(
                shapes.render([(o["color"], o["shape"], o["x"], o["y"], o["r"]) for o in objs_k], rng, cw, ch)
            )
        prior = prior_answer(template, shape, color)
        img_ans = image_answer(template, objs)
        basic = bool(basic_prompt) and rng.random() < basic_prompt
        overridden = not basic and template in prior_templates and rng.random() < p
        planted = basic or template in image_templates
        label = prior if overridden else img_ans if planted else gold
        k_word = int(rng.integers(len(WORDINGS[template])))
        question = (
            shapes.BASIC_PROMPT if basic else WORDINGS[template][k_word].format(shape=shape, color=color)
        )
        n_options = 4 if rng.random() < 0.5 else 10
        opts = shapes.draw_options(label, template if template not in TWO_IMAGE else "exist", n_options, rng)
        dropped = bool(drop_image) and not basic and rng.random() < drop_image
        images = [] if dropped else [Image.fromarray(a, "RGB") for a in arrays]
        out.append(
            dict(
                id=f"{split}-{seed}-{i}",
                question=question,
                options=opts,
                prompt_style="bare",
                images=images,
                image=images[0] if images else None,
                answer=shapes.OPTION_LETTERS[opts.index(label)],
                answer_text=label,
                true_answer=gold,
                template=template,
                prior_answer=prior,
                prior_correct=prior == gold,
                overridden=overridden,
                image_answer=img_ans,
                image_correct=img_ans == gold,
                image_planted=planted,
                wording=-1 if basic else k_word,
                canvases=[] if dropped else canv,
                image_tokens=[] if dropped else [image_tokens(*c) for c in canv],
                attributes=dict(
                    objects=objects, n_objects=len(objects), asked_shape=shape, asked_color=color
                ),
            )
        )
    return out


def chance(samples: list[dict]) -> float:
    """Mean over items of 1/|answer set of the template| (the cards' definition of chance)."""
    return float(np.mean([1.0 / len(ANSWERS[s["template"]]) for s in samples]))


def fingerprint(samples: list[dict]) -> str:
    """A short hash of ids, questions, labels and pixels of all images."""
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s['id']}|{s['question']}|{s['answer_text']}|{s['options']}".encode())
        for im in s["images"]:
            h.update(np.asarray(im).tobytes())
    return h.hexdigest()[:16]
