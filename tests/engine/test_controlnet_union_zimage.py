"""SDXL's union ControlNet and Z-Image's ControlNet equal diffusers' own pipelines called directly with the
same seed (tiny ControlNets built here, shaped after the demo bundle's ``demo-sdxl`` and ``demo-zimage``):
a union mode per unit, two units on one union model, union image-to-image and inpainting, Z-Image
text-to-image and inpainting (with a ControlNet that reads the mask). Their rules are 4xx naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, Operation
from sdworker.engine.demo_controlnet import build_sdxl_union_controlnet, build_zimage_controlnet
from sdworker.engine.demo_model import build_demo_controlnet
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels

PROMPT = "a photo of a cat"
SEED = 41
XL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 6.0}
ZIMAGE: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 4.0}


def stripes(vertical: bool = True) -> Image.Image:
    grid = np.zeros((64, 64, 3), dtype=np.uint8)
    if vertical:
        grid[:, ::8] = 255
    else:
        grid[::8, :] = 255
    return Image.fromarray(grid)


def unit(model: str, image: Image.Image, index: int = 0, **fields: Any) -> ControlUnit:
    return ControlUnit(model, InputImage.from_image(image, f"controlnet.{index}.image"), **fields)


def by_hand(pipe: Any, call: dict[str, Any], **kwargs: Any) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pixels(pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(SEED), **call, **kwargs).images[0])


@pytest.fixture(scope="module")
def nets(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import UNet2DConditionModel, ZImageTransformer2DModel

    folder = tmp_path_factory.mktemp("controlnets")
    unet = UNet2DConditionModel.from_pretrained(demo_bundle / "models" / "demo-sdxl", subfolder="unet")
    transformer = ZImageTransformer2DModel.from_pretrained(demo_bundle / "models" / "demo-zimage",
                                                           subfolder="transformer")
    with torch.random.fork_rng(devices=[]):
        build_sdxl_union_controlnet(unet, seed=3).save_pretrained(folder / "xl-union")
        build_demo_controlnet(unet, seed=4).save_pretrained(folder / "xl-plain")
        build_zimage_controlnet(transformer, seed=5).save_pretrained(folder / "zimage-net")
        build_zimage_controlnet(transformer, seed=6, reads_mask=True).save_pretrained(folder / "zimage-inpaint-net")
    return folder


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path, nets: Path) -> Any:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_models=1,
                                      controlnet_dir=nets))
    yield engine
    engine.close()


def _xl(engine: DiffusersEngine, *units: ControlUnit, **fields: Any) -> np.ndarray:
    request = GenerationRequest(PROMPT, model="demo-sdxl", seed=SEED, controlnet=units, **{**XL, **fields})
    return pixels(engine.generate(request).images[0])


def _union_pipe(cls: Any, demo_bundle: Path, nets: Path) -> Any:
    from diffusers import ControlNetUnionModel

    net = ControlNetUnionModel.from_pretrained(nets / "xl-union")
    return cls.from_pretrained(demo_bundle / "models" / "demo-sdxl", controlnet=net)


def test_sdxl_union_units_equal_the_union_pipeline(engine: DiffusersEngine, demo_bundle: Path, nets: Path) -> None:
    from diffusers import StableDiffusionXLControlNetUnionPipeline

    first = unit("xl-union", stripes(True), weight=1.0, start=0.0, end=0.7, mode=1)
    second = unit("xl-union", stripes(False), 1, weight=0.6, start=0.3, end=1.0, mode=3)
    ours = _xl(engine, first, second)
    pipe = _union_pipe(StableDiffusionXLControlNetUnionPipeline, demo_bundle, nets)
    expected = by_hand(pipe, XL, control_image=[stripes(True), stripes(False)], control_mode=[1, 3],
                       controlnet_conditioning_scale=[1.0, 0.6], control_guidance_start=[0.0, 0.3],
                       control_guidance_end=[0.7, 1.0])
    np.testing.assert_array_equal(ours, expected)
    one = _xl(engine, first)
    np.testing.assert_array_equal(one, by_hand(pipe, XL, control_image=[stripes(True)], control_mode=[1],
                                               controlnet_conditioning_scale=[1.0], control_guidance_start=[0.0],
                                               control_guidance_end=[0.7]))
    other_mode = _xl(engine, unit("xl-union", stripes(True), weight=1.0, start=0.0, end=0.7, mode=2))
    assert not np.array_equal(one, other_mode)  # the mode is part of what steers it
    assert not np.array_equal(one, ours)  # the second unit mattered
    from diffusers import StableDiffusionXLPipeline  # the job after: the plain model, as on a fresh worker

    np.testing.assert_array_equal(_xl(engine), by_hand(StableDiffusionXLPipeline.from_pipe(pipe), XL))


def test_sdxl_union_image_to_image_and_inpaint(engine: DiffusersEngine, demo_bundle: Path, nets: Path) -> None:
    from diffusers import (
        StableDiffusionXLControlNetUnionImg2ImgPipeline,
        StableDiffusionXLControlNetUnionInpaintPipeline,
    )

    control = {"control_mode": [2], "controlnet_conditioning_scale": [0.8], "control_guidance_start": [0.0],
               "control_guidance_end": [1.0]}
    u = unit("xl-union", stripes(), weight=0.8, mode=2)
    ours = _xl(engine, u, operation=Operation.IMAGE_TO_IMAGE, init_image=as_init(init_image(64)), strength=0.8)
    pipe = _union_pipe(StableDiffusionXLControlNetUnionImg2ImgPipeline, demo_bundle, nets)
    expected = by_hand(pipe, XL, image=init_image(64), strength=0.8, control_image=[stripes()], **control)
    np.testing.assert_array_equal(ours, expected)
    ours = _xl(engine, u, operation=Operation.INPAINT, init_image=as_init(init_image(64)),
               mask_image=as_mask(half_mask()), strength=0.9)
    pipe = _union_pipe(StableDiffusionXLControlNetUnionInpaintPipeline, demo_bundle, nets)
    expected = by_hand(pipe, XL, image=init_image(64), mask_image=half_mask(), strength=0.9,
                       control_image=[stripes()], **control)
    np.testing.assert_array_equal(ours, expected)


def _zimage(engine: DiffusersEngine, *units: ControlUnit, **fields: Any) -> np.ndarray:
    request = GenerationRequest(PROMPT, model="demo-zimage", seed=SEED, controlnet=units, **{**ZIMAGE, **fields})
    return pixels(engine.generate(request).images[0])


def test_zimage_unit_equals_the_zimage_controlnet_pipeline(engine: DiffusersEngine, demo_bundle: Path,
                                                           nets: Path) -> None:
    from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline

    ours = _zimage(engine, unit("zimage-net", stripes(), weight=0.9))
    net = ZImageControlNetModel.from_pretrained(nets / "zimage-net")
    pipe = ZImageControlNetPipeline.from_pretrained(demo_bundle / "models" / "demo-zimage", controlnet=net)
    np.testing.assert_array_equal(ours, by_hand(pipe, ZIMAGE, control_image=stripes(),
                                                controlnet_conditioning_scale=0.9))
    assert np.abs(ours.astype(int) - _zimage(engine).astype(int)).max() > 0  # the unit steers it

    inpaint = GenerationRequest(PROMPT, model="demo-zimage", seed=SEED, operation=Operation.INPAINT,
                                controlnet=(unit("zimage-inpaint-net", stripes(), weight=0.7),),
                                init_image=as_init(init_image(64)), mask_image=as_mask(half_mask()), **ZIMAGE)
    result = engine.generate(inpaint)
    assert any(w.startswith("strength: ignored") for w in result.warnings), result.warnings
    ours = pixels(result.images[0])
    net = ZImageControlNetModel.from_pretrained(nets / "zimage-inpaint-net")
    pipe = ZImageControlNetInpaintPipeline.from_pretrained(demo_bundle / "models" / "demo-zimage", controlnet=net)
    expected = by_hand(pipe, ZIMAGE, image=init_image(64), mask_image=half_mask(), control_image=stripes(),
                       controlnet_conditioning_scale=0.7)
    np.testing.assert_array_equal(ours, expected)


def test_rules_name_their_field(engine: DiffusersEngine) -> None:
    xl = {"model": "demo-sdxl", **XL}
    zi = {"model": "demo-zimage", **ZIMAGE}
    cases: list[tuple[dict[str, Any], tuple[ControlUnit, ...], str]] = [
        (xl, (unit("xl-union", stripes()),), "controlnet.0.control_mode"),  # a union unit needs its mode
        (xl, (unit("xl-union", stripes(), mode=4),), "controlnet.0.control_mode"),  # 4 modes: 0..3
        (xl, (unit("xl-plain", stripes()), unit("xl-union", stripes(), 1, mode=0)), "controlnet.1.model"),
        (zi, (unit("zimage-net", stripes()), unit("zimage-net", stripes(), 1)), "controlnet"),
        (zi, (unit("zimage-net", stripes(), end=0.5),), "controlnet.0.end"),
        (zi, (unit("xl-union", stripes(), mode=0),), "controlnet.0.model"),
        ({**zi, "operation": Operation.INPAINT, "init_image": as_init(init_image(64)),
          "mask_image": as_mask(half_mask())}, (unit("zimage-net", stripes()),), "controlnet.0.model"),
        ({**zi, "operation": Operation.IMAGE_TO_IMAGE, "init_image": as_init(init_image(64))},
         (unit("zimage-net", stripes()),), "controlnet"),
    ]
    for fields, units, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            engine.validate_request(GenerationRequest(PROMPT, controlnet=units, **fields))
        assert caught.value.field == field, (field, caught.value.message)
