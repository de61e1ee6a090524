"""One set of bounds for every door (issue 20): the OpenAI and A1111 doors translate into the native
job and the same check (``domain.checks.check_job``) runs on it before anything is queued or decoded.
Each request here is one the hostile-client run sent; each must be a 4xx naming the field, at every
door, with no job left behind."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx

from tests.unit.test_decode_fuzz import crafted_pngs

from .helpers import Running, png_b64, running_app

MAX_SEED = 2**64 - 1
A1111_SMALL = {"steps": 2, "width": 64, "height": 64}


def field_of(response: httpx.Response) -> str:
    """The field an error names, in each door's own error shape."""
    body = response.json()
    if "detail" in body:  # A1111's {"error", "detail", ...}: the message starts with the field
        return str(re.match(r"([^:]+):", body["detail"]).group(1))  # type: ignore[union-attr]
    error = body["error"]
    return str(error.get("field") or error.get("param"))


def raw(body: dict[str, Any], **literal: str) -> bytes:
    """JSON with some values spelled literally (``\\ud800``, ``1e400``: what json.dumps never writes)."""
    text = json.dumps(body)
    for key, value in literal.items():
        text = text[:-1] + f', "{key}": {value}' + "}"
    return text.encode()


async def post_raw(app: Running, path: str, body: bytes) -> httpx.Response:
    return await app.client.post(path, content=body, headers={"content-type": "application/json"})


async def assert_refused(response: httpx.Response, field: str, app: Running) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert field_of(response) == field, response.text
    assert (await app.client.get("/v1/jobs")).json()["jobs"] == []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_crafted_image_is_a_4xx_naming_the_field_at_all_seven_entry_points() -> None:
    async with running_app() as app:
        for bad in crafted_pngs().values():
            good = png_b64(8, 8)
            native = {"prompt": "a", "steps": 2, "width": 64, "height": 64}
            calls = [
                ("/v1/jobs", {**native, "operation": "image_transform", "init_image": b64(bad)}, "init_image"),
                ("/v1/jobs", {**native, "operation": "image_inpaint", "init_image": good, "mask_image": b64(bad)},
                 "mask_image"),
                ("/sdapi/v1/img2img", {"prompt": "a", **A1111_SMALL, "init_images": [b64(bad)]}, "init_images"),
                ("/sdapi/v1/img2img", {"prompt": "a", **A1111_SMALL, "init_images": [b64(bad)], "resize_mode": 1},
                 "init_images"),
                ("/sdapi/v1/img2img", {"prompt": "a", **A1111_SMALL, "init_images": [good], "mask": b64(bad)}, "mask"),
            ]
            for path, body, field in calls:
                await assert_refused(await app.client.post(path, json=body), field, app)
            form = {"prompt": "a", "steps": "2"}
            edit_image = await app.client.post("/v1/images/edits", data=form, files={"image": ("x.png", bad)})
            await assert_refused(edit_image, "image", app)
            files = {"image": ("x.png", base64.b64decode(good)), "mask": ("m.png", bad)}
            edit_mask = await app.client.post("/v1/images/edits", data=form, files=files)
            await assert_refused(edit_mask, "mask", app)


async def test_clip_skip_of_infinity_is_a_4xx_naming_it() -> None:
    async with running_app() as app:
        body = {"prompt": "a", **A1111_SMALL}
        infinite = raw(body, override_settings='{"CLIP_stop_at_last_layers": 1e400}')
        response = await post_raw(app, "/sdapi/v1/txt2img", infinite)
        await assert_refused(response, "override_settings.CLIP_stop_at_last_layers", app)
        too_many = await app.client.post(
            "/sdapi/v1/txt2img", json={**body, "override_settings": {"CLIP_stop_at_last_layers": 13}}
        )
        await assert_refused(too_many, "override_settings.CLIP_stop_at_last_layers", app)


async def test_every_door_takes_seeds_up_to_2_64_minus_1_and_refuses_the_rest() -> None:
    async with running_app() as app:
        # The largest seed runs and is reported back exactly, at each door.
        job = await app.submit(seed=MAX_SEED - 1, n=2)
        status = await app.wait_status(job, "completed", "failed")
        assert status["status"] == "completed" and status["seeds"] == [MAX_SEED - 1, MAX_SEED], status
        a1111 = await app.client.post("/sdapi/v1/txt2img", json={"prompt": "a", **A1111_SMALL, "seed": MAX_SEED})
        assert a1111.status_code == 200, a1111.text
        assert json.loads(a1111.json()["info"])["all_seeds"] == [MAX_SEED]
        openai = await app.client.post("/v1/images/generations", json={"prompt": "a", "steps": 2, "seed": MAX_SEED,
                                                                        "size": "64x64"})
        assert openai.status_code == 200, openai.text
        # Above the range, or the last image's seed (seed + n - 1) above it: a 4xx naming seed.
        for seed, count in ((MAX_SEED + 1, 1), (MAX_SEED, 2), (2**80, 1)):
            jobs_before = (await app.client.get("/v1/jobs")).json()["jobs"]
            answers = [
                await app.client.post("/v1/jobs", json={"prompt": "a", "steps": 2, "seed": seed, "n": count}),
                await app.client.post("/sdapi/v1/txt2img",
                                      json={"prompt": "a", **A1111_SMALL, "seed": seed, "batch_size": count}),
                await app.client.post("/v1/images/generations",
                                      json={"prompt": "a", "steps": 2, "seed": seed, "n": count}),
            ]
            for answer in answers:
                assert 400 <= answer.status_code < 500 and field_of(answer) == "seed", answer.text
            assert (await app.client.get("/v1/jobs")).json()["jobs"] == jobs_before


async def test_lone_surrogates_and_nul_in_any_string_are_a_4xx_at_every_door() -> None:
    async with running_app() as app:
        for text in ('"\\ud800"', '"a\\u0000b"', '"\\udfff tail"'):
            for field in ("prompt", "negative_prompt", "sampler_name"):
                body = {"prompt": "a", **A1111_SMALL}
                body.pop(field, None)
                await assert_refused(await post_raw(app, "/sdapi/v1/txt2img", raw(body, **{field: text})), field, app)
            for field in ("prompt", "negative_prompt"):
                body = {"prompt": "a", "steps": 2}
                body.pop(field, None)
                await assert_refused(await post_raw(app, "/v1/jobs", raw(body, **{field: text})), field, app)
                await assert_refused(await post_raw(app, "/v1/images/generations", raw(body, **{field: text})), field,
                                     app)
            body = {"prompt": "a", **A1111_SMALL}
            await assert_refused(await post_raw(app, "/sdapi/v1/txt2img", raw(body, styles=f"[{text}]")), "styles.0",
                                 app)


async def test_prompt_length_is_bounded_at_every_door() -> None:
    async with running_app() as app:
        huge = "a" * 1_000_000
        await assert_refused(await app.client.post("/sdapi/v1/txt2img", json={"prompt": huge, **A1111_SMALL}),
                             "prompt", app)
        await assert_refused(await app.client.post("/sdapi/v1/txt2img", json={"prompt": "a", "negative_prompt": huge,
                                                                              **A1111_SMALL}), "negative_prompt", app)
        await assert_refused(await app.client.post("/v1/images/generations", json={"prompt": "a" * 20_001}),
                             "prompt", app)
        await assert_refused(await app.client.post("/v1/jobs", json={"prompt": "a" * 20_001}), "prompt", app)


async def test_a1111_checks_the_size_before_it_decodes_or_resizes_the_init_image() -> None:
    async with running_app() as app:
        # 16384x16384 with a crop-resize: refused on the size alone; the image is never opened (here
        # it is not even an image, and the error names the size, not init_images).
        body = {"prompt": "a", "steps": 2, "width": 16384, "height": 16384, "resize_mode": 1,
                "init_images": [b64(b"not an image")]}
        await assert_refused(await app.client.post("/sdapi/v1/img2img", json=body), "width", app)
        with_mask = {**body, "init_images": [png_b64(64, 64)], "mask": png_b64(64, 64)}
        await assert_refused(await app.client.post("/sdapi/v1/img2img", json=with_mask), "width", app)
        # The OpenAI edit's mask, too: not converted before the size is checked.
        files = {"image": ("x.png", base64.b64decode(png_b64(64, 64))), "mask": ("m.png", b"not an image")}
        edit = await app.client.post("/v1/images/edits", data={"prompt": "a", "size": "16384x16384"}, files=files)
        await assert_refused(edit, "size", app)


async def test_a1111_bounds_are_the_native_ones() -> None:
    async with running_app(max_steps=30, max_images=4) as app:
        small = {"prompt": "a", **A1111_SMALL}
        for extra, field in (
            ({"steps": 31}, "steps"),
            ({"batch_size": 3, "n_iter": 2}, "batch_size"),
            ({"cfg_scale": 51}, "cfg_scale"),
            ({"seed": -2}, "seed"),
        ):
            await assert_refused(await app.client.post("/sdapi/v1/txt2img", json={**small, **extra}), field, app)
