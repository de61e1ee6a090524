"""Jobs guided by images through the doors, over real uvicorn with the demo bundle: the OpenAI SDK's
``images.edit`` on an edit model runs an edit job equal to the native one; a native job with an
IP-Adapter changes the image; the rules are 4xx naming the field the client sent."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from live.server import LiveServer

from .conftest import b64, native_pixels, pixels, png

pytestmark = [pytest.mark.live, pytest.mark.slow]

KONTEXT = "demo-flux1-kontext"
EDIT: dict[str, Any] = {"steps": 2, "seed": 21}


def _infotext(http: httpx.Client, job_id: str) -> str:
    """The A1111 ``parameters`` text of the job's PNG."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(http.get(f"/v1/jobs/{job_id}/image").content)) as image:
        return str(image.text["parameters"])  # type: ignore[attr-defined]


@pytest.fixture
def client(server: LiveServer, http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0, timeout=120)


def test_openai_edit_on_an_edit_model_equals_the_native_edit_job(client: openai.OpenAI, http: httpx.Client) -> None:
    source = png(64, 64, (30, 140, 220))
    result = client.images.edit(model=KONTEXT, image=("door.png", source, "image/png"), prompt="make the door red",
                                extra_body=EDIT)
    assert result.data is not None
    job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    parameters = http.get(f"/v1/jobs/{job['job_id']}").json()["parameters"]
    assert parameters["operation"] == "image_edit" and parameters["reference_images"] == 1
    assert "Denoising strength" not in _infotext(http, job["job_id"])  # an edit starts from noise
    native = native_pixels(http, operation="image_edit", prompt="make the door red", model=KONTEXT,
                           reference_images=[b64(source)], **EDIT)
    np.testing.assert_array_equal(pixels(base64.b64decode(result.data[0].b64_json or "")), native)
    other = native_pixels(http, operation="image_edit", prompt="make the door red", model=KONTEXT,
                          reference_images=[b64(png(64, 64, (250, 250, 20)))], **EDIT)
    assert np.abs(native.astype(int) - other.astype(int)).max() > 0  # the reference image reaches the pixels


def test_openai_edit_with_two_images_on_flux2_uses_both(client: openai.OpenAI, http: httpx.Client) -> None:
    """FLUX.2 klein (the demo's multi-reference edit model): both ``image[]`` files become references of one
    edit job; the job equals the native edit, and dropping either image changes the pixels."""
    door, wall = png(64, 64, (30, 140, 220)), png(64, 64, (250, 250, 20))
    images = [("door.png", door, "image/png"), ("wall.png", wall, "image/png")]
    result = client.images.edit(model="demo-flux2", image=images, prompt="put the door in the wall", extra_body=EDIT)
    assert result.data is not None
    job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    parameters = http.get(f"/v1/jobs/{job['job_id']}").json()["parameters"]
    assert parameters["operation"] == "image_edit" and parameters["reference_images"] == 2
    both = pixels(base64.b64decode(result.data[0].b64_json or ""))
    native = native_pixels(http, operation="image_edit", prompt="put the door in the wall", model="demo-flux2",
                           reference_images=[b64(door), b64(wall)], **EDIT)
    np.testing.assert_array_equal(both, native)
    for kept in (door, wall):
        one = client.images.edit(model="demo-flux2", image=("one.png", kept, "image/png"),
                                 prompt="put the door in the wall", extra_body=EDIT)
        assert one.data is not None
        assert np.abs(pixels(base64.b64decode(one.data[0].b64_json or "")).astype(int) - both.astype(int)).max() > 0


def test_openai_edit_on_qwen_image_edit_plus_equals_the_native_edit_job(client: openai.OpenAI,
                                                                        http: httpx.Client) -> None:
    """Qwen-Image-Edit-Plus (here without torchvision: the processor the engine builds itself): both
    ``image[]`` files reach its pipeline as one list; the job equals the native edit, one image does not."""
    door, wall = png(64, 64, (30, 140, 220)), png(64, 64, (250, 250, 20))
    images = [("door.png", door, "image/png"), ("wall.png", wall, "image/png")]
    model = "demo-qwenimage-edit-plus"
    result = client.images.edit(model=model, image=images, prompt="put the door in the wall", extra_body=EDIT)
    assert result.data is not None
    job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    parameters = http.get(f"/v1/jobs/{job['job_id']}").json()["parameters"]
    assert parameters["operation"] == "image_edit" and parameters["reference_images"] == 2
    both = pixels(base64.b64decode(result.data[0].b64_json or ""))
    native = native_pixels(http, operation="image_edit", prompt="put the door in the wall", model=model,
                           reference_images=[b64(door), b64(wall)], **EDIT)
    np.testing.assert_array_equal(both, native)
    one = native_pixels(http, operation="image_edit", prompt="put the door in the wall", model=model,
                        reference_images=[b64(door)], **EDIT)
    assert np.abs(one.astype(int) - both.astype(int)).max() > 0


def test_two_images_on_kontext_are_a_400_naming_image(client: openai.OpenAI) -> None:
    images = [("a.png", png(64, 64), "image/png"), ("b.png", png(64, 64, (0, 0, 0)), "image/png")]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(model=KONTEXT, image=images, prompt="a door", extra_body=EDIT)
    assert caught.value.param == "image[]", caught.value.body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operation": "image_edit", "model": "demo-sd15"}, "operation"),
        ({"operation": "image_edit", "model": "demo-flux1"}, "operation"),
        ({"operation": "image_generation", "model": KONTEXT, "reference_images": None}, "operation"),
        ({"operation": "image_generation"}, "reference_images"),
        ({"operation": "image_edit", "model": KONTEXT, "reference_images": None}, "reference_images"),
        ({"operation": "image_edit", "model": KONTEXT, "reference_images": ["bm90IGFuIGltYWdl"]},
         "reference_images.0"),
        ({"operation": "image_edit", "model": KONTEXT, "init_image": "x"}, "init_image"),
    ],
    ids=["edit-on-sd15", "edit-on-flux1", "txt2img-on-kontext", "images-on-txt2img", "edit-without-images",
         "image-that-does-not-decode", "init-image-on-edit"],
)
def test_native_edit_rules_are_4xx_naming_the_field(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    job = {"prompt": "a door", "reference_images": [b64(png(64, 64))], **EDIT, **body}
    job = {key: value for key, value in job.items() if value is not None}
    response = http.post("/v1/jobs", json=job)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["field"] == field, response.text


def test_native_ip_adapter_job_runs_and_its_rules_name_the_field(http: httpx.Client) -> None:
    adapter = {"model": "demo-ip-adapter", "images": [b64(png(48, 48, (200, 30, 30)))], "scale": 0.5}
    job = {"prompt": "a cat", "width": 64, "height": 64, **EDIT}
    with_adapter = native_pixels(http, **job, ip_adapter=adapter)
    assert np.abs(with_adapter.astype(int) - native_pixels(http, **job).astype(int)).max() > 0
    parameters = http.get("/v1/jobs", params={"limit": 2}).json()["jobs"][1]
    shown = http.get(f"/v1/jobs/{parameters['job_id']}").json()["parameters"]["ip_adapter"]
    assert shown == {"model": "demo-ip-adapter", "scale": 0.5, "images": 1}
    assert 'IP-Adapter: "Model: demo-ip-adapter, Weight: 0.5, Images: 1"' in _infotext(http, parameters["job_id"])
    for change, status, field in (
        ({"model": "nope"}, 404, "ip_adapter.model"),
        ({"images": ["bm90IGFuIGltYWdl"]}, 422, "ip_adapter.images.0"),
        ({"scale": 3}, 422, "ip_adapter.scale"),
    ):
        response = http.post("/v1/jobs", json={**job, "ip_adapter": {**adapter, **change}})
        assert response.status_code == status and response.json()["error"]["field"] == field, response.text
    # an adapter of the other family (SD's on FLUX.1, FLUX.1's on SD) names the adapter
    flux_adapter = {**adapter, "model": "demo-flux1-ip-adapter"}
    for model, named in (("demo-flux1", adapter), ("demo-sd15", flux_adapter)):
        wrong = http.post("/v1/jobs", json={**job, "model": model, "ip_adapter": named})
        assert wrong.status_code // 100 == 4 and wrong.json()["error"]["field"] == "ip_adapter.model", wrong.text
    on_sd3 = http.post("/v1/jobs", json={**job, "model": "demo-sd3", "ip_adapter": adapter})
    assert on_sd3.status_code // 100 == 4 and on_sd3.json()["error"]["field"] == "ip_adapter", on_sd3.text
    flux_job = {**job, "model": "demo-flux1", "steps": 2}
    with_flux_adapter = native_pixels(http, **flux_job, ip_adapter=flux_adapter)
    assert np.abs(with_flux_adapter.astype(int) - native_pixels(http, **flux_job).astype(int)).max() > 0


def test_webuiapi_hires_with_the_demo_upscaler_equals_the_native_job(server: LiveServer, http: httpx.Client) -> None:
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    assert "demo-esrgan" in {u["name"] for u in api.get_upscalers()}
    result = api.txt2img(prompt="a red cube", enable_hr=True, hr_scale=2, hr_upscaler="demo-esrgan",
                         hr_second_pass_steps=2, denoising_strength=0.5, width=64, height=64, steps=2, seed=5)
    assert result.image.size == (128, 128)
    native = native_pixels(http, prompt="a red cube", seed=5, steps=2, guidance_scale=7.0, scheduler="euler",
                           width=64, height=64, hires={"scale": 2, "upscaler": "demo-esrgan", "steps": 2,
                                                       "strength": 0.5})
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), native)
    assert "Hires upscaler: demo-esrgan" in result.info["infotexts"][0]


def test_webuiapi_extra_single_image_upscales_with_the_demo_upscaler(server: LiveServer, http: httpx.Client) -> None:
    import webuiapi
    from PIL import Image

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    source = Image.new("RGB", (40, 24), (30, 140, 220))
    result = api.extra_single_image(image=source, upscaler_1="demo-esrgan", upscaling_resize=2)
    assert result.image.size == (80, 48)
    job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    parameters = http.get(f"/v1/jobs/{job['job_id']}").json()["parameters"]
    assert parameters["operation"] == "image_upscale" and parameters["upscaler"] == "demo-esrgan"
    native = native_pixels(http, operation="image_upscale", prompt="-", init_image=b64(png(40, 24, (30, 140, 220))),
                           width=80, height=48, upscaler="demo-esrgan")
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), native)
    unknown = http.post("/sdapi/v1/extra-single-image", json={"image": b64(png(16, 16)), "upscaler_1": "nope"})
    assert unknown.status_code == 422 and unknown.json()["detail"].startswith("upscaler: 'nope'"), unknown.text


def test_a1111_fields_that_are_ignored_are_warnings_of_the_job(http: httpx.Client) -> None:
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "restore_faces": True,
            "alwayson_scripts": {"ADetailer": {"args": [True]}}}
    answer = http.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    warnings = http.get(f"/v1/jobs/{job['job_id']}").json()["warnings"]
    assert "restore_faces: not supported by sdworker; ignored" in warnings, warnings
    assert "alwayson_scripts.ADetailer: not supported by sdworker; ignored" in warnings, warnings


def test_native_flux_controlnet_job_runs_and_a_unit_for_another_family_is_4xx(http: httpx.Client) -> None:
    """A FLUX.1 unit over HTTP: the job runs and its PNG records the unit as A1111 does; an SD 1.x
    ControlNet on demo-flux1, the FLUX.1 one on demo-sd15 and a control mode on a non-union net are 4xx
    naming the unit's field."""
    stripes = png(64, 64, (255, 255, 255))
    flux_unit = {"model": "demo-flux1-controlnet", "image": b64(stripes), "weight": 0.7, "end": 0.5}
    job = {"prompt": "a cat", "model": "demo-flux1", "width": 64, "height": 64, **EDIT}
    steered = native_pixels(http, **job, controlnet=[flux_unit])
    assert np.abs(steered.astype(int) - native_pixels(http, **job).astype(int)).max() > 0
    job_id = http.get("/v1/jobs", params={"limit": 2}).json()["jobs"][1]["job_id"]
    assert ('ControlNet 0: "Module: none, Model: demo-flux1-controlnet, Weight: 0.7, Guidance Start: 0, '
            'Guidance End: 0.5"') in _infotext(http, job_id)
    for body, field in (
        ({**job, "controlnet": [{**flux_unit, "model": "demo-controlnet"}]}, "controlnet.0.model"),
        ({**job, "model": "demo-sd15", "controlnet": [flux_unit]}, "controlnet.0.model"),
        ({**job, "controlnet": [{**flux_unit, "control_mode": 1}]}, "controlnet.0.control_mode"),
    ):
        response = http.post("/v1/jobs", json=body)
        assert response.status_code // 100 == 4 and response.json()["error"]["field"] == field, response.text


def test_webuiapi_ip_adapter_unit_equals_the_native_ip_adapter_job(server: LiveServer, http: httpx.Client) -> None:
    """sd-webui-controlnet's way to IP-Adapter: a unit with an ip-adapter module and the adapter as model."""
    import webuiapi
    from PIL import Image

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    assert "demo-ip-adapter" in api.controlnet_model_list()
    assert "ip-adapter_clip_sd15" in api.controlnet_module_list()
    reference = Image.new("RGB", (48, 48), (200, 30, 30))
    unit = webuiapi.ControlNetUnit(image=reference, module="ip-adapter_clip_sd15", model="demo-ip-adapter [0123abcd]",
                                   weight=0.5)
    job = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 21}
    result = api.txt2img(**job, cfg_scale=7.0, controlnet_units=[unit],
                         alwayson_scripts={})  # a fresh dict: webuiapi fills its shared default one
    assert not result.info["ignored"], result.info["ignored"]
    shown = http.get(f"/v1/jobs/{http.get('/v1/jobs', params={'limit': 1}).json()['jobs'][0]['job_id']}").json()
    assert shown["parameters"]["ip_adapter"] == {"model": "demo-ip-adapter", "scale": 0.5, "images": 1}
    assert "controlnet" not in shown["parameters"] or not shown["parameters"]["controlnet"]
    adapter = {"model": "demo-ip-adapter", "images": [b64(png(48, 48, (200, 30, 30)))], "scale": 0.5}
    native = native_pixels(http, **job, guidance_scale=7.0, scheduler="euler", ip_adapter=adapter)
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), native)
    without = native_pixels(http, **job, guidance_scale=7.0, scheduler="euler")
    assert np.abs(native.astype(int) - without.astype(int)).max() > 0  # the adapter reaches the pixels


def test_ip_adapter_units_name_what_they_cannot_do(http: httpx.Client) -> None:
    unit = {"image": b64(png(32, 32, (10, 200, 10))), "module": "ip-adapter_clip_sd15", "model": "demo-ip-adapter"}
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64}

    def send(*units: dict[str, Any]) -> httpx.Response:
        return http.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": list(units)}}})

    # What the native field cannot carry runs without it, named in info.ignored and in the job's warnings.
    answer = send({**unit, "guidance_start": 0.3}, {**unit, "weight": 0.4})
    assert answer.status_code == 200, answer.text
    ignored = json.loads(answer.json()["info"])["ignored"]
    assert set(ignored) == {"alwayson_scripts.controlnet.args.0.guidance_start",
                            "alwayson_scripts.controlnet.args.1.weight"}, ignored
    job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    detail = http.get(f"/v1/jobs/{job['job_id']}").json()
    assert detail["parameters"]["ip_adapter"]["images"] == 2 and detail["parameters"]["ip_adapter"]["scale"] == 1.0
    assert any(w.startswith("alwayson_scripts.controlnet.args.0.guidance_start:") for w in detail["warnings"])
    for changed, status, field in (({"model": "ip-adapter_sd15 [6a3f6166]"}, 404, "model"),
                                   ({"module": "ip-adapter_face_id_plus"}, 422, "module"),
                                   ({"weight": 3}, 422, "weight"),
                                   ({"image": "bm90IGFuIGltYWdl"}, 422, "image")):
        answer = send({**unit, **changed})
        assert answer.status_code == status, answer.text
        assert answer.json()["detail"].startswith(f"alwayson_scripts.controlnet.args.0.{field}"), answer.text


def test_webuiapi_hires_with_a_controlnet_unit_equals_the_native_job(server: LiveServer, http: httpx.Client) -> None:
    """ControlNet on both passes of the hires fix, as sd-webui-controlnet runs a unit (hr_option Both)."""
    import webuiapi
    from PIL import Image

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    control = Image.new("RGB", (64, 64), (0, 0, 0))
    control.paste((255, 255, 255), (16, 0, 24, 64))
    unit = webuiapi.ControlNetUnit(image=control, module="none", model="demo-controlnet", weight=0.9)
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
             "denoising_strength": 0.6}
    result = api.txt2img(prompt="a red cube", width=64, height=64, steps=2, seed=8, controlnet_units=[unit],
                         alwayson_scripts={}, **hires)
    assert result.image.size == (128, 128)
    assert not result.info["ignored"], result.info["ignored"]
    buffer = io.BytesIO()
    control.save(buffer, "PNG")
    native = native_pixels(http, prompt="a red cube", seed=8, steps=2, guidance_scale=7.0, scheduler="euler",
                           width=64, height=64, hires={"scale": 2, "upscaler": "Latent", "steps": 2, "strength": 0.6},
                           controlnet=[{"model": "demo-controlnet", "image": b64(buffer.getvalue()), "weight": 0.9}])
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), native)
    infotext = result.info["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: demo-controlnet' in infotext and "Hires upscale: 2" in infotext
    low_only = webuiapi.ControlNetUnit(image=control, module="none", model="demo-controlnet", hr_option="Low res only")
    noted = api.txt2img(prompt="a red cube", width=64, height=64, steps=2, seed=8, controlnet_units=[low_only],
                          alwayson_scripts={}, **hires)
    assert "alwayson_scripts.controlnet.args.0.hr_option" in noted.info["ignored"], noted.info["ignored"]
