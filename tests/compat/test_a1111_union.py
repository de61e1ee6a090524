"""A union ControlNet's mode through the A1111 door, over real uvicorn with the demo bundle and a tiny SDXL
union ControlNet in ``--controlnet-dir``: ``webuiapi.ControlNetUnit``'s ``union_control_type`` (as newer
webuiapi sends it; the installed 0.9.17 lacks the field, so the test adds it to the unit's dict the same
way) is the native unit's ``control_mode``, pixel for pixel; a union unit without a type, or with a type
the extension does not have, is a 4xx naming the unit's ``union_control_type``."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from live.server import LiveServer, free_port
from PIL import Image

from sdworker.engine.demo_controlnet import build_sdxl_union_controlnet

from .conftest import SERVER_ARGS, b64, cancel_all, native_pixels

pytestmark = [pytest.mark.live, pytest.mark.slow]

JOB: dict[str, Any] = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 8}


@pytest.fixture(scope="module")
def server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from diffusers import UNet2DConditionModel

    from sdworker.engine.demo_model import DEMO_VERSION

    demo_bundle = demo_cache_dir / DEMO_VERSION
    folder = tmp_path_factory.mktemp("controlnets")
    shutil.copytree(demo_bundle / "controlnet" / "demo-controlnet", folder / "demo-controlnet")
    unet = UNet2DConditionModel.from_pretrained(demo_bundle / "models" / "demo-sdxl", subfolder="unet")
    with torch.random.fork_rng(devices=[]):
        build_sdxl_union_controlnet(unet, seed=3, num_control_type=8).save_pretrained(folder / "xl-union")
    live = LiveServer(demo_cache_dir, free_port(), *SERVER_ARGS, "--controlnet-dir", str(folder),
                      log_path=folder.parent / "server.log")
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
        cancel_all(client)


def _map(vertical: bool) -> Image.Image:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 0, 24, 64) if vertical else (0, 16, 64, 24))
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_webuiapi_union_control_type_is_the_native_control_mode(server: LiveServer, http: httpx.Client) -> None:
    import webuiapi

    class UnionUnit(webuiapi.ControlNetUnit):  # newer webuiapi's to_dict: the extension's enum value
        def __init__(self, union_control_type: str, **fields: Any) -> None:
            super().__init__(**fields)
            self.union_control_type = union_control_type

        def to_dict(self) -> dict[str, Any]:
            return {**super().to_dict(), "union_control_type": self.union_control_type}

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    units = [UnionUnit("Depth", image=_map(True), model="xl-union", weight=0.9),
             UnionUnit("Hard Edge", image=_map(False), model="xl-union", weight=0.6, guidance_end=0.5)]
    result = api.txt2img(prompt=JOB["prompt"], width=64, height=64, steps=2, seed=8, controlnet_units=units,
                         alwayson_scripts={}, override_settings={"sd_model_checkpoint": "demo-sdxl"})
    assert not result.info["ignored"], result.info["ignored"]
    native_units = [{"model": "xl-union", "image": b64(_png(_map(True))), "weight": 0.9, "control_mode": 1},
                    {"model": "xl-union", "image": b64(_png(_map(False))), "weight": 0.6, "end": 0.5,
                     "control_mode": 3}]
    native = native_pixels(http, **JOB, model="demo-sdxl", guidance_scale=7.0, scheduler="euler",
                           controlnet=native_units)
    ours = np.asarray(result.image.convert("RGB"))
    np.testing.assert_array_equal(ours, native)
    other = native_pixels(http, **JOB, model="demo-sdxl", guidance_scale=7.0, scheduler="euler",
                          controlnet=[{**native_units[0], "control_mode": 2}, native_units[1]])
    assert not np.array_equal(ours, other)  # the mode reaches the pixels
    assert "Union Mode: 1" in result.info["infotexts"][0]


def test_union_type_rules_name_the_units_field(http: httpx.Client) -> None:
    unit = {"image": b64(_png(_map(True))), "module": "none", "model": "xl-union"}
    body = {**JOB, "steps": 1, "override_settings": {"sd_model_checkpoint": "demo-sdxl"}}

    def send(**changed: Any) -> httpx.Response:
        units = [{"image": b64(_png(_map(False))), "model": "xl-union", "union_control_type": "Depth"},
                 {**unit, **changed}]
        return http.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": units}}})

    for changed in ({}, {"union_control_type": "Unknown"}, {"union_control_type": "Sketch"},
                    {"union_control_type": 9}):
        answer = send(**changed)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].startswith("alwayson_scripts.controlnet.args.1.union_control_type"), answer.text
    plain = {"image": b64(_png(_map(True))), "model": "demo-controlnet", "union_control_type": "Canny"}
    scripts = {"controlnet": {"args": [plain]}}
    answer = http.post("/sdapi/v1/txt2img", json={**JOB, "steps": 1, "alwayson_scripts": scripts})
    assert answer.status_code == 422, answer.text  # a plain ControlNet takes no union type
    assert answer.json()["detail"].startswith("alwayson_scripts.controlnet.args.0.union_control_type"), answer.text
