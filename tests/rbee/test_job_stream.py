"""rbee's orchestrator as a client of the real app (FakeEngine): its job client reads our streams and
gets success, the error message or "cancelled"; its bookkeeping fields are accepted, ``model`` picks
the worker's model, and a job for another ``worker_id`` is refused before it is queued."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from api.helpers import parse_sse, running_app

from sdworker.engine.fake import FakeEngine

from .rbee_client import RbeeJobError, stream_job_results

# What rbee's queen sends for a text-to-image job (operations-contract), at toy size.
RBEE_JOB: dict[str, Any] = {
    "operation": "image_generation",
    "hive_id": "localhost",
    "worker_id": "w1",
    "model": "demo",
    "prompt": "a red cube",
    "negative_prompt": "",
    "steps": 3,
    "guidance_scale": 7.5,
    "seed": 42,
    "width": 64,
    "height": 64,
    "loras": [],
}


async def submit(app: Any, **changes: Any) -> str:
    response = await app.client.post("/v1/jobs", json={**RBEE_JOB, **changes})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def test_a_completed_job_is_a_success_to_rbees_client() -> None:
    async with running_app(worker_id="w1", model="demo") as app:
        job_id = await submit(app)
        lines: list[str] = []
        await stream_job_results(app.client, job_id, lines.append)  # returns: rbee's Ok(())
        # rbee's handler sees every line: ... `{"type":"complete",...}`, `id: N`, `event: end`, `[DONE]`.
        assert lines[-3:-1] == [f"id: {int(lines[-3][4:])}", "event: end"] and lines[-1] == "[DONE]"
        assert json.loads(lines[-4])["type"] == "complete"
        status = await app.status(job_id)
        assert status["status"] == "completed"
        # `model` named the worker's --model: it ran on it; the bookkeeping fields are kept.
        assert {k: status["parameters"][k] for k in ("model", "hive_id", "worker_id")} == {
            "model": "demo", "hive_id": "localhost", "worker_id": "w1"
        }


async def test_a_failed_job_gives_rbees_client_the_error_message() -> None:
    async with running_app(FakeEngine(fail_at_step=2), worker_id="w1") as app:
        job_id = await submit(app)
        with pytest.raises(RbeeJobError) as failed:
            await stream_job_results(app.client, job_id, lambda line: None)
        message = (await app.status(job_id))["error"]["message"]
        assert str(failed.value) == f"Job failed: {message}" and message


async def test_a_cancelled_job_is_cancelled_to_rbees_client() -> None:
    gate = threading.Event()
    async with running_app(FakeEngine(load_gate=gate, step_seconds=0.02), wait_ready=False) as app:
        running = await submit(app, steps=150)
        queued = await submit(app)
        reader = asyncio.create_task(stream_job_results(app.client, running, lambda line: None))
        gate.set()
        await app.wait_status(running, "running")
        await app.client.delete(f"/v1/jobs/{running}")
        await app.client.delete(f"/v1/jobs/{queued}")
        for outcome in (reader, stream_job_results(app.client, queued, lambda line: None)):
            with pytest.raises(RbeeJobError, match=r"^Job was cancelled$"):
                await asyncio.wait_for(outcome, 10)


async def test_a_message_over_several_lines_stays_one_marker_line() -> None:
    async with running_app(FakeEngine(fail_at_step=1)) as app:
        job_id = await submit(app)
        await app.wait_status(job_id, "failed")
        events = parse_sse((await app.client.get(f"/v1/jobs/{job_id}/stream")).text)
        (_, name, error), (end_id, end, marker) = events[-2:]
        assert name == "error" and end == "end" and end_id == events[-2][0] + 1
        assert marker == "[ERROR] " + " ".join(error["message"].split())


async def test_a_job_for_another_worker_is_refused_and_not_run() -> None:
    async with running_app(worker_id="w1") as app:
        refused = await app.client.post("/v1/jobs", json={**RBEE_JOB, "worker_id": "w2"})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "wrong_worker" and error["field"] == "worker_id"
        assert "w1" in error["message"] and "w2" in error["message"]
        assert (await app.client.get("/v1/jobs")).json()["jobs"] == []
        without = {k: v for k, v in RBEE_JOB.items() if k != "worker_id"}
        assert (await app.client.post("/v1/jobs", json=without)).status_code == 202


async def test_without_a_worker_id_the_field_is_only_bookkeeping() -> None:
    async with running_app() as app:  # e.g. an API node of a fleet: no --worker-id
        job_id = await submit(app, worker_id="anyone")
        assert (await app.wait_status(job_id, "completed"))["parameters"]["worker_id"] == "anyone"
        other = await app.client.post("/v1/jobs", json={**RBEE_JOB, "model": "not-served"})
        assert other.status_code == 404 and other.json()["error"]["field"] == "model"
