"""Tidy pandas frames of mech's results: one row per cell of a result tensor, one column per axis
and per value (Wickham 2014, "Tidy Data").

Every result's ``.to_frame()`` is built with :func:`tidy`, so they share one convention:

* axis columns first, in the tensor's axis order, then the value columns; rows in C order (the
  last axis varies fastest);
* an axis of names (token groups, sites, edges, readouts, conditions) is a pandas ``Categorical``
  whose categories are the result's own order, so ``groupby`` and sorting keep it; an axis of
  indices (sample, layer, head) is ``int64``;
* values keep their tensor's dtype (``float32`` stays ``float32``), NaN where the tensor has NaN.

pandas is imported inside these functions only: ``import mech`` does not import it.

Example::

    frame = tidy(am.mass, {"sample": None, "layer": None, "head": None, "group": am.groups}, value="mass")
    frame.groupby(["layer", "group"], observed=True).mass.mean()   # = am.mass.mean((0, 2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["concat", "patching_frame", "tidy"]

#: an axis' labels: None (the indices 0..n-1), a sequence of n labels, or several named columns
Labels = Sequence[Any] | Mapping[str, Sequence[Any] | None] | None


def _numpy(x: Any):
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x, dtype=object) if isinstance(x, (list, tuple)) else np.asarray(x)


def _column(labels: Sequence[Any] | None, index, size: int, where: str):
    """The column of one axis' labels at each row's ``index`` along that axis."""
    import numpy as np
    import pandas as pd

    if labels is None:
        return index.astype(np.int64)
    labels = list(labels)
    if len(labels) != size:
        raise ValueError(f"axis {where!r} has {size} entries but {len(labels)} labels")
    if all(isinstance(v, str) for v in labels):
        cats = list(dict.fromkeys(labels))
        codes = np.asarray([cats.index(v) for v in labels], dtype=np.int64)
        return pd.Categorical.from_codes(codes[index], categories=cats)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in labels):
        return np.asarray(labels, dtype=np.int64)[index]
    out = np.empty(len(labels), dtype=object)
    out[:] = labels
    return out[index]


def tidy(values: Any, axes: Mapping[str, Labels], value: str = "value") -> pd.DataFrame:
    """A tidy frame of one or several tensors that share their axes.

    Args:
        values: a tensor (or array), or a mapping ``column name -> tensor``; the tensors are broadcast
            together (numpy rules) and must all have ``len(axes)`` dimensions.
        axes: one entry per tensor axis, in order: ``name -> labels``. ``None`` labels the axis with
            its indices (an ``int64`` column); a sequence gives one label per index (strings become a
            ``Categorical`` in that order, integers ``int64``, anything else ``object``); a mapping
            ``{column: labels | None}`` gives the axis several columns (e.g. a knockout window's
            ``layer``, ``first`` and ``stop``), and the axis' own name is then not a column.
        value: the column name of ``values`` when it is a single tensor.

    Returns:
        ``pandas.DataFrame`` with the axis columns, then the value columns, one row per cell
        (C order).

    Raises:
        ValueError: a tensor's rank differs from ``len(axes)``, or labels do not match an axis' size.
    """
    import numpy as np
    import pandas as pd

    named = dict(values) if isinstance(values, Mapping) else {value: values}
    arrays = {k: _numpy(v) for k, v in named.items()}
    for k, a in arrays.items():
        if a.ndim != len(axes):
            raise ValueError(f"{k!r} has {a.ndim} dimensions {a.shape}; axes {list(axes)} name {len(axes)}")
    shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    index = np.indices(shape).reshape(len(shape), -1) if shape else np.zeros((0, 1), dtype=np.int64)
    cols: dict[str, Any] = {}
    for i, (name, labels) in enumerate(axes.items()):
        parts = labels if isinstance(labels, Mapping) else {name: labels}
        for col, lab in parts.items():
            cols[col] = _column(lab, index[i], shape[i], col)
    for k, a in arrays.items():
        cols[k] = np.broadcast_to(a, shape).reshape(-1)
    return pd.DataFrame(cols)


def concat(frames: Mapping[Any, pd.DataFrame], key: str) -> pd.DataFrame:
    """Stack frames with the same columns, with a first column ``key`` naming each frame's part
    (a ``Categorical`` in ``frames``' order, e.g. the site or the estimator)."""
    import pandas as pd

    labels = list(frames)
    parts = [f.assign(**{key: label}) for label, f in frames.items()]
    if not parts:
        raise ValueError(f"no frames to stack by {key!r}")
    out = pd.concat(parts, ignore_index=True)
    if all(isinstance(v, str) for v in labels):
        out[key] = pd.Categorical(out[key], categories=labels)
    return out[[key] + [c for c in out.columns if c != key]]


def patching_frame(result: Any, per_sample: bool = False) -> pd.DataFrame:
    """The frame of a :class:`mech.measure.patching.PatchingResult`, exact or attribution patching
    (its ``to_frame``).

    Columns, ``per_sample=False``: ``site, layer, head, group, effect`` (one row per cell of each
    ``effect[site]``). ``per_sample=True``: ``site, sample, layer, head, group, patched, [delta,]
    clean_metric, corrupted_metric`` (one row per cell of each ``patched[site]``; ``delta`` for AtP;
    the two unpatched metrics of the row's sample repeated). ``layer`` is the layer index
    (``result.layers``), ``head`` a nullable ``Int64``: the head for site ``z``, ``<NA>`` for a site
    without a head axis.
    """
    import pandas as pd

    frames = {}
    for site, eff in result.effect.items():
        has_head = eff.dim() == 3
        axes: dict[str, Labels] = {
            "layer": result.layers,
            **({"head": None} if has_head else {}),
            "group": result.groups,
        }
        if per_sample:
            axes = {"sample": None, **axes}
            last = result.patched[site].dim() - 1  # the sample axis is the last one: move it first
            order = (last, *range(last))
            vals = {"patched": result.patched[site].permute(order)}
            if getattr(result, "delta", None) is not None:
                vals["delta"] = result.delta[site].permute(order)
            extra = (1,) * last
            vals["clean_metric"] = result.clean_metric.reshape(-1, *extra)
            vals["corrupted_metric"] = result.corrupted_metric.reshape(-1, *extra)
            frame = tidy(vals, axes)
        else:
            frame = tidy(eff, axes, value="effect")
        if not has_head:
            frame.insert(list(frame.columns).index("group"), "head", pd.NA)
        frame["head"] = frame["head"].astype("Int64")
        frames[site] = frame
    return concat(frames, "site")
