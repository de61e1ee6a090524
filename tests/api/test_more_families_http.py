"""An SD inpainting checkpoint (9-channel UNet) and FLUX.2 klein through HTTP on the real engine, on
every store. The inpainting model is listed as the ``inpainting`` variant of its family, and a
text-to-image job and an inpaint job on it give the pixels of diffusers' ``StableDiffusionInpaintPipeline``
called directly (a full mask over a blank image for text-to-image, as A1111 does). A FLUX.2 job that
leaves steps and guidance out runs klein's defaults and gives ``Flux2KleinPipeline``'s pixels; an
image-to-image job on it (diffusers has no pipeline) is a 422 at submit naming ``operation``."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.engine.demo_flux2 import DEMO_FLUX2
from sdworker.engine.demo_inpaint import DEMO_SD15_INPAINTING
from sdworker.engine.demo_model import DEMO_VERSION
from sdworker.settings import Settings

from .helpers import running_app

CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 7.5}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _inputs() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return image, Image.fromarray(mask, "L")


@pytest.fixture(scope="module")
def expected(demo_cache_dir: Path) -> dict[str, np.ndarray]:
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        demo_cache_dir / DEMO_VERSION / "models" / DEMO_SD15_INPAINTING, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    image, mask = _inputs()
    runs = {"txt2img": (Image.new("RGB", (64, 64), (127, 127, 127)), Image.new("L", (64, 64), 255)),
            "inpaint": (image, mask)}
    found = {
        name: np.asarray(pipe("a red barn", image=init, mask_image=m, strength=1.0,
                              generator=torch.Generator("cpu").manual_seed(8), **CALL).images[0])
        for name, (init, m) in runs.items()
    }
    from diffusers import Flux2KleinPipeline

    flux2 = Flux2KleinPipeline.from_pretrained(demo_cache_dir / DEMO_VERSION / "models" / DEMO_FLUX2)
    flux2.set_progress_bar_config(disable=True)
    found["flux2"] = np.asarray(flux2(prompt="a red barn", width=64, height=64, num_inference_steps=4,
                                      guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(8)).images[0])
    return found


async def test_inpainting_checkpoint_and_flux2_jobs_give_diffusers_pixels(
    demo_cache_dir: Path, expected: dict[str, np.ndarray]
) -> None:
    from sdworker.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))
    image, mask = _inputs()
    common = {"prompt": "a red barn", "model": DEMO_SD15_INPAINTING, "seed": 8, "steps": 3, "guidance_scale": 7.5,
              "width": 64, "height": 64}
    bodies = {
        "txt2img": common,
        "inpaint": {**common, "operation": "image_inpaint", "strength": 1.0,
                    "init_image": base64.b64encode(_png(image)).decode(),
                    "mask_image": base64.b64encode(_png(mask)).decode()},
        "flux2": {"prompt": "a red barn", "model": DEMO_FLUX2, "seed": 8, "width": 64, "height": 64},
    }
    async with running_app(engine, cache_dir=demo_cache_dir) as app:  # type: ignore[arg-type]
        models = {m["id"]: m for m in (await app.client.get("/v1/models")).json()["data"]}
        assert models[DEMO_SD15_INPAINTING]["architecture"] == "sd1"
        assert models[DEMO_SD15_INPAINTING]["variant"] == "inpainting"
        for name, body in bodies.items():
            response = await app.client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            status = await app.wait_status(response.json()["job_id"], "completed", "failed", timeout=120)
            assert status["status"] == "completed", status
            png = (await app.client.get(f"/v1/jobs/{status['job_id']}/image")).content
            got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert np.array_equal(got, expected[name]), name
        hires = await app.client.post("/v1/jobs", json={**common, "hires": {"scale": 2.0}})
        assert hires.status_code == 422 and hires.json()["error"]["field"] == "hires", hires.text
        transform = await app.client.post("/v1/jobs", json={**bodies["flux2"], "operation": "image_transform",
                                                            "init_image": bodies["inpaint"]["init_image"]})
        assert transform.status_code == 422 and transform.json()["error"]["field"] == "operation", transform.text
        assert DEMO_FLUX2 in transform.json()["error"]["message"]
        assert models[DEMO_FLUX2]["architecture"] == "flux2" and models[DEMO_FLUX2]["variant"] == "klein"
        assert models[DEMO_FLUX2]["defaults"]["steps"] == 4
