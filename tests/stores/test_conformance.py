"""One conformance suite for every store: the job's transitions, rules and races, run through the two
protocols every store serves (``JobService`` for the API side, ``JobSource``/``Lease`` for the GPU
side) against the memory store, a real SQLite file and a real redis-server. No HTTP, no engine: each
test plays the runner by hand, so a race is placed exactly where the rule must hold."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdworker.domain.request import GenerationRequest, InputImage
from sdworker.engine.fake import FakeEngine
from sdworker.errors import JobNotFound, QueueFull
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.protocol import JobService, JobSource, Lease
from sdworker.jobs.service import LocalJobService
from sdworker.jobs.spec import JobDraft
from sdworker.jobs.state import JobStatus, JobView
from sdworker.settings import Settings
from sdworker.stores.memory import MemoryStore
from sdworker.stores.redis.service import RedisJobService
from sdworker.stores.redis.source import RedisJobSource
from sdworker.stores.sqlite import SqliteStore
from tests.redis_server import RedisServer

GUARD_SECONDS = 20.0  # a hang guard only
STORES = ["memory", "sqlite", "redis"]


def png(color: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (color, 0, 0)).save(out, "PNG")
    return out.getvalue()


def draft(prompt: str = "a cat", **fields: Any) -> JobDraft:
    return JobDraft(GenerationRequest(prompt, **{"num_inference_steps": 2, "width": 64, "height": 64, "seed": 3,
                                                 **fields}))


@dataclass
class Stores:
    name: str
    service: JobService
    source: JobSource

    async def claim_one(self) -> Lease:
        async with asyncio.timeout(GUARD_SECONDS):
            while True:
                leases = await self.source.claim(self.models, wait_seconds=0.2)
                if leases:
                    assert len(leases) == 1
                    return leases[0]

    @property
    def models(self) -> tuple[str, ...] | None:
        return None if self.name != "redis" else (FakeEngine().model,)

    async def status(self, job_id: str) -> JobStatus:
        return (await self.service.get(job_id)).status

    async def until(self, job_id: str, *statuses: JobStatus) -> JobView:
        async with asyncio.timeout(GUARD_SECONDS):
            while (view := await self.service.get(job_id)).status not in statuses:
                await asyncio.sleep(0.01)
        return view


async def _eventually(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    async with asyncio.timeout(GUARD_SECONDS):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.01)


@asynccontextmanager
async def open_stores(name: str, request: pytest.FixtureRequest, tmp_path: Path, **overrides: Any
                      ) -> AsyncIterator[Stores]:
    base: dict[str, Any] = {"model": FakeEngine().model, **overrides}
    metrics = ServiceMetrics()
    service: JobService
    source: JobSource
    if name == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        settings = Settings(**base, redis_url=server.url, redis_prefix=f"c{uuid.uuid4().hex[:10]}",
                            lease_heartbeat_seconds=0.5, claim_idle_seconds=3.0)
        redis_service = RedisJobService(settings, metrics)
        redis_source = RedisJobSource(settings, metrics=metrics)
        service, source = redis_service, redis_source
        await service.start()
        await source.set_engine(FakeEngine().info, state="ready")
        await _eventually(lambda: _has_worker(redis_service))
    else:
        settings = Settings(**base)
        store = SqliteStore(tmp_path / "data") if name == "sqlite" else MemoryStore()
        local = LocalJobService(settings, metrics, store=store)
        service, source = local, local
        await service.start()
        await source.set_engine(FakeEngine().info, state="ready")
    try:
        yield Stores(name, service, source)
    finally:
        source.stop_claiming()
        if source is not service:
            await source.close()
        await service.close()


async def _has_worker(service: RedisJobService) -> bool:
    return bool((await service.fleet(fresh=True)).workers)


@pytest.fixture(params=STORES)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    async with open_stores(request.param, request, tmp_path) as opened:
        yield opened


async def test_a_job_runs_from_queued_to_completed_with_its_image(stores: Stores) -> None:
    view = await stores.service.submit(draft())
    assert view.status is JobStatus.QUEUED
    lease = await stores.claim_one()
    assert lease.spec.job_id == view.job_id and lease.attempt == 1
    await stores.until(view.job_id, JobStatus.RUNNING)
    assert await lease.complete((png(1),), (3,), 64, 64)
    done = await stores.until(view.job_id, JobStatus.COMPLETED)
    assert done.seeds == (3,) and done.image_count == 1
    assert await stores.service.image(view.job_id) == png(1)


async def test_a_cancel_before_the_result_is_stored_wins(stores: Stores) -> None:
    job_id = (await stores.service.submit(draft())).job_id
    lease = await stores.claim_one()
    await stores.until(job_id, JobStatus.RUNNING)
    assert (await stores.service.cancel(job_id)).status is JobStatus.CANCELLING
    await _eventually(lambda: lease.control.cancelled)
    assert not await lease.complete((png(),), (3,), 64, 64)
    assert (await stores.until(job_id, JobStatus.CANCELLED, JobStatus.COMPLETED)).status is JobStatus.CANCELLED


async def test_an_interrupt_completes_with_the_image_so_far(stores: Stores) -> None:
    job_id = (await stores.service.submit(draft())).job_id
    lease = await stores.claim_one()
    await stores.until(job_id, JobStatus.RUNNING)
    await stores.service.interrupt(job_id)
    await _eventually(lambda: lease.control.interrupted)
    assert await lease.complete((png(2),), (3,), 64, 64)
    assert (await stores.until(job_id, JobStatus.COMPLETED)).image_count == 1


async def test_a_cancelling_job_handed_back_is_cancelled_not_left_without_an_owner(stores: Stores) -> None:
    job_id = (await stores.service.submit(draft())).job_id
    lease = await stores.claim_one()
    await stores.until(job_id, JobStatus.RUNNING)
    await stores.service.cancel(job_id)
    await _eventually(lambda: lease.control.cancelled)
    await lease.release()  # SIGTERM's hand-back
    assert (await stores.until(job_id, JobStatus.CANCELLED, JobStatus.QUEUED)).status is JobStatus.CANCELLED


async def test_a_finished_job_loses_its_input_images(stores: Stores) -> None:
    init = InputImage(base64.b64encode(png(9)).decode())
    job_id = (await stores.service.submit(draft(init_image=init, strength=0.5))).job_id
    assert (await stores.service.get(job_id)).spec.request.init_image is not None
    lease = await stores.claim_one()
    assert lease.spec.request.init_image is not None
    assert await lease.complete((png(),), (3,), 64, 64)
    done = await stores.until(job_id, JobStatus.COMPLETED)
    assert done.spec.request.init_image is None


async def test_one_idempotency_key_makes_one_job_under_concurrent_submits(stores: Stores) -> None:
    views = await asyncio.gather(*(stores.service.submit(draft(), idempotency_key="same") for _ in range(6)))
    assert len({view.job_id for view in views}) == 1
    assert len(await stores.service.list_jobs()) == 1


@pytest.mark.parametrize("store_name", STORES)
async def test_max_queue_holds_under_concurrent_submits(
    store_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_stores(store_name, request, tmp_path, max_queue=2) as stores:
        answers = await asyncio.gather(*(stores.service.submit(draft()) for _ in range(8)), return_exceptions=True)
        accepted = [a for a in answers if isinstance(a, JobView)]
        refused = [a for a in answers if isinstance(a, QueueFull)]
        assert (len(accepted), len(refused)) == (2, 6), answers


async def test_a_cancel_that_lands_between_the_claim_and_the_start_wins(stores: Stores) -> None:
    job_id = (await stores.service.submit(draft())).job_id
    claim = asyncio.ensure_future(stores.source.claim(stores.models, wait_seconds=1.0))
    # Let the claim take the job off the queue, then cancel before the claim returns its lease.
    queue = getattr(stores.service, "_queue", None)
    for _ in range(100):
        await asyncio.sleep(0)
        if queue is None or len(queue) == 0 or claim.done():
            break
    answer = await stores.service.cancel(job_id)
    leases = await claim
    final = await stores.until(job_id, JobStatus.CANCELLED, JobStatus.COMPLETED, JobStatus.FAILED) \
        if answer.status is not JobStatus.CANCELLING else None
    if answer.status is JobStatus.CANCELLED:
        assert all(lease.spec.job_id != job_id or lease.lost for lease in leases)
        assert final is not None and final.status is JobStatus.CANCELLED
    else:  # the claim won the race: the running job was asked to stop
        assert answer.status is JobStatus.CANCELLING, answer.status
        await _eventually(lambda: bool(leases) and leases[0].control.cancelled)


async def test_results_are_bounded_and_every_index_is_trimmed_with_them(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for name in STORES:
        async with open_stores(name, request, tmp_path / name, max_results=2) as stores:
            ids = []
            for n in range(3):
                job_id = (await stores.service.submit(draft(seed=n), idempotency_key=f"key{n}")).job_id
                lease = await stores.claim_one()
                assert await lease.complete((png(n),), (n,), 64, 64)
                await stores.until(job_id, JobStatus.COMPLETED)
                ids.append(job_id)
            first = ids[0]
            await _eventually(lambda s=stores, j=first: _gone(s.service, j))  # type: ignore[misc]
            with pytest.raises(JobNotFound):
                await stores.service.open_stream(ids[0])
            again = await stores.service.submit(draft(seed=0), idempotency_key="key0")
            assert again.job_id != ids[0], name  # the key went with its job
            assert [v.job_id for v in await stores.service.list_jobs()][1:] == [ids[2], ids[1]], name
            if name == "sqlite":
                store = stores.service.store  # type: ignore[attr-defined]
                assert len(list((store.data_dir / "outputs").glob("*/*.png"))) == 2
                rows = store._db.execute("SELECT count(*) FROM events WHERE job_id = ?", (ids[0],)).fetchone()
                assert rows == (0,)


async def _gone(service: JobService, job_id: str) -> bool:
    try:
        await service.get(job_id)
    except JobNotFound:
        return True
    return False


async def test_a_call_waiting_for_the_outcome_is_not_a_watcher(stores: Stores) -> None:
    """The OpenAI and A1111 doors wait for the image; only a stream sees previews, so only a stream
    makes the worker decode them."""
    job_id = (await stores.service.submit(draft())).job_id
    lease = await stores.claim_one()
    waiting = asyncio.ensure_future(stores.service.wait(job_id))
    sub = await stores.service.open_stream(job_id)
    assert sub is not None
    await _eventually(lambda: lease.watchers() == 1)
    sub.close()
    await _eventually(lambda: lease.watchers() == 0)
    assert not waiting.done()
    assert await lease.complete((png(),), (3,), 64, 64)
    assert (await asyncio.wait_for(waiting, GUARD_SECONDS)).status is JobStatus.COMPLETED
