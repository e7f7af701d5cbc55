"""Donor samples for resample ablation (the removal of ``patching`` and ``decomposition``).

Resample ablation replaces a token group's content by the same group of *another sample* (Chan et
al. 2022, causal scrubbing; symmetric token replacement in Zhang & Nanda 2024, *Towards Best
Practices of Activation Patching*, §3): the corrupted input keeps the rest of the prompt and stays
close to the data's distribution, and only the group's content changes. It works for every sample of a
heterogeneous data set (every image its own size, questions of any length, one to several images):

* **image**: the donor's images are resized (bicubic, PIL) to *this* sample's exact image sizes, the
  k-th image from the donor's image ``k mod n_donor``, and the donor input is this sample's prompt with
  those images (:func:`donor_sample`). Processors derive the image token grid from the image size only
  (fixed resolution, LLaVA-NeXT's any-resolution tiles, Qwen2-VL's dynamic resolution), so the group has
  exactly as many positions as the sample's own and the swap is position by position.
* **text**: the donor's text embeddings are laid on the sample's text positions in order; a donor with
  as many text tokens as the sample is preferred (pure STR); otherwise its text tokens are repeated or
  truncated to the sample's count (:func:`mech.conditions.splice_rows`, ``fit``), a length-matched
  donor built from another question. Token embeddings carry no position (rotary families add it inside
  attention), so the spliced tokens are what a prompt with those words would embed to.
  Chosen by measurement on the organisms (docs/contributions.md, "Removal"): it orders the planted biases
  with identical donors at most a few percent, where donors of equal word count alone were identical on
  46% of the text removals.

**Pairing** (:func:`pair_donors`, seeded per sample so the choice does not depend on the batch size):
a donor never has the same content of the group as the sample (same prompt text; same image pixels)
while any other sample differs. Candidates are taken from the first non-empty tier:

1. same ``pair_key`` (optional; ``organism:shapes`` sets it to the template's answer set, so a colour
   question gets a colour question's group) and same length key (text: word count; image: sizes),
2. same ``pair_key``,
3. same length key, any ``pair_key``,
4. any other sample,

each with a different content (and, for the image, at least one image); a sample gets no donor
(:data:`NO_DONOR`) only when every other sample has its content. Rows without an estimate carry a reason code (:data:`REASONS`), which
``contrib.json`` reports per sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence

from mech.deprecation import renamed_keywords
from mech.errors import ConfigError

__all__ = [
    "DONOR_GROUPS",
    "REASONS",
    "batch_donors",
    "content_key",
    "contributions_for_rows",
    "donor_batch",
    "donor_sample",
    "pair_donors",
]

DONOR_GROUPS = ("image", "text")
#: reason codes of ``components["missing.<group>"]`` ``[sample]`` (0: the group was removed)
ESTIMATED, NO_DONOR, NO_POSITIONS, DONOR_EMPTY, LENGTH_DIFFERS = 0, 1, 2, 3, 4
REASONS = {
    NO_DONOR: "no other sample has different {group} content to resample from",
    NO_POSITIONS: "the sample has no {group} tokens",
    DONOR_EMPTY: "the donor has no {group} tokens",
    LENGTH_DIFFERS: "the donor's {group} token count differs from the sample's (the image processor's token grid "
    "depends on more than the image size)",
}


def _length_key(sample: dict, group: str):
    if group == "text":
        from mech.prepare.data import format_prompt

        return len(format_prompt(sample).split())
    return tuple(_image(im).size for im in sample.get("images") or [])


def _image(im):
    """The image as the model's inputs read it (:func:`mech.prepare.inputs.load_image`: EXIF orientation,
    transparency onto white, RGB), so sizes and pixels here are the ones the processor sees."""
    from mech.prepare.inputs import load_image

    return load_image(im)


def content_key(sample: dict, group: str) -> str:
    """A digest of the sample's ``group`` content: the formatted prompt (text) or every image's size and
    RGB pixels (image). Two samples with equal keys have identical embeddings of the group."""
    h = hashlib.sha256()
    if group == "text":
        from mech.prepare.data import format_prompt

        h.update(format_prompt(sample).encode())
    else:
        for im in sample.get("images") or []:
            im = _image(im)
            h.update(repr(im.size).encode())
            h.update(im.tobytes())
    return h.hexdigest()


def pair_donors(samples: Sequence[dict], group: str, *, seed: int = 0) -> list[int | None]:
    """For each sample the index of its donor for ``group`` (``None``: every other sample has the same
    content of the group, or there is no other sample). Tiers and content rule: the module docstring.

    Args:
        samples: sample dicts of :mod:`mech.prepare.data`.
        group: ``"image"`` or ``"text"``.
        seed: seeds each sample's choice (``random.Random(f"{seed}-{group}-{index}")``).

    Raises:
        ConfigError: a group other than image/text.
    """
    if group not in DONOR_GROUPS:
        raise ConfigError(f"donors are paired for groups {DONOR_GROUPS}; got {group!r}.")
    content = [content_key(s, group) for s in samples]
    length = [_length_key(s, group) for s in samples]
    keys = [s.get("pair_key") for s in samples]
    usable = [group == "text" or bool(s.get("images")) for s in samples]  # an image donor needs an image
    tiers: list[dict[tuple, list[int]]] = [defaultdict(list) for _ in range(4)]
    for i in range(len(samples)):
        for t, key in enumerate(((keys[i], length[i]), (keys[i],), (length[i],), ())):
            tiers[t][key].append(i)
    donors: list[int | None] = [None] * len(samples)
    for i in range(len(samples)):
        for t, key in enumerate(((keys[i], length[i]), (keys[i],), (length[i],), ())):
            pool = [j for j in tiers[t][key] if content[j] != content[i] and usable[j]]
            if pool:
                donors[i] = random.Random(f"{seed}-{group}-{i}").choice(pool)
                break
    return donors


def donor_sample(sample: dict, donor: dict, group: str) -> dict:
    """The donor input of ``sample`` for ``group``: for ``"image"`` ``sample`` (its prompt) with the donor's
    images resized (bicubic) to ``sample``'s image sizes, the k-th from donor image ``k mod n``; for
    ``"text"`` the donor itself (its text tokens are fitted to the sample's count at the splice)."""
    if group == "text":
        return donor
    from PIL import Image

    own = [_image(im).size for im in sample.get("images") or []]
    theirs = [_image(im) for im in donor.get("images") or []]
    if not own or not theirs:
        return sample
    images = [
        theirs[k % len(theirs)].resize(size, Image.BICUBIC)
        if theirs[k % len(theirs)].size != size
        else theirs[k % len(theirs)]
        for k, size in enumerate(own)
    ]
    return {**sample, "images": images}


def donor_batch(
    m, samples: Sequence[dict], donors: Sequence[int | None], indices: Sequence[int], group: str, clean=None
):
    """Prepared donor inputs for the rows ``indices`` of ``samples``, which rows have a donor, and why not.

    Returns:
        ``(inputs, rows, reason)``: :class:`~mech.prepare.inputs.Inputs` ``[batch, pos]`` whose row ``i`` is
        the donor input (:func:`donor_sample`) of ``samples[indices[i]]`` (the sample itself where it has
        none); ``rows`` ``[batch]`` bool, True where the group can be removed; ``reason`` ``[batch]`` long,
        :data:`ESTIMATED` or a code of :data:`REASONS`. Image rows must match the clean rows' image
        positions exactly (``clean``: the rows' own prepared inputs; prepared here when not given); text
        rows need at least one donor text token.
    """
    import torch

    from mech.conditions import condition_inputs, donor_rows_ok

    chosen = [
        samples[i] if donors[i] is None else donor_sample(samples[i], samples[donors[i]], group)
        for i in indices
    ]
    inputs = condition_inputs(m, chosen, "complete")
    clean = condition_inputs(m, [samples[i] for i in indices], "complete") if clean is None else clean
    reason = torch.full((len(indices),), ESTIMATED, dtype=torch.long)
    reason[torch.tensor([donors[i] is None for i in indices], dtype=torch.bool)] = NO_DONOR
    if group == "text":
        reason[(inputs.groups.mask(group).sum(-1).cpu() == 0) & (reason == ESTIMATED)] = DONOR_EMPTY
    else:
        reason[~donor_rows_ok(clean, inputs, (group,)) & (reason == ESTIMATED)] = LENGTH_DIFFERS
    reason[clean.groups.mask(group).sum(-1).cpu() == 0] = NO_POSITIONS
    return inputs, reason == ESTIMATED, reason


def batch_donors(inputs, group: str, *, seed: int = 0):
    """Donors from inside one batch: ``(index, rows)`` for :func:`mech.conditions.resample_features`.

    Rows are bucketed by their number of ``group`` positions and each bucket forms one seeded random
    cycle. ``index`` ``[batch]`` (LongTensor) is each row's donor row; ``rows`` ``[batch]`` (bool) is
    False for a row alone in its bucket (no donor). Without data-set metadata the only pairing rule
    is the length; :func:`pair_donors` pairs over the whole data set, by content.
    """
    import torch

    counts = inputs.groups.mask(group).sum(-1).tolist()
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(counts):
        buckets[c].append(i)
    rng = random.Random(f"{seed}-{group}-batch")
    index, rows = torch.arange(len(counts)), torch.zeros(len(counts), dtype=torch.bool)
    for c in sorted(buckets):
        members = buckets[c][:]
        if len(members) < 2 or c == 0:
            continue
        rng.shuffle(members)
        for j, i in enumerate(members):
            index[i], rows[i] = members[(j + 1) % len(members)], True
    return index, rows


@renamed_keywords(corruption="removal")
def contributions_for_rows(
    m,
    samples: Sequence[dict],
    rows: Sequence[int],
    donors: dict[str, list[int | None]],
    *,
    estimators: Sequence[str] | None = None,
    seed: int = 0,
    removal: str = "resample",
):
    """Contributions of ``samples[rows]`` explaining the model's own decision, as ``mech contrib``
    computes them: complete inputs, :func:`mech.prepare.targets.decision_tokens` (top option vs runner-up),
    donors from ``donors`` (group -> :func:`pair_donors` over the whole ``samples``; {} for noise).
    ``removal``: ``"resample"`` or ``"noise"``, as in :func:`mech.curves.modality_contributions`.

    Returns:
        ``(contributions, answer, counterfactual)``: :class:`mech.curves.Contributions` with
        ``[batch, layer, group]`` per estimator (``components["decision"]`` ``[batch]``: the decision's
        logit difference, top option − runner-up, from the model's logits; ``components["missing.<group>"]``
        ``[batch]``: the reason code of :data:`REASONS` per row, 0 where the group was removed) and the two
        ``[batch]`` token-id tensors.
    """
    import torch

    from mech.conditions import condition_inputs
    from mech.curves import ESTIMATORS, PATCHED_GROUPS, modality_contributions
    from mech.engines.unembed import answer_logits
    from mech.prepare.targets import decision_tokens

    chunk = [samples[i] for i in rows]
    clean = condition_inputs(m, chunk, "complete")
    made = {g: donor_batch(m, samples, d, rows, g, clean=clean) for g, d in donors.items()}
    with torch.no_grad():
        last = answer_logits(m, clean).float()  # [batch, vocab] at the answer position only
    answer, cf = decision_tokens(m, chunk, last)
    c = modality_contributions(
        m,
        clean,
        answer,
        cf,
        estimators=tuple(estimators or ESTIMATORS),
        seed=seed,
        removal=removal,
        donors={g: (d[0], d[1]) for g, d in made.items()},
    )
    r = torch.arange(len(chunk))
    components = dict(c.components)
    components["decision"] = (last[r, answer.to(last.device)] - last[r, cf.to(last.device)]).float().cpu()
    for g in PATCHED_GROUPS:
        if g in made:
            components[f"missing.{g}"] = made[g][2].float()
        else:  # noise: only a row without the group's tokens has no estimate
            components[f"missing.{g}"] = torch.where(
                clean.groups.mask(g).sum(-1).cpu() == 0, float(NO_POSITIONS), float(ESTIMATED)
            )
    return dataclasses.replace(c, components=components), answer, cf
