"""The real engine with the demo bundle behind the API (both backends): a queue of jobs on mixed models
and LoRAs gives each job exactly the pixels the engine makes for the same request alone, a job without
LoRA after one with a LoRA equals a fresh worker's, and the PNG records the model, its hash and the LoRAs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdworker.domain.request import GenerationRequest, LoraRef
from sdworker.engine.protocol import Engine
from sdworker.imaging.metadata import PNG_KEY, parse_parameters
from sdworker.settings import Settings

from .helpers import parse_sse, running_app

BASE: dict[str, Any] = {"prompt": "a photo of a cat", "steps": 2, "width": 64, "height": 64, "seed": 21,
                        "scheduler": "euler"}
JOBS: list[dict[str, Any]] = [
    {},  # the default model (demo-sd15)
    {"model": "demo-sdxl", "loras": [{"path": "demo-xl-peft", "strength": 0.9}]},
    {"model": "demo-sd15", "loras": [{"path": "demo-peft", "strength": 0.8}], "clip_skip": 2},
    {"prompt": "a photo of a cat <lora:demo-kohya:0.6>"},
    {},  # no LoRA after jobs with LoRAs: a fresh worker's pixels
]


def demo_engine(cache_dir: Path) -> Engine:
    from sdworker.engine.diffusers_engine import DiffusersEngine

    return DiffusersEngine(Settings(model="demo", cache_dir=cache_dir, device="cpu"))


@pytest.fixture(scope="module")
def expected(demo_cache_dir: Path) -> list[np.ndarray]:
    """Each job's request run alone, each on a fresh engine (nothing left over from another job)."""
    found = []
    for job in JOBS:
        engine = demo_engine(demo_cache_dir)
        engine.load()
        body = {**BASE, **job}
        request = GenerationRequest(
            body["prompt"], num_inference_steps=2, width=64, height=64, seed=21, scheduler="euler",
            model=body.get("model"), loras=tuple(LoraRef(x["path"], x["strength"]) for x in body.get("loras", ())),
            clip_skip=body.get("clip_skip"),
        )
        found.append(np.asarray(engine.generate(request).images[0].convert("RGB")))
        engine.close()
    return found


async def test_mixed_models_and_loras_in_one_queue_each_get_their_own_pixels(
    demo_cache_dir: Path, expected: list[np.ndarray]
) -> None:
    async with running_app(demo_engine(demo_cache_dir), cache_dir=demo_cache_dir) as app:  # type: ignore[arg-type]
        ids = [await app.submit(**{**BASE, **job}) for job in JOBS]
        pngs = []
        for job_id in ids:
            status = await app.wait_status(job_id, "completed", "failed", timeout=120)
            assert status["status"] == "completed", status
            pngs.append((await app.client.get(f"/v1/jobs/{job_id}/image")).content)
        for index, png in enumerate(pngs):
            got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert np.array_equal(got, expected[index]), f"job {index} ({JOBS[index]}) differs from the engine alone"
        assert np.array_equal(expected[0], expected[-1])

        xl = parse_parameters(Image.open(io.BytesIO(pngs[1])).text[PNG_KEY])  # type: ignore[attr-defined]
        assert xl["Model"] == "demo-sdxl" and len(xl["Model hash"]) == 10
        assert xl["Lora hashes"].startswith("demo-xl-peft: ")
        sd = parse_parameters(Image.open(io.BytesIO(pngs[2])).text[PNG_KEY])  # type: ignore[attr-defined]
        assert sd["Model"] == "demo-sd15" and sd["Clip skip"] == "2" and "demo-peft" in sd["Lora hashes"]

        events = parse_sse((await app.client.get(f"/v1/jobs/{ids[1]}/stream")).text)
        loading = [(e[2]["model"], e[2]["phase"]) for e in events if e[1] == "loading_model"]
        assert loading == [("demo-sdxl", "started"), ("demo-sdxl", "finished")]

        models = {m["id"]: m for m in (await app.client.get("/v1/models")).json()["data"]}
        assert models["demo-sdxl"]["architecture"] == "sdxl" and len(models["demo-sdxl"]["hash"]) == 10
        assert models["demo-sd15"]["default"] and not models["demo-sdxl"]["default"]
        # Without width/height a job gets its model's native size (the tiny demo folders say their own).
        sized = await app.submit(prompt="a cat", steps=1, seed=1, model="demo-sdxl", width=None, height=None)
        native = models["demo-sdxl"]["native_size"]
        assert (await app.wait_status(sized, "completed", timeout=120))["width"] == native

        wrong = await app.client.post("/v1/jobs", json={**BASE, "loras": [{"path": "demo-xl-peft"}]})
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "loras", wrong.text
