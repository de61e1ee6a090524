"""An API node checks guidance model names against what its workers registered: the fleet's workers
list their ControlNets, upscalers and IP-Adapters with their library, so the node (which has none of
those folders) lists them, lets their names through (a hires fix on the demo ESRGAN, an A1111
ControlNet or IP-Adapter unit) and refuses an unknown name at submit, naming the field, instead of
queueing a job that fails on the worker."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from .conftest import Fleet

SMALL: dict[str, Any] = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 5}


def _b64_png(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_api_node_lists_the_workers_guidance_models(fleet: Fleet) -> None:
    fleet.wait_workers(1)
    base = fleet.apis[0].url
    info = httpx.get(f"{base}/v1/info", timeout=10).json()
    assert info["backend"] == "redis"
    assert info["controlnets"] == ["demo-controlnet", "demo-flux1-controlnet"], info
    assert info["ip_adapters"] == ["demo-flux1-ip-adapter", "demo-ip-adapter"], info
    assert "demo-esrgan" in info["hires_upscalers"] and "Latent" in info["hires_upscalers"]
    assert httpx.get(f"{base}/controlnet/model_list", timeout=10).json()["model_list"] == [
        "demo-controlnet", "demo-flux1-controlnet", "demo-flux1-ip-adapter", "demo-ip-adapter"]
    adapters = httpx.get(f"{base}/v1/ip-adapters", timeout=10).json()["data"]
    assert [a["name"] for a in adapters] == ["demo-flux1-ip-adapter", "demo-ip-adapter"]
    assert "demo-esrgan" in {u["name"] for u in httpx.get(f"{base}/sdapi/v1/upscalers", timeout=10).json()}


@pytest.mark.parametrize(
    ("extra", "status", "field"),
    [
        ({"hires": {"scale": 2, "upscaler": "nope"}}, 422, "hires.upscaler"),
        ({"controlnet": [{"model": "nope", "image": _b64_png((0, 0, 0))}]}, 404, "controlnet.0.model"),
        ({"ip_adapter": {"model": "nope", "images": [_b64_png((0, 0, 0))]}}, 404, "ip_adapter.model"),
        ({"operation": "image_upscale", "init_image": _b64_png((0, 0, 0)), "upscaler": "nope", "width": 96,
          "height": 96}, 422, "upscaler"),
    ],
    ids=["hires-upscaler", "controlnet", "ip-adapter", "image-upscale"],
)
def test_api_node_refuses_unknown_guidance_names(fleet: Fleet, extra: dict[str, Any], status: int, field: str) -> None:
    fleet.wait_workers(1)
    response = httpx.post(f"{fleet.apis[0].url}/v1/jobs", json={**SMALL, **extra}, timeout=10)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field, response.text


def test_api_node_runs_jobs_that_name_registered_guidance_models(fleet: Fleet) -> None:
    fleet.wait_workers(1)
    base = fleet.apis[1].url
    with httpx.Client(base_url=base, timeout=120) as http:
        hires = http.post("/v1/jobs", json={**SMALL, "hires": {"scale": 2, "upscaler": "demo-esrgan", "steps": 2}},
                          headers={"Prefer": "wait=60"})
        assert hires.status_code == 201 and hires.json()["status"] == "completed", hires.text
        with Image.open(io.BytesIO(http.get(f"/v1/jobs/{hires.json()['job_id']}/image").content)) as image:
            assert image.size == (128, 128)
        # The A1111 door takes the fleet's names too (a ControlNet unit and an IP-Adapter unit).
        units = [{"image": _b64_png((250, 250, 250)), "module": "canny", "model": "demo-controlnet [0123abcd]"},
                 {"image": _b64_png((200, 30, 30)), "module": "ip-adapter_clip_sd15", "model": "demo-ip-adapter"}]
        answer = http.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, "steps": 1,
                                                     "alwayson_scripts": {"controlnet": {"args": units}}})
        assert answer.status_code == 200, answer.text
        job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        parameters = http.get(f"/v1/jobs/{job['job_id']}").json()["parameters"]
        assert parameters["controlnet"][0]["model"] == "demo-controlnet"
        assert parameters["ip_adapter"]["model"] == "demo-ip-adapter"
