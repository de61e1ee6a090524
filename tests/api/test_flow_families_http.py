"""The flow-matching families through HTTP on the real engine (both backends): a mixed queue of SD 1,
SDXL, FLUX.1, SD 3.5, Z-Image and Qwen-Image jobs gives each job the pixels of diffusers' own pipeline
called directly; jobs that leave steps and guidance out get their family's defaults; a FLUX LoRA changes
the image and the next job without it equals diffusers' plain pipeline; a size off the family's multiple
is a 422 naming the field; ``/v1/models`` lists each model's architecture and defaults."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.engine.demo_model import DEMO_VERSION
from sdworker.engine.protocol import Engine
from sdworker.imaging.metadata import PNG_KEY, parse_parameters
from sdworker.settings import Settings

from .helpers import running_app

SIZE: dict[str, Any] = {"width": 64, "height": 64, "seed": 5}
# (job body, diffusers class, the arguments diffusers gets: the family's defaults where the job has none)
JOBS: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"model": "demo-flux1"}, "FluxPipeline", {"num_inference_steps": 28, "guidance_scale": 3.5}),
    ({"model": "demo-sd3", "negative_prompt": "blurry", "steps": 3}, "StableDiffusion3Pipeline",
     {"num_inference_steps": 3, "guidance_scale": 4.5, "negative_prompt": "blurry"}),
    ({"model": "demo-zimage"}, "ZImagePipeline", {"num_inference_steps": 8, "guidance_scale": 0.0}),
    ({"model": "demo-sd15", "steps": 2}, "StableDiffusionPipeline", {"num_inference_steps": 2, "guidance_scale": 7.5}),
    ({"model": "demo-qwenimage", "steps": 3}, "QwenImagePipeline",
     {"num_inference_steps": 3, "true_cfg_scale": 4.0, "negative_prompt": " "}),
    ({"model": "demo-sdxl", "steps": 2}, "StableDiffusionXLPipeline",
     {"num_inference_steps": 2, "guidance_scale": 7.5}),
    ({"model": "demo-flux1", "steps": 4, "loras": [{"path": "demo-flux1-kohya", "strength": 1.0}]}, "", {}),
    ({"model": "demo-flux1", "steps": 4}, "FluxPipeline", {"num_inference_steps": 4, "guidance_scale": 3.5}),
]


def demo_engine(cache_dir: Path) -> Engine:
    from sdworker.engine.diffusers_engine import DiffusersEngine

    return DiffusersEngine(Settings(model="demo", cache_dir=cache_dir, device="cpu", max_loaded_models=8))


@pytest.fixture(scope="module")
def expected(demo_cache_dir: Path) -> list[np.ndarray | None]:
    """Each job by diffusers' own pipeline, loaded on its own from the demo folder."""
    import diffusers

    found: list[np.ndarray | None] = []
    for body, cls, arguments in JOBS:
        if not cls:
            found.append(None)
            continue
        folder = demo_cache_dir / DEMO_VERSION / "models" / body["model"]
        kwargs = {"safety_checker": None} if cls == "StableDiffusionPipeline" else {}
        pipe = getattr(diffusers, cls).from_pretrained(folder, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a photo of a cat", width=64, height=64, generator=torch.Generator("cpu").manual_seed(5),
                     **arguments).images[0]
        found.append(np.asarray(image.convert("RGB")))
    return found


async def test_a_mixed_queue_gives_each_job_its_family_pipeline_pixels(
    demo_cache_dir: Path, expected: list[np.ndarray | None]
) -> None:
    async with running_app(demo_engine(demo_cache_dir), cache_dir=demo_cache_dir) as app:  # type: ignore[arg-type]
        ids = []
        for body, _, _ in JOBS:  # posted as they are: no steps or guidance where the job leaves them out
            response = await app.client.post("/v1/jobs", json={"prompt": "a photo of a cat", **SIZE, **body})
            assert response.status_code == 202, response.text
            ids.append(response.json()["job_id"])
        pngs = []
        for job_id in ids:
            status = await app.wait_status(job_id, "completed", "failed", timeout=300)
            assert status["status"] == "completed", status
            pngs.append((await app.client.get(f"/v1/jobs/{job_id}/image")).content)
        got = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs]
        for index, want in enumerate(expected):
            if want is not None:
                assert np.array_equal(got[index], want), f"job {index} ({JOBS[index][0]}) differs from diffusers"
        assert np.abs(got[6].astype(int) - got[7].astype(int)).max() > 10  # the FLUX LoRA changed the image
        flux = parse_parameters(Image.open(io.BytesIO(pngs[0])).text[PNG_KEY])  # type: ignore[attr-defined]
        ran = (flux["Steps"], flux["CFG scale"], flux["Sampler"], flux["Model"])
        assert ran == ("28", "3.5", "Euler", "demo-flux1")

        models = {m["id"]: m for m in (await app.client.get("/v1/models")).json()["data"]}
        assert models["demo-flux1"]["architecture"] == "flux1" and models["demo-flux1"]["variant"] == "dev"
        assert models["demo-flux1"]["defaults"] == {"steps": 28, "guidance_scale": 3.5, "width": 1024, "height": 1024}
        assert models["demo-flux1"]["size_multiple"] == 16
        assert models["demo-qwenimage"]["defaults"]["guidance_scale"] == 4.0
        assert models["demo-sd15"]["defaults"]["steps"] == 20

        warned = await app.client.post("/v1/jobs", json={"prompt": "a (cat:1.2)", "model": "demo-flux1", "steps": 1,
                                                         "negative_prompt": "blurry", **SIZE})
        job = await app.wait_status(warned.json()["job_id"], "completed", timeout=120)
        assert [w.split(":")[0] for w in job["warnings"]] == ["negative_prompt", "prompt"], job
        plain = await app.wait_status(ids[3], "completed", timeout=10)
        assert plain["warnings"] == []

        wrong = await app.client.post("/v1/jobs", json={"prompt": "a cat", "model": "demo-flux1", "width": 72,
                                                        "height": 64})
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "width", wrong.text
        sampler = await app.client.post("/v1/jobs", json={"prompt": "a cat", "model": "demo-sd3", "scheduler": "ddim"})
        assert sampler.status_code == 422 and sampler.json()["error"]["field"] == "scheduler", sampler.text
