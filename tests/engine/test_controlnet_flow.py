"""ControlNet on the transformer families equals diffusers' own pipelines called directly with the same
seed: FLUX.1 (the demo bundle's ``demo-flux1-controlnet`` on ``demo-flux1``: two units with their own
weights and start/end, image-to-image, inpainting, a union ControlNet's modes), SD 3.5 and Qwen-Image
(tiny ControlNets built here for ``demo-sd3`` and ``demo-qwenimage``). The demo FLUX ControlNet changes
the image; the job after a ControlNet job equals a fresh worker's; a unit for another family, a union
ControlNet without a mode and an SD 3.5 unit on image-to-image are 4xx naming their field."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, Operation
from sdworker.domain.step_cache import StepCache
from sdworker.engine.demo_controlnet import (
    DEMO_FLUX1_CONTROLNET,
    build_flux1_controlnet,
    build_qwenimage_controlnet,
    build_sd3_controlnet,
)
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import half_mask, init_image, pixels

PROMPT = "a photo of a cat"
SEED = 31
STEPS = 4
FLUX: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": STEPS, "guidance_scale": 3.5}


def stripes(vertical: bool = True) -> Image.Image:
    grid = np.zeros((64, 64, 3), dtype=np.uint8)
    if vertical:
        grid[:, ::8] = 255
    else:
        grid[::8, :] = 255
    return Image.fromarray(grid)


def unit(model: str, image: Image.Image, index: int = 0, **fields: Any) -> ControlUnit:
    return ControlUnit(model, InputImage.from_image(image, f"controlnet.{index}.image"), **fields)


def job(model: str, *units: ControlUnit, **fields: Any) -> GenerationRequest:
    return GenerationRequest(PROMPT, model=model, seed=SEED, controlnet=units, **{**FLUX, **fields})


def by_hand(pipe: Any, **kwargs: Any) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(SEED), **FLUX, **kwargs)
    return pixels(out.images[0])


@pytest.fixture(scope="module")
def nets(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ControlNet folder: the bundle's two, a FLUX union ControlNet, an SD 3.5 ControlNet for demo-sd3 and a
    Qwen-Image one for demo-qwenimage."""
    from diffusers import QwenImageTransformer2DModel, SD3Transformer2DModel

    folder = tmp_path_factory.mktemp("controlnets")
    for name in ("demo-controlnet", DEMO_FLUX1_CONTROLNET):
        shutil.copytree(demo_bundle / "controlnet" / name, folder / name)
    from diffusers import FluxTransformer2DModel

    flux = FluxTransformer2DModel.from_pretrained(demo_bundle / "models" / "demo-flux1", subfolder="transformer")
    sd3 = SD3Transformer2DModel.from_pretrained(demo_bundle / "models" / "demo-sd3", subfolder="transformer")
    qwen = QwenImageTransformer2DModel.from_pretrained(demo_bundle / "models" / "demo-qwenimage",
                                                       subfolder="transformer")
    with torch.random.fork_rng(devices=[]):
        build_qwenimage_controlnet(qwen, seed=5).save_pretrained(folder / "qwen-net")
        build_flux1_controlnet(flux, seed=3, num_mode=4).save_pretrained(folder / "flux-union")
        build_sd3_controlnet(sd3, seed=4).save_pretrained(folder / "sd3-net")
    shutil.copytree(folder / "qwen-net", folder / "qwen-net-2")
    return folder


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path, nets: Path) -> Any:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_models=1,
                                      controlnet_dir=nets))
    yield engine
    engine.close()


def test_flux_two_units_equal_the_flux_controlnet_pipeline(engine: DiffusersEngine, demo_bundle: Path,
                                                            nets: Path) -> None:
    from diffusers import FluxControlNetModel, FluxControlNetPipeline
    from diffusers.models.controlnets import FluxMultiControlNetModel

    first = unit(DEMO_FLUX1_CONTROLNET, stripes(True), weight=1.0, start=0.0, end=0.5)
    second = unit(DEMO_FLUX1_CONTROLNET, stripes(False), 1, weight=0.6, start=0.25, end=1.0)
    result = engine.generate(job("demo-flux1", first, second))
    net = FluxControlNetModel.from_pretrained(nets / DEMO_FLUX1_CONTROLNET)
    pipe = FluxControlNetPipeline.from_pretrained(demo_bundle / "models" / "demo-flux1",
                                                  controlnet=FluxMultiControlNetModel([net, net]))
    expected = by_hand(pipe, control_image=[stripes(True), stripes(False)], controlnet_conditioning_scale=[1.0, 0.6],
                       control_guidance_start=[0.0, 0.25], control_guidance_end=[0.5, 1.0])
    np.testing.assert_array_equal(pixels(result.images[0]), expected)
    only_first = engine.generate(job("demo-flux1", first))
    assert not np.array_equal(pixels(only_first.images[0]), expected)  # the second unit mattered
    plain = engine.generate(job("demo-flux1"))
    assert np.abs(pixels(plain.images[0]).astype(int) - pixels(only_first.images[0]).astype(int)).mean() > 2


def test_flux_image_to_image_with_a_unit(engine: DiffusersEngine, demo_bundle: Path, nets: Path) -> None:
    from diffusers import FluxControlNetImg2ImgPipeline, FluxControlNetModel

    start = init_image(64)
    result = engine.generate(job("demo-flux1", unit(DEMO_FLUX1_CONTROLNET, stripes(), weight=0.8),
                                 operation=Operation.IMAGE_TO_IMAGE, init_image=InputImage.from_image(start),
                                 strength=0.75))
    net = FluxControlNetModel.from_pretrained(nets / DEMO_FLUX1_CONTROLNET)
    pipe = FluxControlNetImg2ImgPipeline.from_pretrained(demo_bundle / "models" / "demo-flux1", controlnet=net)
    expected = by_hand(pipe, image=start, control_image=stripes(), strength=0.75, controlnet_conditioning_scale=0.8)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)


def test_flux_inpaint_with_a_unit(engine: DiffusersEngine, demo_bundle: Path, nets: Path) -> None:
    from diffusers import FluxControlNetInpaintPipeline, FluxControlNetModel

    start, mask = init_image(64), half_mask(64)
    result = engine.generate(job("demo-flux1", unit(DEMO_FLUX1_CONTROLNET, stripes(), start=0.2),
                                 operation=Operation.INPAINT, init_image=InputImage.from_image(start),
                                 mask_image=InputImage.from_image(mask, "mask_image"), strength=0.9))
    net = FluxControlNetModel.from_pretrained(nets / DEMO_FLUX1_CONTROLNET)
    pipe = FluxControlNetInpaintPipeline.from_pretrained(demo_bundle / "models" / "demo-flux1", controlnet=net)
    expected = by_hand(pipe, image=start, mask_image=mask, control_image=stripes(), strength=0.9,
                       controlnet_conditioning_scale=1.0, control_guidance_start=0.2)
    np.testing.assert_array_equal(pixels(result.images[0]), expected)


def test_flux_union_controlnet_takes_a_mode_per_unit(engine: DiffusersEngine, demo_bundle: Path, nets: Path) -> None:
    from diffusers import FluxControlNetModel, FluxControlNetPipeline
    from diffusers.models.controlnets import FluxMultiControlNetModel

    units = (unit("flux-union", stripes(True), mode=1, end=0.75), unit("flux-union", stripes(False), 1, mode=3))
    result = engine.generate(job("demo-flux1", *units))
    union = FluxControlNetModel.from_pretrained(nets / "flux-union")
    pipe = FluxControlNetPipeline.from_pretrained(demo_bundle / "models" / "demo-flux1",
                                                  controlnet=FluxMultiControlNetModel([union, union]))
    expected = by_hand(pipe, control_image=[stripes(True), stripes(False)], control_mode=[1, 3],
                       controlnet_conditioning_scale=[1.0, 1.0], control_guidance_start=[0.0, 0.0],
                       control_guidance_end=[0.75, 1.0])
    np.testing.assert_array_equal(pixels(result.images[0]), expected)


def test_the_job_after_a_flux_controlnet_job_equals_a_fresh_workers(engine: DiffusersEngine) -> None:
    engine.generate(job("demo-flux1", unit(DEMO_FLUX1_CONTROLNET, stripes(), weight=1.5)))
    after = engine.generate(job("demo-flux1"))
    fresh = DiffusersEngine(engine.settings)
    try:
        np.testing.assert_array_equal(pixels(after.images[0]), pixels(fresh.generate(job("demo-flux1")).images[0]))
    finally:
        fresh.close()


def test_sd3_two_units_equal_the_sd3_controlnet_pipeline(engine: DiffusersEngine, demo_bundle: Path,
                                                          nets: Path) -> None:
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline
    from diffusers.models.controlnets import SD3MultiControlNetModel

    fields = {"negative_prompt": "blurry", "guidance_scale": 4.5}
    first = unit("sd3-net", stripes(True), weight=0.9, start=0.0, end=0.5)
    second = unit("sd3-net", stripes(False), 1, weight=0.7, start=0.25, end=1.0)
    result = engine.generate(job("demo-sd3", first, second, **fields))
    net = SD3ControlNetModel.from_pretrained(nets / "sd3-net")
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(demo_bundle / "models" / "demo-sd3",
                                                              controlnet=SD3MultiControlNetModel([net, net]))
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(SEED)  # the pipeline samples the control image's latents from torch's global RNG
    out = pipe(PROMPT, negative_prompt="blurry", generator=torch.Generator("cpu").manual_seed(SEED),
               **{**FLUX, "guidance_scale": 4.5}, control_image=[stripes(True), stripes(False)],
               controlnet_conditioning_scale=[0.9, 0.7], control_guidance_start=[0.0, 0.25],
               control_guidance_end=[0.5, 1.0])
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(out.images[0]))
    again = engine.generate(job("demo-sd3", first, second, **fields))
    np.testing.assert_array_equal(pixels(again.images[0]), pixels(out.images[0]))  # the same seed, the same image
    plain = engine.generate(job("demo-sd3", **fields))
    assert not np.array_equal(pixels(plain.images[0]), pixels(out.images[0]))  # the SD 3.5 ControlNet steers


def test_qwenimage_two_units_equal_the_qwenimage_controlnet_pipeline(engine: DiffusersEngine, demo_bundle: Path,
                                                                      nets: Path) -> None:
    from diffusers import QwenImageControlNetModel, QwenImageControlNetPipeline, QwenImageMultiControlNetModel

    first = unit("qwen-net", stripes(True), weight=0.9, end=0.5)
    second = unit("qwen-net", stripes(False), 1, weight=0.7, start=0.25)
    result = engine.generate(job("demo-qwenimage", first, second, guidance_scale=4.0))
    net = QwenImageControlNetModel.from_pretrained(nets / "qwen-net")
    pipe = QwenImageControlNetPipeline.from_pretrained(demo_bundle / "models" / "demo-qwenimage",
                                                       controlnet=QwenImageMultiControlNetModel([net]))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, negative_prompt=" ", generator=torch.Generator("cpu").manual_seed(SEED), width=64, height=64,
               num_inference_steps=STEPS, true_cfg_scale=4.0, control_image=[stripes(True), stripes(False)],
               controlnet_conditioning_scale=[0.9, 0.7], control_guidance_start=[0.0, 0.25],
               control_guidance_end=[0.5, 1.0])
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(out.images[0]))
    plain = engine.generate(job("demo-qwenimage", guidance_scale=4.0))
    assert not np.array_equal(pixels(plain.images[0]), pixels(out.images[0]))  # the Qwen-Image ControlNet steers


def test_bad_flow_units_name_their_field(engine: DiffusersEngine) -> None:
    flux_unit = unit(DEMO_FLUX1_CONTROLNET, stripes())
    cases: list[tuple[GenerationRequest, str]] = [
        (job("demo-flux1", unit("demo-controlnet", stripes())), "controlnet.0.model"),  # an SD 1.x ControlNet
        (job("demo-sd15", flux_unit), "controlnet.0.model"),  # a FLUX.1 ControlNet on SD 1.x
        (job("demo-sd3", flux_unit), "controlnet.0.model"),
        (job("demo-flux1", unit("sd3-net", stripes())), "controlnet.0.model"),
        (job("demo-qwenimage", flux_unit), "controlnet.0.model"),
        (job("demo-qwenimage", unit("qwen-net", stripes()), unit("qwen-net-2", stripes(), 1)), "controlnet.1.model"),
        (job("demo-flux1", unit("flux-union", stripes())), "controlnet.0.control_mode"),  # a union net needs one
        (job("demo-flux1", unit("flux-union", stripes(), mode=4)), "controlnet.0.control_mode"),  # 4 modes: 0..3
        (job("demo-flux1", unit(DEMO_FLUX1_CONTROLNET, stripes(), mode=0)), "controlnet.0.control_mode"),
        (job("demo-sd3", unit("sd3-net", stripes()), operation=Operation.IMAGE_TO_IMAGE,
             init_image=InputImage.from_image(init_image(64)), strength=0.5), "controlnet"),
        (job("demo-zimage", unit("sd3-net", stripes())), "controlnet.0.model"),
        (job("demo-flux2", unit("sd3-net", stripes())), "controlnet"),  # no ControlNet for FLUX.2
        (job("demo-flux1", unit(DEMO_FLUX1_CONTROLNET, stripes()), cache=StepCache("first_block")), "cache"),
    ]
    for request, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            engine.validate_request(request)  # at submit, before anything loads
        assert caught.value.field == field, caught.value
