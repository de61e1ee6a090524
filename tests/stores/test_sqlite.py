"""The SQLite store's own promises, on real files: one serve per folder, schema versions, the secret,
and a restart (the service reopened on the same folder) that resumes every job."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sdworker.cli import main
from sdworker.errors import InvalidSettings
from sdworker.events.types import JobRetrying, JobStarted, StepProgressed
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.service import LocalJobService
from sdworker.jobs.state import JobStatus
from sdworker.settings import Settings
from sdworker.stores.sqlite import SCHEMA_VERSION, SqliteStore, signing_secret
from tests.stores.test_conformance import draft, png


def test_one_store_per_folder_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    with pytest.raises(InvalidSettings, match="another sdworker serve"):
        SqliteStore(tmp_path)
    store.close()
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(InvalidSettings, match="newer sdworker"):
        SqliteStore(tmp_path)
    SqliteStore(tmp_path / "other").close()  # the refusal released the folder's lock too


def test_the_signing_secret_is_made_once_and_readable_by_us_alone(tmp_path: Path) -> None:
    first = signing_secret(tmp_path)
    assert signing_secret(tmp_path) == first and len(first) >= 32
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_store_memory_and_redis_together_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--store", "memory", "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert "store" in capsys.readouterr().err


def service(folder: Path, **overrides: object) -> LocalJobService:
    return LocalJobService(Settings(model="fake", **overrides), ServiceMetrics(), store=SqliteStore(folder))


async def test_a_restart_resumes_queued_jobs_in_order_and_retries_the_running_one(tmp_path: Path) -> None:
    before = service(tmp_path)
    running, *queued = [(await before.submit(draft(seed=n))).job_id for n in range(3)]
    [lease] = await before.claim(None, wait_seconds=1)
    assert lease.spec.job_id == running
    lease.publish(StepProgressed(job_id=running, step=1, total=2))
    last = before.bus.last_seq(running)
    before.store.close()  # the process dies: nothing else is written

    after = service(tmp_path)
    view = await after.get(running)
    assert view.status is JobStatus.QUEUED and view.attempt == 1
    replay = after.bus.subscribe(running, last)
    retry = await replay.next(1)
    assert isinstance(retry, JobRetrying) and retry.reason == "restarted" and retry.attempt == 2
    assert retry.seq == last + 1
    order = []
    for _ in range(3):
        [lease] = await after.claim(None, wait_seconds=1)
        order.append(lease.spec.job_id)
        assert await lease.complete((png(),), (lease.spec.request.seed or 0,), 64, 64)
    assert order == [running, *queued]
    started = await replay.next(1)
    assert isinstance(started, JobStarted) and started.attempt == 2
    await after.close()

    again = service(tmp_path)
    for job_id in order:
        assert (await again.get(job_id)).status is JobStatus.COMPLETED
        assert await again.image(job_id) == png()
    stream = await again.open_stream(running, 0)
    assert stream is not None and stream.pending > 0  # a finished job's events come back from the file
    await again.close()


async def test_a_job_killed_mid_run_max_attempts_times_fails(tmp_path: Path) -> None:
    for _ in range(2):
        current = service(tmp_path, max_attempts=2)
        if not await current.list_jobs():
            await current.submit(draft())
        assert len(await current.claim(None, wait_seconds=1)) == 1  # running when the process dies
        current.store.close()
    last = service(tmp_path, max_attempts=2)
    [view] = await last.list_jobs()
    assert view.status is JobStatus.FAILED and view.error_code == "worker_lost"
    await last.close()
