"""Summary statistics of attention mass: FastV allocation and efficiency, MDI and AEI.

All functions take the head-resolved mass ``[batch, layer, head, group]`` (the attention the chosen
query rows pay to each token group; rows sum to 1 over groups) and the token counts
``[batch, group]`` of the key positions, and average over heads first (the papers report
head-averaged attention).

Sources:

* **Attention allocation and efficiency** — FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens
  After Layer 2", §3.2): the *total attention allocation* λ of a token type in a layer is the sum of
  the attention scores the (output) token pays to the tokens of that type; the *attention
  efficiency* ε is the average attention score per token of that type, ε = λ / |type|. FastV's
  types are positional (system prompt before the image, image, user instruction after it, output);
  with groups from ``scheme="fastv"`` (:func:`mech.prepare.groups.regroup`) λ and ε are FastV's
  λ_sys, λ_img, λ_ins and ε of each, for the query mech reads (the answer position: the query that
  produces the first output token).
* **MDI and AEI** — *When Language Overrules: Revealing Text Dominance in Multimodal Large Language
  Models* (Wu, Tang, Zheng, Jiang, 2025, arXiv:2508.10552, eqs. 1–4). With A_T, A_O the attention
  mass to text and to non-text tokens and |T|, |O| their counts:
  MDI = (A_T / |T|) / (A_O / |O|) (eq. 1; > 1 text dominance, < 1 non-text dominance);
  AEI_m = P_m / Q_m with P_T = A_T / (A_T + A_O), Q_T = |T| / (|T| + |O|) (eqs. 2–4; 1 = attention
  proportional to token share). Note MDI = AEI_T / AEI_O. O is always the union of the modality
  groups (``image``, ``video``, ``audio``). What T is, is the ``text`` option (:data:`TEXT_SIDES`):

  - ``"user"`` (mech's default): the ``text`` group, the user's words; ``template`` and ``bos``
    enter neither side, so neither the chat template nor the BOS attention sink inflates a side
    (docs/design.md, "Words, token groups and conditions").
  - ``"all_non_modality"``: every input position that is not a modality token (text ∪ template ∪
    bos). The paper splits the input into text and non-text tokens and names no third kind
    (its Fig. 1: "attention among non-text, text, and generated output tokens"), so this is the
    paper's text side as written.
  - ``"user+template"``: text ∪ template, BOS excluded: the public re-implementation
    (github.com/Song-haJo/LangOverrule, ``get_token_masks``: text = every token that is not the
    modality placeholder, BOS, EOS or padding; mech counts an EOS id inside the prompt as template).
    It is every non-modality group but ``bos``: under FastV's scheme that is ``system`` and
    ``instruction``, and ``system`` holds the BOS token there (pass a tuple of groups to leave it out).
  - a tuple of group names.

  And how samples are combined is ``aggregate`` (:data:`AGGREGATES`, :func:`mdi_summary`,
  :func:`aei_summary`): ``"ratio_of_means"`` (mech's default; the index of the sample-mean mass and
  counts, stable where single samples have tiny A_O) or ``"mean_of_ratios"`` (the mean over samples
  of the per-sample index, as the re-implementation's ``analyze_dataset`` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mech.errors import ConfigError

__all__ = [
    "AGGREGATES",
    "MODALITY_GROUPS",
    "TEXT_SIDES",
    "aei",
    "aei_summary",
    "allocation",
    "efficiency",
    "mdi",
    "mdi_of_means",
    "mdi_summary",
    "text_side",
]

MODALITY_GROUPS = ("image", "video", "audio")
TEXT_SIDES = ("user", "all_non_modality", "user+template")
AGGREGATES = ("ratio_of_means", "mean_of_ratios")


def allocation(mass: torch.Tensor) -> torch.Tensor:
    """FastV total attention allocation λ: ``[batch, layer, group]``, head-mean mass (sums to 1 over groups)."""
    return mass.mean(dim=2)


def efficiency(mass: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """FastV attention efficiency ε = λ / |group|: ``[batch, layer, group]``, mean attention per token
    (unit: fraction of the query's attention per token). NaN for a group with no token."""
    c = counts.to(mass.dtype)[:, None, :]
    return allocation(mass) / torch.where(c > 0, c, torch.nan)


def text_side(names: Sequence[str], text: str | Sequence[str] = "user") -> list[str]:
    """The groups that make up T (the text side of MDI / AEI) for the ``text`` option.

    Args:
        names: the group names along the group axis.
        text: ``"user"``, ``"all_non_modality"``, ``"user+template"`` (see the module docstring) or a
            sequence of group names.

    Raises:
        ConfigError: unknown option or group; ``"user"`` with groups that have no ``text`` group (FastV's
            scheme); a text side that shares a group with the modality side.
    """
    names = list(names)
    if isinstance(text, str):
        if text not in TEXT_SIDES:
            raise ConfigError(f"text={text!r}; allowed: {', '.join(TEXT_SIDES)} or a tuple of group names")
        if text == "user":
            if "text" not in names:
                raise ConfigError(
                    f"these groups {tuple(names)} have no 'text' group; pass text='all_non_modality' "
                    "or a tuple of group names (e.g. ('instruction',) for FastV's scheme)."
                )
            return ["text"]
        return [n for n in names if n not in MODALITY_GROUPS and (text == "all_non_modality" or n != "bos")]
    side = list(text)
    bad = [n for n in side if n not in names or n in MODALITY_GROUPS]
    if bad or not side:
        raise ConfigError(
            f"text={tuple(side)}: the text side must be non-modality groups among {tuple(names)}; "
            f"invalid: {bad or 'empty'}"
        )
    return side


def _sides(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str], text="user"):
    lam = allocation(mass)
    t = [list(names).index(g) for g in text_side(names, text)]
    o = [list(names).index(g) for g in MODALITY_GROUPS if g in names]
    a_t, a_o = lam[..., t].sum(-1), lam[..., o].sum(-1)
    n_t = counts[:, t].sum(-1).to(mass.dtype)[:, None]
    n_o = counts[:, o].sum(-1).to(mass.dtype)[:, None]
    return a_t, a_o, n_t, n_o


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a / torch.where(b > 0, b, torch.nan)


def mdi(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str], text="user") -> torch.Tensor:
    """Modality Dominance Index per sample and layer, ``[batch, layer]``:
    (A_T / |T|) / (A_O / |O|) (*When Language Overrules*, eq. 1); T chosen by ``text``
    (:func:`text_side`). NaN where a side has no token or no mass."""
    a_t, a_o, n_t, n_o = _sides(mass, counts, names, text)
    return _div(_div(a_t, n_t), _div(a_o, n_o))


def aei(
    mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str], text="user"
) -> dict[str, torch.Tensor]:
    """Attention Efficiency Index per sample and layer (*When Language Overrules*, eqs. 2–4):
    ``{"text": [batch, layer], "non_text": [batch, layer]}``, AEI_m = P_m / Q_m, attention share
    within T ∪ O over token share within T ∪ O; T chosen by ``text`` (:func:`text_side`)."""
    a_t, a_o, n_t, n_o = _sides(mass, counts, names, text)
    a, n = a_t + a_o, n_t + n_o
    return {"text": _div(_div(a_t, a), _div(n_t, n)), "non_text": _div(_div(a_o, a), _div(n_o, n))}


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate={aggregate!r}; allowed: {', '.join(AGGREGATES)}")


def mdi_summary(
    mass: torch.Tensor,
    counts: torch.Tensor,
    names: Sequence[str],
    text="user",
    aggregate: str = "ratio_of_means",
) -> torch.Tensor:
    """MDI per layer ``[layer]`` of a data set. ``aggregate="ratio_of_means"`` (default):
    (mean A_T / mean |T|) / (mean A_O / mean |O|), the index of the sample means; ``"mean_of_ratios"``:
    the mean over samples of the per-sample MDI (NaN samples skipped), as the re-implementation of
    *When Language Overrules* averages.

    Raises:
        ConfigError: unknown ``aggregate`` or ``text``.
    """
    _check_aggregate(aggregate)
    if aggregate == "mean_of_ratios":
        return mdi(mass, counts, names, text).nanmean(0)
    return mdi(mass.mean(0, keepdim=True), counts.float().mean(0, keepdim=True), names, text)[0]


def aei_summary(
    mass: torch.Tensor,
    counts: torch.Tensor,
    names: Sequence[str],
    text="user",
    aggregate: str = "ratio_of_means",
) -> dict[str, torch.Tensor]:
    """AEI per layer, ``{"text": [layer], "non_text": [layer]}``, aggregated as in :func:`mdi_summary`.

    Raises:
        ConfigError: unknown ``aggregate`` or ``text``.
    """
    _check_aggregate(aggregate)
    if aggregate == "mean_of_ratios":
        return {k: v.nanmean(0) for k, v in aei(mass, counts, names, text).items()}
    return {
        k: v[0]
        for k, v in aei(mass.mean(0, keepdim=True), counts.float().mean(0, keepdim=True), names, text).items()
    }


def mdi_of_means(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str], text="user") -> torch.Tensor:
    """MDI per layer ``[layer]`` of the data set: the ratio of sample means
    (mean A_T / mean |T|) / (mean A_O / mean |O|) (= ``mdi_summary(..., aggregate="ratio_of_means")``)."""
    return mdi_summary(mass, counts, names, text, "ratio_of_means")
