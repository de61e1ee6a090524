"""One check for ``strength x steps >= 1``: the API (native and A1111), the CLI and the engine agree."""

from __future__ import annotations

import argparse

import pytest

from sdworker.domain.request import GenerationRequest, InputImage, Operation
from sdworker.engine.fake import FakeEngine
from sdworker.errors import InvalidRequest

from .helpers import png_b64, running_app


async def test_strength_times_steps_below_one_is_a_4xx_at_submit() -> None:
    async with running_app() as app:
        body = {"prompt": "a", "operation": "image_transform", "init_image": png_b64(64, 64), "strength": 0.01,
                "steps": 2}
        answer = await app.client.post("/v1/jobs", json=body)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "strength"
        assert "at least 1" in answer.json()["message"]
        a1111 = await app.client.post(
            "/sdapi/v1/img2img", json={"prompt": "a", "init_images": [png_b64(64, 64)], "denoising_strength": 0.01,
                                        "steps": 2},
        )
        assert 400 <= a1111.status_code < 500
        assert (await app.client.get("/v1/jobs")).json()["jobs"] == []


def test_the_engine_and_the_cli_refuse_it_too(tmp_path: object) -> None:
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    request = GenerationRequest(prompt="a", operation=Operation.IMAGE_TO_IMAGE, init_image=InputImage.from_image(image),
                                strength=0.01, num_inference_steps=2, width=64, height=64)
    with pytest.raises(InvalidRequest, match="at least 1"):
        FakeEngine().validate_request(request)
    from sdworker.cli.generate import build_request
    from sdworker.settings import Settings

    path = f"{tmp_path}/in.png"
    image.save(path)
    args = argparse.Namespace(scheduler=None, steps=2, n=1, mask=None, init_image=path, strength=0.01,
                              output=f"{tmp_path}/out.png", width=None, height=None, prompt="a", negative=None,
                              guidance=7.5, seed=None)
    with pytest.raises(InvalidRequest, match=r"--strength 0\.01 x --steps 2"):
        build_request(args, Settings())
