"""The bounded job queue. Lives on the event loop: the API side reserves and puts, the runner's
dispatch task gets; no thread touches it.

A slot is reserved before the service decodes a request's images (so a full queue answers 429 at
once, without decoding megabytes of base64) and released if decoding fails.

Priorities and fair share: the next job is one of the highest ``priority`` queued; among those, the
oldest queued job of the owner (API key) whose last job started least recently, so one tenant's 500
queued jobs do not starve another's one (round-robin by owner, as InvokeAI's default). An owner that
has never started a job comes first, owners tie by their oldest job. A job handed back by its runner
goes before all of them. ``position``, ``job_ids`` and ``specs`` (the runner's batch partners) all
follow this one order, so what a watcher is told is what happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol

from sdworker.errors import QueueFull
from sdworker.jobs.spec import JobSpec


class Reservation:
    """A claim on one queue slot; used once, by ``put`` or ``release``."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = False


class JobQueueProtocol(Protocol):
    def reserve(self) -> Reservation: ...
    def release(self, reservation: Reservation) -> None: ...
    def put(self, reservation: Reservation, spec: JobSpec) -> int: ...
    def put_front(self, spec: JobSpec) -> None: ...
    def restore(self, spec: JobSpec) -> None: ...
    def specs(self) -> list[JobSpec]: ...
    def remove(self, job_id: str) -> bool: ...
    def take(self, job_id: str) -> bool: ...
    def position(self, job_id: str) -> int | None: ...
    def job_ids(self) -> list[str]: ...
    async def get(self) -> JobSpec: ...
    async def wait_put(self, timeout_seconds: float) -> None: ...
    def __len__(self) -> int: ...


class InMemoryJobQueue:
    def __init__(self, maxsize: int, retry_after_seconds: Callable[[], int] = lambda: 5) -> None:
        self.maxsize = maxsize
        self._retry_after_seconds = retry_after_seconds
        self._items: deque[JobSpec] = deque()  # submission order
        self._front: deque[JobSpec] = deque()  # handed back: before the fair order
        self._starts = 0
        self._last_start: dict[str | None, int] = {}  # owner -> when its last job started (a counter)
        # The start order, computed once per change (a queued job's view asks its position each time).
        self._cached: tuple[list[JobSpec], dict[str, int]] | None = None
        self._reserved = 0
        self._not_empty = asyncio.Event()
        self._put = asyncio.Event()  # set by every put: wakes a runner waiting for batch partners

    def __len__(self) -> int:
        return len(self._items) + len(self._front)

    def reserve(self) -> Reservation:
        if len(self) + self._reserved >= self.maxsize:
            raise QueueFull(
                f"the queue is full ({self.maxsize} jobs waiting); try again later",
                retry_after_seconds=max(1, self._retry_after_seconds()),
            )
        self._reserved += 1
        return Reservation()

    def release(self, reservation: Reservation) -> None:
        if not reservation.used:
            reservation.used = True
            self._reserved -= 1

    def put(self, reservation: Reservation, spec: JobSpec) -> int:
        """Enqueue on a reserved slot; returns the job's position (1 = next)."""
        if reservation.used:
            raise RuntimeError("reservation already used")
        reservation.used = True
        self._reserved -= 1
        self._items.append(spec)
        self._changed()
        return self.position(spec.job_id) or len(self)

    def restore(self, spec: JobSpec) -> None:
        """A job loaded from a durable store at start, in its order (it held a slot before the restart,
        so none is taken now)."""
        self._items.append(spec)
        self._changed()

    def put_front(self, spec: JobSpec) -> None:
        """A job handed back by its runner goes first again (no slot needed: it held one)."""
        self._front.appendleft(spec)
        self._changed()

    def remove(self, job_id: str) -> bool:
        for items in (self._front, self._items):
            for spec in items:
                if spec.job_id == job_id:
                    items.remove(spec)
                    self._cached = None
                    return True
        return False

    def take(self, job_id: str) -> bool:
        """Remove a job that starts now (a batch partner): it counts as its owner's latest start."""
        for spec in (*self._front, *self._items):
            if spec.job_id == job_id:
                self.remove(job_id)
                self._started(spec)
                return True
        return False

    def position(self, job_id: str) -> int | None:
        index = self._ordered()[1].get(job_id)
        return None if index is None else index + 1

    def job_ids(self) -> list[str]:
        return [spec.job_id for spec in self._ordered()[0]]

    def specs(self) -> list[JobSpec]:
        """The queued jobs in the order they will start."""
        return list(self._ordered()[0])

    async def get(self) -> JobSpec:
        while not len(self):
            self._not_empty.clear()
            await self._not_empty.wait()
        spec = self._front[0] if self._front else self._ordered()[0][0]
        self.remove(spec.job_id)
        self._started(spec)
        return spec

    def _started(self, spec: JobSpec) -> None:
        self._starts += 1
        self._last_start[spec.owner] = self._starts
        self._cached = None

    def _changed(self) -> None:
        self._cached = None
        self._not_empty.set()
        self._put.set()

    def _ordered(self) -> tuple[list[JobSpec], dict[str, int]]:
        if self._cached is None:
            order = self._order()
            self._cached = (order, {spec.job_id: index for index, spec in enumerate(order)})
        return self._cached

    def _order(self) -> list[JobSpec]:
        """Handed-back jobs, then each priority (highest first) in round-robin by owner."""
        order = list(self._front)
        for level in sorted({spec.priority for spec in self._items}, reverse=True):
            order += self._round_robin([spec for spec in self._items if spec.priority == level])
        return order

    def _round_robin(self, specs: list[JobSpec]) -> list[JobSpec]:
        """Owners by their last start (never = first; ties by their oldest job), one job each per
        round, each owner's jobs oldest first. After an owner's job starts it has the latest start, so
        the owners keep this order round after round."""
        by_owner: dict[str | None, list[JobSpec]] = {}
        for spec in specs:  # in submission order: each owner's list is oldest first
            by_owner.setdefault(spec.owner, []).append(spec)
        owners = sorted(by_owner, key=lambda owner: self._last_start.get(owner, 0))  # stable: ties by oldest
        order: list[JobSpec] = []
        for round_index in range(max((len(jobs) for jobs in by_owner.values()), default=0)):
            order += [by_owner[o][round_index] for o in owners if round_index < len(by_owner[o])]
        return order

    async def wait_put(self, timeout_seconds: float) -> None:
        """Return after the next ``put`` or ``timeout_seconds``, whichever comes first. A put that
        came before the call is not waited for: callers look at ``specs()`` first."""
        self._put.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                await self._put.wait()
