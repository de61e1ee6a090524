"""The whole path of cross-job batching with the real engine: jobs posted over HTTP to a worker with
``--max-batch 3`` share one UNet call per step, and each job's PNG holds its solo run's pixels.

Memory backend only: a Redis worker runs one job at a time (its source does not batch).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
from PIL import Image

from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings
from tests.api.helpers import parse_sse, running_app

from .test_batch import MIN_PSNR_DB, psnr

JOBS = [
    {"prompt": "a photo of a cat", "seed": 1, "guidance_scale": 7.5},
    {"prompt": "a (red:1.3) house", "negative_prompt": "blurry", "seed": 50, "guidance_scale": 3.0},
    {"prompt": "a dog on a beach", "seed": 999, "guidance_scale": 12.0},
]
SHAPE = {"steps": 4, "width": 64, "height": 64, "scheduler": "euler"}


async def test_three_posted_jobs_share_the_unet_and_keep_their_solo_pixels(demo_cache_dir: Path) -> None:
    settings = {"model": "demo", "cache_dir": demo_cache_dir, "device": "cpu"}
    engine = DiffusersEngine(Settings(**settings))
    rows: list[int] = []
    async with running_app(engine, max_batch=3, batch_wait_ms=10_000, **settings) as app:  # type: ignore[arg-type]
        unet = engine.model.text_to_image.unet
        hook = unet.register_forward_pre_hook(lambda module, args: rows.append(int(args[0].shape[0])))
        try:
            # A full batch starts at once: the 10 s wait only lets the three posts arrive first.
            jobs = await asyncio.gather(*(app.submit(**job, **SHAPE) for job in JOBS))
            finals = [await app.wait_status(job, "completed", timeout=120.0) for job in jobs]
        finally:
            hook.remove()
        images = [Image.open(io.BytesIO((await app.client.get(f"/v1/jobs/{job}/image")).content)) for job in jobs]
        streams = [parse_sse((await app.client.get(f"/v1/jobs/{job}/stream")).text) for job in jobs]
    assert rows == [6] * 4  # one call per step for the three jobs (x2 for guidance), not three
    assert [final["status"] for final in finals] == ["completed"] * 3
    for job, image, events in zip(JOBS, images, streams, strict=True):
        assert [data["step"] for _, kind, data in events if kind == "progress"] == [1, 2, 3, 4]
        solo = engine.generate(GenerationRequest(
            job["prompt"], negative_prompt=str(job.get("negative_prompt", "")), seed=int(job["seed"]),
            guidance_scale=float(job["guidance_scale"]), num_inference_steps=4, width=64, height=64,
            scheduler="euler"))
        assert psnr(image.convert("RGB"), solo.images[0]) >= MIN_PSNR_DB
        assert np.asarray(image).shape == (64, 64, 3)
