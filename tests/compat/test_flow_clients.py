"""The real ``webuiapi`` and ``openai`` clients generate with a FLUX.1 model over real uvicorn: pixels of
diffusers' FluxPipeline called directly; A1111's sampler and ``cfg_scale`` are listed as ignored and
Forge's ``distilled_cfg_scale`` is FLUX's guidance; OpenAI's ``quality`` scales FLUX.1 dev's 28 steps."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
import webuiapi
from live.server import LiveServer
from PIL import Image

from sdworker.engine.demo_model import DEMO_VERSION

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture(scope="module")
def flux(demo_cache_dir: Path) -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(demo_cache_dir / DEMO_VERSION / "models" / "demo-flux1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_pixels(pipe: Any, steps: int, guidance: float, seed: int) -> np.ndarray:
    image = pipe("a photo of a cat", width=64, height=64, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image.convert("RGB"))


def test_webuiapi_txt2img_on_flux(server: LiveServer, flux: Any) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    result = api.txt2img(prompt="a photo of a cat", negative_prompt="blurry", sampler_name="DPM++ 2M", steps=4,
                         cfg_scale=7, width=72, height=64, seed=3,
                         override_settings={"sd_model_checkpoint": "demo-flux1"})
    assert result.image.size == (64, 64)  # 72 rounds down to FLUX's multiple of 16
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), _flux_pixels(flux, 4, 3.5, 3))
    ignored = result.info["ignored"]
    assert {"sampler_name", "cfg_scale", "negative_prompt"} <= set(ignored), ignored
    assert "Sampler: Euler" in result.info["infotexts"][0]


def test_forge_distilled_cfg_scale_is_flux_guidance(server: LiveServer, flux: Any) -> None:
    body = {"prompt": "a photo of a cat", "steps": 4, "cfg_scale": 1, "distilled_cfg_scale": 2.5, "width": 64,
            "height": 64, "seed": 4, "override_settings": {"sd_model_checkpoint": "demo-flux1"}}
    answer = httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=120).json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), _flux_pixels(flux, 4, 2.5, 4))
    assert "cfg_scale" not in json.loads(answer["info"])["ignored"]  # 1 = no CFG pass, as Forge's FLUX default


def test_openai_images_on_flux_use_its_defaults(server: LiveServer, flux: Any) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0, timeout=120)
    result = client.images.generate(model="demo-flux1", prompt="a photo of a cat", size="64x64", quality="low",
                                     extra_body={"seed": 9})
    assert result.data is not None and result.data[0].b64_json is not None
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    # low = 12/25 of the family's default: round(28 * 12 / 25) = 13 steps, at dev's guidance 3.5.
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), _flux_pixels(flux, 13, 3.5, 9))
