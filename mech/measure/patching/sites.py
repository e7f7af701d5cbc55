"""Patching sites: which activation of which layer a patch replaces (TransformerLens names).

========== ============================= ================================ =====================
site       hook name                     patched run starts at            effect axes
========== ============================= ================================ =====================
resid_pre  ``blocks.l.hook_resid_pre``   layer ``l`` (its input replaced)  ``[layer, group]``
resid_mid  ``blocks.l.hook_resid_mid``   layer ``l`` (hook inside)         ``[layer, group]``
resid_post ``blocks.l.hook_resid_post``  layer ``l+1`` (final norm if last) ``[layer, group]``
attn_out   ``blocks.l.hook_attn_out``    layer ``l`` (hook inside)         ``[layer, group]``
mlp_out    ``blocks.l.hook_mlp_out``     layer ``l`` (hook inside)         ``[layer, group]``
z          ``blocks.l.attn.hook_z``      layer ``l`` (hook inside), per    ``[layer, head, group]``
           (per-head attention output)   head
========== ============================= ================================ =====================

Definitions of each activation per family: :mod:`mech.engines.hooks`.
"""

from __future__ import annotations

from mech.engines.hooks import SITE_HOOKS, site_hook
from mech.engines.prefix import RESIDUAL_INPUT, start_layer  # noqa: F401  (re-exported)
from mech.errors import ConfigError

__all__ = ["RESIDUAL_INPUT", "SITES", "check_site", "hook_name", "start_layer"]

SITES = tuple(SITE_HOOKS)


def check_site(site: str) -> str:
    """Return ``site`` if valid. Raises ConfigError listing :data:`SITES` otherwise."""
    if site not in SITES:
        raise ConfigError(
            f"unknown patching site {site!r}; valid sites: {', '.join(SITES)} "
            "(z = per-head attention output before o_proj)"
        )
    return site


def hook_name(site: str, layer: int) -> str:
    """TransformerLens hook name of ``site`` at ``layer`` (e.g. ``blocks.3.hook_resid_post``)."""
    return site_hook(check_site(site), layer)
