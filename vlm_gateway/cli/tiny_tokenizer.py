"""The byte-level BPE tokenizer of the tiny test models (`tiny_models`), trained offline.

A fixed made-up corpus and a printable-ASCII alphabet, so a build needs no download and random
token ids always decode to visible text. `tokenizers` and `transformers` are imported inside
the functions, like in `tiny_models`: the HTTP app must never pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
IMAGE_TOKEN = "<image>"

_WORDS = [
    "a",
    "the",
    "an",
    "of",
    "in",
    "on",
    "with",
    "and",
    "to",
    "is",
    "are",
    "was",
    "picture",
    "photo",
    "image",
    "cat",
    "dog",
    "bird",
    "tree",
    "house",
    "car",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "small",
    "large",
    "old",
    "young",
    "man",
    "woman",
    "child",
    "people",
    "street",
    "water",
    "sky",
    "sitting",
    "standing",
    "running",
    "flying",
    "next",
    "near",
    "under",
    "above",
    "front",
    "behind",
    "left",
    "right",
    "two",
    "three",
    "table",
    "chair",
    "window",
    "door",
    "road",
    "field",
    "grass",
    "snow",
    "beach",
    "mountain",
    "city",
    "light",
    "dark",
    "bright",
    "close",
]


def _corpus() -> Iterator[str]:
    """A fixed made-up corpus: enough repeated word pairs for BPE to learn a few hundred merges."""
    punctuation = [".", ",", "?", "!", ":", ";", "'s", "-", "(", ")", '"', "0", "1", "2"]
    for i, word in enumerate(_WORDS):
        for j, other in enumerate(_WORDS):
            mark = punctuation[(i + j) % len(punctuation)]
            yield f"{word.capitalize()} {other}{mark} {word} {other.upper()}\n"


def _printable_alphabet() -> list[str]:
    """The byte-level symbols of printable ASCII (plus tab and newline).

    With the full 256-byte alphabet, random token ids decode to lone UTF-8 continuation bytes,
    which vLLM's incremental detokenizer holds back forever: a response comes back empty.
    """
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    text = "\t\n" + "".join(chr(b) for b in range(0x20, 0x7F))
    ((symbols, _),) = byte_level.pre_tokenize_str(text)
    return list(symbols)


def build_tokenizer(
    named_image_token: bool,
    max_length: int,
    vocab_size: int = 400,
    extra_special_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """Byte-level BPE over printable ASCII, with `<image>` among its special tokens.

    `named_image_token` also records it as the tokenizer's `image_token` attribute, as LLaVA
    checkpoints do. BLIP-2 must not: a reloaded tokenizer gives that attribute as a str, and
    Blip2Processor then fails on `image_token.content`; without it the processor makes its own.
    `extra_special_tokens` are added after the fixed ones (a model's video and audio
    placeholders, `tiny_media_models`); with none, the tokenizer is the same as before.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(set(_printable_alphabet()))
    core = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra_special_tokens],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = core.token_to_id("<s>")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    # transformers leaves this constructor unannotated (`*args, **kwargs`).
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN} if named_image_token else None,
        model_max_length=max_length,
    )
