"""One claim order in every store: memory, a real SQLite file and a real redis-server start the jobs of
one mixed sequence (owners, priorities, a hand-back, a batch) in the same order, and the queue
positions they show before each claim are that order. The rule (jobs/queue.py, stores/redis/fair.py):
handed-back jobs first, then each priority highest first, round-robin by owner (the owner whose last
job started least recently; never started first, those by their oldest job), each owner oldest first."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest

from sdworker.events.types import JobQueued
from sdworker.jobs.protocol import JobService, Lease
from sdworker.settings import KeyQuota
from tests.stores.test_conformance import GUARD_SECONDS, STORES, Stores, draft, open_stores


class Sequence:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.ids: dict[str, str] = {}  # name -> job id
        self.names: dict[str, str] = {}
        self.started: list[str] = []

    async def submit(self, name: str, owner: str | None, priority: int = 0) -> None:
        job = dataclasses.replace(draft(f"job {name}"), priority=priority)
        view = await self.stores.service.submit(job, owner=owner)
        self.ids[name], self.names[view.job_id] = view.job_id, name

    async def order_shown(self) -> list[str]:
        """The queued jobs by the position each one's view shows (1 = next)."""
        service: JobService = self.stores.service
        shown = {}
        for name, job_id in self.ids.items():
            view = await service.get(job_id)
            if view.queue_position is not None:
                shown[view.queue_position] = name
        assert sorted(shown) == list(range(1, len(shown) + 1)), shown  # no two jobs share a place
        return [shown[p] for p in sorted(shown)]

    async def claim(self, limit: int = 1) -> list[Lease]:
        async with asyncio.timeout(GUARD_SECONDS):
            while not (leases := await self.stores.source.claim(self.stores.models, limit=limit, wait_seconds=0.2)):
                pass
        self.started += [self.names[lease.spec.job_id] for lease in leases]
        return leases


@pytest.mark.parametrize("store", STORES)
async def test_every_store_starts_one_mixed_sequence_in_the_same_order(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_stores(store, request, tmp_path) as stores:
        stores.service.use_quotas(lambda owner: KeyQuota(priority=5))
        seq = Sequence(stores)
        for name, owner in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("n1", None)):
            await seq.submit(name, owner)
        await seq.submit("c1", "c", priority=2)
        await seq.submit("a4", "a", priority=2)
        await seq.submit("b2", "b")
        expected = ["c1", "a4", "a1", "b1", "n1", "a2", "b2", "a3"]
        assert await seq.order_shown() == expected
        leases = [*await seq.claim(), *await seq.claim()]
        assert seq.started == ["c1", "a4"]
        # a has started a job now: b and the anonymous owner (never started) go first
        assert await seq.order_shown() == ["b1", "n1", "a1", "b2", "a2", "a3"]
        await seq.submit("d1", "d")
        await seq.submit("c2", "c")
        assert await seq.order_shown() == ["b1", "n1", "d1", "c2", "a1", "b2", "a2", "a3"]
        [handed_back] = await seq.claim()
        await handed_back.release()  # b1 goes first again
        assert await seq.order_shown() == ["b1", "n1", "d1", "c2", "a1", "b2", "a2", "a3"]
        leases += await seq.claim(limit=2)  # a batch: its partner is the next in the order
        assert await seq.order_shown() == ["d1", "c2", "a1", "b2", "a2", "a3"]
        while len(seq.started) < 11:
            leases += await seq.claim()
        assert seq.started == ["c1", "a4", "b1", "b1", "n1", "d1", "c2", "a1", "b2", "a2", "a3"]
        for lease in leases:
            await lease.fail("cancelled", "done", cancelled=True)


@pytest.mark.parametrize("store", STORES)
async def test_a_job_that_goes_ahead_tells_the_watched_ones_behind_it(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_stores(store, request, tmp_path) as stores:
        stores.service.use_quotas(lambda owner: KeyQuota(priority=5))
        seq = Sequence(stores)
        await seq.submit("a1", "a")
        await seq.submit("a2", "a")
        sub = await stores.service.open_stream(seq.ids["a2"], 0)
        assert sub is not None

        async def next_position() -> int:
            async with asyncio.timeout(GUARD_SECONDS):
                while not isinstance(event := await sub.next(timeout=GUARD_SECONDS), JobQueued):
                    pass
            return event.position

        assert await next_position() == 2
        await seq.submit("b1", "b")  # b's first turn comes before a's second job
        assert await next_position() == 3
        await seq.submit("c1", "c", priority=5)
        assert await next_position() == 4
        await seq.submit("a3", "a")  # behind a2: no move
        assert await seq.order_shown() == ["c1", "a1", "b1", "a2", "a3"]
        leases = await seq.claim()
        assert await next_position() == 3
        sub.close()
        for lease in leases:
            await lease.fail("cancelled", "done", cancelled=True)


async def test_redis_shows_and_claims_a_random_sequence_as_the_memory_store_does(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Seeded random submits (5 owners, 3 priorities) and claims: after every step the positions Redis
    shows and the job it starts are the memory store's."""
    chooser = random.Random(24)
    steps = [("claim", None, 0) if chooser.random() < 0.4 else
             ("submit", chooser.choice(["a", "b", "c", "d", None]), chooser.choice([0, 0, 1, 3]))
             for _ in range(60)]
    async with open_stores("memory", request, tmp_path) as memory, open_stores("redis", request, tmp_path) as fleet:
        runs = [Sequence(memory), Sequence(fleet)]
        leases: list[Lease] = []
        for index, (kind, owner, priority) in enumerate(steps):
            for run in runs:
                run.stores.service.use_quotas(lambda owner: KeyQuota(priority=5))
                if kind == "submit":
                    await run.submit(f"j{index}", owner, priority)
                elif await run.order_shown():
                    leases += await run.claim()
            shown = [await run.order_shown() for run in runs]
            assert shown[0] == shown[1] and runs[0].started == runs[1].started, (index, shown, runs[0].started,
                                                                                 runs[1].started)
        assert len(runs[0].started) >= 10 and len(shown[0]) >= 10  # the sequence did claim and queue
        for lease in leases:
            await lease.fail("cancelled", "done", cancelled=True)
