"""At least once across a crash: a real server process (uvicorn, the SQLite store, the fake engine) is
SIGKILLed after its job ended and before the job's webhook was delivered (the receiver's first answer
was a 500); restarted on the same data folder, it delivers the completion with the same webhook-id."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sdworker.webhooks.signing import owner_secret
from tests.integrator.fake_serve import SECRET
from tests.integrator.receiver import receiving, verified
from tests.live.server import ROOT, free_port

pytestmark = pytest.mark.live


@asynccontextmanager
async def serving(data_dir: Path, log: Path) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integrator.fake_serve", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client, asyncio.timeout(60):
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


async def test_the_completion_arrives_after_a_sigkill_between_the_end_and_the_delivery(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with receiving() as receiver:
        receiver.script = [500]  # the first attempt fails: the message waits in the outbox (2 s back-off)
        async with serving(data_dir, tmp_path / "first.log") as (url, process):
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "webhook": {"url": receiver.url}}
                answer = await client.post("/v1/jobs", json=body)
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["job_id"]
            await receiver.wait_for(lambda got: len(got) == 1)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        assert len(receiver.snapshot()) == 1  # nobody else delivered it meanwhile

        async with serving(data_dir, tmp_path / "second.log") as (url, _):
            got = await receiver.wait_for(lambda got: any(r.answered == 200 for r in got))
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                secret = (await client.get("/v1/webhooks/secret")).json()["secret"]
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                [message] = (await client.get(f"/v1/jobs/{job_id}/webhooks")).json()["webhooks"]

    assert secret == owner_secret(SECRET, None)
    assert [r.answered for r in got] == [500, 200]
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == message["id"]
    payload = verified(secret, got[1])
    assert payload["type"] == "job.completed" and payload["data"]["job_id"] == job_id
    assert payload["data"]["status"] == job["status"] == "completed"
    assert message["state"] == "delivered" and message["attempts"][-1]["status"] == 200
