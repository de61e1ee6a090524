"""The hires fix with ControlNet units or an IP-Adapter equals diffusers' two passes done by hand, with
the guidance on both passes as sd-webui-controlnet applies it: the ControlNet text-to-image pipeline
(latents out), the latent upscale, then the ControlNet image-to-image pipeline at the larger size with
the same control map (resized by the pipeline); the IP-Adapter loaded on the model for both calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from sdworker.domain.hires import HiresFix
from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, IpAdapterRef
from sdworker.engine.demo_ip_adapter import DEMO_IP_ADAPTER, IP_ADAPTER_DIR
from sdworker.engine.diffusers_engine import DiffusersEngine

from .helpers import init_image, pixels
from .test_controlnet import stripes

PROMPT = "a photo of a cat"
SEED = 77
CALL: dict[str, Any] = {"num_inference_steps": 4, "guidance_scale": 7.5, "negative_prompt": "blurry"}
HIRES = HiresFix(scale=2.0, upscaler="Latent", strength=0.6)


def _generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(SEED)


def _two_passes(txt2img: Any, img2img: Any, first: dict[str, Any], second: dict[str, Any]) -> np.ndarray:
    latents = txt2img(PROMPT, width=64, height=64, generator=_generator(), output_type="latent", **CALL,
                      **first).images
    upscaled = torch.nn.functional.interpolate(latents, size=(16, 16), mode="bilinear", antialias=False)
    out = img2img(PROMPT, image=upscaled, strength=HIRES.strength, generator=_generator(), **CALL, **second)
    return pixels(out.images[0])


def _job(**fields: Any) -> GenerationRequest:
    return GenerationRequest(PROMPT, seed=SEED, width=64, height=64, hires=HIRES, num_inference_steps=4,
                             guidance_scale=7.5, negative_prompt="blurry", **fields)


def test_hires_with_controlnet_equals_the_two_controlnet_passes(
    demo_engine: DiffusersEngine, demo_model_dir: Path, demo_bundle: Path
) -> None:
    unit = ControlUnit("demo-controlnet", InputImage.from_image(stripes(), "controlnet.0.image"), weight=0.8,
                       end=0.75)
    ours = pixels(demo_engine.generate(_job(controlnet=(unit,))).images[0])
    net = ControlNetModel.from_pretrained(demo_bundle / "controlnet" / "demo-controlnet")
    txt2img = StableDiffusionControlNetPipeline.from_pretrained(demo_model_dir, controlnet=net, safety_checker=None)
    img2img = StableDiffusionControlNetImg2ImgPipeline.from_pipe(txt2img)
    for pipe in (txt2img, img2img):
        pipe.set_progress_bar_config(disable=True)
    guidance = {"controlnet_conditioning_scale": 0.8, "control_guidance_start": 0.0, "control_guidance_end": 0.75}
    expected = _two_passes(txt2img, img2img, {"image": stripes(), **guidance},
                           {"control_image": stripes(), "width": 128, "height": 128, **guidance})
    assert ours.shape == (128, 128, 3)
    np.testing.assert_array_equal(ours, expected)
    plain = pixels(demo_engine.generate(_job()).images[0])
    assert np.abs(plain.astype(int) - ours.astype(int)).max() > 0  # the unit steers the hires job


def test_hires_with_ip_adapter_equals_the_two_passes_with_the_adapter(
    demo_engine: DiffusersEngine, demo_model_dir: Path, demo_bundle: Path, reference_pipelines: dict[str, Any]
) -> None:
    reference = init_image(64, 5)
    adapter = IpAdapterRef(DEMO_IP_ADAPTER, (InputImage.from_image(reference, "ip_adapter.images.0"),), 0.7)
    ours = pixels(demo_engine.generate(_job(ip_adapter=adapter)).images[0])
    txt2img = StableDiffusionPipeline.from_pretrained(demo_model_dir, safety_checker=None)
    txt2img.load_ip_adapter(str(demo_bundle / IP_ADAPTER_DIR), subfolder="",
                            weight_name=f"{DEMO_IP_ADAPTER}.safetensors", image_encoder_folder="image_encoder")
    txt2img.set_ip_adapter_scale(0.7)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(txt2img)
    for pipe in (txt2img, img2img):
        pipe.set_progress_bar_config(disable=True)
    images = {"ip_adapter_image": [[reference]]}
    np.testing.assert_array_equal(ours, _two_passes(txt2img, img2img, images, images))
    # The next job runs the untouched model: diffusers' plain two passes, as on a fresh worker.
    plain = pixels(demo_engine.generate(_job()).images[0])
    np.testing.assert_array_equal(plain, _two_passes(reference_pipelines["txt2img"], reference_pipelines["img2img"],
                                                     {}, {}))
    assert np.abs(plain.astype(int) - ours.astype(int)).max() > 0


def test_hires_second_pass_preprocesses_the_control_image_at_its_size(
    demo_engine: DiffusersEngine, demo_model_dir: Path, demo_bundle: Path
) -> None:
    """A canny unit: pass 1's map is canny at 64 px, pass 2's is canny of the image resized to 128 px (as
    sd-webui-controlnet runs the preprocessor again), not pass 1's map stretched."""
    import cv2
    from PIL import Image

    photo = Image.new("RGB", (64, 64), (30, 30, 30))
    photo.paste((230, 230, 230), (18, 12, 46, 50))

    def canny(image: Image.Image) -> Image.Image:
        edges = cv2.Canny(np.asarray(image.convert("RGB")), 100, 200)
        return Image.fromarray(np.stack([edges] * 3, axis=-1))

    unit = ControlUnit("demo-controlnet", InputImage.from_image(photo, "controlnet.0.image"), weight=0.9,
                       preprocessor="canny")
    ours = pixels(demo_engine.generate(_job(controlnet=(unit,))).images[0])
    net = ControlNetModel.from_pretrained(demo_bundle / "controlnet" / "demo-controlnet")
    txt2img = StableDiffusionControlNetPipeline.from_pretrained(demo_model_dir, controlnet=net, safety_checker=None)
    img2img = StableDiffusionControlNetImg2ImgPipeline.from_pipe(txt2img)
    for pipe in (txt2img, img2img):
        pipe.set_progress_bar_config(disable=True)
    guidance = {"controlnet_conditioning_scale": 0.9}
    large = canny(photo.resize((128, 128), Image.Resampling.LANCZOS))
    expected = _two_passes(txt2img, img2img, {"image": canny(photo), **guidance},
                           {"control_image": large, "width": 128, "height": 128, **guidance})
    np.testing.assert_array_equal(ours, expected)
    stretched = _two_passes(txt2img, img2img, {"image": canny(photo), **guidance},
                            {"control_image": canny(photo), "width": 128, "height": 128, **guidance})
    assert not np.array_equal(ours, stretched)  # re-preprocessing is what made the difference
