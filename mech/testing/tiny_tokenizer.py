"""Offline word-level tokenizers for the tiny model zoo (see :mod:`mech.testing.tiny`).

A tokenizer here is a ``tokenizers.Tokenizer`` with a ``WordLevel`` model over a fixed list of
ordinary English words, digits and punctuation, plus the special tokens a family's processor and
model need, wrapped as :class:`transformers.PreTrainedTokenizerFast`. Spaces separate words and are
dropped; a newline is its own token (so chat templates keep their shape); punctuation is split off
words. Unknown words map to the unknown token. Special tokens come first, so their ids are small and
stable; the plain vocabulary follows.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["WORDS", "make_tokenizer"]

WORDS: tuple[str, ...] = (
    "\n",
    *"""
    . , ? ! : ; ' " ( ) - / 0 1 2 3 4 5 6 7 8 9
    a an the this that these those it its is are was were be been am do does did has have had
    what which who where when why how there here of in on at to from with by for and or not no yes
    i you he she we they me my your our their his her them us
    colour color shape shapes image images picture pictures photo audio sound video question answer
    red green blue yellow black white orange purple pink brown grey gray
    circle square triangle star cross heart diamond rectangle oval line dot
    big small large tiny left right top bottom middle center centre above below next near far
    one two three four five six seven eight nine ten many few more less most some all any each
    see look show tell describe say think know answer please can could would should will may
    based provided given following options option choose select correct best describes
    system user assistant model human gpt You It This That There s t helpful Answer Question USER ASSISTANT User Assistant
    Audio Image Picture What Which Is Based The A Yes No Please
    A B C D E F
    """.split(),
)
WORDS = tuple(dict.fromkeys(WORDS))


def make_tokenizer(
    special_tokens: list[str],
    *,
    named: dict[str, str] | None = None,
    bos: str | None = None,
    eos: str | None = None,
    pad: str | None = None,
    unk: str = "<unk>",
    padding_side: str = "right",
    add_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: ``special_tokens`` (ids 0..), then :data:`WORDS`.

    ``named`` maps attribute names to tokens (``{"image_token": "<image>"}``); they become
    ``tokenizer.image_token`` / ``tokenizer.image_token_id`` as transformers processors expect.
    ``add_bos`` prepends ``bos`` when encoding (Gemma/PaliGemma-style tokenizers do; chat templates
    of the families here write the BOS themselves, so the default is off).
    """
    specials = list(dict.fromkeys([unk, *(t for t in (pad, bos, eos) if t), *special_tokens]))
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n|[^\w\s']|'"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if add_bos and bos:
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        padding_side=padding_side,
        extra_special_tokens=dict(named or {}),
    )
    return fast
