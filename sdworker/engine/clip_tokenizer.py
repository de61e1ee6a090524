"""A CLIP tokenizer the project builds itself, so the demo model and the benchmarks never download one.

CLIP's tokenizer is byte-level BPE: 256 byte symbols, the same 256 with the end-of-word marker
``</w>``, then one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. We train the merges
on a small built-in prompt vocabulary with plain BPE (most frequent pair first, ties broken by the pair
itself) so the result is the same on every machine. Real CLIP has 48,894 merges; a few hundred are
enough for a random-weight model whose text encoder only needs valid token ids.
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import cache
from typing import Any

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# Words of the kind prompts are made of; only their letter statistics matter.
_CORPUS = """
a photo of a cat dog portrait of an astronaut riding a horse on the moon highly detailed digital painting
landscape mountains lake sunset sunrise forest river city street night rain neon lights cyberpunk fantasy
castle dragon knight warrior princess wizard magic spell fire water ice snow winter summer spring autumn
beautiful woman man girl boy child old young smiling face eyes hair blue red green yellow purple orange
black white gray golden silver shiny glowing soft light dramatic lighting cinematic studio photograph
realistic photorealistic sharp focus blurry bokeh depth field wide angle close up macro lens camera film
painting oil watercolor sketch pencil drawing illustration anime cartoon comic concept art trending
artstation masterpiece best quality ultra high resolution detailed intricate elegant octane render
unreal engine volumetric clouds sky ocean beach island tropical desert sand dunes jungle flowers garden
roses tree trees leaves grass field meadow house cottage village temple ruins ancient futuristic robot
spaceship planet stars galaxy nebula space station science fiction steampunk gothic baroque renaissance
impressionism surreal abstract minimalist vintage retro modern interior kitchen bedroom library books
coffee cup table chair window door wooden stone marble glass metal rusty wet reflection shadow mist fog
smoke dust particles bird owl eagle wolf fox bear lion tiger horse deer rabbit fish whale butterfly
ugly deformed bad anatomy extra fingers low quality worst quality jpeg artifacts watermark text signature
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable characters (no whitespace or control chars)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _train_merges(words: list[str], max_merges: int) -> list[tuple[str, str]]:
    byte_map = bytes_to_unicode()
    counts = Counter(words)
    # Each word as a tuple of symbols, the last carrying the end-of-word marker, as CLIP does.
    splits: dict[tuple[str, ...], int] = {}
    for word, n in sorted(counts.items()):
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += END_OF_WORD
        splits[tuple(chars)] = n
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in splits.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in splits.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        splits = merged
    return merges


@cache
def build_vocab(max_merges: int = 480) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(vocab token -> id, merges in rank order), deterministic. Vocab size = 512 + merges + 2."""
    base = list(bytes_to_unicode().values())
    merges = _train_merges(_CORPUS.split(), max_merges)
    tokens = base + [c + END_OF_WORD for c in base] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return vocab, tuple(merges)


def build_clip_tokenizer(model_max_length: int = 77) -> object:
    """A transformers ``CLIPTokenizer`` over the built vocabulary (typed ``object``: transformers is optional
    for type checking). Ids are below ``vocab_size()``."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab()
    merge_list: Any = list(merges)  # the backend wants (a, b) pairs; the stub says str
    return CLIPTokenizer(vocab=dict(vocab), merges=merge_list, model_max_length=model_max_length)


def vocab_size() -> int:
    return len(build_vocab()[0])
