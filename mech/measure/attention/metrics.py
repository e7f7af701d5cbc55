"""Summary statistics of attention mass: FastV allocation and efficiency, MDI and AEI.

All functions take the head-resolved mass ``[batch, layer, head, group]`` (the attention the chosen
query rows pay to each token group; rows sum to 1 over groups) and the token counts
``[batch, group]`` of the key positions, and average over heads first (the papers report
head-averaged attention).

Sources:

* **Attention allocation and efficiency** — FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens
  After Layer 2", §3.2): the *total attention allocation* λ of a token type in a layer is the sum of
  the attention scores the (output) token pays to the tokens of that type; the *attention
  efficiency* ε is the average attention score per token of that type, ε = λ / |type|.
* **MDI and AEI** — *When Language Overrules: Revealing Text Dominance in Multimodal Large Language
  Models* (Wu, Tang, Zheng, Jiang, 2025, arXiv:2508.10552, eqs. 1–4). With A_T, A_O the attention
  mass to text and to non-text tokens and |T|, |O| their counts:
  MDI = (A_T / |T|) / (A_O / |O|) (eq. 1; > 1 text dominance, < 1 non-text dominance);
  AEI_m = P_m / Q_m with P_T = A_T / (A_T + A_O), Q_T = |T| / (|T| + |O|) (eqs. 2–4; 1 = attention
  proportional to token share). The paper's formulas were taken from its abstract/definitions and a
  public re-implementation of eqs. 1–4; it does not define how chat-template and BOS tokens count.
  mech's reading: T = the ``text`` group (the user's words), O = the union of the modality groups
  (``image``, ``video``, ``audio``); ``template`` and ``bos`` enter neither side, so the BOS
  attention sink cannot inflate either modality (docs/design.md, "Words, token groups and
  conditions"). Note MDI = AEI_T / AEI_O.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MODALITY_GROUPS = ("image", "video", "audio")


def allocation(mass: torch.Tensor) -> torch.Tensor:
    """FastV total attention allocation λ: ``[batch, layer, group]``, head-mean mass (sums to 1 over groups)."""
    return mass.mean(dim=2)


def efficiency(mass: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """FastV attention efficiency ε = λ / |group|: ``[batch, layer, group]``, mean attention per token
    (unit: fraction of the query's attention per token). NaN for a group with no token."""
    c = counts.to(mass.dtype)[:, None, :]
    return allocation(mass) / torch.where(c > 0, c, torch.nan)


def _sides(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str]):
    lam = allocation(mass)
    t = names.index("text")
    o = [names.index(g) for g in MODALITY_GROUPS if g in names]
    a_t, a_o = lam[..., t], lam[..., o].sum(-1)
    n_t = counts[:, t].to(mass.dtype)[:, None]
    n_o = counts[:, o].sum(-1).to(mass.dtype)[:, None]
    return a_t, a_o, n_t, n_o


def mdi(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Modality Dominance Index per sample and layer, ``[batch, layer]``:
    (A_T / |T|) / (A_O / |O|) (*When Language Overrules*, eq. 1). NaN where a side has no token
    or no mass."""
    a_t, a_o, n_t, n_o = _sides(mass, counts, names)
    num = a_t / torch.where(n_t > 0, n_t, torch.nan)
    den = a_o / torch.where(n_o > 0, n_o, torch.nan)
    return num / torch.where(den > 0, den, torch.nan)


def aei(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Attention Efficiency Index per sample and layer (*When Language Overrules*, eqs. 2–4):
    ``{"text": [batch, layer], "non_text": [batch, layer]}``, AEI_m = P_m / Q_m, attention share
    within text ∪ non-text over token share within text ∪ non-text."""
    a_t, a_o, n_t, n_o = _sides(mass, counts, names)
    a = a_t + a_o
    n = n_t + n_o
    p_t, p_o = a_t / torch.where(a > 0, a, torch.nan), a_o / torch.where(a > 0, a, torch.nan)
    q_t, q_o = n_t / torch.where(n > 0, n, torch.nan), n_o / torch.where(n > 0, n, torch.nan)
    return {"text": p_t / torch.where(q_t > 0, q_t, torch.nan),
            "non_text": p_o / torch.where(q_o > 0, q_o, torch.nan)}


def mdi_of_means(mass: torch.Tensor, counts: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """MDI per layer ``[layer]`` of the data set: the ratio of sample means
    (mean A_T / mean |T|) / (mean A_O / mean |O|), stable where single samples have tiny A_O."""
    return mdi(mass.mean(0, keepdim=True), counts.float().mean(0, keepdim=True), names)[0]
