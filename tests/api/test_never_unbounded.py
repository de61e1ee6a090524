"""A dead generation thread, bounded results, input images dropped, a cancel that wins (both backends
where they agree; the memory backend's bounds are by count and bytes, Redis's by TTL)."""

from __future__ import annotations

import pytest

from sdworker.engine.fake import FakeEngine
from sdworker.jobs.node import EXIT_WORKER_DIED

from .helpers import backend_name, parse_sse, png_b64, running_app


async def test_a_dying_generation_thread_fails_its_job_and_asks_for_an_exit() -> None:
    async with running_app(FakeEngine(fatal_at_step=2)) as app:
        asked: list[bool] = []
        node = app.app.state.node
        node.request_exit = lambda: asked.append(True)
        job_id = await app.submit()
        if backend_name() == "memory":
            stream = await app.client.get(f"/v1/jobs/{job_id}/stream")
            error = [data for _, kind, data in parse_sse(stream.text) if kind == "error"]
            assert error and error[0]["code"] == "worker_died"
        await app.wait_for(lambda: _not_ready(app))
        await app.wait_for(lambda: _true(bool(asked)))
        # In Redis the job's lease is left to expire: the fleet retries it on another worker.
        assert node.exit_code == EXIT_WORKER_DIED and asked == [True]


async def _true(value: bool) -> bool:
    return value


async def _not_ready(app) -> bool:  # type: ignore[no-untyped-def]
    return bool((await app.client.get("/ready")).status_code == 503)


async def test_finished_jobs_are_bounded_in_count() -> None:
    if backend_name() != "memory":
        pytest.skip("Redis bounds finished jobs by TTL")
    async with running_app(max_results=2) as app:
        ids = []
        for _ in range(4):
            ids.append(await app.submit())
            await app.wait_status(ids[-1], "completed")
        assert [(await app.client.get(f"/v1/jobs/{i}")).status_code for i in ids] == [404, 404, 200, 200]
        assert (await app.client.get(f"/v1/jobs/{ids[0]}/stream")).status_code == 404
        assert len((await app.client.get("/v1/jobs")).json()["jobs"]) == 2


async def test_input_images_are_not_kept_after_the_job() -> None:
    if backend_name() != "memory":
        pytest.skip("the Redis job hash is the fleet's; it expires with the TTL")
    async with running_app() as app:
        job_id = await app.submit(operation="image_transform", init_image=png_b64(64, 64), strength=0.5, steps=4)
        await app.wait_status(job_id, "completed")
        record = app.app.state.service._store.get(job_id)
        assert record.spec.request.init_image is None and record.spec.request.mask_image is None


async def test_a_cancel_before_the_result_is_stored_wins() -> None:
    if backend_name() != "memory":
        pytest.skip("drives the memory lease directly")
    async with running_app(engine=FakeEngine(), wait_ready=True) as app:
        service = app.app.state.service
        await app.app.state.node.runner.stop(0.1)  # nobody else claims
        job_id = await app.submit()
        [lease] = await service.claim(None)
        assert (await app.client.delete(f"/v1/jobs/{job_id}")).status_code == 202
        assert await lease.complete((b"png",), (1,), 64, 64) is False
        assert (await app.status(job_id))["status"] == "cancelled"
