"""IP-Adapter on the demo bundle's tiny SD 1.x model and demo IP-Adapter: the engine's pixels equal
diffusers' pipeline with ``load_ip_adapter`` called directly; the reference image changes the result;
scale 0 equals no adapter; the job after one with an adapter equals a fresh worker's; the rules are
4xx naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.domain.request import GenerationRequest, InputImage, IpAdapterRef
from sdworker.engine.demo_ip_adapter import DEMO_IP_ADAPTER, IP_ADAPTER_DIR
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidImage, InvalidRequest, IpAdapterNotFound
from sdworker.settings import Settings

from .helpers import init_image, pixels

BASE: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 7.5, "seed": 9}


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_models=1))


def _adapter(*seeds: int, scale: float = 1.0) -> IpAdapterRef:
    images = tuple(InputImage.from_image(init_image(64, seed), f"ip_adapter.images.{i}")
                   for i, seed in enumerate(seeds))
    return IpAdapterRef(DEMO_IP_ADAPTER, images, scale)


def _run(engine: DiffusersEngine, ip_adapter: IpAdapterRef | None = None, **kwargs: Any) -> np.ndarray:
    request = GenerationRequest("a cat", ip_adapter=ip_adapter, **{**BASE, **kwargs})
    return pixels(engine.generate(request).images[0]).astype(int)


def test_equals_diffusers_load_ip_adapter(engine: DiffusersEngine, demo_model_dir: Path, demo_bundle: Path) -> None:
    from diffusers import StableDiffusionPipeline

    ours = _run(engine, _adapter(1, 2, scale=0.7))
    pipe = StableDiffusionPipeline.from_pretrained(demo_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    folder = demo_bundle / IP_ADAPTER_DIR
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name=f"{DEMO_IP_ADAPTER}.safetensors",
                         image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(0.7)
    generator = torch.Generator("cpu").manual_seed(9)
    expected = pipe("a cat", ip_adapter_image=[[init_image(64, 1), init_image(64, 2)]], width=64, height=64,
                    num_inference_steps=3, guidance_scale=7.5, generator=generator).images[0]
    np.testing.assert_array_equal(ours, pixels(expected))


def test_reference_image_changes_the_result_and_scale_zero_equals_none(engine: DiffusersEngine) -> None:
    without = _run(engine)
    one = _run(engine, _adapter(1))
    other = _run(engine, _adapter(3))
    assert np.abs(one - without).max() > 0 and np.abs(one - other).max() > 0
    np.testing.assert_array_equal(_run(engine, _adapter(1, scale=0.0)), without)
    np.testing.assert_array_equal(_run(engine), without)  # the job after an adapter job: as on a fresh worker


def test_rules_are_4xx_naming_the_field(engine: DiffusersEngine) -> None:
    cases: list[tuple[GenerationRequest, type[Exception], str]] = [
        (GenerationRequest("a cat", ip_adapter=IpAdapterRef("nope", ())), IpAdapterNotFound, "ip_adapter.model"),
        (GenerationRequest("a cat", model="demo-flux1", ip_adapter=_adapter(1)), InvalidRequest, "ip_adapter.model"),
        (GenerationRequest("a cat", model="demo-sdxl", ip_adapter=_adapter(1)), InvalidRequest, "ip_adapter.model"),
    ]
    for request, error, field in cases:
        with pytest.raises(error) as caught:
            engine.validate_request(request)
        assert caught.value.field == field  # type: ignore[attr-defined]
    broken = IpAdapterRef(DEMO_IP_ADAPTER, (InputImage(b"not an image", "ip_adapter.images.0"),))
    with pytest.raises(InvalidImage) as bad:
        _run(engine, broken)
    assert bad.value.field == "ip_adapter.images.0"


def test_a_different_size_reference_image_is_fine(engine: DiffusersEngine) -> None:
    wide = InputImage.from_image(Image.new("RGB", (96, 40), (200, 30, 30)), "ip_adapter.images.0")
    assert _run(engine, IpAdapterRef(DEMO_IP_ADAPTER, (wide,))).shape == (64, 64, 3)
