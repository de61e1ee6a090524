"""Real ``sdworker serve`` processes on one ``--data-dir`` (the SQLite store, the default), with an API
key: SIGKILL with one job running and three queued, restart, and everything resumes."""

from __future__ import annotations

import asyncio
import io
import signal
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.fleet.procs import Proc, wait_until
from tests.fleet.stream import Watcher, watch
from tests.live.server import free_port

pytestmark = pytest.mark.live

KEY = "restart-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 160  # demo steps of the job that is killed mid-run (tens of ms each on one CPU thread)
SHORT = 4


class Serve(Proc):
    def __init__(self, data_dir: Path, *, cache_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            ["serve", "--model", "demo", "--port", str(self.port), "--data-dir", str(data_dir), "--api-key", KEY,
             "--store", "sqlite",
             "--max-steps", "3000", "--preview-min-interval-ms", "0", "--shutdown-grace-seconds", "1"],
            cache_dir=cache_dir, log_path=log_path,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            try:
                return httpx.get(self.url + "/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, self.log, self)


async def _submit(client: httpx.AsyncClient, base: str, steps: int, seed: int) -> dict[str, object]:
    body = {"prompt": "a lighthouse", "steps": steps, "seed": seed, "width": 64, "height": 64,
            "preview": {"every": 0}}
    response = await client.post(f"{base}/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def _job(client: httpx.AsyncClient, base: str, job_id: str) -> dict[str, object]:
    response = await client.get(f"{base}/v1/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _until_finished(client: httpx.AsyncClient, base: str, job_ids: list[str]) -> list[dict[str, object]]:
    async with asyncio.timeout(300):
        while True:
            jobs = [await _job(client, base, job_id) for job_id in job_ids]
            if all(j["status"] in ("completed", "failed", "cancelled") for j in jobs):
                return jobs
            await asyncio.sleep(0.2)


def _pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


async def test_sigkill_mid_job_then_restart_resumes_every_job_and_stream(
    demo_cache_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = Serve(data_dir, cache_dir=demo_cache_dir, log_path=tmp_path / "first.log")
    try:
        first.wait_ready()
        async with httpx.AsyncClient(timeout=30) as client:
            running = await _submit(client, first.url, LONG, seed=5)
            job_id = str(running["job_id"])
            queued = [str((await _submit(client, first.url, SHORT, seed=20 + n))["job_id"]) for n in range(3)]
            # A watcher reads until the killed job has made some steps (its URL is signed: no key sent).
            before = await watch(client, first.url + str(running["sse_url"]), Watcher(), stop_after=6)
            assert before.names()[:2] == ["queued", "started"] and "progress" in before.names()
            for other in queued:
                assert (await _job(client, first.url, other))["status"] == "queued"
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
    finally:
        first.kill()
    last_id = before.ids()[-1]

    second = Serve(data_dir, cache_dir=demo_cache_dir, log_path=tmp_path / "second.log")
    try:
        second.wait_ready()
        async with httpx.AsyncClient(timeout=30) as client:
            # The URL signed before the restart still opens the stream; it resumes after last_id.
            after = await watch(client, second.url + str(running["sse_url"]), Watcher(), last_event_id=last_id)
            jobs = await _until_finished(client, second.url, [job_id, *queued])
            assert [j["status"] for j in jobs] == ["completed"] * 4, jobs
            # Queued jobs ran in their order, after the retried one.
            starts = [str(j["started_at"]) for j in jobs]
            assert starts == sorted(starts)
            assert jobs[0]["attempt"] == 2
            ids = after.ids()
            assert ids == sorted(set(ids)) and ids[0] == last_id + 1, ids  # nothing twice, nothing missed
            names = after.names()
            retry = names.index("retrying")
            assert after.events[retry].data["reason"] == "restarted"
            assert names[retry + 1] == "started" and after.events[retry + 1].data["attempt"] == 2
            assert names[-2:] == ["complete", "end"]
            assert set(names[:retry]) <= {"progress", "preview"}  # the first attempt's steps we had not read
            # Exactly the pixels of an undisturbed run with the same seed.
            killed = (await client.get(f"{second.url}/v1/jobs/{job_id}/image", headers=AUTH)).content
            fresh = await _submit(client, second.url, LONG, seed=5)
            await _until_finished(client, second.url, [str(fresh["job_id"])])
            undisturbed = (await client.get(f"{second.url}/v1/jobs/{fresh['job_id']}/image", headers=AUTH)).content
            assert _pixels(killed) == _pixels(undisturbed)
            image_urls = [str(j["image_url"]) for j in jobs]
            images = [(await client.get(second.url + url)).content for url in image_urls]  # signed, no key
        # One serve per data folder: a second start on it exits 2.
        third = Serve(data_dir, cache_dir=demo_cache_dir, log_path=tmp_path / "refused.log")
        assert third.process.wait(60) == 2, third.log()
        third.kill()
        assert second.stop() == 0
    finally:
        second.kill()

    again = Serve(data_dir, cache_dir=demo_cache_dir, log_path=tmp_path / "again.log")
    try:
        again.wait_ready()
        async with httpx.AsyncClient(timeout=30) as client:
            for url, png in zip(image_urls, images, strict=True):
                response = await client.get(again.url + url)  # signed before this restart
                assert response.status_code == 200 and response.content == png
            listed = (await client.get(f"{again.url}/v1/jobs", headers=AUTH)).json()
            assert [j["job_id"] for j in listed["jobs"]][-4:] == list(reversed([job_id, *queued]))
    finally:
        again.stop()
    outputs = sorted((data_dir / "outputs").glob("*/*.png"))
    assert len(outputs) == 5
    for path in outputs:
        assert "Steps: " in Image.open(path).info["parameters"]
    assert (data_dir / "secret").stat().st_mode & 0o777 == 0o600
