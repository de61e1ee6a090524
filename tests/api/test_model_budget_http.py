"""The memory budget over HTTP, with the real engine and the demo bundle: a model that cannot fit the
budget even alone is a 4xx at submit at each door (native, OpenAI, A1111), naming the model, its size
and the budget, with no job queued; ``/v1/models`` gives each model's size and ``/metrics`` the bytes
loaded."""

from __future__ import annotations

from pathlib import Path

from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings

from .helpers import running_app

BUDGET = 8 * 1024 * 1024  # demo-sd15 (the default, ~5.8 MB at float32) fits; demo-sdxl (~9.4 MB) does not


async def test_a_model_over_the_budget_is_refused_at_every_door(demo_cache_dir: Path) -> None:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_bytes=BUDGET))
    async with running_app(engine, cache_dir=demo_cache_dir, max_loaded_bytes=BUDGET) as app:  # type: ignore[arg-type]
        listed = {m["id"]: m for m in (await app.client.get("/v1/models")).json()["data"]}
        size = listed["demo-sdxl"]["size_bytes"]
        assert isinstance(size, int) and size > BUDGET
        assert 0 < listed["demo-sd15"]["size_bytes"] < BUDGET
        calls = [
            ("/v1/jobs", {"prompt": "a", "model": "demo-sdxl", "steps": 2, "width": 64, "height": 64}),
            ("/v1/images/generations", {"prompt": "a", "model": "demo-sdxl", "steps": 2, "size": "64x64"}),
            ("/sdapi/v1/txt2img", {"prompt": "a", "steps": 2, "width": 64, "height": 64,
                                   "override_settings": {"sd_model_checkpoint": "demo-sdxl"}}),
        ]
        for path, body in calls:
            response = await app.client.post(path, json=body)
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
            for needed in ("demo-sdxl", str(size), str(BUDGET)):
                assert needed in response.text, (path, response.text)
        assert (await app.client.get("/v1/jobs")).json()["jobs"] == []

        metrics = (await app.client.get("/metrics")).text
        loaded = next(float(line.split()[1]) for line in metrics.splitlines()
                      if line.startswith("sdworker_loaded_model_bytes "))
        assert 0 < loaded <= BUDGET  # the default model, loaded at start
        assert loaded == engine.loaded_bytes
