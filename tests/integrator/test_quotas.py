"""Per-key settings from a TOML keys file: ``max_queued`` and ``rate`` (429 naming the quota),
``priority`` (the most a key may ask; higher starts first), re-read like the keys themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdworker.engine.fake import FakeEngine
from tests.api.helpers import Running, running_app

A, B, C = "quota-key-a-0123456789", "quota-key-b-0123456789", "quota-key-c-0123456789"
KEYS = f"""
[[keys]]
key = "{A}"
max_queued = 2

[[keys]]
key = "{B}"
rate = 3

[[keys]]
key = "{C}"
priority = 5
"""
SLOW = {"prompt": "a cat", "steps": 60, "width": 64, "height": 64, "preview": {"every": 0}}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _post(app: Running, key: str, **extra: object) -> tuple[int, dict[str, object], dict[str, str]]:
    answer = await app.client.post("/v1/jobs", json={**SLOW, **extra}, headers=_auth(key))
    return answer.status_code, answer.json(), dict(answer.headers)


async def _cancel_all(app: Running, key: str) -> None:
    for job in (await app.client.get("/v1/jobs", headers=_auth(key))).json()["jobs"]:
        await app.client.delete(f"/v1/jobs/{job['job_id']}", headers=_auth(key))


async def test_max_queued_and_rate_answer_429_naming_the_quota(backend: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS)
    async with running_app(FakeEngine(step_seconds=0.2), api_keys_file=keys_file) as app:
        status, first, _ = await _post(app, A)
        assert status == 202
        await app.wait_for(lambda: _running(app, A, str(first["job_id"])))
        assert (await _post(app, A))[0] == 202
        assert (await _post(app, A))[0] == 202  # two waiting: A's quota
        status, body, headers = await _post(app, A)
        assert status == 429 and body["error"]["code"] == "quota_exceeded", body  # type: ignore[index]
        assert body["error"]["field"] == "max_queued" and "retry-after" in headers  # type: ignore[index]

        for _ in range(3):
            assert (await _post(app, B))[0] == 202
        status, body, headers = await _post(app, B)
        assert status == 429 and body["error"]["field"] == "rate", body  # type: ignore[index]
        assert 1 <= int(headers["retry-after"]) <= 60

        # The file is re-read (SIGHUP calls the same reload): A's quota grows at once.
        keys_file.write_text(KEYS.replace("max_queued = 2", "max_queued = 3"))
        app.app.state.keys.reload()
        assert (await _post(app, A))[0] == 202
        await _cancel_all(app, A)
        await _cancel_all(app, B)


async def test_priority_is_capped_per_key_and_starts_first(backend: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS)
    async with running_app(FakeEngine(step_seconds=0.2), api_keys_file=keys_file) as app:
        status, body, _ = await _post(app, A, priority=1)
        assert status == 422 and body["error"]["field"] == "priority", body  # type: ignore[index]
        status, body, _ = await _post(app, C, priority=6)
        assert status == 422 and "at most 5" in str(body), body
        _, running, _ = await _post(app, A)
        await app.wait_for(lambda: _running(app, A, str(running["job_id"])))
        _, low, _ = await _post(app, B)
        _, high, _ = await _post(app, C, priority=5)
        view = (await app.client.get(f"/v1/jobs/{high['job_id']}", headers=_auth(C))).json()
        assert view["queue_position"] == 1  # ahead of B's older job
        await app.client.delete(f"/v1/jobs/{running['job_id']}", headers=_auth(A))
        await app.wait_for(lambda: _running(app, C, str(high["job_id"])))
        low_view = (await app.client.get(f"/v1/jobs/{low['job_id']}", headers=_auth(B))).json()
        assert low_view["status"] == "queued"
        await _cancel_all(app, B)
        await _cancel_all(app, C)


async def _running(app: Running, key: str, job_id: str) -> bool:
    view = (await app.client.get(f"/v1/jobs/{job_id}", headers=_auth(key))).json()
    return bool(view["status"] == "running")


def test_a_bad_keys_file_is_refused_naming_the_entry(tmp_path: Path) -> None:
    from sdworker.settings import KeysFileError, Settings

    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nkey = "{A}"\nrate = 0\n')
    with pytest.raises(KeysFileError, match=r"number 1: rate must be an integer in 1\.\.1000000"):
        Settings(api_keys_file=path).key_quotas()
    path.write_text(f'[[keys]]\nkey = "{A}"\nburst = 3\n')
    with pytest.raises(KeysFileError, match="unknown setting 'burst'"):
        Settings(api_keys_file=path).key_quotas()
