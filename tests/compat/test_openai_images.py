"""The OpenAI Images API over real uvicorn, driven by the official ``openai`` package."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
from live.server import LiveServer
from PIL import Image

from .conftest import native_pixels, pixels, png, start_long_job

pytestmark = [pytest.mark.live, pytest.mark.slow]

FAST = {"steps": 2, "seed": 11}


@pytest.fixture
def client(server: LiveServer, http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0, timeout=120)


def test_generate_returns_b64_png_on_the_default_model(client: openai.OpenAI) -> None:
    result = client.images.generate(model="gpt-image-1", prompt="a cat", size="64x64", n=2, extra_body=FAST)
    assert result.data is not None and len(result.data) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))) for item in result.data]
    assert [(image.format, image.size) for image in images] == [("PNG", (64, 64))] * 2
    assert result.model_extra is not None and result.model_extra["model"] == "demo"  # which model ran it
    assert result.size == "64x64" and result.output_format == "png" and result.quality == "medium"


def test_seed_in_extra_body_equals_a_native_job_pixel_for_pixel(client: openai.OpenAI, http: httpx.Client) -> None:
    extra = {"seed": 4321, "steps": 3, "negative_prompt": "blurry", "guidance_scale": 6.0, "scheduler": "euler_a"}
    result = client.images.generate(prompt="a red cube", size="64x48", extra_body=extra)
    assert result.data is not None
    ours = pixels(base64.b64decode(result.data[0].b64_json or ""))
    native = native_pixels(http, prompt="a red cube", width=64, height=48, **extra)
    assert np.array_equal(ours, native)


def test_stream_shows_partial_images_while_the_job_runs(client: openai.OpenAI, http: httpx.Client) -> None:
    stream = client.images.generate(
        prompt="a cat", size="128x128", stream=True, partial_images=2, extra_body={"steps": 90, "seed": 3}
    )
    kinds, progress = [], []
    for event in stream:
        kinds.append((event.type, getattr(event, "partial_image_index", None)))
        image = Image.open(io.BytesIO(base64.b64decode(event.b64_json)))
        assert image.size == (128, 128)
        if event.type == "image_generation.partial_image":
            # Asked after the partial image was read from the socket: the job has not reached its last step.
            job = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
            progress.append((job["status"], job["step"] < job["total"]))
        else:
            assert event.usage.total_tokens == 0
    assert kinds == [
        ("image_generation.partial_image", 0),
        ("image_generation.partial_image", 1),
        ("image_generation.completed", None),
    ]
    assert progress == [("running", True), ("running", True)]


def test_stream_with_n_2_sends_one_completed_per_image(client: openai.OpenAI) -> None:
    stream = client.images.generate(prompt="a cat", size="64x64", n=2, stream=True, extra_body=FAST)
    assert [event.type for event in stream] == ["image_generation.completed"] * 2


def test_edit_without_mask_is_img2img_and_with_mask_an_inpaint(client: openai.OpenAI, http: httpx.Client) -> None:
    source = png(64, 64)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent left half = repaint
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    operations = []
    for extra_mask in (None, buffer.getvalue()):
        files = {"mask": ("mask.png", extra_mask, "image/png")} if extra_mask else {}
        result = client.images.edit(
            image=("in.png", source, "image/png"), prompt="a door", extra_body={"steps": 4}, **files
        )
        assert result.data is not None and pixels(base64.b64decode(result.data[0].b64_json or "")).shape == (64, 64, 3)
        operations.append(http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]["job_id"])
    details = [http.get(f"/v1/jobs/{job_id}").json()["parameters"] for job_id in operations]
    assert [d["operation"] for d in details] == ["image_transform", "image_inpaint"]
    # Several images as image[]: the first one is edited; the stream says image_edit.*
    stream = client.images.edit(
        image=[("a.png", source, "image/png"), ("b.png", png(32, 32), "image/png")],
        prompt="a door", stream=True, partial_images=1, extra_body={"steps": 8},
    )
    assert [event.type for event in stream][-1] == "image_edit.completed"


def test_bad_values_are_400_naming_the_param(client: openai.OpenAI) -> None:
    for kwargs, param in (({"size": "big"}, "size"), ({"size": "65x64"}, "size"), ({"n": 5}, "n")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(prompt="a cat", extra_body=FAST, **kwargs)  # type: ignore[arg-type]
        assert caught.value.param == param and caught.value.type == "invalid_request_error", caught.value.body
    with pytest.raises(openai.BadRequestError) as missing:
        client.images.generate(prompt="", extra_body=FAST)
    assert missing.value.param == "prompt"


def test_full_queue_is_429_with_retry_after(client: openai.OpenAI, http: httpx.Client) -> None:
    for _ in range(3):  # one runs, two fill the queue of 2
        start_long_job(http)
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(prompt="a cat", size="64x64", extra_body=FAST)
    assert caught.value.response.headers["retry-after"].isdigit()
    assert caught.value.code == "queue_full"


def test_url_response_is_an_absolute_url_of_the_image_route(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.images.generate(prompt="a cat", size="64x64", response_format="url", extra_body=FAST)
    assert result.data is not None and result.data[0].url is not None
    url = result.data[0].url
    assert url.startswith(server.url + "/v1/jobs/")
    assert Image.open(io.BytesIO(httpx.get(url).content)).size == (64, 64)


def test_dall_e_without_response_format_answers_a_url_as_openai_does(client: openai.OpenAI) -> None:
    # LibreChat's DALL-E 3 tool sends no response_format and reads only ``data[0].url``: OpenAI answers
    # url for dall-e-2/3 and b64_json for the gpt-image models (and here for a request without model).
    dalle = client.images.generate(model="dall-e-3", prompt="a cat", quality="standard", style="vivid",
                                   size="64x64", n=1, extra_body=FAST)
    assert dalle.data is not None and dalle.data[0].url is not None and dalle.data[0].b64_json is None
    assert Image.open(io.BytesIO(httpx.get(dalle.data[0].url).content)).size == (64, 64)
    for model in ("gpt-image-1", None):
        extra = {"model": model} if model else {}
        other = client.images.generate(prompt="a cat", size="64x64", extra_body=FAST, **extra)  # type: ignore[arg-type]
        assert other.data is not None and other.data[0].b64_json and other.data[0].url is None
    asked = client.images.generate(model="dall-e-2", prompt="a cat", size="64x64", response_format="b64_json",
                                   extra_body=FAST)
    assert asked.data is not None and asked.data[0].b64_json and asked.data[0].url is None


def test_jpeg_output_format_and_strings_in_a_form(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.images.generate(prompt="a cat", size="64x64", output_format="jpeg", extra_body=FAST)
    assert result.data is not None
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or ""))).format == "JPEG"
    form = {"prompt": "a cat", "n": "2", "stream": "false", "steps": "2", "size": "auto", "model": "dall-e-2"}
    response = httpx.post(server.url + "/v1/images/edits", data=form, files={"image": ("x.png", png(64, 40))})
    assert response.status_code == 200, response.text
    assert response.json()["size"] == "64x40" and len(response.json()["data"]) == 2


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list().data
    # The demo bundle's library, each entry with its details (OpenAI's SDK keeps them in model_extra).
    names = ["demo-flux1", "demo-flux1-kontext", "demo-flux1-q8", "demo-flux1-transformer", "demo-flux2",
             "demo-qwenimage", "demo-qwenimage-edit", "demo-qwenimage-edit-plus", "demo-sd15",
             "demo-sd15-inpainting", "demo-sd3", "demo-sdxl", "demo-zimage"]
    assert [(m.id, m.object, m.owned_by) for m in models] == [(name, "model", "sdworker") for name in names]
    extra = {m.id: m.model_extra or {} for m in models}
    assert extra["demo-sd15"]["default"] is True
    assert [extra[name]["architecture"] for name in names] == ["flux1", "flux1", "flux1", "flux1", "flux2",
                                                               "qwenimage", "qwenimage", "qwenimage", "sd1", "sd1",
                                                               "sd3", "sdxl", "zimage"]


def test_a_client_that_hangs_up_cancels_its_job(server: LiveServer, http: httpx.Client) -> None:
    body = {"prompt": "long", "size": "256x256", "steps": 150}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/images/generations", json=body, timeout=httpx.Timeout(60, read=1.5))
    _wait_latest_job(http, "cancelled")
    with httpx.stream("POST", server.url + "/v1/images/generations", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        _wait_latest_job(http, "running")
    _wait_latest_job(http, "cancelled")  # a stream that hangs up cancels its job too


def _wait_latest_job(http: httpx.Client, status: str) -> None:
    deadline = time.monotonic() + 30
    while (job := http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0])["status"] != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the latest job never became {status}: {job}")  # a hang guard
        time.sleep(0.05)
