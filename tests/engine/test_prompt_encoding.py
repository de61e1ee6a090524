"""Long and weighted prompts, embeddings and clip skip: the engine's pixels equal diffusers' pipeline fed
with embeddings computed here, directly from the text encoder, by A1111's rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings

from .helpers import pixels

BASE: dict[str, Any] = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 5}


def slot(engine: DiffusersEngine, name: str = "demo-sd15") -> Any:
    """The loaded model ``name`` (loaded now if another test made the engine switch)."""
    return engine._slot(engine.library.model(name), None)


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


@torch.inference_mode()
def a1111_embeddings(pipe: Any, segments: list[tuple[str, float]], chunks: int, clip_skip: int = 1) -> torch.Tensor:
    """A1111's rule, written out: tokens in 75-token chunks, BOS + chunk + EOS padding, encode each chunk,
    multiply by the weights, restore the chunk's mean, concatenate (no comma in these prompts)."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    tokens: list[int] = []
    weights: list[float] = []
    for text, weight in segments:
        ids = ids_of(tok, text)
        tokens += ids
        weights += [weight] * len(ids)
    out = []
    for i in range(chunks):
        part, part_w = tokens[i * 75 : (i + 1) * 75], weights[i * 75 : (i + 1) * 75]
        ids = [tok.bos_token_id, *part, *[tok.eos_token_id] * (76 - len(part))]
        w = torch.tensor([1.0, *part_w, *[1.0] * (76 - len(part))])
        result = te(torch.tensor([ids]), output_hidden_states=True)
        z = result[0] if clip_skip == 1 else te.final_layer_norm(result.hidden_states[-clip_skip])
        mean = z.mean()
        z = z * w.reshape(1, -1, 1)
        out.append(z * (mean / z.mean()))
    return torch.cat(out, dim=1)


def reference(pipe: Any, prompt_embeds: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
    out = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, num_inference_steps=2, width=64,
               height=64, generator=torch.Generator("cpu").manual_seed(5))
    return pixels(out.images[0])


def test_a_weighted_long_prompt_equals_a1111s_rule(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any]
) -> None:
    pipe = reference_pipelines["txt2img"]
    filler = " and a dog" * 30
    prompt = "(a photo of a cat:1.3)" + filler + " [blurry]"
    segments = [("a photo of a cat", 1.3), (filler + " ", 1.0), ("blurry", 1 / 1.1)]
    assert len(ids_of(pipe.tokenizer, prompt)) > 75  # really longer than one chunk
    expected = reference(pipe, a1111_embeddings(pipe, segments, 2), a1111_embeddings(pipe, [("", 1.0)], 2))
    result = demo_engine.generate(GenerationRequest(prompt, **BASE))
    assert np.array_equal(pixels(result.images[0]), expected)
    assert expected.std() > 5  # a picture, not a NaN-black square that would equal anything
    plain = demo_engine.generate(GenerationRequest(prompt.replace("(", "").replace(":1.3)", "").strip("[]"), **BASE))
    assert not np.array_equal(pixels(plain.images[0]), expected)  # the weights did something


def test_a_plain_short_prompt_is_left_to_diffusers_and_our_encoding_agrees(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any]
) -> None:
    encoder = slot(demo_engine).prompts
    assert not encoder.needs_custom("a photo of a cat", "blurry", None)
    ours = encoder.encode("a photo of a cat", "blurry", None, torch.device("cpu"))
    theirs, negative = reference_pipelines["txt2img"].encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    assert torch.equal(ours["prompt_embeds"], theirs) and torch.equal(ours["negative_prompt_embeds"], negative)


def test_clip_skip_takes_an_earlier_layer_with_the_final_norm(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any]
) -> None:
    pipe = reference_pipelines["txt2img"]
    expected = reference(pipe, a1111_embeddings(pipe, [("a photo of a cat", 1.0)], 1, clip_skip=2),
                         a1111_embeddings(pipe, [("", 1.0)], 1, clip_skip=2))
    result = demo_engine.generate(GenerationRequest("a photo of a cat", clip_skip=2, **BASE))
    assert np.array_equal(pixels(result.images[0]), expected)
    assert result.clip_skip == 2


def test_comma_backtrack_moves_the_last_words_to_the_next_chunk(demo_engine: DiffusersEngine) -> None:
    encoder = slot(demo_engine).prompts
    tok = encoder.encoders[0]
    words = ids_of(tok.tokenizer, "cat")
    prompt = "cat " * (70 // len(words)) + ", " + "cat " * 20
    chunks = encoder.chunks(prompt, tok)
    assert len(chunks) == 2
    assert chunks[0].tokens[-1] == tok.comma  # the first chunk ends at the comma, as in A1111
    assert chunks[0].tokens + chunks[1].tokens == ids_of(tok.tokenizer, prompt)


def test_break_starts_a_new_chunk(demo_engine: DiffusersEngine) -> None:
    encoder = slot(demo_engine).prompts
    chunks = encoder.chunks("a cat BREAK a dog", encoder.encoders[0])
    assert [len(c.tokens) for c in chunks] == [len(ids_of(encoder.encoders[0].tokenizer, "a cat"))] * 2


def test_an_embedding_name_in_the_prompt_uses_its_vectors(demo_engine: DiffusersEngine) -> None:
    plain = pixels(demo_engine.generate(GenerationRequest("a cat", **BASE)).images[0])
    word = pixels(demo_engine.generate(GenerationRequest("a cat demo-embedding", **BASE)).images[0])
    assert not np.array_equal(plain, word)
    encoder = slot(demo_engine).prompts
    chunk = encoder.chunks("a cat (demo-embedding:1.2)", encoder.encoders[0])[0]
    (offset, vectors), = chunk.fixes
    assert vectors.shape == (2, 32) and chunk.multipliers[offset : offset + 2] == [1.2, 1.2]
    # The vectors enter at the input embeddings: the encoding differs from the text "demo-embedding".
    assert encoder.needs_custom("a cat demo-embedding", "", None)


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sdxl_encodes_both_encoders_like_diffusers(demo_cache_dir: Path, negative: str) -> None:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))
    sdxl = slot(engine, "demo-sdxl")
    ours = sdxl.prompts.encode("a photo of a cat", negative, None, torch.device("cpu"))
    pipe = sdxl.model.text_to_image
    theirs = pipe.encode_prompt("a photo of a cat", device="cpu", negative_prompt=negative or None)
    for key, expected in zip(("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                              "negative_pooled_prompt_embeds"), theirs, strict=True):
        assert torch.equal(ours[key], expected), key
    weighted = sdxl.prompts.encode("a (photo:1.5) of a cat" + " and a dog" * 30, negative, None, torch.device("cpu"))
    assert weighted["prompt_embeds"].shape == (1, 154, 64) and weighted["pooled_prompt_embeds"].shape == (1, 32)


@pytest.mark.parametrize("model", ["demo-sd15", "demo-sdxl"])
def test_weighted_prompts_and_loras_serve_every_operation_and_batches(demo_cache_dir: Path, model: str) -> None:
    from sdworker.domain.request import LoraRef, Operation

    from .helpers import as_init, as_mask, half_mask, init_image

    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))
    lora = (LoraRef("demo-peft" if model == "demo-sd15" else "demo-xl-peft", 0.5),)
    prompt = "a (photo:1.2) of a [cat]" + ", and a dog" * 30
    # the diffusion operations of an SD model (an edit needs an edit model; an upscale runs no pipeline)
    for operation in (Operation.TEXT_TO_IMAGE, Operation.IMAGE_TO_IMAGE, Operation.INPAINT):
        result = engine.generate(GenerationRequest(
            prompt, model=model, operation=operation, negative_prompt="(blurry:1.4)", loras=lora, num_images=2,
            init_image=as_init(init_image()), mask_image=as_mask(half_mask()), strength=1.0, **BASE))
        assert len(result.images) == 2 and result.seeds == (5, 6)
        assert pixels(result.images[0]).std() > 5
        assert not np.array_equal(pixels(result.images[0]), pixels(result.images[1]))


def test_emphasis_restores_the_mean_and_never_makes_nan() -> None:
    from sdworker.engine.prompt_encoding import apply_emphasis

    z = torch.randn(1, 77, 8) + 0.3
    weights = torch.ones(77)
    weights[3:6] = 1.5
    out = apply_emphasis(z, weights)
    assert torch.allclose(out.mean(), z.mean()) and not torch.equal(out, z)
    assert torch.isfinite(apply_emphasis(torch.zeros(1, 77, 8), weights)).all()
