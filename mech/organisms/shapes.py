"""``organism:shapes`` — a seeded synthetic VQA set with a controllable language prior.

Each sample is a small RGB image (32×32, noisy grey background) holding one or two coloured
shapes (``attributes.objects[k].patch``: the row-major index of the 8-px patch, i.e. image
token, holding the object's centre), a question about it, a single-word answer, and multiple-choice
options in the MMMU-Pro "standard (4 options)" / "standard (10 options)" formats.

Templates (``TEMPLATES``) and their answer sets:

==================  ==========================================  =====================
template            question                                    answers
==================  ==========================================  =====================
``color_of_shape``  what color is the {shape} ?                 6 colours
``shape_left``      what shape is on the left ?                 3 shapes (2 shapes)
``shape_right``     what shape is on the right ?                3 shapes (2 shapes)
``color_left``      what color is the shape on the left ?       6 colours (2 shapes)
``color_right``     what color is the shape on the right ?      6 colours (2 shapes)
``exist``           is there a {color} {shape} ?                yes / no (near miss)
``count``           how many shapes are there ?                 one / two
==================  ==========================================  =====================

Every question has a *prior answer* (``prior_answer``): the answer its text alone predicts
(``PRIOR_COLOR[shape]`` for colour-of-shape, "yes" iff the colour is the shape's prior colour
for existence, a fixed word for the rest). Gold answers are drawn uniformly from the template's
answer set *before* the scene is drawn, so on a ``p=0`` set any text-only strategy scores
exactly the per-template chance in expectation, and the prior is right on about 1/|answers|.

The language-prior knob ``p``: on the templates in ``prior_templates`` (default: all), each
training label is, with probability ``p``, *overridden* by the prior answer whatever the image
shows ("override" planting, see docs/organisms.md). ``p=0`` gives a set that must be read from the
image. ``text_noise`` replaces each content word of the question by a random word of the same class
with that probability, keeping the label (an unreliable-text knob; no shipped recipe uses it).

The mirror knob ``image_templates`` (image-biased organism): on those templates the label is the
item's *image answer* (``image_answer``) whatever the question asks: the colour / shape of the
first (left, or only) shape, the true count, and for existence "yes" iff two shapes are shown;
always a word of the template's answer set. ``basic_prompt`` replaces the question by
``BASIC_PROMPT`` on that fraction of samples (never on image-dropped ones) with the image answer as
label, so the ``image_only`` condition is in distribution.

Splits: ``split`` selects an independent seed stream (``"train"``, ``"val"``, ``"test"``), so the
splits never share a random stream; ids are ``"{split}-{seed}-{index}"``.
"""

from __future__ import annotations

import hashlib
import string

import numpy as np
from PIL import Image

from mech.errors import ConfigError
from mech.organisms.scenes import (
    ANSWER_WORDS,
    ANSWERS,
    COLOR_NAMES,
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    TEMPLATES,
    draw_options,
    draw_scene,
    render,
)

__all__ = [
    "ANSWERS",
    "ANSWER_WORDS",
    "BASIC_PROMPT",
    "COLORS",
    "COLOR_NAMES",
    "FIXED_PRIOR",
    "IMAGE_SIZE",
    "OPTION_LETTERS",
    "PRIOR_COLOR",
    "SHAPES",
    "TEMPLATES",
    "TRAIN_WEIGHTS",
    "chance",
    "check_recipe",
    "draw_options",
    "draw_scene",
    "fingerprint",
    "format_prompt",
    "generate",
    "image_answer",
    "prior_answer",
    "question_text",
    "render",
]

PRIOR_COLOR = {"circle": "red", "square": "green", "triangle": "blue"}
FIXED_PRIOR = {
    "shape_left": "circle",
    "shape_right": "triangle",
    "color_left": "orange",
    "color_right": "purple",
    "count": "two",
}
BASIC_PROMPT = "Based on the provided images, please answer the question."
OPTION_LETTERS = string.ascii_uppercase[:10]
_SPLIT_STREAM = {"train": 11, "val": 23, "test": 37}
_TRAIN_WEIGHTS = np.array([1.5, 2.5, 2.5, 1.0, 1.0, 1.0, 0.5])


def question_text(template: str, shape: str | None = None, color: str | None = None) -> str:
    """The question string of ``template`` (words separated by spaces, lower case)."""
    return {
        "color_of_shape": f"what color is the {shape} ?",
        "shape_left": "what shape is on the left ?",
        "shape_right": "what shape is on the right ?",
        "color_left": "what color is the shape on the left ?",
        "color_right": "what color is the shape on the right ?",
        "exist": f"is there a {color} {shape} ?",
        "count": "how many shapes are there ?",
    }[template]


def prior_answer(template: str, shape: str | None = None, color: str | None = None) -> str:
    """The answer the question text alone predicts (the planted language prior)."""
    if template == "color_of_shape":
        return PRIOR_COLOR[shape]
    if template == "exist":
        return "yes" if PRIOR_COLOR[shape] == color else "no"
    return FIXED_PRIOR[template]


def image_answer(template: str, objs: list[tuple[str, str]]) -> str:
    """The answer the image alone gives for ``template`` (the planted image property).

    ``objs``: ``(color, shape)`` left to right. Colour templates: the first shape's colour; shape
    templates: the first shape's shape; ``count``: the true count; ``exist``: "yes" iff two shapes.
    """
    if template in ("color_of_shape", "color_left", "color_right"):
        return objs[0][0]
    if template in ("shape_left", "shape_right"):
        return objs[0][1]
    if template == "count":
        return "one" if len(objs) == 1 else "two"
    if template == "exist":
        return "yes" if len(objs) == 2 else "no"
    raise ConfigError(f"template {template!r}; allowed: {', '.join(TEMPLATES)}")


def format_prompt(question: str | None, image: bool = True) -> str:
    """The exact text the organisms are trained on (before ``<image>`` expansion).

    Equals ``processor.apply_chat_template`` of one user turn ``[image?, text]`` with
    ``add_generation_prompt=True``; the answer word is the next token after ``assistant :``.
    """
    parts = ["user :"] + (["<image>"] if image else []) + ([question] if question else [])
    return " ".join(parts) + " assistant :"


def chance(samples: list[dict], mode: str = "word") -> float:
    """Expected accuracy of guessing, averaged over ``samples``.

    ``mode="word"`` (the definition used by the cards): per item 1/|answer set of its template|
    (the organisms are scored by argmax over the template's answer words; because test gold
    answers are uniform per template this is also the accuracy of any fixed answer per template).
    ``mode="options"``: 1/len(options). Raises ConfigError for another mode.
    """
    if mode == "word":
        return float(np.mean([1.0 / len(ANSWERS[s["template"]]) for s in samples]))
    if mode == "options":
        return float(np.mean([1.0 / len(s["options"]) for s in samples]))
    raise ConfigError(f"chance mode {mode!r}; allowed: 'word', 'options'")


def _place(n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Centres and radii (5-7 px): one shape anywhere; two shapes split into left/right halves."""
    r = [int(rng.integers(5, 8)) for _ in range(n)]
    if n == 1:
        return [(int(rng.integers(8, 24)), int(rng.integers(8, 24)), r[0])]
    return [
        (int(rng.integers(7, 10)), int(rng.integers(8, 24)), r[0]),
        (int(rng.integers(22, 25)), int(rng.integers(8, 24)), r[1]),
    ]


def _noise_question(template: str, shape, color, rng):
    """Replace each content word (colour, shape, side) by a random one of its class w.p. 1."""
    side_swap = {
        "shape_left": "shape_right",
        "shape_right": "shape_left",
        "color_left": "color_right",
        "color_right": "color_left",
    }
    t = side_swap.get(template, template) if rng.random() < 0.5 else template
    s = SHAPES[int(rng.integers(3))] if shape else None
    c = COLOR_NAMES[int(rng.integers(6))] if color else None
    return question_text(t, s, c)


def generate(
    n: int,
    *,
    split: str = "test",
    seed: int = 0,
    p: float = 0.0,
    prior_templates: tuple[str, ...] | None = None,
    n_options: int = 4,
    drop_image: float = 0.0,
    text_noise: float = 0.0,
    image_templates: tuple[str, ...] = (),
    basic_prompt: float = 0.0,
    templates: tuple[str, ...] | None = None,
    as_array: bool = False,
) -> list[dict]:
    """Draw ``n`` samples (plain dicts) from the ``split`` stream of ``seed``.

    Keys: ``id``, ``question``, ``options`` (``n_options`` words, gold among them),
    ``answer`` (option letter), ``answer_text`` (the label: the prior answer on overridden items),
    ``true_answer`` (what the image shows), ``image`` (PIL RGB 32×32, or uint8 array [32, 32, 3]
    when ``as_array``; None when dropped), ``images`` (``[image]``, or ``[]`` when dropped),
    ``prompt_style`` (``"bare"``: the prompt is the question alone, as in training), ``template``,
    ``prior_answer``, ``prior_correct`` (prior == true answer), ``overridden``, ``image_answer``
    (:func:`image_answer`), ``image_correct`` (image answer == true answer), ``image_planted`` (label
    set to the image answer: an ``image_templates`` item or a ``basic_prompt`` one), ``attributes``
    (``objects`` left to right as ``{color, shape, x, y, r, patch}`` (patch: row-major image-token
    index of the centre), ``n_objects``, ``asked_shape``, ``asked_color``).
    Templates are uniform on ``val``/``test`` and weighted towards shape questions on ``train``.

    Raises ConfigError for an unknown split or template, p or basic_prompt outside [0, 1],
    n_options not 4/10, or a template both overridden (p > 0) and in ``image_templates``.
    """
    if split not in _SPLIT_STREAM:
        raise ConfigError(f"split {split!r}; allowed: {', '.join(_SPLIT_STREAM)}")
    if n_options not in (4, 10):
        raise ConfigError(f"n_options={n_options}; MMMU-Pro standard formats allow 4 or 10")
    templates, prior_templates, image_templates = check_recipe(
        TEMPLATES, p, basic_prompt, templates, prior_templates, image_templates
    )
    rng = np.random.default_rng([_SPLIT_STREAM[split], seed])
    w = np.array([_TRAIN_WEIGHTS[TEMPLATES.index(t)] if split == "train" else 1.0 for t in templates])
    tmpl_idx = rng.choice(len(templates), size=n, p=w / w.sum())
    out = []
    for i in range(n):
        template = templates[tmpl_idx[i]]
        answers = ANSWERS[template]
        gold = answers[int(rng.integers(len(answers)))]
        objs, shape, color = draw_scene(template, gold, rng)
        placed = _place(len(objs), rng)
        objects = [
            dict(color=c, shape=s, x=x, y=y, r=r, patch=4 * (y // 8) + x // 8)
            for (c, s), (x, y, r) in zip(objs, placed)
        ]
        prior = prior_answer(template, shape, color)
        img_ans = image_answer(template, objs)
        # every extra draw is conditional on its knob, so older recipes keep their streams
        basic = bool(basic_prompt) and rng.random() < basic_prompt
        overridden = not basic and template in prior_templates and rng.random() < p
        planted = basic or template in image_templates
        label = prior if overridden else img_ans if planted else gold
        question = BASIC_PROMPT if basic else question_text(template, shape, color)
        if not basic and text_noise and rng.random() < text_noise:
            question = _noise_question(template, shape, color, rng)
        opts = draw_options(label, template, n_options, rng)
        arr = render([(o["color"], o["shape"], o["x"], o["y"], o["r"]) for o in objects], rng)
        image = (
            None
            if (drop_image and not basic and rng.random() < drop_image)
            else (arr if as_array else Image.fromarray(arr, "RGB"))
        )
        out.append(
            dict(
                id=f"{split}-{seed}-{i}",
                question=question,
                options=opts,
                prompt_style="bare",
                images=[] if image is None else [image],
                answer=OPTION_LETTERS[opts.index(label)],
                answer_text=label,
                true_answer=gold,
                image=image,
                template=template,
                prior_answer=prior,
                prior_correct=prior == gold,
                overridden=overridden,
                image_answer=img_ans,
                image_correct=img_ans == gold,
                image_planted=planted,
                attributes=dict(
                    objects=objects, n_objects=len(objects), asked_shape=shape, asked_color=color
                ),
            )
        )
    return out


def check_recipe(
    allowed: tuple[str, ...], p: float, basic_prompt: float, templates, prior_templates, image_templates
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The checked ``(templates, prior_templates, image_templates)`` of a generator's recipe.

    ``templates`` defaults to every one of ``allowed``, ``prior_templates`` (None) to every one, and
    ``image_templates`` to none.

    Raises:
        ConfigError: ``p`` or ``basic_prompt`` outside [0, 1], a template outside ``allowed``, or one both
            text-overridden (``p`` > 0) and image-planted.
    """
    if not 0.0 <= p <= 1.0 or not 0.0 <= basic_prompt <= 1.0:
        raise ConfigError(f"p={p}, basic_prompt={basic_prompt} must lie in [0, 1]")
    templates = tuple(templates or allowed)
    prior_templates = tuple(allowed) if prior_templates is None else tuple(prior_templates)
    image_templates = tuple(image_templates or ())
    if p > 0 and set(prior_templates) & set(image_templates):
        raise ConfigError(
            f"templates {sorted(set(prior_templates) & set(image_templates))} are "
            "both text-overridden (p > 0) and image-planted; choose one"
        )
    for t in templates + prior_templates + image_templates:
        if t not in allowed:
            raise ConfigError(f"template {t!r}; allowed: {', '.join(allowed)}")
    return templates, prior_templates, image_templates


def fingerprint(samples: list[dict]) -> str:
    """A short hash of ids, questions, labels and pixels: equal iff the sets are identical."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s['id']}|{s['question']}|{s['answer_text']}|{s['options']}".encode())
        if s["image"] is not None:
            h.update(np.asarray(s["image"]).tobytes())
    return h.hexdigest()[:16]


#: public names for the sibling data set ``organism:shapes-varied`` (:mod:`mech.organisms.varied`)
TRAIN_WEIGHTS = _TRAIN_WEIGHTS
