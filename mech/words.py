"""mech's vocabulary: one name per concept, each with its one-line meaning, importable without torch.

The settings (:mod:`mech.runs.settings`, hence the command line) take their allowed values from
these tables, and the instruments their constants; ``tests/test_vocabulary.py`` checks that every
instrument's own constant names the same values, and that ``import mech.words`` loads no torch.

========================  =======================================================================
word                      meaning
========================  =======================================================================
*condition*               an input transform applied to a sample (:data:`CONDITIONS`); the
                          corrupted run's condition is called ``corruption`` where a run has one
                          (``mech patch --corruption``, ``patch.json``), the field's word for it
*feature condition*       a condition applied in the forward to the decoder's input embeddings
                          (:data:`FEATURE_CONDITIONS`; :func:`mech.conditions.feature_condition`)
*removal*                 how a causal estimator removes a token group's content (:data:`REMOVALS`)
*site*                    the activation a patch replaces, at every layer (:data:`SITES`)
*position group*          the positions a patch replaces (:data:`POSITION_GROUPS`)
*direction*               which run's activations go into which (:data:`DIRECTIONS`)
*metric*                  what is read from the patched run's logits (:data:`METRICS`)
*estimator*               how a modality's per-layer contribution is measured (:data:`ESTIMATORS`)
*answer*                  the token whose logit a measurement is about, LongTensor ``[batch]``
*counterfactual*          the token it is compared with (logit difference answer − counterfactual)
========================  =======================================================================

:data:`RENAMED` lists the older spellings that still work for one release, with a
:class:`~mech.deprecation.MechDeprecationWarning` naming the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "CONDITIONS",
    "DIRECTIONS",
    "ESTIMATORS",
    "FEATURE_CONDITIONS",
    "INPUT_CONDITIONS",
    "METRICS",
    "POSITION_GROUPS",
    "REMOVALS",
    "RENAMED",
    "SITES",
    "TOKEN_GROUPS",
    "WORDS",
    "names",
]


def _table(**meanings: str) -> Mapping[str, str]:
    return MappingProxyType(dict(meanings))


#: input conditions (Zheng et al. 2025, §4 case study) and feature conditions (Meng et al. 2022)
CONDITIONS = _table(
    complete="nothing changes",
    white_image='every image replaced by an all-255 image of the same size ("Text w/ white")',
    black_image="every image replaced by an all-0 image of the same size",
    noise_image="every image replaced by a seeded Gaussian-noise image of the same size",
    no_image="the images removed from the prompt (the sequence gets shorter)",
    image_only='the question replaced by "Based on the provided images, please answer the question."',
    visual_noise="Gaussian noise (3 x their std) added to the visual token embeddings, same length",
    visual_mean="the visual token embeddings replaced by their mean, same length",
)
#: conditions applied to the sample before the processor runs
INPUT_CONDITIONS = tuple(CONDITIONS)[:6]
#: conditions applied in the forward to the decoder's input embeddings
FEATURE_CONDITIONS = tuple(CONDITIONS)[6:]

#: how ``patching`` and ``decomposition`` remove a token group's content (mech contrib --removal)
REMOVALS = _table(
    resample="the group's embeddings become those of a donor sample (Zhang & Nanda 2024, §3)",
    noise="Gaussian noise of 3 x the group's embedding std is added (Meng et al. 2022)",
)

#: patching sites (TransformerLens hook names ``blocks.{l}.hook_<site>``; ``z``: ``blocks.{l}.attn.hook_z``)
SITES = _table(
    resid_pre="the residual stream entering layer l",
    resid_mid="the residual stream between layer l's attention and its MLP",
    resid_post="the residual stream leaving layer l",
    attn_out="layer l's attention output (after o_proj)",
    mlp_out="layer l's MLP output",
    z="layer l's per-head attention output before o_proj",
)

#: token groups: they partition every sequence
TOKEN_GROUPS = _table(
    image="tokens that carry image-encoder features",
    video="tokens that carry video-encoder features",
    audio="tokens that carry audio-encoder features",
    text="the user's words",
    template="chat-template and system tokens",
    bos="the first token (an attention sink, kept apart)",
)

#: the positions a patch replaces: a token group, the answer position, or every position
POSITION_GROUPS = _table(
    **TOKEN_GROUPS,
    last="the answer position (the last token)",
    all="every position",
)

#: patching directions (Heimersheim & Nanda 2024)
DIRECTIONS = _table(
    denoising="clean activations patched into the corrupted run",
    noising="corrupted activations patched into the clean run",
)

#: patching metrics, read at the answer position
METRICS = _table(
    logit_diff="logit of the answer minus logit of the counterfactual",
    prob="probability of the answer",
    kl="KL divergence of the patched run's distribution from the clean run's",
)

#: per-layer modality-contribution estimators (mech contrib; :mod:`mech.curves`)
ESTIMATORS = _table(
    attention="attention mass from the answer position to the group's keys",
    patching="the logit difference restored by patching the group's clean resid_pre back",
    dla="modality-resolved direct logit attribution of the attention writes",
    decomposition="exact split of the logit difference over layer, component and modality",
)

#: one concept, one word: the words above with their meanings
WORDS = _table(
    condition="an input transform applied to a sample",
    corruption="the corrupted run's condition (mech patch; patch.json)",
    feature_condition="a condition applied in the forward to the decoder's input embeddings",
    removal="how a causal estimator removes a token group's content: " + " or ".join(REMOVALS),
    site="the activation a patch replaces, at every layer",
    position_group="the positions a patch replaces",
    direction="which run's activations go into which",
    metric="what is read from the patched run's logits",
    estimator="how a modality's per-layer contribution is measured",
    answer="the token whose logit a measurement is about, LongTensor [batch]",
    counterfactual="the token the answer is compared with",
)

#: older spelling -> the word that replaces it (each still works for one release, with a warning)
RENAMED = _table(
    **{
        "activation_patching(site=)": "sites=",
        "mech contrib --ablation / mech report --ablation": "--removal",
        "ContribSettings.ablation / ReportSettings.ablation": "removal",
        "modality_contributions(corruption=) / contributions_for_rows(corruption=)": "removal=",
        "corrupt_features": "feature_condition",
        "direct_logit_attribution(answer_ids=, counterfactual_ids=)": "answer=, counterfactual=",
        "frozen_readout(answer_ids=, counterfactual_ids=)": "answer=, counterfactual=",
        "attention_knockout(answer_ids=)": "answer=",
        "mech.curves.CORRUPTIONS": "mech.curves.REMOVALS",
        "mech.runs.settings.Ablation": "mech.runs.settings.Removal",
    }
)


def names(table: Mapping[str, str]) -> tuple[str, ...]:
    """The names of one of the tables above, in order (what a ``Literal`` or a constant lists)."""
    return tuple(table)
