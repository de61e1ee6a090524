"""Heartbeats to rbee's queen: ``POST {queen_url}/v1/worker-heartbeat`` with rbee's ``WorkerHeartbeat``
body, right after start, on every change of state, and every ``heartbeat_seconds`` (30; rbee's queen
declares a worker dead after 90 s without one).

Status: ``starting`` (the model loads), ``ready``, ``busy`` (a job runs), ``stopping`` (draining: sent
once, on SIGTERM), ``error`` (the model could not be loaded; the worker will not take jobs).

Why it can never hurt serving:

- it is one task on the event loop that only awaits; a request to the queen has a short timeout
  (``timeout_seconds``) and a queen that is down, slow or answers an error costs a warning in the
  log, at most one a minute;
- no stale beats pile up: a change of state is noted (a few at most, so the queen sees
  ``ready -> busy -> ready`` even for a job shorter than one request), a failed send forgets the
  notes, and the next beat says how things are now;
- ``stop`` (from the drain, with its own deadline) cancels whatever is in flight, then sends
  ``stopping`` once within ``timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from sdworker import __version__
from sdworker.settings import Settings

log = logging.getLogger(__name__)

STARTING, READY, BUSY, STOPPING, ERROR = "starting", "ready", "busy", "stopping", "error"
PATH = "/v1/worker-heartbeat"
WARN_EVERY_SECONDS = 60.0
NOTED_AT_MOST = 4


@dataclass(frozen=True, slots=True)
class WorkerCard:
    """What the queen knows this worker by (rbee's ``WorkerInfo`` without the status)."""

    id: str
    model_id: str
    device: str
    port: int
    version: str
    implementation: str = "sdworker"


def rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class QueenHeartbeat:
    """Owned by ``Node``: ``start`` on the loop after the runner starts, ``changed`` whenever the
    runner's state may have changed (on the loop), ``stop`` when the drain begins."""

    def __init__(
        self,
        queen_url: str,
        card: WorkerCard,
        status: Callable[[], str],
        *,
        interval_seconds: float = 30.0,
        timeout_seconds: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = queen_url.rstrip("/") + PATH
        self.card = card
        self._status = status
        self._interval = max(0.05, interval_seconds)
        self._timeout = timeout_seconds
        self._transport = transport
        self._clock = clock
        self._wall_clock = wall_clock
        self._noted: deque[str] = deque(maxlen=NOTED_AT_MOST)
        self._last_noted: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._last_warning = -WARN_EVERY_SECONDS
        self._stopped = False
        self.sent = 0  # beats the queen accepted
        self.failed = 0  # beats that did not reach it (or were refused)

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
        self.changed()  # the first beat says how things are right now (``starting`` while loading)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sdworker-heartbeat")

    def changed(self) -> None:
        """Note the status if it changed and wake the sender (a prompt beat, not one at the interval)."""
        status = self._status()
        if self._stopped or status == STOPPING:
            return  # ``stopping`` is ``stop``'s, sent exactly once
        if status != self._last_noted:
            self._last_noted = status
            self._noted.append(status)
            self._wake.set()

    async def stop(self) -> None:
        """Send ``stopping`` once (within ``timeout_seconds``) and end the task. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._send(STOPPING)
            await self._client.aclose()

    def body(self, status: str) -> dict[str, Any]:
        card = self.card
        worker = {
            "id": card.id,
            "model_id": card.model_id,
            "device": card.device,
            "port": card.port,
            "status": status,
            "implementation": card.implementation,
            "version": card.version,
        }
        return {"worker": worker, "timestamp": rfc3339(self._wall_clock())}

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            statuses = list(self._noted) or [self._status()]
            self._noted.clear()
            for status in statuses:
                if status == STOPPING:
                    continue  # the drain began; ``stop`` is about to send it
                if not await self._send(status):
                    break  # the rest would be stale by the next try; the next beat says the current state

    async def _send(self, status: str) -> bool:
        assert self._client is not None
        try:
            async with asyncio.timeout(self._timeout):  # all of it: a queen that trickles bytes too
                response = await self._client.post(self.url, json=self.body(status))
            if response.status_code >= 400:
                raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            self.failed += 1
            now = self._clock()
            if now - self._last_warning >= WARN_EVERY_SECONDS:
                self._last_warning = now
                log.warning(
                    "heartbeat to the queen at %s failed (%s: %s); serving goes on, retrying every %.0f s "
                    "(this warning at most once a minute)",
                    self.url, type(exc).__name__, exc, self._interval,
                )
            return False
        self.sent += 1
        return True


def queen_heartbeat(settings: Settings, status: Callable[[], str], port: int) -> QueenHeartbeat:
    """rbee: this worker announces itself to the queen that its hive named with ``--queen-url``.
    ``port``: where the worker answers (``serve``'s HTTP port, a fleet worker's ``--health-port``)."""
    assert settings.queen_url is not None
    card = WorkerCard(
        id=settings.worker_id or f"sdworker-{socket.gethostname()}-{port}",
        model_id=settings.model,
        device=settings.device,
        port=port,
        version=__version__,
    )
    return QueenHeartbeat(settings.queen_url, card, status, interval_seconds=settings.heartbeat_seconds)
