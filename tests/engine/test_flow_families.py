"""The flow-matching families after FLUX.1 (which has its own, longer file): each demo model's
pixels equal diffusers' own pipelines called directly with the same seed, size, steps, guidance and
negative prompt, for every operation diffusers has; previews decode x0; the family's sizes and
samplers are enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.families import family_facts
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels

SEED = 91
# family -> (demo model, diffusers classes for text-to-image, image-to-image, inpaint)
FAMILIES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "sd3": ("demo-sd3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                         "StableDiffusion3InpaintPipeline")),
    "zimage": ("demo-zimage", ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")),
    "qwenimage": ("demo-qwenimage", ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")),
}
GUIDANCE_ARGUMENT = {"qwenimage": "true_cfg_scale"}
CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 4.5}


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))


@pytest.fixture(scope="module")
def references(demo_bundle: Path) -> dict[tuple[str, int], Any]:
    """diffusers' pipelines, each loaded on its own from the demo folder, loaded on first use."""
    return {}


def _reference(references: dict[tuple[str, int], Any], demo_bundle: Path, family: str, index: int) -> Any:
    import diffusers

    key = (family, index)
    if key not in references:
        model, classes = FAMILIES[family]
        pipe = getattr(diffusers, classes[index]).from_pretrained(demo_bundle / "models" / model)
        pipe.set_progress_bar_config(disable=True)
        references[key] = pipe
    return references[key]


OPERATIONS = [(Operation.TEXT_TO_IMAGE, 0), (Operation.IMAGE_TO_IMAGE, 1), (Operation.INPAINT, 2)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("operation", "index"), OPERATIONS, ids=[op.name.lower() for op, _ in OPERATIONS])
def test_pixels_equal_the_family_pipeline(
    engine: DiffusersEngine, references: dict[tuple[str, int], Any], demo_bundle: Path, family: str,
    operation: Operation, index: int,
) -> None:
    model, _ = FAMILIES[family]
    extra: dict[str, Any] = {}
    if operation is not Operation.TEXT_TO_IMAGE:
        extra.update(image=init_image(), strength=0.7)
    if operation is Operation.INPAINT:
        extra["mask_image"] = half_mask()
    request = GenerationRequest(
        "a photo of a cat", operation=operation, negative_prompt="blurry", model=model, seed=SEED,
        init_image=as_init(extra["image"]) if "image" in extra else None,
        mask_image=as_mask(extra["mask_image"]) if "mask_image" in extra else None, strength=extra.get("strength", 0.8),
        **{"num_inference_steps": CALL["num_inference_steps"], "guidance_scale": CALL["guidance_scale"],
           "width": CALL["width"], "height": CALL["height"]},
    )
    result = engine.generate(request)
    pipe = _reference(references, demo_bundle, family, index)
    call = {**CALL, GUIDANCE_ARGUMENT.get(family, "guidance_scale"): CALL["guidance_scale"]}
    if family in GUIDANCE_ARGUMENT:
        del call["guidance_scale"]
    expected = pipe("a photo of a cat", negative_prompt="blurry", generator=torch.Generator("cpu").manual_seed(SEED),
                    **call, **extra).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert (result.family, result.warnings) == (family, ())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_negative_prompt_changes_the_image(engine: DiffusersEngine, family: str) -> None:
    """CFG families honour the negative prompt (the test above would pass if both runs dropped it)."""
    model, _ = FAMILIES[family]
    base = {"model": model, "seed": SEED, "width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 4.5}
    with_negative = engine.generate(GenerationRequest("a cat", negative_prompt="blurry", **base))
    without = engine.generate(GenerationRequest("a cat", **base))
    assert not np.array_equal(pixels(with_negative.images[0]), pixels(without.images[0]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_preview_is_the_final_image_and_mid_previews_beat_raw_latents(
    engine: DiffusersEngine, family: str
) -> None:
    model, _ = FAMILIES[family]
    views: list[tuple[np.ndarray, np.ndarray]] = []

    def on_step(view: Any) -> None:
        slot = engine._slot(engine.library.model(model), None)
        raw = slot.decoders["vae"].decode(ADAPTERS(family).unpack(view.latents(), 64, 64), 64)
        views.append((view.render_preview("vae", 64).pixels, raw))

    result = engine.generate(GenerationRequest("a cat", model=model, seed=SEED, width=64, height=64,
                                               num_inference_steps=4, guidance_scale=4.5), on_step=on_step)
    assert all(view[0].shape == (64, 64, 3) for view in views)
    final = pixels(result.images[0]).astype(float)
    assert np.abs(views[-1][0].astype(float) - final).max() <= 2
    mid_preview, mid_raw = (a.astype(float) for a in views[1])
    assert np.mean((mid_preview - final) ** 2) < np.mean((mid_raw - final) ** 2)
    assert family_facts(family).latent.channels == view_channels(engine, model)


def ADAPTERS(family: str) -> Any:
    from sdworker.engine.families import flow_adapter

    return flow_adapter(family)


def view_channels(engine: DiffusersEngine, model: str) -> int:
    slot = engine._slot(engine.library.model(model), None)
    config = slot.model.pipe.vae.config
    return int(config.get("latent_channels") or config.get("z_dim"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sizes_and_samplers_follow_the_family(engine: DiffusersEngine, family: str) -> None:
    model, _ = FAMILIES[family]
    assert engine.library.model(model).family == family
    with pytest.raises(InvalidRequest, match="multiple of 16") as size:
        engine.validate_request(GenerationRequest("a cat", model=model, width=64, height=72))
    assert size.value.field == "height"
    with pytest.raises(InvalidRequest, match="does not apply") as sampler:
        engine.validate_request(GenerationRequest("a cat", model=model, scheduler="ddim"))
    assert sampler.value.field == "scheduler"
