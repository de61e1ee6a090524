"""Inpainting checkpoints of the UNet families (9 input channels): the library recognises one from its
files, and every operation runs through diffusers' inpaint pipeline as A1111 runs it, pixel for pixel:
inpaint with the job's mask, image-to-image under a full mask, text-to-image from a blank image under a
full mask at strength 1. Extra pipelines that expect 4 channels (hires, ControlNet) are a 4xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.domain.request import ControlUnit, GenerationRequest, Operation
from sdworker.engine.demo_inpaint import DEMO_SD15_INPAINTING
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.library import ModelLibrary, read_safetensors_header
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels

SEED = 17
CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 6.0}
FULL = Image.new("L", (64, 64), 255)


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))


@pytest.fixture(scope="module")
def reference(demo_bundle: Path) -> Any:
    """diffusers' own inpaint pipeline, loaded on its own from the demo folder."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(demo_bundle / "models" / DEMO_SD15_INPAINTING,
                                                          safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(reference: Any, image: Image.Image, mask: Image.Image, strength: float) -> np.ndarray:
    out = reference("a photo of a cat", negative_prompt="blurry", image=image, mask_image=mask, strength=strength,
                    generator=torch.Generator("cpu").manual_seed(SEED), **CALL).images[0]
    return pixels(out)


def _request(operation: Operation, **extra: Any) -> GenerationRequest:
    return GenerationRequest("a photo of a cat", operation=operation, negative_prompt="blurry",
                             model=DEMO_SD15_INPAINTING, seed=SEED, **CALL, **extra)


def test_the_library_recognises_a_nine_channel_unet(engine: DiffusersEngine) -> None:
    models = {m.name: m for m in engine.list_models()}
    assert models[DEMO_SD15_INPAINTING].family == "sd1"
    assert models[DEMO_SD15_INPAINTING].variant == "inpainting"
    assert models["demo-sd15"].variant == ""  # the 4-channel model of the same shape is not one


def test_inpaint_equals_diffusers(engine: DiffusersEngine, reference: Any) -> None:
    request = _request(Operation.INPAINT, init_image=as_init(init_image()), mask_image=as_mask(half_mask()),
                       strength=1.0)
    got = pixels(engine.generate(request).images[0])
    assert np.array_equal(got, _diffusers(reference, init_image(), half_mask(), 1.0))


def test_image_to_image_is_a_full_mask_inpaint(engine: DiffusersEngine, reference: Any) -> None:
    request = _request(Operation.IMAGE_TO_IMAGE, init_image=as_init(init_image()), strength=0.6)
    got = pixels(engine.generate(request).images[0])
    assert np.array_equal(got, _diffusers(reference, init_image(), FULL, 0.6))
    stronger = pixels(engine.generate(_request(Operation.IMAGE_TO_IMAGE, init_image=as_init(init_image()),
                                               strength=1.0)).images[0])
    assert not np.array_equal(stronger, got)  # strength is honoured (3 steps from noise vs 1 from the image)


def test_text_to_image_is_a_full_mask_inpaint_from_noise(engine: DiffusersEngine, reference: Any) -> None:
    got = pixels(engine.generate(_request(Operation.TEXT_TO_IMAGE)).images[0])
    gray = Image.new("RGB", (64, 64), (127, 127, 127))
    assert np.array_equal(got, _diffusers(reference, gray, FULL, 1.0))
    # Under a full mask at strength 1 the image does not matter: the masked image is blank, the start is noise.
    assert np.array_equal(got, _diffusers(reference, init_image(), FULL, 1.0))


def test_hires_is_refused_naming_the_field(engine: DiffusersEngine) -> None:
    from sdworker.domain.hires import HiresFix

    with pytest.raises(InvalidRequest) as caught:
        engine.validate_request(_request(Operation.TEXT_TO_IMAGE, hires=HiresFix(scale=2.0)))
    assert caught.value.field == "hires" and DEMO_SD15_INPAINTING in caught.value.message


def test_controlnet_is_refused_naming_the_field(engine: DiffusersEngine) -> None:
    unit = ControlUnit("demo-controlnet", as_init(init_image()))
    with pytest.raises(InvalidRequest) as caught:
        engine.validate_request(_request(Operation.TEXT_TO_IMAGE, controlnet=(unit,)))
    assert caught.value.field == "controlnet"


def test_a_single_file_inpainting_checkpoint_is_recognised(tmp_path: Path, demo_cache_dir: Path) -> None:
    """A1111-layout checkpoints (sd-v1-5-inpainting.safetensors) show it in the first convolution's shape."""
    from safetensors.torch import save_file

    models = tmp_path / "models"
    models.mkdir()
    for name, channels in (("plain", 4), ("inpainting", 9)):
        save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, channels, 3, 3)},
                  str(models / f"{name}.safetensors"))
        assert read_safetensors_header(models / f"{name}.safetensors")
    library = ModelLibrary(Settings(models_dir=models, cache_dir=demo_cache_dir, device="cpu"))
    assert library.model("inpainting").variant == "inpainting"
    assert library.model("plain").variant == ""


def test_cli_generate_with_an_inpainting_folder(
    demo_bundle: Path, demo_cache_dir: Path, tmp_path: Path, reference: Any
) -> None:
    """``sdworker generate --model /path/to/sd-inpainting``: text-to-image through the inpaint pipeline."""
    from sdworker.cli import main

    out = tmp_path / "inpainting.png"
    code = main(["generate", "a photo of a cat", "--model", str(demo_bundle / "models" / DEMO_SD15_INPAINTING),
                 "-o", str(out), "--width", "64", "--height", "64", "--seed", str(SEED), "--negative", "blurry",
                 "--steps", "3", "--guidance", "6.0", "--cache-dir", str(demo_cache_dir), "--device", "cpu"])
    assert code == 0
    with Image.open(out) as image:
        got = pixels(image)
    assert np.array_equal(got, _diffusers(reference, Image.new("RGB", (64, 64), (127, 127, 127)), FULL, 1.0))


def test_an_sdxl_inpainting_folder_runs_text_to_image_through_the_xl_inpaint_pipeline(
    tmp_path: Path, demo_cache_dir: Path
) -> None:
    """SDXL inpainting 0.1's shape (a 9-channel SDXL UNet, ``StableDiffusionXLInpaintPipeline`` folder), tiny."""
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    from sdworker.engine.demo_model import build_demo_sdxl_components

    with torch.random.fork_rng(devices=[]):
        components = build_demo_sdxl_components(77)
        torch.manual_seed(78)
        components["unet"] = UNet2DConditionModel.from_config({**components["unet"].config, "in_channels": 9}).eval()
    folder = tmp_path / "models" / "sdxl-inpainting"
    StableDiffusionXLInpaintPipeline(**components).save_pretrained(folder, safe_serialization=True)
    engine = DiffusersEngine(Settings(models_dir=tmp_path / "models", cache_dir=demo_cache_dir, device="cpu"))
    entry = engine.library.model("sdxl-inpainting")
    assert (entry.family, entry.variant) == ("sdxl", "inpainting")
    got = engine.generate(GenerationRequest("a photo of a cat", model="sdxl-inpainting", seed=SEED, **CALL))
    reference = StableDiffusionXLInpaintPipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    expected = reference("a photo of a cat", image=Image.new("RGB", (64, 64), (127, 127, 127)), mask_image=FULL,
                         strength=1.0, generator=torch.Generator("cpu").manual_seed(SEED), **CALL).images[0]
    assert np.array_equal(pixels(got.images[0]), pixels(expected))
