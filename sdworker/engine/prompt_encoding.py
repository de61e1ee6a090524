"""Prompts to text embeddings the A1111 way: no 77-token limit, attention weights, embeddings, clip skip.

When a prompt needs none of it (no brackets/escapes/BREAK, no textual-inversion name, at most 75
tokens, no clip skip) ``PromptEncoder.needs_custom`` says so and the engine hands the text to the
pipeline, so such a prompt gives exactly diffusers' (and so the previous version's) pixels. Otherwise, per
text encoder, following AUTOMATIC1111's ``modules/sd_hijack_clip.py``:

1. the prompt is parsed into (text, weight) runs (``prompt_syntax``) and tokenized without special
   tokens;
2. tokens fill 75-token chunks; ``BREAK`` starts a new chunk; a chunk that overflows within 20 tokens of
   its last comma moves the words after that comma to the next chunk (A1111's comma backtrack); a
   textual-inversion embedding is never split across chunks;
3. each chunk becomes ``[BOS] + 75 tokens (padded with EOS) + [EOS]``, padding after the first EOS
   replaced by the tokenizer's pad token (SD 2.x / SDXL's second encoder pad with ``!``, id 0), exactly
   as diffusers pads a short prompt; embedding vectors replace their placeholder tokens' input
   embeddings;
4. each chunk is encoded alone (the same layer diffusers takes; ``clip_skip`` N >= 2 takes the output N-1
   layers earlier, with the final layer norm for SD 1.x/2.x as A1111 does), then the weights multiply
   the token embeddings and the chunk is rescaled so its mean is the unweighted mean again;
5. chunks are concatenated (77 x chunks tokens). SDXL concatenates its two encoders' features and takes
   the pooled embedding from the first chunk of the second encoder.

Prompt and negative prompt must have as many chunks: the shorter is padded with empty-prompt chunks
(A1111's batch padding). SDXL's empty negative prompt stays zeros when the model says
``force_zeros_for_empty_prompt``, as diffusers does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from sdworker.domain.prompt_syntax import BREAK, parse_prompt_attention
from sdworker.engine.embeddings import EmbeddingStore, TextualInversion

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"


@dataclass(slots=True)
class Chunk:
    """75 tokens (before BOS/EOS) with one weight per token; ``fixes``: (offset, vectors) of embeddings."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)


@dataclass(slots=True)
class _Encoder:
    tokenizer: Any
    text_encoder: Any
    index: int  # 0: CLIP-L (or the only one), 1: SDXL's OpenCLIP bigG
    comma: int | None

    @property
    def bos(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos if pad is None else int(pad)

    @property
    def hidden_size(self) -> int:
        # A multimodal encoder's config (FLUX.2 dev's Mistral 3) keeps the size in its text config.
        return int(self.text_encoder.config.get_text_config().hidden_size)


class PromptEncoder:
    """Encodes prompts for one loaded pipeline (SD 1.x/2.x: one encoder; SDXL: two)."""

    def __init__(self, pipe: Any, family: str, embeddings: EmbeddingStore | None = None) -> None:
        self.family = family
        self.embeddings = embeddings
        pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))]
        if family == "sdxl":
            pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        self.encoders = [
            _Encoder(tok, te, i, tok.convert_tokens_to_ids(",</w>") if tok is not None else None)
            for i, (tok, te) in enumerate(pairs)
            if tok is not None and te is not None
        ]
        self.hidden_sizes = tuple(e.hidden_size for e in self.encoders)
        self.force_zeros_for_empty_prompt = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", False))

    # -- the decision -------------------------------------------------------------------------------

    def needs_custom(self, prompt: str, negative_prompt: str, clip_skip: int | None) -> bool:
        """False when diffusers' own encoding gives A1111's result (see the module docstring)."""
        if clip_skip is not None and clip_skip > 1:
            return True
        for text in (prompt, negative_prompt):
            if parse_prompt_attention(text) != [(text, 1.0)]:
                return True
            if self._embeddings_in(text):
                return True
            for encoder in self.encoders:
                if len(_token_ids(encoder.tokenizer, text)) > CHUNK_LENGTH:
                    return True
        return False

    def _embeddings_in(self, text: str) -> bool:
        if self.embeddings is None:
            return False
        return any(isinstance(p, TextualInversion) for p in self.embeddings.split(text, self.hidden_sizes))

    # -- encoding -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, prompt: str, negative_prompt: str, clip_skip: int | None, device: Any) -> dict[str, Any]:
        """Pipeline keyword arguments: ``prompt_embeds``, ``negative_prompt_embeds`` (and SDXL's pooled)."""
        positive = [self.chunks(prompt, e) for e in self.encoders]
        zero_negative = self.family == "sdxl" and not negative_prompt and self.force_zeros_for_empty_prompt
        negative = [self.chunks(negative_prompt, e) for e in self.encoders]
        count = max(len(c) for c in positive + ([] if zero_negative else negative))
        embeds, pooled = self._encode_all(positive, count, clip_skip, device)
        if zero_negative:
            neg_embeds, neg_pooled = torch.zeros_like(embeds), (None if pooled is None else torch.zeros_like(pooled))
        else:
            neg_embeds, neg_pooled = self._encode_all(negative, count, clip_skip, device)
        kwargs: dict[str, Any] = {"prompt_embeds": embeds, "negative_prompt_embeds": neg_embeds}
        if self.family == "sdxl":
            kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled)
        return kwargs

    def _encode_all(
        self, per_encoder: list[list[Chunk]], count: int, clip_skip: int | None, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        features: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for encoder, chunks in zip(self.encoders, per_encoder, strict=True):
            chunks = chunks + [Chunk()] * (count - len(chunks))
            encoded = [self.encode_chunk(encoder, chunk, clip_skip, device) for chunk in chunks]
            features.append(torch.cat([z for z, _ in encoded], dim=1))
            if encoded[0][1] is not None:
                pooled = encoded[0][1]
        return torch.cat(features, dim=-1), pooled

    def chunks(self, text: str, encoder: _Encoder) -> list[Chunk]:
        """A1111's ``tokenize_line`` for one encoder."""
        chunks: list[Chunk] = []
        chunk = Chunk()
        last_comma = -1

        def next_chunk() -> None:
            nonlocal chunk, last_comma
            chunks.append(chunk)
            chunk = Chunk()
            last_comma = -1

        for piece, weight in self._pieces(text, encoder):
            if piece is BREAK:
                next_chunk()
                continue
            if isinstance(piece, TextualInversion):
                vectors = piece.vectors_for(encoder.index, encoder.hidden_size)
                if len(chunk.tokens) + len(vectors) > CHUNK_LENGTH:
                    next_chunk()
                chunk.fixes.append((len(chunk.tokens), vectors))
                chunk.tokens += [0] * len(vectors)
                chunk.multipliers += [weight] * len(vectors)
                continue
            assert isinstance(piece, list)
            for token in piece:
                if token == encoder.comma:
                    last_comma = len(chunk.tokens)
                elif (
                    len(chunk.tokens) == CHUNK_LENGTH
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
                ):
                    cut = last_comma + 1
                    moved_tokens, moved_weights = chunk.tokens[cut:], chunk.multipliers[cut:]
                    moved_fixes = [(o - cut, v) for o, v in chunk.fixes if o >= cut]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    chunk.fixes = [(o, v) for o, v in chunk.fixes if o < cut]
                    next_chunk()
                    chunk.tokens, chunk.multipliers, chunk.fixes = moved_tokens, moved_weights, moved_fixes
                if len(chunk.tokens) == CHUNK_LENGTH:
                    next_chunk()
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
        if chunk.tokens or not chunks:
            chunks.append(chunk)
        return chunks

    def _pieces(self, text: str, encoder: _Encoder) -> Iterator[tuple[Any, float]]:
        """(token list | TextualInversion | BREAK, weight) in prompt order."""
        for part, weight in parse_prompt_attention(text):
            if (part, weight) == BREAK:
                yield BREAK, weight
                continue
            pieces = self.embeddings.split(part, self.hidden_sizes) if self.embeddings is not None else None
            for piece in pieces if pieces is not None else [part]:
                if isinstance(piece, TextualInversion):
                    yield piece, weight
                elif piece:
                    yield _token_ids(encoder.tokenizer, piece), weight

    def encode_chunk(
        self, encoder: _Encoder, chunk: Chunk, clip_skip: int | None, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token features (1, 77, dim) with weights applied, pooled (1, dim) or None)."""
        pad_count = CHUNK_LENGTH - len(chunk.tokens)
        tokens = [encoder.bos, *chunk.tokens, *([encoder.eos] * pad_count), encoder.eos]
        first_eos = 1 + len(chunk.tokens)
        tokens[first_eos + 1 :] = [encoder.pad] * (len(tokens) - first_eos - 1)
        multipliers = [1.0, *chunk.multipliers, *([1.0] * (pad_count + 1))]
        ids = torch.tensor([tokens], device=device)
        te = encoder.text_encoder
        with _replaced_input_embeddings(te, [(1 + offset, vectors) for offset, vectors in chunk.fixes]):
            out = te(ids, output_hidden_states=True)
        skip = 0 if clip_skip is None else max(0, clip_skip - 1)
        pooled = out[0] if out[0].ndim == 2 else None
        if self.family == "sdxl":
            z = out.hidden_states[-(skip + 2)]
        elif skip == 0:
            z = out[0]
        else:
            z = getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-(skip + 1)])
        if any(m != 1.0 for m in multipliers):
            z = apply_emphasis(z, torch.tensor(multipliers, device=z.device, dtype=z.dtype))
        return z, pooled


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids without BOS/EOS and without truncation (``verbose=False``: a long prompt is expected
    here, not a mistake worth transformers' warning)."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's features, then restore the chunk's mean.

    Where the weighted mean is 0 (A1111 would fill the image with NaN) the weighted features are kept
    as they are: the one deviation from A1111, and only where its result is not a number.
    """
    original_mean = z.mean()
    z = z * multipliers.reshape(1, -1, 1).expand(z.shape)
    ratio = original_mean / z.mean()
    return z * ratio if torch.isfinite(ratio) else z


@contextmanager
def _replaced_input_embeddings(text_encoder: Any, fixes: list[tuple[int, torch.Tensor]]) -> Iterator[None]:
    """While inside, the token embedding layer's output has ``vectors`` at ``offset`` (per fix): how a
    textual-inversion embedding enters the encoder without adding tokens to the shared tokenizer."""
    if not fixes:
        yield
        return
    layer = text_encoder.get_input_embeddings()

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for offset, vectors in fixes:
            output[0, offset : offset + len(vectors)] = vectors.to(output.device, output.dtype)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
