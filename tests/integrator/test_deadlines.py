"""Deadlines (``deadline_seconds``, the ``Cancel-After`` header) and the synchronous ``Prefer: wait=N``,
over HTTP on every store: memory, SQLite and a real redis-server (API node and worker in one app)."""

from __future__ import annotations

import pytest

from sdworker.engine.fake import FakeEngine
from tests.api.helpers import running_app

SLOW = {"prompt": "a cat", "steps": 60, "width": 64, "height": 64}  # 60 steps of 0.2 s: 12 s


async def test_a_running_job_past_its_deadline_ends_deadline_exceeded(backend: str) -> None:
    async with running_app(FakeEngine(step_seconds=0.2)) as app:
        answer = await app.client.post("/v1/jobs", json={**SLOW, "deadline_seconds": 1.5})
        job_id = answer.json()["job_id"]
        await app.wait_status(job_id, "running")
        job = await app.wait_status(job_id, "cancelled", "completed", "failed", timeout=8)
    assert job["status"] == "cancelled", job
    assert job["error"]["code"] == "deadline_exceeded"
    assert job["started_at"] is not None and job["step"] < 60  # stopped mid-run, not at the end
    assert job["deadline_at"] is not None


async def test_a_queued_job_past_its_deadline_ends_without_running(backend: str) -> None:
    async with running_app(FakeEngine(step_seconds=0.2)) as app:
        first = (await app.client.post("/v1/jobs", json=SLOW)).json()["job_id"]
        await app.wait_status(first, "running")
        answer = await app.client.post("/v1/jobs", json={**SLOW, "steps": 2}, headers={"Cancel-After": "1s"})
        queued = answer.json()["job_id"]
        job = await app.wait_status(queued, "cancelled", "completed", "failed", timeout=8)
        still = await app.status(first)
        await app.client.delete(f"/v1/jobs/{first}")
    assert job["status"] == "cancelled" and job["error"]["code"] == "deadline_exceeded", job
    assert job["started_at"] is None
    assert still["status"] == "running"  # the deadline ended the queued job while the other ran


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ({"deadline_seconds": 0}, {}, "deadline_seconds"),
        ({"deadline_seconds": 86401}, {}, "deadline_seconds"),
        ({}, {"Cancel-After": "soon"}, "Cancel-After"),
        ({}, {"Cancel-After": "0s"}, "Cancel-After"),
    ],
)
async def test_a_bad_deadline_is_refused_naming_the_field(
    backend: str, body: dict[str, object], headers: dict[str, str], field: str
) -> None:
    async with running_app() as app:
        answer = await app.client.post("/v1/jobs", json={"prompt": "a cat", **body}, headers=headers)
    assert answer.status_code == 422, answer.text
    assert field in answer.text


async def test_prefer_wait_answers_201_with_the_finished_job(backend: str) -> None:
    async with running_app() as app:
        answer = await app.client.post(
            "/v1/jobs", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64},
            headers={"Prefer": "wait=10"},
        )
    assert answer.status_code == 201, answer.text
    assert answer.headers["Preference-Applied"] == "wait=10"
    job = answer.json()
    assert job["status"] == "completed" and job["image_url"].startswith(f"/v1/jobs/{job['job_id']}/image")


async def test_prefer_wait_answers_202_when_the_job_takes_longer(backend: str) -> None:
    async with running_app(FakeEngine(step_seconds=0.2)) as app:
        answer = await app.client.post("/v1/jobs", json=SLOW, headers={"Prefer": "respond-async, wait=1"})
        await app.client.delete(f"/v1/jobs/{answer.json()['job_id']}")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] in ("queued", "running")


async def test_metrics_have_queue_and_run_seconds_per_model(backend: str) -> None:
    def counts(text: str, name: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(f"{name}_count{{")]

    async with running_app(metrics_public=True) as app:
        job_id = await app.submit()
        await app.wait_status(job_id, "completed")

        async def observed() -> bool:  # a fleet's worker observes just after it stored the result
            text = (await app.client.get("/metrics")).text
            return bool(counts(text, "sdworker_job_run_seconds"))

        await app.wait_for(observed)
        text = (await app.client.get("/metrics")).text
    for name in ("sdworker_job_queue_seconds", "sdworker_job_run_seconds"):
        [line] = counts(text, name)
        assert 'model="demo"' in line and float(line.split()[-1]) == 1.0, line  # --model's name, one job
