"""AUTOMATIC1111's /sdapi/v1 over real uvicorn, driven by the ``webuiapi`` package and by the exact
call sequence Open WebUI's "Automatic1111" engine sends."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
import webuiapi
from live.server import LiveServer
from PIL import Image

from .conftest import native_pixels, pixels

pytestmark = [pytest.mark.live, pytest.mark.slow]

SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture
def api(server: LiveServer, http: httpx.Client) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _latest_job(http: httpx.Client) -> dict[str, Any]:
    job_id = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]["job_id"]
    return dict(http.get(f"/v1/jobs/{job_id}").json())


def test_txt2img_answers_images_parameters_and_infotexts(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a cat", negative_prompt="dogs", batch_size=2, restore_faces=True, **SMALL)
    assert [image.size for image in result.images] == [(64, 64)] * 2
    info = result.info
    assert info["seed"] == 5 and info["all_seeds"] == [5, 6] and info["sampler_name"] == "Euler a"
    # infotexts are exactly the PNGs' own `parameters` chunks
    assert info["infotexts"] == [image.info["parameters"] for image in result.images]
    assert info["infotexts"][0].startswith("a cat\nNegative prompt: dogs\nSteps: 2, Sampler: Euler a")
    assert "restore_faces" in info["ignored"] and "enable_hr" not in info["ignored"]
    assert result.parameters["prompt"] == "a cat" and result.parameters["batch_size"] == 2


@pytest.mark.parametrize(("sampler", "scheduler"), [("Euler a", "euler_a"), ("DPM++ 2M Karras", "dpmpp_2m_karras"),
                                                    ("DPM++ 2M", "dpmpp_2m_karras"), ("k_euler", "euler")])
def test_txt2img_equals_a_native_job_pixel_for_pixel(
    server: LiveServer, http: httpx.Client, sampler: str, scheduler: str
) -> None:
    body = {"prompt": "a red cube", "seed": 77, "steps": 3, "cfg_scale": 6.5, "sampler_name": sampler,
            "width": 64, "height": 48}
    answer = http.post("/sdapi/v1/txt2img", json=body).json()
    ours = pixels(base64.b64decode(answer["images"][0]))
    native = native_pixels(http, prompt="a red cube", seed=77, steps=3, guidance_scale=6.5, scheduler=scheduler,
                           width=64, height=48)
    assert np.array_equal(ours, native)


def test_hires_fix_equals_the_native_job_and_is_written_as_a1111_writes_it(
    api: webuiapi.WebUIApi, http: httpx.Client
) -> None:
    result = api.txt2img(prompt="a red cube", enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3,
                         denoising_strength=0.6, hr_prompt="a blue cube", sampler_name="Euler", width=64, height=64,
                         steps=3, seed=11)
    assert result.image.size == (96, 96) and "enable_hr" not in result.info["ignored"]
    native = native_pixels(http, prompt="a red cube", seed=11, steps=3, guidance_scale=7.0, scheduler="euler",
                           width=64, height=64, hires={"scale": 1.5, "steps": 3, "strength": 0.6,
                                                       "upscaler": "Latent", "prompt": "a blue cube"})
    assert np.array_equal(np.asarray(result.image.convert("RGB")), native)
    text = result.info["infotexts"][0]
    assert ("Size: 64x64" in text and "Denoising strength: 0.6, Hires upscale: 1.5, Hires steps: 3, "
            "Hires upscaler: Latent, Hires prompt: a blue cube" in text), text
    assert [m["name"] for m in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    assert {"None", "Lanczos", "Nearest"} <= {u["name"] for u in api.get_upscalers()}


@pytest.mark.parametrize(("extra", "field"), [({"hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"),
                                              ({"hr_scale": 4.0}, "hr_scale")])
def test_bad_hires_fields_are_named(http: httpx.Client, extra: dict[str, Any], field: str) -> None:
    body = {"prompt": "x", "enable_hr": True, "width": 512, "height": 512, "steps": 2, **extra}
    answer = http.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 422 and field in answer.text, answer.text


def _grid() -> Image.Image:
    pixels_ = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels_[:, ::8] = 255
    pixels_[::16, :] = 128
    return Image.fromarray(pixels_)


def test_controlnet_units_equal_the_native_job(api: webuiapi.WebUIApi, http: httpx.Client) -> None:
    # the whole folder, as A1111, and the IP-Adapter as the extension lists it
    assert api.controlnet_model_list() == ["demo-controlnet", "demo-flux1-controlnet", "demo-flux1-ip-adapter",
                                          "demo-ip-adapter"]
    assert http.get("/v1/controlnets").json() == {"object": "list", "data": [{"name": "demo-controlnet"},
                                                                             {"name": "demo-flux1-controlnet"}]}
    assert {"none", "canny"} <= set(api.controlnet_module_list())
    units = [webuiapi.ControlNetUnit(image=_grid(), module="none", model="demo-controlnet [0123abcd]", weight=0.8,
                                     guidance_end=0.5, resize_mode="Just Resize"),
             webuiapi.ControlNetUnit(image=_grid(), module="canny", model="demo-controlnet", threshold_a=50,
                                     threshold_b=150, guidance_start=0.25)]
    # alwayson_scripts given: webuiapi adds the units to it, and its default is a shared mutable dict
    result = api.txt2img(prompt="a red cube", controlnet_units=units, alwayson_scripts={}, sampler_name="Euler",
                         width=64, height=64, steps=3, seed=12)
    assert "alwayson_scripts" not in result.info["ignored"], result.info["ignored"]
    grid = base64.b64encode(_png(_grid())).decode()
    native = native_pixels(http, prompt="a red cube", seed=12, steps=3, guidance_scale=7.0, scheduler="euler",
                           width=64, height=64, controlnet=[
                               {"model": "demo-controlnet", "image": grid, "weight": 0.8, "end": 0.5},
                               {"model": "demo-controlnet", "image": grid, "preprocessor": "canny", "low": 50,
                                "high": 150, "start": 0.25}])
    assert np.array_equal(np.asarray(result.image.convert("RGB")), native)
    plain = native_pixels(http, prompt="a red cube", seed=12, steps=3, guidance_scale=7.0, scheduler="euler",
                          width=64, height=64)
    assert not np.array_equal(plain, native)  # the units steered it
    assert 'ControlNet 0: "Module: none, Model: demo-controlnet, Weight: 0.8' in result.info["infotexts"][0]
    detected = api.controlnet_detect([_grid()], module="canny", threshold_a=50, threshold_b=150)
    edges = detected.images[0]  # webuiapi decodes the answer's images
    assert edges.size == (64, 64) and len(set(np.asarray(edges).flatten().tolist())) == 2  # black and white


def test_bad_controlnet_units_are_named(http: httpx.Client) -> None:
    grid = base64.b64encode(_png(_grid())).decode()
    unit = {"image": grid, "model": "demo-controlnet", "module": "none"}
    for changed, status, field in [({"model": "control_v11p_sd15_canny"}, 404, "model"),
                                   ({"module": "depth_midas"}, 422, "module"),
                                   ({"image": "bm90IGFuIGltYWdl"}, 422, "image")]:
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 2,
                "alwayson_scripts": {"controlnet": {"args": [{**unit, **changed}]}}}
        answer = http.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == status, answer.text
        assert answer.json()["detail"].startswith(f"alwayson_scripts.controlnet.args.0.{field}:"), answer.text


def test_img2img_and_inpaint(api: webuiapi.WebUIApi, http: httpx.Client) -> None:
    source = Image.new("RGB", (80, 64), (200, 120, 40))
    result = api.img2img(images=[source], prompt="a door", denoising_strength=0.5, **{**SMALL, "steps": 4})
    assert result.image.size == (64, 64)
    assert _latest_job(http)["parameters"]["operation"] == "image_transform"
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (0, 0, 40, 64))
    result = api.img2img(images=[source], mask_image=mask, prompt="a door", inpainting_mask_invert=1,
                         resize_mode=1, **{**SMALL, "steps": 4})
    assert result.image.size == (64, 64) and "inpaint_full_res" in result.info["ignored"]
    assert _latest_job(http)["parameters"]["operation"] == "image_inpaint"


def test_progress_shows_the_running_job_and_interrupt_returns_its_image(
    api: webuiapi.WebUIApi, http: httpx.Client
) -> None:
    assert api.get_progress()["progress"] == 0 and api.get_progress()["state"]["job_count"] == 0
    answers: list[Any] = []
    call = threading.Thread(target=lambda: answers.append(
        api.txt2img(prompt="long", width=256, height=256, steps=150, seed=1)))
    call.start()
    deadline = time.monotonic() + 60
    while (progress := api.get_progress())["current_image"] is None:
        if time.monotonic() > deadline or not call.is_alive():
            raise TimeoutError(f"no preview while the job ran: {progress}")  # a hang guard
        time.sleep(0.05)
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_step"] >= 1
    assert Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))).size[0] > 0
    assert api.interrupt() == {}
    call.join(timeout=60)
    assert len(answers) == 1 and answers[0].image.size == (256, 256)  # 200 with the image it had
    job = _latest_job(http)
    assert job["status"] == "completed" and answers[0].info["job_id"] == job["job_id"]
    api.util_wait_for_ready(check_interval=0.1)
    assert api.get_progress()["progress"] == 0


def test_models_options_and_png_info(api: webuiapi.WebUIApi, server: LiveServer, demo_cache_dir: Path) -> None:
    unet = demo_cache_dir / "demo-v8" / "models" / "demo-sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    sha = hashlib.sha256(unet.read_bytes()).hexdigest()
    title = f"demo [{sha[:10]}]"
    # The served model first, then the library's other models (the FLUX.1, SD 3.5... demos).
    names = api.util_get_model_names()
    assert names[0] == title and "demo-flux1" in names and "demo-sd15" not in names, names
    assert api.get_sd_models()[0] == {"title": title, "model_name": "demo", "hash": sha[:10], "sha256": sha,
                                      "filename": "demo", "config": None}
    api.util_set_model(title)  # by title: every demo model has "demo" in its name
    assert api.util_get_current_model() == title and api.get_options()["sd_checkpoint_hash"] == sha
    result = api.txt2img(prompt="a cat", override_settings={"sd_model_checkpoint": sha[:10]}, **SMALL)
    info = api.png_info(result.image)
    assert info.info == result.info["infotexts"][0] and info.parameters["Seed"] == "5"
    assert "Euler a" in api.util_get_sampler_names() and "Karras" in [s["label"] for s in api.get_schedulers()]
    assert api.skip() is None and api.refresh_checkpoints() is None
    with httpx.Client(base_url=server.url + "/sdapi/v1") as raw:
        assert raw.post("/options").json() is None  # no body at all
        assert raw.post("/interrupt").json() == {}
        for route in ("sd-vae", "loras"):
            assert raw.get("/" + route).json() == [], route
        assert raw.get("/scripts").json() == {"txt2img": [], "img2img": []}
        assert raw.get("/memory").json()["ram"]["total"] > 0
        bad = raw.post("/options", json={"sd_model_checkpoint": "nope"})
        assert bad.status_code == 404 and bad.json()["error"] == "model_not_found"


def test_open_webui_call_sequence(server: LiveServer, http: httpx.Client) -> None:
    """Open WebUI's Automatic1111 engine (routers/images.py), with AUTOMATIC1111_API_AUTH empty: every call
    carries ``authorization: Basic `` (sent with ``requests``, which, unlike httpx, sends the value as is)."""
    base = server.url + "/sdapi/v1"
    with requests.Session() as owui:
        owui.headers["authorization"] = "Basic "
        assert owui.get(base + "/options", timeout=60).ok  # verify URL
        options = owui.get(base + "/options", timeout=60).json()
        current = options["sd_model_checkpoint"]
        models = [{"id": m["title"], "name": m["model_name"]} for m in owui.get(base + "/sd-models").json()]
        assert current in [m["id"] for m in models]
        assert owui.post(base + "/options", json={**options, "sd_model_checkpoint": models[0]["id"]}).ok
        body = {"prompt": "a lighthouse", "batch_size": 1, "width": 64, "height": 64, "steps": 2,
                "negative_prompt": "fog", "cfg_scale": 7, "sampler_name": "Euler a", "scheduler": "Automatic"}
        res = owui.post(base + "/txt2img", json=body, timeout=60).json()
        image = Image.open(io.BytesIO(base64.b64decode(res["images"][0])))
        assert image.size == (64, 64)
        assert json.loads(res["info"])["infotexts"][0] == image.info["parameters"]
