"""The README's webhook receiver, run as written: it verifies a real webhook of a real job (memory
store, the receiver a subprocess on a free port) and prints the completion once."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.api.helpers import running_app
from tests.live.server import ROOT, free_port

RECEIVER = re.compile(r"<!-- webhook-receiver -->\s*\n```python\n(.*?)\n```", re.S)


async def test_the_readme_receiver_verifies_and_prints_the_completion(tmp_path: Path) -> None:
    [code] = RECEIVER.findall((ROOT / "README.md").read_text())
    (tmp_path / "receiver.py").write_text(code)
    port = free_port()
    async with running_app(webhook_allow_private=True, webhook_secret=("readme-secret",)) as app:
        secret = (await app.client.get("/v1/webhooks/secret")).json()["secret"]
        env = {"SDWORKER_WEBHOOK_SECRET": secret, "PORT": str(port), "PATH": str(Path(sys.executable).parent)}
        process = subprocess.Popen([sys.executable, "receiver.py"], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            async with httpx.AsyncClient() as probe, asyncio.timeout(20):
                while True:  # until the receiver listens (a GET it does not serve answers 501)
                    try:
                        await probe.get(f"http://127.0.0.1:{port}/")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            job_id = await app.submit(webhook={"url": f"http://127.0.0.1:{port}/", "events": ["start", "completed"]})

            async def delivered() -> bool:
                found = (await app.client.get(f"/v1/jobs/{job_id}/webhooks")).json()["webhooks"]
                return len(found) == 2 and all(m["state"] == "delivered" for m in found)

            await app.wait_for(delivered, timeout=20)
            found = (await app.client.get(f"/v1/jobs/{job_id}/webhooks")).json()["webhooks"]
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=10)
    assert [a["status"] for m in found for a in m["attempts"]] == [204, 204]  # verified: not a 401
    assert f"job.start {job_id} running None" in output
    assert f"job.completed {job_id} completed /v1/jobs/{job_id}/image" in output
