"""Step caching through HTTP on the real engine (every backend): a FLUX.1 job with ``cache`` gives other
pixels than the same job without, and says so in its parameters and its PNG text; the job without says
nothing of a cache (never on by default). A kind the model's family cannot use, and a threshold out of
range, are 422s naming the field. The next job without a cache has the first one's pixels again."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.imaging.metadata import PNG_KEY, parse_parameters
from sdworker.settings import Settings

from .helpers import Running, running_app

JOB: dict[str, Any] = {"prompt": "a photo of a cat", "model": "demo-flux1", "width": 64, "height": 64, "seed": 7,
                       "steps": 8}


async def finished(app: Running, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    response = await app.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    status = await app.wait_status(job_id, "completed", "failed", timeout=120)
    assert status["status"] == "completed", status
    detail = (await app.client.get(f"/v1/jobs/{job_id}")).json()
    return detail, (await app.client.get(f"/v1/jobs/{job_id}/image")).content


async def test_a_cached_job_differs_and_says_so_and_wrong_kinds_are_422(demo_cache_dir: Path) -> None:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_models=2))
    async with running_app(engine, cache_dir=demo_cache_dir) as app:  # type: ignore[arg-type]
        plain, plain_png = await finished(app, JOB)
        cached, cached_png = await finished(app, {**JOB, "cache": {"kind": "first_block", "threshold": 0.3}})
        pixels = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int) for png in (plain_png, cached_png)]
        assert np.abs(pixels[0] - pixels[1]).max() > 0
        assert cached["parameters"]["cache"] == {"kind": "first_block", "threshold": 0.3}
        assert plain["parameters"]["cache"] is None
        texts = [parse_parameters(Image.open(io.BytesIO(png)).text[PNG_KEY]) for png in (plain_png, cached_png)]
        assert texts[1]["Step cache"] == "first_block 0.3" and "Step cache" not in texts[0]
        _, again_png = await finished(app, JOB)  # the cache's hooks went with its job
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(again_png)).convert("RGB"), dtype=int), pixels[0])

        for body, field, words in [
            ({**JOB, "model": "demo-sd15", "cache": {"kind": "taylorseer"}}, "cache.kind", "demo-sd15"),
            ({**JOB, "model": "demo-sd3", "cache": {"kind": "first_block"}}, "cache.kind", "taylorseer"),
            ({**JOB, "cache": {"kind": "first_block", "threshold": 0}}, "cache.threshold", "greater than 0"),
            ({**JOB, "cache": {"kind": "teacache"}}, "cache.kind", "first_block"),
        ]:
            response = await app.client.post("/v1/jobs", json=body)
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["field"] == field and words in error["message"], error
