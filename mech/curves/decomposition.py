"""The ``decomposition`` estimator: the decision's logit difference split exactly over
``[sample, layer, component, modality]``, MLPs included.

Why. Modality-resolved DLA (:mod:`mech.measure.dla`) assigns each *attention* write to the group of
the values it reads; what an MLP writes at the answer position (e.g. a prior computed from question
words moved there at layer 0) has no group. Here every component's write is credited to the
modalities whose *content* it depends on, by removing them.

Method, per sample, at the answer position ``q`` (the last non-padding position):

1. The direct write of each component c ∈ {embedding, attention of layer l, MLP of layer l} is read
   from the residual stream: ``embed = resid_pre_0``, ``attn_l = resid_mid_l − resid_pre_l``,
   ``mlp_l = resid_post_l − resid_mid_l`` (so Gemma 3's post-norms and Qwen3-VL's deepstack are inside
   the write; ``embed + Σ_l (attn_l + mlp_l) = resid_post_{L−1}``, the final norm's input).
2. Each write is carried to the logits by the **frozen** readout of the clean run,
   ``w ↦ (w ⊙ ln_final(x)/x) · (W_U[answer] − W_U[counterfactual])`` (direct logit attribution with the
   final norm's scale frozen: Elhage et al. 2021, *A Mathematical Framework for Transformer Circuits*;
   TransformerLens' ``apply_ln_to_stack``), the same readout in every run
   (:func:`mech.measure.dla.frozen_readout`).
3. ``v_c(S)`` is that direct write when only the groups in S (players: image and text) keep their
   content; the others are removed by **resample ablation** (their decoder input embeddings become a
   donor's: causal scrubbing, Chan et al. 2022; symmetric token replacement, Zhang & Nanda 2024 §3;
   donors from :mod:`mech.curves.donors`), or by Gaussian noise (``removal="noise"``, Meng et al. 2022).
4. The **Shapley value** (Shapley 1953, *A Value for n-Person Games*) of group i in component c:
   ``φ_c(i) = Σ_{S ⊆ N∖{i}} |S|! (n−|S|−1)! / n! · [v_c(S ∪ {i}) − v_c(S)]``; with the two players
   image and text, ``φ_c(image) = ½[(v_c(I,T) − v_c(T)) + (v_c(I) − v_c(∅))]``. 2^n forwards per batch
   (4: clean, image removed, text removed, both removed).

**Completeness** (Shapley's efficiency plus the linearity of the frozen readout): for every sample
``Σ_{l, c, g} φ_c(g) = LD(clean) − LD_frozen(all removed)``, where ``LD(clean)`` is the model's logit
difference (before any final soft-capping) and ``LD_frozen(all removed)`` the frozen readout of the
final residual with every player removed (``rest``, what template, bos and the prior write without
either modality). :meth:`Decomposition.completeness` reports the residual; in float32 it stays below
:data:`TOLERANCE` (relative to the largest |LD|).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from mech.errors import InputError

__all__ = [
    "COMPONENTS",
    "TOLERANCE",
    "Decomposition",
    "Removal",
    "completeness",
    "decompose",
    "noise_removals",
    "resample_removals",
    "shapley",
    "shapley_weights",
]

COMPONENTS = ("attn", "mlp")
#: relative completeness tolerance in float32 (|residual| / max(1, max |LD|))
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Removal:
    """How one token group's content is removed in a batch.

    Attributes:
        group: the token group (a player).
        mask: ``[batch, pos]`` bool: the group's positions in the clean inputs.
        rows: ``[batch]`` bool: rows that are changed (False: no donor, the row is left as it is).
        same: ``[batch]`` bool: the donor's embeddings of the group equal the row's own, so the
            removal changes no input (e.g. every count question has the same words).
        source / dmask: resample: the donor rows' decoder input embeddings ``[batch, pos', d_model]``
            and the group's positions there ``[batch, pos']``; None for noise.
        noise: noise: ``(seed, noise_scale)`` of :func:`mech.conditions.feature_condition`; None for resample.
        injections: resample of a visual group on a family that adds visual features after early decoder
            layers (Qwen3-VL's deepstack): the donor pass's ``(features, order)``
            (:func:`mech.splice.find_injections`), resampled too; None otherwise.
    """

    group: str
    mask: torch.Tensor
    rows: torch.Tensor
    same: torch.Tensor
    source: torch.Tensor | None = None
    dmask: torch.Tensor | None = None
    noise: tuple[int, float] | None = None
    injections: tuple | None = None

    @contextlib.contextmanager
    def applied(self, m, inputs) -> Iterator[None]:
        """Every forward inside the block has the group removed. One pre-hook on the decoder
        (``arch.module(model, "language_model")``) edits its input embeddings, found by type
        (:func:`mech.engines.hooks.find_hidden`); prefill only. Removed in ``finally``. Nesting two
        removals is safe: the donor embeddings were computed before any hook was registered."""
        if self.noise is not None:
            from mech.conditions import feature_condition

            with feature_condition(
                m, inputs, "visual_noise", groups=(self.group,), seed=self.noise[0], noise_scale=self.noise[1]
            ):
                yield
            return
        from mech.conditions import injects_visual
        from mech.splice import resample_hook

        hook = resample_hook(
            m.arch.d_model,
            self.mask,
            self.dmask,
            self.rows,
            source=self.source,
            donor_injections=self.injections,
            injected=injects_visual(m, (self.group,)),
            what="the decomposition's resample removal",
        )
        handle = m.arch.module(m.model, "language_model").register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def resample_removals(
    m,
    inputs,
    groups: Sequence[str],
    donors: Mapping[str, tuple] | None = None,
    *,
    seed: int = 0,
    fit: bool = False,
) -> dict[str, Removal]:
    """Resample-ablation :class:`Removal` of each of ``groups`` that ``inputs`` have positions of.

    Args:
        inputs: the clean inputs ``[batch, pos]``.
        donors: group -> ``(donor_inputs, rows)`` (:func:`mech.curves.donors.donor_batch`) or
            ``(index LongTensor [batch], rows)`` (donors from this batch, :func:`mech.curves.donors.batch_donors`,
            the default for a group not given).
        fit: a donor may have another number of the group's positions (repeated or truncated,
            :func:`mech.splice.splice_rows`; the text donors of :mod:`mech.curves.donors`).

    Raises:
        InputError: a changed row's group has another number of positions than its donor's (without
            ``fit``), or none (with ``fit``).
    """
    from mech.conditions import decoder_input_embeds
    from mech.curves.donors import batch_donors
    from mech.splice import check_donor_lengths, fitted

    inputs = m.inputs(inputs)
    clean, injections = decoder_input_embeds(m, inputs, injections=True)  # no hook registered
    out = {}
    for g in groups:
        mask = inputs.groups.mask(g).cpu()
        if not bool(mask.any()):
            continue
        donor, rows = donors[g] if donors is not None and g in donors else batch_donors(inputs, g, seed=seed)
        rows = rows.bool().cpu()
        if isinstance(donor, torch.Tensor):
            index = donor.long().cpu()
            source, dmask = clean[index.to(clean.device)], mask[index]
            inj = None if injections is None else (injections[0], injections[1][index])
        else:
            donor = m.inputs(donor)
            (source, inj), dmask = decoder_input_embeds(m, donor, injections=True), donor.groups.mask(g).cpu()
        if dmask.shape[0] != mask.shape[0]:
            raise InputError(
                f"inputs have {mask.shape[0]} rows and {g} donors {dmask.shape[0]}; give one per row."
            )
        check_donor_lengths(mask, dmask, rows, g, fit)
        same = torch.tensor(
            [
                bool(rows[i])
                and torch.equal(
                    clean[i, mask[i].to(clean.device)],
                    fitted(source[i, dmask[i].to(source.device)], int(mask[i].sum())).to(clean),
                )
                for i in range(mask.shape[0])
            ],
            dtype=torch.bool,
        )
        out[g] = Removal(g, mask, rows, same, source, dmask, injections=inj)
    return out


def noise_removals(
    m, inputs, groups: Sequence[str], *, seed: int = 0, noise_scale: float = 3.0
) -> dict[str, Removal]:
    """Gaussian-noise :class:`Removal` (std ``noise_scale`` × the group's embedding std) of each of
    ``groups`` that ``inputs`` have positions of; every row is changed, none is ``same``. Each group's
    noise has its own seed (``seed + k`` for the k-th group), so with both removed the noises are independent."""
    from mech.conditions import require_input_only_visual

    require_input_only_visual(m, groups, "the decomposition's noise removal")
    inputs = m.inputs(inputs)
    out = {}
    for k, g in enumerate(groups):
        mask = inputs.groups.mask(g).cpu()
        if bool(mask.any()):
            b = mask.shape[0]
            out[g] = Removal(
                g,
                mask,
                torch.ones(b, dtype=torch.bool),
                torch.zeros(b, dtype=torch.bool),
                noise=(seed + k, noise_scale),
            )
    return out


@dataclass(frozen=True)
class Decomposition:
    """The decision's logit difference split over ``[sample, layer, component, player]``, in logits.

    Attributes:
        players: the removed groups (e.g. ``("image", "text")``), the last axis below.
        attn, mlp: ``[batch, layer, player]``: Shapley value of each player in the layer's attention / MLP write.
        embed: ``[batch, player]``: in the decoder input at the answer position (zero unless it is a player's).
        decision: ``[batch]``: the clean logit difference, from the final norm's actual output (+ unembedding bias).
        rest: ``[batch]``: frozen readout of the final residual with every player removed (+ bias).
        removed: ``[batch]``: the logit difference that run actually has (its own final norm).
        interaction: ``[batch]``: ``v(N) − v(∅) − Σ_i (v({i}) − v(∅))`` summed over components: what no
            single player's removal explains (the Shapley value splits it equally).
        same: ``[batch, player]`` bool: the removal changes no input (donor identical).
        rows: ``[batch]`` bool: every player has a donor; other rows are NaN in ``attn``, ``mlp``, ``embed``.
    """

    players: tuple[str, ...]
    attn: torch.Tensor
    mlp: torch.Tensor
    embed: torch.Tensor
    decision: torch.Tensor
    rest: torch.Tensor
    removed: torch.Tensor
    interaction: torch.Tensor
    same: torch.Tensor
    rows: torch.Tensor

    def total(self) -> torch.Tensor:
        """``[batch, player]``: each player's contribution summed over layers and components."""
        return self.attn.sum(1) + self.mlp.sum(1) + self.embed

    def residual(self) -> torch.Tensor:
        """``[batch]``: ``Σ φ − (decision − rest)`` (NaN on rows without a donor)."""
        return self.total().sum(-1) - (self.decision - self.rest)

    def completeness(self) -> dict[str, float]:
        """``max_abs`` and ``relative`` (``max_abs / max(1, max |decision|, max |rest|)``) of :meth:`residual`
        over the rows with donors, and :data:`TOLERANCE`."""
        return completeness(self.residual()[self.rows], self.decision[self.rows], self.rest[self.rows])


def completeness(
    residual: torch.Tensor, decision: torch.Tensor, rest: torch.Tensor
) -> dict[str, float | None]:
    """``{"max_abs", "relative", "tolerance"}`` of the per-sample completeness ``residual`` ``[sample]`` (logits):
    ``relative = max |residual| / max(1, max |decision|, max |rest|)``; None without samples."""
    if residual.numel() == 0:
        return {"max_abs": None, "relative": None, "tolerance": TOLERANCE}
    scale = max(1.0, float(decision.abs().max()), float(rest.abs().max()))
    top = float(residual.abs().max())
    return {"max_abs": top, "relative": top / scale, "tolerance": TOLERANCE}


def shapley_weights(n: int) -> list[float]:
    """``w[s] = s! (n−s−1)! / n!``: the weight of a coalition of size ``s`` (not containing i) in the Shapley value."""
    return [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]


def shapley(values: Mapping[frozenset, torch.Tensor], players: Sequence[str]) -> torch.Tensor:
    """Shapley values ``[..., player]`` of the game ``values`` (coalition of kept players -> ``[...]``).

    Efficiency: the values sum to ``values[N] − values[∅]``; symmetric players get equal values; a
    player whose joining never changes the value gets 0 (Shapley 1953)."""
    n, w = len(players), shapley_weights(len(players))
    out = []
    for p in players:
        others = [q for q in players if q != p]
        acc = torch.zeros_like(values[frozenset()])
        for s in range(n):
            for c in combinations(others, s):
                acc = acc + w[s] * (values[frozenset(c) | {p}] - values[frozenset(c)])
        out.append(acc)
    return torch.stack(out, -1)


@torch.no_grad()
def decompose(
    m, inputs, answer: torch.Tensor, counterfactual: torch.Tensor, removals: Mapping[str, Removal]
) -> Decomposition:
    """The decomposition (module docstring) of one batch; ``2 ** len(removals)`` forwards.

    Args:
        m: a :class:`~mech.MechModel` whose images are decoder tokens.
        inputs: the clean inputs ``[batch, pos]``.
        answer, counterfactual: LongTensor ``[batch]``; the logit difference answer − counterfactual is split.
        removals: player -> :class:`Removal` (:func:`resample_removals`, :func:`noise_removals`).

    Raises:
        UnsupportedArchitectureError: images not in the decoder sequence (Mllama).
        InputError: no player, or ids of the wrong shape.
    """
    from mech.engines.hooks import hooks, site_hook
    from mech.engines.unembed import unembed_at
    from mech.measure.dla import final_norm, frozen_readout

    m.require_decoder_sequence("the decomposition estimator")
    inputs = m.inputs(inputs)
    players = tuple(removals)
    if not players:
        raise InputError(
            "the decomposition needs at least one group to remove; these inputs have none of the groups."
        )
    batch, L = inputs["input_ids"].shape[0], m.arch.n_layers
    answer, counterfactual = torch.as_tensor(answer), torch.as_tensor(counterfactual)
    if answer.shape != (batch,) or counterfactual.shape != (batch,):
        raise InputError(f"answer and counterfactual must be LongTensors [batch={batch}].")
    q = inputs.groups.last()
    r = torch.arange(batch, device=q.device)
    names = [site_hook(s, l) for l in range(L) for s in ("resid_pre", "resid_mid", "resid_post")]
    readout, values, finals = None, {}, {}
    for k in range(len(players), -1, -1):  # the clean run (every player kept) first: it freezes the readout
        for kept in combinations(players, k):
            saved: dict[str, torch.Tensor] = {}

            def keep(x, hook):
                saved[hook.name] = x[r.to(x.device), q.to(x.device)].detach().float()

            with contextlib.ExitStack() as stack:
                for g in players:
                    if g not in kept:
                        stack.enter_context(removals[g].applied(m, inputs))
                stack.enter_context(hooks(m, [(n, keep) for n in names]))
                stack.enter_context(
                    unembed_at(m, q)
                )  # the logits are not read: unembed the answer position only
                m.model(**inputs)
            x_final = saved[site_hook("resid_post", L - 1)]
            if readout is None:
                readout = frozen_readout(m, x_final, answer, counterfactual)
            dev = x_final.device
            pre = [saved[site_hook("resid_pre", l)].to(dev) for l in range(L)]
            mid = [saved[site_hook("resid_mid", l)].to(dev) for l in range(L)]
            post = [saved[site_hook("resid_post", l)].to(dev) for l in range(L)]
            values[frozenset(kept)] = {
                "embed": readout(pre[0]),
                "attn": readout(torch.stack([mid[l] - pre[l] for l in range(L)], 1)),
                "mlp": readout(torch.stack([post[l] - mid[l] for l in range(L)], 1)),
            }
            finals[frozenset(kept)] = x_final
    everyone, nobody = frozenset(players), frozenset()
    phi = {c: shapley({s: v[c] for s, v in values.items()}, players) for c in ("embed", "attn", "mlp")}
    rows = torch.stack([removals[g].rows for g in players], -1).all(-1).cpu()
    for c in phi:
        phi[c] = phi[c].float().cpu()
        phi[c][~rows] = float("nan")

    def total(v):  # a run's frozen readout summed over components, [batch]
        return (v["embed"] + v["attn"].sum(1) + v["mlp"].sum(1)).float().cpu()

    bias = readout.bias.float().cpu()
    decision = (final_norm(m, finals[everyone]) * readout.direction.to(finals[everyone].device)).sum(
        -1
    ).cpu() + bias
    removed = (final_norm(m, finals[nobody]) * readout.direction.to(finals[nobody].device)).sum(
        -1
    ).cpu() + bias
    interaction = (
        total(values[everyone])
        - total(values[nobody])
        - sum(total(values[frozenset({g})]) - total(values[nobody]) for g in players)
    )
    same = torch.stack([removals[g].same for g in players], -1).cpu()
    return Decomposition(
        players,
        phi["attn"],
        phi["mlp"],
        phi["embed"],
        decision.float(),
        total(values[nobody]) + bias,
        removed.float(),
        interaction,
        same,
        rows,
    )
