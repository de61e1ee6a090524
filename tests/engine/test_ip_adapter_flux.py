"""IP-Adapter on FLUX.1 (the demo bundle's ``demo-flux1`` and its XLabs-layout ``demo-flux1-ip-adapter``):
the engine's pixels equal diffusers' ``FluxPipeline`` with ``load_ip_adapter`` called on the adapter's
files directly; the job after one with the adapter equals a fresh worker's; an adapter of the other
family is a 4xx naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest, InputImage, IpAdapterRef, Operation
from sdworker.engine.demo_ip_adapter import (
    DEMO_FLUX1_IP_ADAPTER,
    DEMO_IP_ADAPTER,
    FLUX_WEIGHTS_FILE,
    IMAGE_ENCODER_DIR,
    IP_ADAPTER_DIR,
)
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, init_image, pixels

SEED = 21
BASE: dict[str, Any] = {"model": "demo-flux1", "width": 64, "height": 64, "num_inference_steps": 3,
                        "guidance_scale": 3.5, "seed": SEED}


def _engine(cache: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=cache, device="cpu", max_loaded_models=1))


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return _engine(demo_cache_dir)


def _adapter(*seeds: int, scale: float = 1.0, name: str = DEMO_FLUX1_IP_ADAPTER) -> IpAdapterRef:
    images = tuple(InputImage.from_image(init_image(64, seed), f"ip_adapter.images.{i}")
                   for i, seed in enumerate(seeds))
    return IpAdapterRef(name, images, scale)


def _run(engine: DiffusersEngine, ip_adapter: IpAdapterRef | None = None, **kwargs: Any) -> np.ndarray:
    request = GenerationRequest("a cat", ip_adapter=ip_adapter, **{**BASE, **kwargs})
    return pixels(engine.generate(request).images[0]).astype(int)


def _diffusers_pipe(cls: Any, demo_bundle: Path) -> Any:
    folder = demo_bundle / IP_ADAPTER_DIR / DEMO_FLUX1_IP_ADAPTER
    pipe = cls.from_pretrained(demo_bundle / "models" / "demo-flux1")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(folder), weight_name=FLUX_WEIGHTS_FILE,
                         image_encoder_pretrained_model_name_or_path=str(folder / IMAGE_ENCODER_DIR),
                         image_encoder_dtype=torch.float32)
    return pipe


def test_equals_diffusers_flux_pipeline_with_the_adapter(engine: DiffusersEngine, demo_bundle: Path) -> None:
    from diffusers import FluxImg2ImgPipeline, FluxPipeline

    ours = _run(engine, _adapter(1, scale=0.8))
    pipe = _diffusers_pipe(FluxPipeline, demo_bundle)
    pipe.set_ip_adapter_scale(0.8)
    expected = pipe("a cat", ip_adapter_image=[[init_image(64, 1)]], width=64, height=64, num_inference_steps=3,
                    guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    np.testing.assert_array_equal(ours, pixels(expected))
    assert np.abs(ours - _run(engine)).max() > 0  # the reference image steers it

    # image-to-image takes it too (FluxImg2ImgPipeline has the same mixin)
    ours = _run(engine, _adapter(2, scale=0.5), operation=Operation.IMAGE_TO_IMAGE, strength=0.7,
                init_image=as_init(init_image(64, 5)))
    pipe = _diffusers_pipe(FluxImg2ImgPipeline, demo_bundle)
    pipe.set_ip_adapter_scale(0.5)
    expected = pipe("a cat", image=init_image(64, 5), strength=0.7, ip_adapter_image=[[init_image(64, 2)]],
                    width=64, height=64, num_inference_steps=3, guidance_scale=3.5,
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    np.testing.assert_array_equal(ours, pixels(expected))


def test_the_next_job_equals_a_fresh_workers(engine: DiffusersEngine, demo_cache_dir: Path) -> None:
    _run(engine, _adapter(3))
    after = _run(engine)
    np.testing.assert_array_equal(after, _run(_engine(demo_cache_dir)))
    np.testing.assert_array_equal(_run(engine, _adapter(3, scale=0.0)), after)  # scale 0: as without it


def test_an_adapter_of_the_other_family_is_a_4xx_naming_the_model(engine: DiffusersEngine) -> None:
    cases = [
        GenerationRequest("a cat", model="demo-sd15", ip_adapter=_adapter(1)),
        GenerationRequest("a cat", model="demo-flux1", ip_adapter=_adapter(1, name=DEMO_IP_ADAPTER)),
    ]
    for request in cases:
        with pytest.raises(InvalidRequest) as caught:
            engine.validate_request(request)
        assert caught.value.field == "ip_adapter.model"
    with pytest.raises(InvalidRequest) as caught:  # a family without IP-Adapter: the field itself
        engine.validate_request(GenerationRequest("a cat", model="demo-sd3", ip_adapter=_adapter(1)))
    assert caught.value.field == "ip_adapter"
    assert {DEMO_IP_ADAPTER, DEMO_FLUX1_IP_ADAPTER} <= set(engine.list_ip_adapters())
