"""Bad input: each case gets a 4xx JSON error naming the field, nothing is enqueued, and the service
then still completes a job."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image

from .helpers import SMALL, png_b64, running_app

OK = {"prompt": "a cat", **SMALL}


def huge_header_png() -> str:
    """A valid tiny PNG whose header declares 5,000 x 5,000 pixels (above --max-pixels): refused before decoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", 5_000, 5_000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return base64.b64encode(bytes(data)).decode()


NOT_AN_IMAGE = base64.b64encode(b"this is text, not an image" * 4).decode()

# (name, body or raw bytes, expected status, expected field)
CASES: list[tuple[str, Any, int, str]] = [
    ("unknown operation", {**OK, "operation": "image_variation"}, 422, "operation"),
    ("upscale without an upscaler", {**OK, "operation": "image_upscale", "init_image": png_b64(8, 8)}, 422,
     "upscaler"),
    ("an upscaler on another operation", {**OK, "upscaler": "Lanczos"}, 422, "upscaler"),
    ("an edit without reference images", {**OK, "operation": "image_edit"}, 422, "reference_images"),
    ("reference images on text-to-image", {**OK, "reference_images": [png_b64(8, 8)]}, 422, "reference_images"),
    ("an IP-Adapter image that does not decode",
     {**OK, "ip_adapter": {"model": "demo-ip-adapter", "images": [NOT_AN_IMAGE]}},
     422, "ip_adapter.images.0"),
    ("missing prompt", {k: v for k, v in OK.items() if k != "prompt"}, 422, "prompt"),
    ("empty prompt", {**OK, "prompt": ""}, 422, "prompt"),
    ("prompt not a string", {**OK, "prompt": 5}, 422, "prompt"),
    ("steps as string", {**OK, "steps": "20"}, 422, "steps"),
    ("steps as float", {**OK, "steps": 2.5}, 422, "steps"),
    ("steps zero", {**OK, "steps": 0}, 422, "steps"),
    ("steps above max_steps", {**OK, "steps": 151}, 422, "steps"),
    ("guidance NaN", b'{"prompt": "a", "guidance_scale": NaN}', 422, "guidance_scale"),
    ("guidance Infinity", b'{"prompt": "a", "guidance_scale": Infinity}', 422, "guidance_scale"),
    ("guidance out of range", {**OK, "guidance_scale": 99.0}, 422, "guidance_scale"),
    ("width not multiple of 8", {**OK, "width": 100}, 422, "width"),
    ("height not multiple of 8", {**OK, "height": 65}, 422, "height"),
    ("size above max_pixels", {**OK, "width": 4096, "height": 4096}, 422, "width"),
    ("seed negative", {**OK, "seed": -1}, 422, "seed"),
    ("n above max_images", {**OK, "n": 9}, 422, "n"),
    ("unknown field", {**OK, "sampler_name": "euler"}, 422, "sampler_name"),
    ("unknown lora", {**OK, "loras": [{"path": "x.safetensors", "strength": 1.0}]}, 404, "loras"),
    ("lora weight too big", {**OK, "loras": [{"path": "x", "strength": 11.0}]}, 422, "loras.0.strength"),
    ("lora without path", {**OK, "loras": [{"strength": 1.0}]}, 422, "loras.0.path"),
    ("unknown lora in the prompt", {**OK, "prompt": "a cat <lora:nope:0.5>"}, 404, "prompt"),
    ("clip_skip 0", {**OK, "clip_skip": 0}, 422, "clip_skip"),
    ("unknown model", {**OK, "model": "no-such-model"}, 404, "model"),
    ("unknown scheduler", {**OK, "scheduler": "warp_drive"}, 422, "scheduler"),
    (
        "strength zero",
        {**OK, "operation": "image_transform", "input_image": png_b64(64, 64), "strength": 0},
        422,
        "strength",
    ),
    ("img2img without image", {**OK, "operation": "image_transform"}, 422, "input_image"),
    (
        "img2img with both images",
        {**OK, "operation": "ImageTransform", "input_image": png_b64(64, 64), "init_image": png_b64(64, 64)},
        422,
        "input_image",
    ),
    ("inpaint without mask", {**OK, "operation": "image_inpaint", "init_image": png_b64(64, 64)}, 422, "mask_image"),
    ("txt2img with mask", {**OK, "mask_image": png_b64(64, 64)}, 422, "mask_image"),
    ("bad base64", {**OK, "operation": "image_transform", "input_image": "not base64 !!!"}, 422, "input_image"),
    ("bytes not an image", {**OK, "operation": "image_transform", "input_image": NOT_AN_IMAGE}, 422, "input_image"),
    (
        "header above pixel limit",
        {**OK, "operation": "image_transform", "input_image": huge_header_png()},
        413,
        "input_image",
    ),
    (
        "mask of another size",
        {**OK, "operation": "image_inpaint", "init_image": png_b64(64, 64), "mask_image": png_b64(32, 32, "L")},
        422,
        "mask_image",
    ),
    ("preview.every negative", {**OK, "preview": {"every": -1}}, 422, "preview.every"),
    ("preview.max_size too small", {**OK, "preview": {"max_size": 8}}, 422, "preview.max_size"),
    ("preview.quality above 100", {**OK, "preview": {"quality": 101}}, 422, "preview.quality"),
    ("preview.format gif", {**OK, "preview": {"format": "gif"}}, 422, "preview.format"),
    ("preview.method unknown", {**OK, "preview": {"method": "magic"}}, 422, "preview.method"),
    ("preview.method taesd not loaded", {**OK, "preview": {"method": "taesd"}}, 422, "preview.method"),
    ("preview unknown option", {**OK, "preview": {"every": 1, "size": 3}}, 422, "preview.size"),
    ("hires above max_pixels", {**OK, "width": 2048, "height": 1024, "hires": {"scale": 2.0}}, 422, "hires.scale"),
    ("hires scale above 8", {**OK, "hires": {"scale": 9.0}}, 422, "hires.scale"),
    ("hires unknown upscaler", {**OK, "hires": {"upscaler": "4x-UltraSharp"}}, 422, "hires.upscaler"),
    ("hires strength zero", {**OK, "hires": {"strength": 0}}, 422, "hires.strength"),
    (
        "hires on img2img",
        {**OK, "operation": "image_transform", "input_image": png_b64(64, 64), "hires": {}},
        422,
        "hires",
    ),
    ("controlnet weight", {**OK, "controlnet": [{"model": "c", "image": png_b64(64, 64), "weight": 3}]}, 422,
     "controlnet.0.weight"),
    ("controlnet start after end", {**OK, "controlnet": [{"model": "c", "image": png_b64(64, 64), "start": 0.6,
                                                          "end": 0.4}]}, 422, "controlnet.0.start"),
    ("controlnet preprocessor needing weights", {**OK, "controlnet": [{"model": "c", "image": png_b64(64, 64),
                                                                       "preprocessor": "depth_midas"}]}, 422,
     "controlnet.0.preprocessor"),
    ("controlnet image not an image", {**OK, "controlnet": [{"model": "demo-controlnet", "image": NOT_AN_IMAGE}]}, 422,
     "controlnet.0.image"),
    ("malformed JSON", b'{"prompt": "a", ', 400, "body"),
    ("body not an object", b'["a cat"]', 422, "body"),
    ("body above max_body_bytes", {**OK, "negative_prompt": "x" * 70_000}, 413, "body"),
]


async def test_every_bad_input_gets_a_4xx_naming_the_field_then_a_job_completes() -> None:
    assert len(CASES) >= 20
    async with running_app(max_body_bytes=4096, max_steps=150, max_images=8, max_pixels=2048 * 2048) as app:
        for name, body, status, field in CASES:
            if isinstance(body, bytes):
                response = await app.client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
            else:
                response = await app.client.post("/v1/jobs", json=body)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
            assert response.headers["content-type"].startswith("application/json"), name
            error = response.json()["error"]
            assert error["field"] == field, f"{name}: {error}"
            assert field.split(".")[-1] in error["message"] and error["code"], f"{name}: {error}"
        jobs = (await app.client.get("/v1/jobs")).json()["jobs"]
        assert jobs == [], "a bad request must not create a job"
        metrics = (await app.client.get("/metrics")).text
        assert "sdworker_queue_depth 0.0" in metrics

        job_id = await app.submit()
        assert (await app.wait_status(job_id, "completed", "failed"))["status"] == "completed"


async def test_range_errors_say_the_allowed_range_and_the_value() -> None:
    async with running_app(max_steps=50) as app:
        error = (await app.client.post("/v1/jobs", json={**OK, "width": 100})).json()["error"]
        assert "100" in error["message"] and "multiple of 8" in error["message"]
        error = (await app.client.post("/v1/jobs", json={**OK, "steps": 51})).json()["error"]
        assert "51" in error["message"] and "1..50" in error["message"]
        error = (await app.client.post("/v1/jobs", json={**OK, "preview": {"quality": 0}})).json()["error"]
        assert error["allowed"] == "int, >= 1, <= 100"


async def test_other_routes_answer_4xx_json_too() -> None:
    async with running_app() as app:
        for method, path, status in [
            ("GET", "/v1/jobs/nope", 404),
            ("DELETE", "/v1/jobs/nope", 404),
            ("GET", "/v1/jobs/nope/stream", 404),
            ("GET", "/v1/jobs/nope/image", 404),
            ("GET", "/no/such/route", 404),
            ("PUT", "/v1/jobs", 405),
        ]:
            response = await app.client.request(method, path)
            assert response.status_code == status, (method, path, response.text)
            assert response.json()["error"]["code"], (method, path)
        job_id = await app.submit()
        await app.wait_status(job_id, "completed")
        bad_id = await app.client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "abc"})
        assert bad_id.status_code == 422 and bad_id.json()["error"]["field"] == "Last-Event-ID"
        bad_index = await app.client.get(f"/v1/jobs/{job_id}/image", params={"index": 5})
        assert bad_index.status_code == 404 and bad_index.json()["error"]["field"] == "index"


async def test_a_chunked_body_without_content_length_is_counted_and_refused() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    async with running_app(max_body_bytes=4096) as app:
        response = await app.client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in response.request.headers
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
        assert (await app.wait_status(await app.submit(), "completed"))["status"] == "completed"
