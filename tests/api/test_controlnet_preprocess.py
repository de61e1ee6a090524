"""``POST /v1/controlnets/preprocess``: the control map a unit would use (the page's preview), made with
the same function the engine uses; bad input is a 4xx naming the field."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
from PIL import Image

from .helpers import running_app


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture() -> np.ndarray:
    pixels = np.zeros((40, 56, 3), np.uint8)
    pixels[8:30, 10:40] = (240, 200, 30)
    return pixels


async def test_preprocess_returns_the_units_control_map() -> None:
    async with running_app() as app:
        picture = _picture()
        for body, expected in (
            ({"preprocessor": "canny", "low": 50, "high": 150}, cv2.Canny(picture, 50, 150)),
            ({"preprocessor": "Invert (from white bg & black line)"}, 255 - picture[..., 0]),
        ):
            response = await app.client.post("/v1/controlnets/preprocess", json={"image": _png(picture), **body})
            assert response.status_code == 200, response.text
            with Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))) as image:
                made = np.asarray(image.convert("RGB"))
            assert made.shape == picture.shape and expected.any()
            np.testing.assert_array_equal(made[..., 0], expected)
        assert response.json()["preprocessor"] == "invert"  # the canonical name


async def test_preprocess_bad_input_is_a_4xx_naming_the_field() -> None:
    async with running_app() as app:
        for body, field in (
            ({"image": "bm90IGFuIGltYWdl"}, "image"),
            ({"image": _png(_picture()), "preprocessor": "depth_midas"}, "preprocessor"),
            ({"image": _png(_picture()), "low": 300}, "low"),
        ):
            response = await app.client.post("/v1/controlnets/preprocess", json=body)
            assert 400 <= response.status_code < 500, response.text
            error = response.json()["error"]
            assert field in str(error["field"]), error
