"""FLUX.1 end to end on the demo bundle's tiny ``demo-flux1``: the engine's pixels equal diffusers'
own Flux pipelines called directly with the same seed, size, steps and guidance; the transformer-only
single file equals its folder; previews decode the unpacked x0; a kohya FLUX LoRA changes the image and
leaves nothing behind; the family's rules refuse what it cannot do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest, LoraRef, Operation
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.families import flux1
from sdworker.errors import InvalidRequest, LoraIncompatible
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels

SEED = 77
BASE: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 3.5, "seed": SEED}


@pytest.fixture(scope="module")
def flux_engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_models=2))


@pytest.fixture(scope="module")
def flux_folder(demo_bundle: Path) -> Path:
    return demo_bundle / "models" / "demo-flux1"


@pytest.fixture(scope="module")
def reference(flux_folder: Path) -> dict[str, Any]:
    """diffusers' own FLUX pipelines, each loaded on its own from the demo folder."""
    from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline

    pipes = {name: cls.from_pretrained(flux_folder) for name, cls in
             (("txt2img", FluxPipeline), ("img2img", FluxImg2ImgPipeline), ("inpaint", FluxInpaintPipeline))}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _reference(pipe: Any, **kwargs: Any) -> np.ndarray:
    out = pipe("a photo of a cat", generator=torch.Generator("cpu").manual_seed(SEED), width=64, height=64,
               num_inference_steps=4, guidance_scale=3.5, **kwargs)
    return pixels(out.images[0])


def _run(engine: DiffusersEngine, model: str = "demo-flux1", **kwargs: Any) -> Any:
    return engine.generate(GenerationRequest("a photo of a cat", model=model, **{**BASE, **kwargs}))


def test_text_to_image_equals_flux_pipeline(flux_engine: DiffusersEngine, reference: dict[str, Any]) -> None:
    result = _run(flux_engine)
    np.testing.assert_array_equal(pixels(result.images[0]), _reference(reference["txt2img"]))
    assert (result.family, result.scheduler, result.warnings) == ("flux1", "euler", ())


def test_image_to_image_equals_flux_img2img(flux_engine: DiffusersEngine, reference: dict[str, Any]) -> None:
    image = init_image()
    result = _run(flux_engine, operation=Operation.IMAGE_TO_IMAGE, init_image=as_init(image), strength=0.6)
    expected = _reference(reference["img2img"], image=image, strength=0.6)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)


def test_inpaint_equals_flux_inpaint(flux_engine: DiffusersEngine, reference: dict[str, Any]) -> None:
    image, mask = init_image(), half_mask()
    result = _run(flux_engine, operation=Operation.INPAINT, init_image=as_init(image), mask_image=as_mask(mask),
                  strength=0.9)
    expected = _reference(reference["inpaint"], image=image, mask_image=mask, strength=0.9)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)


def test_transformer_only_file_equals_its_folder(flux_engine: DiffusersEngine, reference: dict[str, Any]) -> None:
    entry = flux_engine.library.model("demo-flux1-transformer")
    assert (entry.family, entry.kind, entry.transformer_only, entry.variant) == ("flux1", "file", True, "dev")
    result = _run(flux_engine, model="demo-flux1-transformer")
    np.testing.assert_array_equal(pixels(result.images[0]), _reference(reference["txt2img"]))


def test_ignored_fields_become_warnings_and_emphasis_is_removed(
    flux_engine: DiffusersEngine, reference: dict[str, Any]
) -> None:
    result = flux_engine.generate(GenerationRequest("a photo of a (cat:1.4)", negative_prompt="blurry", clip_skip=2,
                                                    model="demo-flux1", **BASE))
    np.testing.assert_array_equal(pixels(result.images[0]), _reference(reference["txt2img"]))
    assert [w.split(":")[0] for w in result.warnings] == ["negative_prompt", "clip_skip", "prompt"]


def test_previews_decode_the_unpacked_x0(flux_engine: DiffusersEngine) -> None:
    """The last step's preview is the final image (x0 after the last step is the final latents); a mid-job
    x0 preview is closer to the final image than a decode of the raw noisy latents is."""
    slot_views: list[tuple[np.ndarray, np.ndarray]] = []
    engine = flux_engine

    def on_step(view: Any) -> None:
        preview = view.render_preview("vae", 64)
        slot = engine._slot(engine.library.model("demo-flux1"), None)
        raw = slot.decoders["vae"].decode(flux1.ADAPTER.unpack(view.latents(), 64, 64), 64)
        slot_views.append((preview.pixels, raw))

    result = engine.generate(GenerationRequest("a photo of a cat", model="demo-flux1", **BASE), on_step=on_step)
    final = pixels(result.images[0]).astype(float)
    assert len(slot_views) == 4
    last_preview = slot_views[-1][0].astype(float)
    assert np.abs(last_preview - final).max() <= 2  # the same latents, decoded by the preview's VAE path
    mid_preview, mid_raw = (a.astype(float) for a in slot_views[1])
    assert np.mean((mid_preview - final) ** 2) < np.mean((mid_raw - final) ** 2)


def test_latent2rgb_and_taesd_free_previews_have_the_image_shape(flux_engine: DiffusersEngine) -> None:
    seen: list[Any] = []
    flux_engine.generate(GenerationRequest("a cat", model="demo-flux1", **{**BASE, "width": 96}),
                         on_step=lambda view: seen.append(view.render_preview("auto", 48)))
    assert all(p is not None and p.method == "latent2rgb" and p.pixels.shape == (32, 48, 3) for p in seen)


def test_kohya_lora_changes_the_image_and_leaves_nothing_behind(
    flux_engine: DiffusersEngine, reference: dict[str, Any]
) -> None:
    with_lora = _run(flux_engine, loras=(LoraRef("demo-flux1-kohya", 1.0),))
    plain = _run(flux_engine)
    expected = _reference(reference["txt2img"])
    assert np.abs(pixels(with_lora.images[0]).astype(int) - expected.astype(int)).max() > 10
    assert with_lora.loras[0].name == "demo-flux1-kohya"
    np.testing.assert_array_equal(pixels(plain.images[0]), expected)


def test_loras_of_other_families_are_refused(flux_engine: DiffusersEngine) -> None:
    with pytest.raises(LoraIncompatible, match="demo-peft"):
        flux_engine.validate_request(GenerationRequest("a cat", model="demo-flux1", loras=(LoraRef("demo-peft"),)))
    with pytest.raises(LoraIncompatible, match="is for flux1"):
        flux_engine.validate_request(GenerationRequest("a cat", model="demo-sd15",
                                                       loras=(LoraRef("demo-flux1-kohya"),)))


def test_family_rules_refuse_sizes_and_samplers_naming_the_field(flux_engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest, match="width: 72 is not a positive multiple of 16") as size:
        flux_engine.validate_request(GenerationRequest("a cat", model="demo-flux1", width=72, height=64))
    assert size.value.field == "width"
    with pytest.raises(InvalidRequest, match="FLUX") as sampler:
        flux_engine.validate_request(GenerationRequest("a cat", model="demo-flux1", scheduler="dpmpp_2m"))
    assert sampler.value.field == "scheduler"
