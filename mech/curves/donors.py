"""Donor samples for resample ablation (the ``patching`` estimator's corruption).

Resample ablation replaces a token group's content by the same group of *another sample* (Chan et
al. 2022, causal scrubbing; symmetric token replacement in Zhang & Nanda 2024, *Towards Best
Practices of Activation Patching*, §3). The donor must have as many positions in the group (the
embeddings are swapped position by position) and should ask the same kind of question, so that
the corrupted prompt still specifies the task and only the group's content changes.

Samples are bucketed by ``(sample["pair_key"], group length proxy)``: ``pair_key`` is optional
(``organism:shapes`` sets it to the answer set of the template: a colour question gets a colour
question's text, a shape question a shape question's); the length proxy is the number of
whitespace-separated words of the formatted prompt for ``text`` and the image sizes for visual
groups. Inside a bucket the donors form one seeded random cycle, so every sample with a bucket mate
gets a donor other than itself, and the donor choice does not depend on the batch size. The exact
token counts are checked again on the prepared inputs (:func:`mech.conditions.donor_rows_ok`):
rows that fail, like samples alone in their bucket, get no estimate (NaN) and are counted.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from mech.errors import ConfigError

DONOR_GROUPS = ("image", "text")


def _length_key(sample: dict, group: str):
    if group == "text":
        from mech.prepare.data import format_prompt

        return len(format_prompt(sample).split())
    return tuple(getattr(im, "size", None) for im in sample.get("images") or [])


def pair_donors(samples: Sequence[dict], group: str, *, seed: int = 0) -> list[int | None]:
    """For each sample the index of its donor for ``group`` (``None``: no sample of the same kind).

    Args:
        samples: sample dicts of :mod:`mech.prepare.data`.
        group: ``"image"`` or ``"text"``.
        seed: seeds the random cycle inside every bucket.

    Raises:
        ConfigError: a group other than image/text.
    """
    if group not in DONOR_GROUPS:
        raise ConfigError(f"donors are paired for groups {DONOR_GROUPS}; got {group!r}.")
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        buckets[(s.get("pair_key"), _length_key(s, group))].append(i)
    rng = random.Random(f"{seed}-{group}")
    donors: list[int | None] = [None] * len(samples)
    for key in sorted(buckets, key=repr):
        members = buckets[key]
        if len(members) < 2:
            continue
        order = members[:]
        rng.shuffle(order)
        for j, i in enumerate(order):
            donors[i] = order[(j + 1) % len(order)]
    return donors


def donor_batch(m, samples: Sequence[dict], donors: Sequence[int | None], indices: Sequence[int], group: str,
                clean=None):
    """Prepared donor inputs for the rows ``indices`` of ``samples``, and which rows have a donor.

    Returns:
        ``(inputs, rows)``: :class:`~mech.prepare.inputs.Inputs` ``[batch, pos]`` whose row ``i`` is
        the donor of ``samples[indices[i]]`` (the sample itself where it has none), and ``rows``
        ``[batch]`` bool, True where a donor exists and its ``group`` length matches exactly (checked
        against ``clean``, the rows' own prepared inputs; prepared here when not given).
    """
    import torch

    from mech.conditions import condition_inputs, donor_rows_ok

    chosen = [samples[i if donors[i] is None else donors[i]] for i in indices]
    inputs = condition_inputs(m, chosen, "complete")
    clean = condition_inputs(m, [samples[i] for i in indices], "complete") if clean is None else clean
    has = torch.tensor([donors[i] is not None for i in indices])
    return inputs, has & donor_rows_ok(clean, inputs, (group,))


def batch_donors(inputs, group: str, *, seed: int = 0):
    """Donors from inside one batch: ``(index, rows)`` for :func:`mech.conditions.resample_features`.

    Rows are bucketed by their number of ``group`` positions and each bucket forms one seeded random
    cycle. ``index`` ``[batch]`` (LongTensor) is each row's donor row; ``rows`` ``[batch]`` (bool) is
    False for a row alone in its bucket (no donor). Without data-set metadata the only pairing rule
    is the length; :func:`pair_donors` also uses ``pair_key``.
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


def contributions_for_rows(m, samples: Sequence[dict], rows: Sequence[int], donors: dict[str, list[int | None]], *,
                           estimators: Sequence[str] | None = None, seed: int = 0, corruption: str = "resample"):
    """Contributions of ``samples[rows]`` explaining the model's own decision, as ``mech contrib``
    computes them: complete inputs, :func:`mech.prepare.targets.decision_tokens` (top option vs runner-up),
    donors from ``donors`` (group -> :func:`pair_donors` over the whole ``samples``; {} for noise).

    Returns:
        ``(contributions, answer, counterfactual)``: :class:`mech.curves.Contributions` with
        ``[batch, layer, group]`` per estimator (``components["decision"]`` ``[batch]``: the decision's
        logit difference, top option − runner-up, from the model's logits) and the two ``[batch]``
        token-id tensors.
    """
    import torch

    from mech.conditions import condition_inputs
    from mech.curves import ESTIMATORS, modality_contributions
    from mech.prepare.targets import decision_tokens

    chunk = [samples[i] for i in rows]
    clean = condition_inputs(m, chunk, "complete")
    batch_donors = {g: donor_batch(m, samples, d, rows, g, clean=clean) for g, d in donors.items()}
    last = m.logits(clean)[torch.arange(len(chunk)), clean.groups.last()].float()
    answer, cf = decision_tokens(m, chunk, last)
    c = modality_contributions(m, clean, answer, cf, estimators=tuple(estimators or ESTIMATORS), seed=seed,
                               corruption=corruption, donors=batch_donors)
    r = torch.arange(len(chunk))
    c.components["decision"] = (last[r, answer.to(last.device)] - last[r, cf.to(last.device)]).float().cpu()
    return c, answer, cf
