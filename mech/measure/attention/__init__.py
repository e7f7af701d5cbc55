"""Attention mass to token groups, per layer and head, without eager attention (docs/design.md, "Engines").

``am = mech.attention_mass(m, inputs, query="last")`` runs one forward in which every decoder
attention layer computes its output with the implementation the model was using (SDPA, flash or
eager) and, beside it, the softmax weights of only the query rows asked for, reduced at once to the
mass on each token group (:mod:`mech.engines.attention_fn`). Memory stays
O(layers × heads × queries × groups) plus O(layers × positions) for the heatmaps, never O(seq²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mech.contract import Result
from mech.engines.attention_fn import MassRecorder, recording
from mech.engines.unembed import unembed_at
from mech.errors import ConfigError, InputError
from mech.measure.attention import metrics
from mech.measure.attention.record import AttentionRecord
from mech.models.load import takes_model
from mech.prepare.groups import regroup

QUERIES = ("last", "answer", "text")

__all__ = ["QUERIES", "AttentionMass", "AttentionRecord", "MassRecorder", "attention_mass", "recording"]


@dataclass(frozen=True, eq=False)
class AttentionMass(Result):
    """Attention mass from the chosen query rows to each token group: a contract result
    (:class:`mech.contract.Result`: the axes below are declared once in ``AXES``, and ``concat``,
    ``parts``/``from_parts``, ``to_record``, ``frame`` and ``==`` follow from them).

    Attributes:
        mass: ``[batch, layer, head, group]``: the fraction of the query's attention on the keys
            of each group (sum over the group's key positions of the softmax weights); sums to 1
            over groups. With several query rows per sample (``query="text"`` or a mask), the mean
            over that sample's query rows.
        density: ``[batch, layer, head, group]``: ``mass / token_share``, attention per token of the
            group relative to uniform attention over all key positions (1 = the group gets its token
            share; > 1 = more). NaN for an empty group. Exact baseline for the last position; for
            earlier query rows, causal masking makes the uniform baseline smaller than the share.
        groups: group names along the last axis (``mech.GROUPS``).
        token_share: ``[batch, group]``: fraction of non-padding key positions in each group.
        counts: ``[batch, group]``: number of key positions in each group.
        spatial: ``[batch, layer, n_image_tokens]``: head- and query-mean attention on each image
            token, in sequence order (all images of a sample, concatenated); zero-padded for rows
            with fewer image tokens (see ``n_image_tokens``).
        n_image_tokens: ``[batch]``: image tokens per sample.
        grid: ``(rows, cols)`` of one image's patch grid when known (first image), else None.
        query: the query selection used (``"last"``, ``"text"``, ``"answer"`` or ``"mask"``).
        n_query: ``[batch]``: query rows averaged per sample.

    ``concat`` zero-pads ``spatial`` to the widest part (as the run loop's parts store does) and keeps
    the first part's ``grid``; :meth:`save` / :meth:`load` read and write ``attention.json`` and
    ``attention.safetensors`` (the command's files), not the generic contract file.
    """

    AXES = {
        "mass": ("batch", "layer", "head", "group"),
        "density": ("batch", "layer", "head", "group"),
        "token_share": ("batch", "group"),
        "counts": ("batch", "group"),
        "spatial": ("batch", "layer", "image_token"),
        "n_image_tokens": ("batch",),
        "n_query": ("batch",),
    }
    LABELS = {"group": "groups"}
    COMBINE = {"grid": "first"}

    mass: torch.Tensor
    density: torch.Tensor
    groups: tuple[str, ...]
    token_share: torch.Tensor
    counts: torch.Tensor
    spatial: torch.Tensor
    n_image_tokens: torch.Tensor
    grid: tuple[int, int] | None
    query: str
    n_query: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.mass.shape[1]

    def allocation(self) -> torch.Tensor:
        """FastV total attention allocation λ, ``[batch, layer, group]`` (see :mod:`.metrics`)."""
        return metrics.allocation(self.mass)

    def efficiency(self) -> torch.Tensor:
        """FastV attention efficiency ε = λ / |group|, ``[batch, layer, group]``."""
        return metrics.efficiency(self.mass, self.counts)

    def mdi(self, text: str | tuple[str, ...] = "user") -> torch.Tensor:
        """Modality Dominance Index, ``[batch, layer]`` (*When Language Overrules*, eq. 1). ``text``: what
        counts as text (:data:`metrics.TEXT_SIDES`): ``"user"`` (default, mech: the ``text`` group),
        ``"all_non_modality"`` (the paper: every non-modality token), ``"user+template"`` (the public
        re-implementation: BOS excluded), or a tuple of group names."""
        return metrics.mdi(self.mass, self.counts, self.groups, text)

    def aei(self, text: str | tuple[str, ...] = "user") -> dict[str, torch.Tensor]:
        """Attention Efficiency Index, ``{"text", "non_text"} -> [batch, layer]`` (eqs. 2–4); ``text`` as
        in :meth:`mdi`."""
        return metrics.aei(self.mass, self.counts, self.groups, text)

    def mdi_summary(
        self, text: str | tuple[str, ...] = "user", aggregate: str = "ratio_of_means"
    ) -> torch.Tensor:
        """MDI per layer ``[layer]`` over the samples: ``aggregate="ratio_of_means"`` (default) or
        ``"mean_of_ratios"`` (the re-implementation's per-sample mean); :func:`metrics.mdi_summary`."""
        return metrics.mdi_summary(self.mass, self.counts, self.groups, text, aggregate)

    def aei_summary(
        self, text: str | tuple[str, ...] = "user", aggregate: str = "ratio_of_means"
    ) -> dict[str, torch.Tensor]:
        """AEI per layer, ``{"text", "non_text"} -> [layer]``, aggregated as :meth:`mdi_summary`."""
        return metrics.aei_summary(self.mass, self.counts, self.groups, text, aggregate)

    def summary(
        self, text: str | tuple[str, ...] = "user", aggregate: str = "ratio_of_means"
    ) -> dict[str, Any]:
        """The ``attention.json`` keys of docs/design.md: ``layers``, ``groups``, ``mass`` (layer × group,
        mean over samples and heads; each row sums to 1), ``token_share`` (group -> mean fraction of
        key positions), ``mdi`` and ``aei`` (per layer; T and the aggregation as ``text`` and
        ``aggregate``, recorded as ``mdi_text`` and ``mdi_aggregate``), plus ``mdi_per_sample_median``,
        ``efficiency`` and ``query``. MDI's text side needs a ``text`` group; with groups that have
        none (FastV's scheme) and ``text="user"``, ``mdi`` and ``aei`` are left out."""
        lam = self.allocation().mean(0)
        out = {
            "layers": list(range(self.n_layers)),
            "groups": list(self.groups),
            "mass": lam.tolist(),
            "token_share": dict(zip(self.groups, self.token_share.mean(0).tolist())),
        }
        if text != "user" or "text" in self.groups:
            out.update(
                {
                    "mdi": self.mdi_summary(text, aggregate).tolist(),
                    "mdi_text": text if isinstance(text, str) else list(text),
                    "mdi_aggregate": aggregate,
                    "mdi_per_sample_median": self.mdi(text).nanmedian(0).values.tolist(),
                    "aei": {k: v.tolist() for k, v in self.aei_summary(text, aggregate).items()},
                }
            )
        out.update(
            {
                "efficiency": self.efficiency().nanmean(0).tolist(),
                "query": self.query,
                "n": int(self.mass.shape[0]),
            }
        )
        return out

    def to_frame(self):
        """Tidy ``pandas.DataFrame``, one row per cell of ``mass``: columns ``sample, layer, head, group,
        mass, density`` (``sample`` the row of the batch, ``group`` a Categorical in ``groups``' order;
        :func:`mech.frames.tidy`)."""
        from mech.frames import tidy

        return tidy(
            {"mass": self.mass, "density": self.density},
            {"sample": None, "layer": None, "head": None, "group": self.groups},
        )

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write ``attention.json`` (:meth:`summary` + ``metadata``) and ``attention.safetensors``
        (the per-sample tensors) into ``directory``, atomically."""
        from mech.results import write_json

        st = self.save_tensors(directory)
        js = write_json(
            Path(directory) / "attention.json", {**self.summary(), "grid": self.grid, **(metadata or {})}
        )
        return {"json": Path(js), "safetensors": st}

    def save_tensors(self, directory: str | Path) -> Path:
        """Write ``attention.safetensors`` (the per-sample tensors) into ``directory``, atomically."""
        from mech.results import write_tensors

        meta = {"groups": ",".join(self.groups), "query": self.query, "grid": str(self.grid)}
        tensors = {k: v.contiguous() for k, v in self.tensors().items()}
        return write_tensors(Path(directory) / "attention.safetensors", tensors, meta)

    @classmethod
    def concat_field(cls, name: str, values: list[Any]) -> Any:
        """``spatial`` zero-padded along ``image_token`` to the widest part (samples have different
        numbers of image tokens), then concatenated; the other fields as :class:`Result` does."""
        if name == "spatial":
            width = max(v.shape[-1] for v in values)
            return torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[-1])) for v in values])
        return super().concat_field(name, values)

    @classmethod
    def load(cls, path: str | Path) -> AttentionMass:
        """The result :meth:`save` (or ``mech attention``) wrote: ``attention.safetensors`` or its folder.

        Raises:
            InputError: no such file, or a file without the attention metadata (``groups``, ``query``).
        """
        import ast

        from mech.results import read_metadata, read_tensors

        p = Path(path)
        p = p / "attention.safetensors" if p.is_dir() else p
        if not p.is_file():
            raise InputError(f"{p} does not exist; run mech attention --out {p.parent} first.")
        meta = read_metadata(p)
        if "groups" not in meta or "query" not in meta:
            raise InputError(f"{p} was not written by AttentionMass.save (no groups/query metadata).")
        grid = ast.literal_eval(meta.get("grid", "None"))
        return cls(
            groups=tuple(meta["groups"].split(",")),
            query=meta["query"],
            grid=tuple(grid) if grid else None,
            **read_tensors(p),
        )


def query_positions(groups, query: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(index [batch, n], valid [batch, n], label)`` of the query rows."""
    if isinstance(query, torch.Tensor):
        if query.dtype != torch.bool or query.shape != groups.labels.shape:
            raise InputError(
                f"a query mask must be a BoolTensor [batch, pos] = {tuple(groups.labels.shape)}; "
                f"got {query.dtype} {tuple(query.shape)}."
            )
        mask, label = query.to(groups.labels.device) & groups.valid, "mask"
    elif query in ("last", "answer"):
        last = groups.last()
        return last[:, None], torch.ones(len(last), 1, dtype=torch.bool), query
    elif query == "text":
        mask, label = groups.mask("text"), "text"
    else:
        raise ConfigError(
            f"query={query!r}; allowed: {', '.join(QUERIES)} or a BoolTensor [batch, pos] mask."
        )
    n = mask.sum(1)
    if (n == 0).any():
        rows = (n == 0).nonzero().flatten().tolist()
        raise InputError(
            f"rows {rows} have no query position for query={label!r}; use query='last' "
            "or a mask with at least one position per row."
        )
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    order = torch.where(mask, pos, mask.shape[1]).sort(dim=1).values[:, : int(n.max())]
    valid = order < mask.shape[1]
    return order.clamp(max=mask.shape[1] - 1), valid.cpu(), label


def _grid(inputs, config, n_tokens: int) -> tuple[int, int] | None:
    """Patch grid ``(rows, cols)`` of a sample holding one image of ``n_tokens`` tokens, where the
    config says it: Qwen-VL ``image_grid_thw`` / ``spatial_merge_size``; a square ViT grid
    ``image_size // patch_size`` (LLaVA); a square ``mm_tokens_per_image`` (Gemma 3). Else None."""
    if not n_tokens:
        return None
    vision = getattr(config, "vision_config", None)
    thw = inputs.get("image_grid_thw")
    if thw is not None and len(thw):
        merge = int(getattr(vision, "spatial_merge_size", 1) or 1)
        t, h, w = (int(x) for x in thw[0])
        if t == 1 and (h // merge) * (w // merge) == n_tokens:
            return (h // merge, w // merge)
        return None
    side = None
    if vision is not None and getattr(vision, "image_size", None) and getattr(vision, "patch_size", None):
        size, patch = (x if isinstance(x, int) else x[0] for x in (vision.image_size, vision.patch_size))
        side = size // patch
    per = getattr(config, "mm_tokens_per_image", None)
    for cand in (side, math.isqrt(per) if per and math.isqrt(per) ** 2 == per else None):
        if cand and cand * cand == n_tokens:
            return (cand, cand)
    return None


@takes_model
def attention_mass(m: Any, inputs: Any, query: Any = "last", *, scheme: str = "mech") -> AttentionMass:
    """Attention mass from the query rows to each token group, per layer and head.

    Args:
        m: a :class:`mech.MechModel` (or anything :func:`mech.load` accepts).
        inputs: ``m.prepare(...)`` output or raw processor output (a batch; padding allowed).
        query: ``"last"`` (the last non-padding position: where the answer is formed),
            ``"answer"`` (alias of ``"last"``; pass a mask for multi-token answers), ``"text"``
            (every position of the ``text`` group), or a BoolTensor mask ``[batch, pos]``. With
            several query rows per sample, mass is the mean over them.
        scheme: the token groups along the group axis (:func:`mech.prepare.groups.regroup`): ``"mech"``
            (default: the inputs' own groups, ``mech.GROUPS``), ``"split_template"`` (``template`` split
            into ``template_pre`` / ``template_post`` at the first visual token) or ``"fastv"`` (FastV's
            ``system`` / ``image`` / ``instruction``, Chen et al. 2024; ``allocation()`` and
            ``efficiency()`` are then FastV's λ and ε).

    Returns:
        :class:`AttentionMass` with ``mass [batch, layer, head, group]``.

    Raises:
        UnsupportedArchitectureError: cross-attention families (Mllama).
        ConfigError: unknown ``query`` or ``scheme``.
        InputError: a row without query positions; a malformed mask.
    """
    m.require_decoder_sequence("attention_mass")
    inp = m.inputs(inputs)
    index, valid, label = query_positions(inp.groups, query)  # "text" = the user's words in any scheme
    if scheme != "mech":
        inp = inp.replace(groups=regroup(inp.groups, scheme))
    groups = inp.groups
    one_hot = groups.one_hot(torch.float32)
    # the logits are not read: the unembedding runs at one position per row, not [batch, pos, vocab]
    with recording(m, index, valid, one_hot) as rec, unembed_at(m, groups.last()), torch.no_grad():
        m.model(**inp, use_cache=False)
    missing = [i for i in range(m.arch.n_layers) if i not in rec.mass]
    if missing:
        raise ConfigError(
            f"layers {missing} did not go through the attention registry; this family's decoder "
            "attention does not use transformers' AttentionInterface."
        )
    mass = torch.stack([rec.mass[i].float().cpu() for i in range(m.arch.n_layers)], dim=1)
    keys = torch.stack([rec.keys[i].float().cpu() for i in range(m.arch.n_layers)], dim=1)  # [b, L, s]
    return assemble_mass(m, inp, mass, keys, label, valid)


def assemble_mass(
    m, inp, mass: torch.Tensor, keys: torch.Tensor, label: str, valid: torch.Tensor
) -> AttentionMass:
    """An :class:`AttentionMass` from recorded ``mass`` ``[batch, layer, head, group]`` and per-key
    mass ``keys`` ``[batch, layer, pos]`` (mean over heads): density, spatial map and grid derived
    from the inputs' groups (shared by :func:`attention_mass` and :mod:`mech.engines.nnsight_remote`)."""
    groups = inp.groups
    counts = groups.counts().cpu()
    share = groups.share().cpu()
    density = mass / torch.where(share > 0, share, torch.nan)[:, None, None, :]
    img = groups.mask("image").cpu()
    n_img = img.sum(1)
    width = int(n_img.max()) if len(n_img) else 0
    spatial = torch.zeros(mass.shape[0], mass.shape[1], width)
    for row in range(mass.shape[0]):
        pos = img[row].nonzero().flatten()
        spatial[row, :, : len(pos)] = keys[row][:, pos]
    grid = _grid(inp, m.model.config, int(n_img[0]) if len(n_img) else 0)
    return AttentionMass(
        mass=mass,
        density=density,
        groups=tuple(groups.names),
        token_share=share,
        counts=counts,
        spatial=spatial,
        n_image_tokens=n_img,
        grid=grid,
        query=label,
        n_query=valid.sum(1),
    )
