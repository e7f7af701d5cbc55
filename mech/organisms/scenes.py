"""The shapes world: its colours, shapes, question types and answer words, and how a scene is drawn
(the objects that make a gold answer true, their pixels, the options offered). Shared by
``organism:shapes`` (:mod:`mech.organisms.shapes`, which re-exports every name here) and
``organism:shapes-varied`` (:mod:`mech.organisms.varied`); the planted priors and the data sets'
splits live in those modules.
"""

from __future__ import annotations

import numpy as np

from mech.errors import ConfigError

__all__ = [
    "ANSWERS",
    "ANSWER_WORDS",
    "COLORS",
    "COLOR_NAMES",
    "IMAGE_SIZE",
    "SHAPES",
    "TEMPLATES",
    "draw_options",
    "draw_scene",
    "render",
]

IMAGE_SIZE = 32
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (235, 220, 30),
    "purple": (150, 40, 200),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
COLOR_NAMES = tuple(COLORS)
TEMPLATES = ("color_of_shape", "shape_left", "shape_right", "color_left", "color_right", "exist", "count")
ANSWERS = {
    "color_of_shape": COLOR_NAMES,
    "shape_left": SHAPES,
    "shape_right": SHAPES,
    "color_left": COLOR_NAMES,
    "color_right": COLOR_NAMES,
    "exist": ("yes", "no"),
    "count": ("one", "two"),
}
#: every word an organism may answer; options for 10-choice items are drawn from this pool
ANSWER_WORDS = COLOR_NAMES + SHAPES + ("yes", "no", "one", "two", "three", "four")


def render(
    objects: list[tuple[str, str, int, int, int]],
    rng: np.random.Generator,
    w: int = IMAGE_SIZE,
    h: int = IMAGE_SIZE,
) -> np.ndarray:
    """Draw ``(color, shape, cx, cy, r)`` objects on a noisy grey ``w``×``h`` canvas (32×32 by default);
    uint8 [h, w, 3]."""
    img = np.clip(rng.normal(128, 8, (h, w, 1)), 0, 255).repeat(3, axis=2)
    yy, xx = np.mgrid[0:h, 0:w]
    for color, shape, cx, cy, r in objects:
        dx, dy = xx - cx, yy - cy
        if shape == "circle":
            mask = dx * dx + dy * dy <= r * r
        elif shape == "square":
            mask = (np.abs(dx) <= r - 1) & (np.abs(dy) <= r - 1)
        else:  # triangle pointing up: apex at (cx, cy - r), base at cy + r
            mask = (dy <= r) & (dy >= -r) & (2 * np.abs(dx) <= dy + r)
        img[mask] = COLORS[color]
    return img.astype(np.uint8)


def draw_scene(template: str, gold: str, rng: np.random.Generator):
    """Draw (objects as [(color, shape)] left to right, shape word, colour word) so gold is true."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    rand_obj = lambda: (pick(COLOR_NAMES), pick(SHAPES))  # noqa: E731
    shape = color = None
    if template == "color_of_shape":
        shape = pick(SHAPES)
        objs = [(gold, shape)]
        if rng.random() < 0.5:
            other = (pick(COLOR_NAMES), pick([s for s in SHAPES if s != shape]))
            objs = [objs[0], other] if rng.random() < 0.5 else [other, objs[0]]
    elif template in ("shape_left", "shape_right", "color_left", "color_right"):
        objs = [rand_obj(), rand_obj()]
        k = 0 if template.endswith("left") else 1
        objs[k] = (objs[k][0], gold) if template.startswith("shape") else (gold, objs[k][1])
    elif template == "exist":
        color, shape = pick(COLOR_NAMES), pick(SHAPES)
        others = [c for c in COLOR_NAMES if c != color]
        # "no" items are near misses: the asked shape in another colour, asked colour absent
        first = (color, shape) if gold == "yes" else (pick(others), shape)
        objs = [first]
        if rng.random() < 0.5:
            other = rand_obj() if gold == "yes" else (pick(others), pick(SHAPES))
            while other == (color, shape):
                other = rand_obj()
            objs = [first, other] if rng.random() < 0.5 else [other, first]
    elif template == "count":
        objs = [rand_obj() for _ in range(1 if gold == "one" else 2)]
    else:
        raise ConfigError(f"template {template!r}; allowed: {', '.join(TEMPLATES)}")
    return objs, shape, color


def draw_options(gold: str, template: str, n_options: int, rng: np.random.Generator) -> list[str]:
    """``n_options`` distinct words containing ``gold``: same-type distractors first, seeded order."""
    same = [w for w in ANSWERS[template] if w != gold]
    if template == "count":
        same += ["three", "four"]
    rest = [w for w in ANSWER_WORDS if w != gold and w not in same]
    same = list(rng.permutation(same))
    rest = list(rng.permutation(rest))
    opts = ([gold] + same + rest)[:n_options]
    return [str(w) for w in rng.permutation(opts)]
