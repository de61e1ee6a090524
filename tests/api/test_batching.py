"""``--max-batch`` over HTTP: jobs queued together each keep their own stream, seed and image.

Every store runs them as one batch (``engine.generate_batch``): memory and SQLite take partners from
the local queue, a Redis worker with its PARTNERS script from the model's waiting jobs.
"""

from __future__ import annotations

import threading

from sdworker.engine.fake import FakeEngine

from .helpers import backend_name, parse_sse, running_app


async def test_jobs_queued_together_each_get_their_own_stream_and_image() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate)
    async with running_app(engine, wait_ready=False, max_batch=4, batch_wait_ms=0) as app:
        jobs = [await app.submit(prompt=f"job {i}", seed=100 + i, guidance_scale=5.0 + i) for i in range(3)]
        gate.set()
        for job in jobs:
            await app.wait_status(job, "completed")
        for index, job in enumerate(jobs):
            events = parse_sse((await app.client.get(f"/v1/jobs/{job}/stream")).text)
            kinds = [kind for _, kind, _ in events]
            assert kinds.count("complete") == 1 and kinds[-1] == "end"
            assert [data["step"] for _, kind, data in events if kind == "progress"] == [1, 2, 3], events
            complete = next(data for _, kind, data in events if kind == "complete")
            assert complete["seed"] == 100 + index
            image = await app.client.get(f"/v1/jobs/{job}/image")
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert engine.batches == [("job 0", "job 1", "job 2")], backend_name()
        assert engine.generate_calls == 3
