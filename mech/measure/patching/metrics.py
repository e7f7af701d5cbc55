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

__all__ = [
    "DIRECTIONS",
    "METRICS",
    "Metric",
    "Targets",
    "check_direction",
    "check_metric",
    "check_token_ids",
    "normalized_effect",
]

METRICS = ("logit_diff", "prob", "kl")
DIRECTIONS = ("denoising", "noising")


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of :data:`METRICS`. Raises ConfigError listing them otherwise."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric


def check_direction(direction: str) -> str:
    """Return ``direction`` if it is one of :data:`DIRECTIONS`. Raises ConfigError listing them otherwise."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    return direction


@dataclass(frozen=True)
class Targets:
    """The token ids a :class:`Metric` scores one batch against, resolved from that batch's two unpatched
    runs (:meth:`Metric.resolve`) and returned in the result (``PatchingResult.answer``/``.counterfactual``).

    Attributes:
        answer: LongTensor ``[batch]``: answer token id per row (``logit_diff``, ``prob``; else None).
        counterfactual: LongTensor ``[batch]``: the competing token id per row (``logit_diff``; else None).
        clean_logp: ``[batch, vocab]`` fp32 log-probabilities of the clean run at the answer position
            (``kl``; else None).
        batch: the number of rows.
    """

    answer: torch.Tensor | None
    counterfactual: torch.Tensor | None
    clean_logp: torch.Tensor | None
    batch: int

    def rows(self) -> torch.Tensor:
        """``torch.arange(batch)``: every row scored against its own targets."""
        return torch.arange(self.batch)


@dataclass(frozen=True)
class Metric:
    """A patching metric, and optionally fixed targets for it. Frozen: nothing mech does changes it, so
    one ``Metric`` can be passed for any number of batches; the targets resolved for a batch come back
    in that batch's result, never on the metric.

    Attributes:
        name: one of :data:`METRICS`.
        answer: LongTensor ``[batch]``: answer token id per row, fixed for every batch this metric is
            used on (None: resolved per batch, see :meth:`resolve`).
        counterfactual: LongTensor ``[batch]``: the competing token id per row (None: resolved per batch).

    Raises (on construction):
        ConfigError: unknown ``name``; InputError: targets that are not 1-D integer tensors.
    """

    name: str
    answer: torch.Tensor | None = None
    counterfactual: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_metric(self.name)
        for attr in ("answer", "counterfactual"):
            value = getattr(self, attr)
            if value is not None and (
                not isinstance(value, torch.Tensor) or value.dim() != 1 or value.is_floating_point()
            ):
                raise InputError(
                    f"Metric.{attr} must be a LongTensor [batch] of token ids; got {value!r:.80}"
                )

    def resolve(
        self,
        clean_logits: torch.Tensor,
        corr_logits: torch.Tensor,
        answer: torch.Tensor | None = None,
        counterfactual: torch.Tensor | None = None,
    ) -> Targets:
        """The targets of one batch, from the last-position logits ``[batch, vocab]`` of its clean and
        corrupted runs; ``self`` is not changed.

        Per target: the metric's own (``Metric(answer=...)``), else the argument, else the default —
        answer = the clean run's top token; counterfactual (``logit_diff``) = the corrupted run's top
        token other than the answer.

        Raises:
            InputError: token ids that are not ``[batch]`` or lie outside the vocabulary.
            ConfigError: a target given both on the metric and as an argument, with other values.
        """
        batch, vocab = clean_logits.shape[0], clean_logits.shape[-1]
        check_token_ids(
            batch,
            vocab,
            answer=answer,
            counterfactual=counterfactual,
            metric_answer=self.answer,
            metric_counterfactual=self.counterfactual,
        )
        for attr, arg in (("answer", answer), ("counterfactual", counterfactual)):
            own = getattr(self, attr)
            same = (
                own is None or arg is None or torch.equal(own.cpu().long(), torch.as_tensor(arg).cpu().long())
            )
            if not same:
                raise ConfigError(
                    f"{attr} is given twice with different token ids: Metric.{attr}={own.tolist()} "
                    f"and {attr}={torch.as_tensor(arg).tolist()}; pass it once"
                )
        a = cf = logp = None
        if self.name in ("logit_diff", "prob"):
            a = self.answer if self.answer is not None else answer
            a = torch.as_tensor(a).long() if a is not None else clean_logits.argmax(-1)
        if self.name == "logit_diff":
            cf = self.counterfactual if self.counterfactual is not None else counterfactual
            if cf is None:
                masked = corr_logits.clone()
                masked[torch.arange(batch), a.to(masked.device)] = -torch.inf
                cf = masked.argmax(-1)
            cf = torch.as_tensor(cf).long()
        if self.name == "kl":
            logp = clean_logits.float().log_softmax(-1)
        return Targets(a, cf, logp, batch)

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Metric ``[n]`` of last-position ``logits`` ``[n, vocab]``; ``rows`` ``[n]`` maps each to its
        sample, whose targets are in ``targets`` (:meth:`resolve`).

        Raises:
            ConfigError: ``targets`` lack what the metric needs (made for another metric).
            MechError: a NaN or infinite value (the message names the rows).
        """
        need = {"logit_diff": ("answer", "counterfactual"), "prob": ("answer",), "kl": ("clean_logp",)}[
            self.name
        ]
        missing = [a for a in need if getattr(targets, a) is None]
        if missing:
            raise ConfigError(
                f"metric {self.name!r} needs {', '.join(missing)} in its targets; "
                "make them with this metric's resolve()"
            )
        logits = logits.float()
        rows = rows.to(logits.device)
        ar = torch.arange(len(rows), device=logits.device)
        if self.name == "logit_diff":
            out = (
                logits[ar, targets.answer.to(logits.device)[rows]]
                - logits[ar, targets.counterfactual.to(logits.device)[rows]]
            )
        elif self.name == "prob":
            out = logits.softmax(-1)[ar, targets.answer.to(logits.device)[rows]]
        else:
            ref = targets.clean_logp.to(logits.device)[rows].float()
            out = (ref.exp() * (ref - logits.log_softmax(-1))).sum(-1)
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            raise MechError(
                f"metric {self.name!r} is not finite (NaN/inf) for sample rows "
                f"{sorted(set(rows[bad].tolist()))}; check the model's dtype (use float32) and inputs"
            )
        return out


def check_token_ids(batch: int, vocab: int, **ids: torch.Tensor | None) -> None:
    """Raises InputError unless every given ``ids`` (None = not given) is ``[batch]`` of ids in ``[0, vocab)``."""
    for name, value in ids.items():
        if value is None:
            continue
        value = torch.as_tensor(value)
        if value.shape != (batch,) or value.is_floating_point():
            raise InputError(
                f"{name} must be a LongTensor [batch={batch}] of token ids; got {value.dtype} "
                f"{tuple(value.shape)}"
            )
        if len(value) and (int(value.min()) < 0 or int(value.max()) >= vocab):
            raise InputError(
                f"{name} holds token ids outside the vocabulary [0, {vocab}): "
                f"{value[(value < 0) | (value >= vocab)].tolist()[:5]}; pass ids of this model's tokenizer"
            )


def normalized_effect(
    patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, direction: str
) -> torch.Tensor:
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
        raise MechError(
            f"the clean and corrupted metric are equal on average ({float(c):.6g}), so the normalized "
            f"effect is undefined; rows with clean == corrupted: {same.nonzero().flatten().tolist()}. "
            "Use a corruption that changes the answer, or normalize=False for raw metric values."
        )
    p = patched.float().mean(-1)
    return (p - k) / denom if direction == "denoising" else (c - p) / denom
