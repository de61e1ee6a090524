"""Fair share between API keys: round-robin by owner among queued jobs, over HTTP."""

from __future__ import annotations

import asyncio

from sdworker.engine.fake import FakeEngine
from tests.api.helpers import running_app

KEY_A, KEY_B = "fair-share-key-a-0123456789", "fair-share-key-b-0123456789"
JOB = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "preview": {"every": 0}}


async def test_a_later_tenant_is_not_starved_by_an_earlier_ones_backlog(backend: str) -> None:
    # Jobs of half a second: all ten are queued long before the third of them could start.
    async with running_app(FakeEngine(step_seconds=0.25), api_keys=(KEY_A, KEY_B)) as app:

        async def submit(key: str) -> str:
            answer = await app.client.post("/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 202, answer.text
            return str(answer.json()["job_id"])

        a_jobs = [await submit(KEY_A) for _ in range(8)]
        b_jobs = [await submit(KEY_B) for _ in range(2)]
        positions = {}
        for key, job_id in ((KEY_B, b_jobs[0]), (KEY_A, a_jobs[2])):
            view = (await app.client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})).json()
            positions[job_id] = view["queue_position"]
        started = {}
        async with asyncio.timeout(30):
            for key, ids in ((KEY_A, a_jobs), (KEY_B, b_jobs)):
                for job_id in ids:
                    while True:
                        view = (await app.client.get(f"/v1/jobs/{job_id}",
                                                     headers={"Authorization": f"Bearer {key}"})).json()
                        if view["status"] == "completed":
                            started[job_id] = view["started_at"]
                            break
                        await asyncio.sleep(0.05)
    assert started[b_jobs[0]] < started[a_jobs[2]], started  # ISO 8601 times compare as strings
    assert started[b_jobs[1]] < started[a_jobs[4]], started
    # What a watcher was told agreed with what happened (if A's first had not started yet, B's first
    # was at most second; either way ahead of A's third).
    assert positions[b_jobs[0]] < positions[a_jobs[2]], positions
