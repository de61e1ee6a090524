"""Filesystem outputs behind signed URLs (the SQLite store, the real app over HTTP): the job view's, and
the webhook's, image URLs open the PNG without a key until the job's retention ends (``expires_at``),
then answer 403 with a JSON error; revoking the key that minted them (the keys file rewritten and
reloaded, as SIGHUP does) makes them 403 at once, while another key's URLs still open."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.api import helpers
from tests.api.helpers import running_app
from tests.integrator.receiver import receiving

KEY_A = "signed-url-key-a-0123456789"
KEY_B = "signed-url-key-b-0123456789"
TTL = 3.0
JOB = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1}


@pytest.fixture
def sqlite_backend() -> Iterator[None]:
    helpers.BACKEND.update(name="sqlite", url=None)
    try:
        yield
    finally:
        helpers.BACKEND.update(name="memory", url=None)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _finished(app: helpers.Running, key: str, **extra: Any) -> dict[str, Any]:
    answer = await app.client.post("/v1/jobs", json={**JOB, **extra}, headers=_bearer(key))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    async with asyncio.timeout(10):
        while (job := (await app.client.get(f"/v1/jobs/{job_id}", headers=_bearer(key))).json())["status"] \
                != "completed":
            await asyncio.sleep(0.02)
    return dict(job)


async def test_signed_urls_answer_403_after_revocation_and_after_expiry(sqlite_backend: None, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{KEY_A}\n{KEY_B}\n")
    with receiving() as receiver:
        async with running_app(api_keys_file=keys_file, signing_secret="signed-url-test-secret-0123",
                               result_ttl_seconds=TTL, webhook_allow_private=True) as app:
            c = app.client
            job_a = await _finished(app, KEY_A, webhook={"url": receiver.url})
            job_b = await _finished(app, KEY_B)
            assert _timestamp(job_a["expires_at"]) == pytest.approx(_timestamp(job_a["finished_at"]) + TTL, abs=0.01)
            for job in (job_a, job_b):
                assert "token=" in job["images"][0]
                assert (await c.get(job["images"][0])).content.startswith(b"\x89PNG")  # no key: the token
            # The webhook's body has URLs signed for the owner's key: they open the image too.
            got = await receiver.wait_for(lambda got: len(got) == 1)
            hooked = json.loads(got[0].body)["data"]["images"][0]
            assert "token=" in hooked and (await c.get(hooked)).status_code == 200

            keys_file.write_text(f"{KEY_B}\n")  # KEY_A revoked
            app.app.state.keys.reload()  # what SIGHUP runs
            for url in (job_a["images"][0], job_a["image_url"], job_a["sse_url"], hooked):
                refused = await c.get(url)
                assert refused.status_code == 403, url
                assert refused.json()["error"]["code"] == "forbidden"
                assert "revoked" in refused.json()["error"]["message"]
            assert (await c.get(job_b["images"][0])).status_code == 200  # another key's URLs still open

            await asyncio.sleep(max(0.0, _timestamp(job_b["expires_at"]) - time.time()) + 1.1)
            expired = await c.get(job_b["images"][0])
            assert expired.status_code == 403
            assert expired.json()["error"]["code"] == "forbidden" and "expired" in expired.json()["error"]["message"]
