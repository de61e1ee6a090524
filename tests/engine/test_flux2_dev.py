"""FLUX.2 dev (``Flux2Pipeline``: a Mistral 3 text encoder, distilled guidance) through the engine, on a
tiny dev model built here from the klein demo's pieces (not in the bundle): the library recognises the
variant from the files, text-to-image equals diffusers' ``Flux2Pipeline`` called directly, the
operations diffusers has no dev pipeline for are a 4xx naming the model, dev jobs batch across jobs in
the shared loop, and a dev LoRA gives diffusers' pixels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest, LoraRef, Operation
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import BatchItem
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, init_image, pixels, save_transformer_lora

DEV = "tiny-flux2-dev"
CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 4.0}
# The pipeline hands the processor a list of parts per message; the project's Qwen tokenizer's own
# template reads only string contents, so the tiny model gets one that reads the parts' text.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% for p in m.content %}{{ p.text }}{% endfor %}"
            "<|im_end|>\n{% endfor %}")


def _build_dev(folder: Path) -> None:
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    from sdworker.engine.demo_flux2 import TEXT_WIDTH, build_demo_flux2_components

    parts = build_demo_flux2_components(5)
    tokenizer = parts["tokenizer"]
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(7)
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=16,
                         num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)  # layers 10, 20, 30 read
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, image_size=32, patch_size=16)
    encoder = Mistral3ForConditionalGeneration(Mistral3Config(text_config=text, vision_config=vision,
                                                              image_token_index=0)).eval()
    config = {k: v for k, v in dict(parts["transformer"].config).items() if not k.startswith("_")}
    torch.manual_seed(8)
    transformer = Flux2Transformer2DModel(**{**config, "guidance_embeds": True}).eval()  # dev: distilled guidance
    Flux2Pipeline(scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=encoder, tokenizer=tokenizer,
                  transformer=transformer).save_pretrained(folder)


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flux2-dev") / DEV
    _build_dev(folder)
    return folder


@pytest.fixture(scope="module")
def engine(dev_folder: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model=str(dev_folder), device="cpu"))


def test_the_library_recognises_flux2_dev(engine: DiffusersEngine) -> None:
    (model,) = engine.list_models()
    assert (model.name, model.family, model.variant) == (DEV, "flux2", "dev")
    assert (model.default_steps, model.default_guidance) == (50, 4.0)  # the dev model card


def test_text_to_image_equals_diffusers(engine: DiffusersEngine, dev_folder: Path) -> None:
    from diffusers import Flux2Pipeline

    result = engine.generate(GenerationRequest("a photo of a cat", seed=3, **CALL))
    pipe = Flux2Pipeline.from_pretrained(dev_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a photo of a cat", generator=torch.Generator("cpu").manual_seed(3), **CALL).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert (result.family, result.steps_run, result.warnings) == ("flux2", 2, ())
    other = engine.generate(GenerationRequest("a photo of a cat", seed=3, **{**CALL, "guidance_scale": 1.5}))
    assert not np.array_equal(pixels(other.images[0]), pixels(result.images[0]))  # guidance reaches the transformer


@pytest.mark.parametrize("operation", [Operation.IMAGE_TO_IMAGE, Operation.INPAINT])
def test_operations_without_a_dev_pipeline_are_refused_naming_the_model(
    engine: DiffusersEngine, operation: Operation
) -> None:
    mask = as_init(init_image()) if operation is Operation.INPAINT else None
    request = GenerationRequest("a cat", operation=operation, init_image=as_init(init_image()), mask_image=mask,
                                strength=0.5, seed=1, model=DEV, **CALL)
    with pytest.raises(InvalidRequest, match=DEV) as caught:
        engine.validate_request(request)  # at submit, before the job is queued
    assert caught.value.field == "operation"
    with pytest.raises(InvalidRequest, match=DEV) as caught:
        engine.generate(request)
    assert caught.value.field == "operation"


def test_dev_jobs_share_one_transformer_call_each_with_its_own_guidance(engine: DiffusersEngine) -> None:
    """The shared batch loop (``batch_flow``) as for the other families: each job's own generator,
    scheduler and distilled guidance (a per-row transformer input). A job alone in the shared loop equals
    its solo run pixel for pixel (the same computation); three jobs in one call stay within 40 dB PSNR of
    their solo runs. On this tiny dev the 3-row call's matmuls round differently from the 1-row ones
    (a level in a few pixels, about 85 dB), so most jobs are a level off rather than equal."""
    from sdworker.engine.batch import denoise
    from sdworker.engine.diffusers_engine import batch_hooks

    from .test_flow_batch import _psnr

    lighthouse = "a lighthouse on a cliff above a stormy sea"
    requests = [GenerationRequest("a photo of a cat", seed=1, **CALL),  # guidance 4
                GenerationRequest(lighthouse, seed=2, **{**CALL, "guidance_scale": 2.0}),
                GenerationRequest("a red barn", seed=3, **{**CALL, "guidance_scale": 6.0})]
    transformer = engine._slot(engine.library.model(DEV), None).model.text_to_image.transformer
    rows: list[int] = []
    handle = transformer.register_forward_pre_hook(lambda m, a, k: rows.append(len(k["hidden_states"])),
                                                   with_kwargs=True)
    try:
        batched = engine.generate_batch([BatchItem(r) for r in requests])
        assert rows == [3] * CALL["num_inference_steps"]  # one call per step for the three jobs
    finally:
        handle.remove()
    slot = engine._slot(engine.library.model(DEV), None)
    hooks = batch_hooks("flux2")
    singles = []  # each job alone through the shared loop (generate_batch sends a group of one to generate)
    for position, request in enumerate(requests):
        job = hooks.prepare(slot, position, BatchItem(request), request.prompt, request.seed or 0, time.perf_counter())
        denoise(hooks, slot.model.text_to_image, [job])
        singles.append(job.outcome(slot, ()))
    for request, got, single in zip(requests, batched, singles, strict=True):
        assert not isinstance(got, Exception) and not isinstance(single, Exception), (got, single)
        alone = pixels(engine.generate(request).images[0])
        np.testing.assert_array_equal(pixels(single.images[0]), alone)
        assert _psnr(pixels(got.images[0]), alone) >= 40, request
        assert np.abs(pixels(got.images[0]).astype(int) - alone.astype(int)).max() <= 1, request


def test_a_lora_on_dev_gives_diffusers_pixels_and_leaves_nothing(dev_folder: Path, tmp_path: Path) -> None:
    """A dev LoRA (made here with peft, saved by ``Flux2Pipeline.save_lora_weights``) through the engine
    equals ``Flux2Pipeline.load_lora_weights`` called directly; the next job without it equals the
    pipeline that never saw it."""
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel

    loras = tmp_path / "loras"
    save_transformer_lora(
        Flux2Pipeline,
        Flux2Transformer2DModel.from_pretrained(dev_folder / "transformer"),
        loras / "dev-style.safetensors",
        ["to_q", "to_k", "to_v", "to_out.0", "to_qkv_mlp_proj"],
        seed=4,
    )
    engine = DiffusersEngine(Settings(model=str(dev_folder), lora_dir=str(loras), device="cpu"))
    pipe = Flux2Pipeline.from_pretrained(dev_folder)
    pipe.set_progress_bar_config(disable=True)

    def diffusers_pixels() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(3)
        return pixels(pipe(prompt="a photo of a cat", generator=generator, **CALL).images[0])

    plain = diffusers_pixels()
    pipe.load_lora_weights(str(loras / "dev-style.safetensors"))
    with_lora = diffusers_pixels()
    assert np.abs(plain.astype(int) - with_lora.astype(int)).max() > 10
    assert engine.library.lora("dev-style").family == "flux2"
    result = engine.generate(GenerationRequest("a photo of a cat", seed=3, loras=(LoraRef("dev-style"),), **CALL))
    np.testing.assert_array_equal(pixels(result.images[0]), with_lora)
    after = engine.generate(GenerationRequest("a photo of a cat", seed=3, **CALL))
    np.testing.assert_array_equal(pixels(after.images[0]), plain)
