"""A T5 tokenizer the project builds itself, so the FLUX demo model never downloads one.

T5's tokenizer is a SentencePiece unigram model: ``<pad>`` (0), ``</s>`` (1), ``<unk>`` (2), then
pieces, words prefixed with ``▁`` (a space), and ``</s>`` appended to every text. We build one with the
``tokenizers`` library from the same small prompt vocabulary as the demo CLIP tokenizer (each word, then
single characters so any text tokenizes), wrapped in transformers' ``T5TokenizerFast``: the class FLUX's
``tokenizer_2`` is, saved as ``tokenizer.json`` like the real one. The result is the same on every
machine; a random-weight T5 encoder only needs valid token ids.
"""

from __future__ import annotations

from typing import Any


def build_t5_tokenizer(model_max_length: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    from sdworker.engine.clip_tokenizer import _CORPUS

    words = sorted(set(_CORPUS.split()))
    chars = sorted(set("".join(words)))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + word, -1.0) for word in words] + [("▁", -2.0)]
    pieces += [(char, -3.0) for char in chars] + [("▁" + char, -3.0) for char in chars]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(" {2,}", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        model_max_length=model_max_length,
    )
