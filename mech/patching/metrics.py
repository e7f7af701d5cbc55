"""Patching metrics on the answer position, in fp32, one value per row.

* ``logit_diff``: logit(answer) − logit(counterfactual) at the last position (Wang et al. 2022,
  IOI, §3; Heimersheim & Nanda 2024, "How to use and interpret activation patching", §3.2).
* ``prob``: softmax probability of the answer token.
* ``kl``: KL(p_clean ‖ p_run) over the vocabulary at the last position, in nats (0 on the clean
  run; Heimersheim & Nanda 2024 §3.2 and Zhang & Nanda 2024 on KL as a patching metric).

Normalized patching effect (Heimersheim & Nanda 2024, eq. 1, on batch means):

* denoising (clean activations into the corrupted run):
  ``(patched − corrupted) / (clean − corrupted)``: 0 = nothing restored, 1 = clean restored;
* noising (corrupted activations into the clean run):
  ``(clean − patched) / (clean − corrupted)``: 0 = no damage, 1 = full damage (the patched run
  scores like the corrupted one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mech.errors import ConfigError, InputError, MechError

METRICS = ("logit_diff", "prob", "kl")
DIRECTIONS = ("denoising", "noising")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    return direction


@dataclass
class Metric:
    """A metric bound to its targets.

    Attributes:
        name: one of :data:`METRICS`.
        answer: LongTensor ``[batch]``: answer token id per row (logit_diff, prob).
        counterfactual: LongTensor ``[batch]``: the competing token id per row (logit_diff).
        clean_logp: ``[batch, vocab]`` log-probabilities of the clean run at the last position (kl;
            set by :func:`mech.activation_patching`).
    """

    name: str
    answer: torch.Tensor | None = None
    counterfactual: torch.Tensor | None = None
    clean_logp: torch.Tensor | None = None

    def check(self, batch: int) -> None:
        """Raises ConfigError/InputError when the targets the metric needs are missing or misshaped."""
        check_metric(self.name)
        need = {"logit_diff": ("answer", "counterfactual"), "prob": ("answer",), "kl": ()}[self.name]
        for attr in need:
            value = getattr(self, attr)
            if value is None:
                raise ConfigError(f"metric {self.name!r} needs {attr} token ids (a LongTensor [batch]); pass {attr}=...")
            if value.shape != (batch,):
                raise InputError(f"{attr} must be a LongTensor [batch={batch}]; got shape {tuple(value.shape)}")
        if self.clean_logp is not None:
            check_token_ids(batch, self.clean_logp.shape[-1], **{a: getattr(self, a) for a in need})

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Metric ``[n]`` of last-position ``logits`` ``[n, vocab]``; ``rows`` ``[n]`` maps each to its sample.

        Raises:
            MechError: a NaN or infinite value (the message names the rows).
        """
        logits = logits.float()
        rows = rows.to(logits.device)
        ar = torch.arange(len(rows), device=logits.device)
        if self.name == "logit_diff":
            out = logits[ar, self.answer.to(logits.device)[rows]] - logits[ar, self.counterfactual.to(logits.device)[rows]]
        elif self.name == "prob":
            out = logits.softmax(-1)[ar, self.answer.to(logits.device)[rows]]
        else:
            if self.clean_logp is None:
                raise ConfigError("metric 'kl' needs the clean run's log-probabilities (clean_logp)")
            ref = self.clean_logp.to(logits.device)[rows].float()
            out = (ref.exp() * (ref - logits.log_softmax(-1))).sum(-1)
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            raise MechError(f"metric {self.name!r} is not finite (NaN/inf) for sample rows "
                            f"{sorted(set(rows[bad].tolist()))}; check the model's dtype (use float32) and inputs")
        return out


def check_token_ids(batch: int, vocab: int, **ids: torch.Tensor | None) -> None:
    """Raises InputError unless every given ``ids`` (None = not given) is ``[batch]`` of ids in ``[0, vocab)``."""
    for name, value in ids.items():
        if value is None:
            continue
        value = torch.as_tensor(value)
        if value.shape != (batch,) or value.is_floating_point():
            raise InputError(f"{name} must be a LongTensor [batch={batch}] of token ids; got {value.dtype} "
                             f"{tuple(value.shape)}")
        if len(value) and (int(value.min()) < 0 or int(value.max()) >= vocab):
            raise InputError(f"{name} holds token ids outside the vocabulary [0, {vocab}): "
                             f"{value[(value < 0) | (value >= vocab)].tolist()[:5]}; pass ids of this model's tokenizer")


def normalized_effect(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor,
                      direction: str) -> torch.Tensor:
    """Normalized patching effect of batch means (see the module docstring).

    Args:
        patched: ``[..., batch]`` metric of the patched runs.
        clean, corrupted: ``[batch]`` metric of the clean and corrupted runs.

    Raises:
        MechError: clean and corrupted means are equal, so the normalisation is undefined (the
            message names the rows where clean == corrupted).
    """
    c, k = clean.float().mean(), corrupted.float().mean()
    denom = c - k
    if abs(float(denom)) <= 1e-6 * max(1.0, abs(float(c))):
        same = (clean - corrupted).abs() <= 1e-6
        raise MechError(f"the clean and corrupted metric are equal on average ({float(c):.6g}), so the normalized "
                        f"effect is undefined; rows with clean == corrupted: {same.nonzero().flatten().tolist()}. "
                        "Use a corruption that changes the answer, or normalize=False for raw metric values.")
    p = patched.float().mean(-1)
    return (p - k) / denom if direction == "denoising" else (c - p) / denom
