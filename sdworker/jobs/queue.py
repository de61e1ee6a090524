"""The bounded job queue. Lives on the event loop: the API side reserves and puts, the runner's
dispatch task gets; no thread touches it.

A slot is reserved before the service decodes a request's images (so a full queue answers 429 at
once, without decoding megabytes of base64) and released if decoding fails.
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
    def position(self, job_id: str) -> int | None: ...
    def job_ids(self) -> list[str]: ...
    async def get(self) -> JobSpec: ...
    async def wait_put(self, timeout_seconds: float) -> None: ...
    def __len__(self) -> int: ...


class InMemoryJobQueue:
    def __init__(self, maxsize: int, retry_after_seconds: Callable[[], int] = lambda: 5) -> None:
        self.maxsize = maxsize
        self._retry_after_seconds = retry_after_seconds
        self._items: deque[JobSpec] = deque()
        self._reserved = 0
        self._not_empty = asyncio.Event()
        self._put = asyncio.Event()  # set by every put: wakes a runner waiting for batch partners

    def __len__(self) -> int:
        return len(self._items)

    def reserve(self) -> Reservation:
        if len(self._items) + self._reserved >= self.maxsize:
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
        self._not_empty.set()
        self._put.set()
        return len(self._items)

    def restore(self, spec: JobSpec) -> None:
        """A job loaded from a durable store at start, in its order (it held a slot before the restart,
        so none is taken now)."""
        self._items.append(spec)
        self._not_empty.set()
        self._put.set()

    def put_front(self, spec: JobSpec) -> None:
        """A job handed back by its runner goes first again (no slot needed: it held one)."""
        self._items.appendleft(spec)
        self._not_empty.set()
        self._put.set()

    def remove(self, job_id: str) -> bool:
        for spec in self._items:
            if spec.job_id == job_id:
                self._items.remove(spec)
                return True
        return False

    def position(self, job_id: str) -> int | None:
        for index, spec in enumerate(self._items, start=1):
            if spec.job_id == job_id:
                return index
        return None

    def job_ids(self) -> list[str]:
        return [spec.job_id for spec in self._items]

    def specs(self) -> list[JobSpec]:
        return list(self._items)

    async def get(self) -> JobSpec:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        return self._items.popleft()

    async def wait_put(self, timeout_seconds: float) -> None:
        """Return after the next ``put`` or ``timeout_seconds``, whichever comes first. A put that
        came before the call is not waited for: callers look at ``specs()`` first."""
        self._put.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                await self._put.wait()
