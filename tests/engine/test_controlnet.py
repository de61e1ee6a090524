"""ControlNet units equal diffusers' own ControlNet pipelines called directly (the demo bundle's tiny
``demo-controlnet`` on ``demo-sd15``): one unit, two units with their own weights and start/end,
canny's map, image-to-image; the demo ControlNet changes the image; nothing of a ControlNet job stays
for the next; bad units are 4xx naming their field."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
)
from diffusers.models.controlnets import MultiControlNetModel
from PIL import Image

from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, Operation
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest

from .helpers import as_init, init_image, pixels

PROMPT = "a photo of a cat"
SEED = 99
CALL: dict[str, Any] = {"num_inference_steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64}


def stripes(vertical: bool = True) -> Image.Image:
    grid = np.zeros((64, 64, 3), dtype=np.uint8)
    if vertical:
        grid[:, ::8] = 255
    else:
        grid[::8, :] = 255
    return Image.fromarray(grid)


def unit(image: Image.Image, **fields: Any) -> ControlUnit:
    return ControlUnit("demo-controlnet", InputImage.from_image(image, "controlnet.0.image"), **fields)


@pytest.fixture(scope="module")
def net(demo_bundle: Path) -> Any:
    return ControlNetModel.from_pretrained(demo_bundle / "controlnet" / "demo-controlnet")


@pytest.fixture(scope="module")
def reference(demo_model_dir: Path, net: Any) -> dict[str, Any]:
    txt = StableDiffusionControlNetPipeline.from_pretrained(demo_model_dir, controlnet=net, safety_checker=None)
    img = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(demo_model_dir, controlnet=net,
                                                                  safety_checker=None)
    for pipe in (txt, img):
        pipe.set_progress_bar_config(disable=True)
    return {"txt2img": txt, "img2img": img}


def by_hand(pipe: Any, **kwargs: Any) -> np.ndarray:
    out = pipe(PROMPT, negative_prompt="blurry", generator=torch.Generator("cpu").manual_seed(SEED), **CALL,
               **kwargs)
    return pixels(out.images[0])


def job(*units: ControlUnit, **fields: Any) -> GenerationRequest:
    return GenerationRequest(PROMPT, negative_prompt="blurry", seed=SEED, controlnet=units,
                             **{"num_inference_steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64, **fields})


def test_one_unit_equals_the_controlnet_pipeline_and_changes_the_image(
    demo_engine: DiffusersEngine, reference: dict[str, Any]
) -> None:
    result = demo_engine.generate(job(unit(stripes(), weight=0.8, start=0.0, end=0.75)))
    expected = by_hand(reference["txt2img"], image=stripes(), controlnet_conditioning_scale=0.8,
                       control_guidance_start=0.0, control_guidance_end=0.75)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)
    plain = demo_engine.generate(job())
    assert np.abs(pixels(plain.images[0]).astype(int) - expected.astype(int)).mean() > 2  # the demo net steers


def test_two_units_with_their_own_weights_and_ranges(
    demo_engine: DiffusersEngine, reference: dict[str, Any], demo_model_dir: Path, net: Any
) -> None:
    first = unit(stripes(True), weight=1.0, start=0.0, end=0.5)
    second = ControlUnit("demo-controlnet", InputImage.from_image(stripes(False), "controlnet.1.image"), weight=0.6,
                         start=0.25, end=1.0)
    result = demo_engine.generate(job(first, second))
    both = MultiControlNetModel([net, net])
    multi = StableDiffusionControlNetPipeline.from_pretrained(demo_model_dir, controlnet=both, safety_checker=None)
    multi.set_progress_bar_config(disable=True)
    expected = by_hand(multi, image=[stripes(True), stripes(False)], controlnet_conditioning_scale=[1.0, 0.6],
                       control_guidance_start=[0.0, 0.25], control_guidance_end=[0.5, 1.0])
    np.testing.assert_array_equal(pixels(result.images[0]), expected)
    only_first = demo_engine.generate(job(first))
    assert not np.array_equal(pixels(only_first.images[0]), expected)  # the second unit mattered


def test_canny_preprocessor_is_opencvs_canny(demo_engine: DiffusersEngine, reference: dict[str, Any]) -> None:
    photo = init_image(64)
    result = demo_engine.generate(job(unit(photo, preprocessor="canny", low=50, high=150)))
    edges = cv2.Canny(np.asarray(photo.convert("RGB")), 50, 150)
    control = Image.fromarray(np.stack([edges] * 3, axis=-1))
    np.testing.assert_array_equal(pixels(result.images[0]), by_hand(reference["txt2img"], image=control))


def test_image_to_image_with_a_unit(demo_engine: DiffusersEngine, reference: dict[str, Any]) -> None:
    start = init_image(64)
    result = demo_engine.generate(job(unit(stripes()), operation=Operation.IMAGE_TO_IMAGE, init_image=as_init(start),
                                      strength=0.75))
    # weight 1.0 written out: diffusers' image-to-image ControlNet pipeline defaults to 0.8
    expected = by_hand(reference["img2img"], image=start, control_image=stripes(), strength=0.75,
                       controlnet_conditioning_scale=1.0)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)


def test_the_job_after_a_controlnet_job_equals_a_fresh_workers(demo_engine: DiffusersEngine,
                                                                demo_cache_dir: Path) -> None:
    demo_engine.generate(job(unit(stripes(), weight=1.5)))
    after = demo_engine.generate(job())
    fresh = DiffusersEngine(demo_engine.settings)
    try:
        np.testing.assert_array_equal(pixels(after.images[0]), pixels(fresh.generate(job()).images[0]))
    finally:
        fresh.close()


def test_bad_units_name_their_field(demo_engine: DiffusersEngine) -> None:
    undecodable = ControlUnit("demo-controlnet", InputImage(b"not an image", "controlnet.0.image"))
    cases: list[tuple[GenerationRequest, str]] = [
        (job(ControlUnit("no-such-net", InputImage.from_image(stripes(), "controlnet.0.image"))), "controlnet.0.model"),
        (job(unit(stripes(), preprocessor="depth_midas")), "controlnet.0.preprocessor"),
        (job(unit(stripes()), model="demo-sdxl"), "controlnet.0.model"),  # a net for another UNet
        (job(unit(stripes()), model="demo-flux1", width=64, height=64), "controlnet.0.model"),  # an SD net
        (job(unit(stripes()), model="demo-zimage", width=64, height=64), "controlnet.0.model"),  # an SD net
        (job(unit(stripes()), model="demo-flux2", width=64, height=64), "controlnet"),  # no ControlNet there
        (job(undecodable), "controlnet.0.image"),
    ]
    for request, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            demo_engine.generate(request)
        assert caught.value.field == field, caught.value


def test_sdxl_units_equal_the_xl_controlnet_pipeline(demo_engine: DiffusersEngine, demo_bundle: Path,
                                                     tmp_path: Path) -> None:
    """SDXL: a tiny ControlNet of its own, shaped after demo-sdxl's UNet, in a --controlnet-dir."""
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    from sdworker.engine.demo_model import build_demo_controlnet

    base = StableDiffusionXLPipeline.from_pretrained(demo_bundle / "models" / "demo-sdxl")
    with torch.random.fork_rng(devices=[]):
        xl_net = build_demo_controlnet(base.unet, seed=7)
    xl_net.save_pretrained(tmp_path / "xl-net")
    shutil.copytree(demo_bundle / "controlnet" / "demo-controlnet", tmp_path / "demo-controlnet")
    engine = DiffusersEngine(demo_engine.settings.model_copy(update={"controlnet_dir": tmp_path}))
    try:
        xl_unit = ControlUnit("xl-net", InputImage.from_image(stripes(), "controlnet.0.image"), 0.9, 0.0, 0.8)
        result = engine.generate(job(xl_unit, model="demo-sdxl"))
        with pytest.raises(InvalidRequest) as caught:  # the SD 1.x demo ControlNet does not fit an SDXL UNet
            engine.generate(job(unit(stripes()), model="demo-sdxl"))
        assert caught.value.field == "controlnet.0.model" and "cross-attention width" in caught.value.message
    finally:
        engine.close()
    pipe = StableDiffusionXLControlNetPipeline(**base.components, controlnet=xl_net)
    pipe.set_progress_bar_config(disable=True)
    expected = by_hand(pipe, image=stripes(), controlnet_conditioning_scale=0.9, control_guidance_end=0.8)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)
