"""``RedisLease``: a worker's hold on one claimed job. Its events go through a small outbox to the
``PUBLISH`` script (a slow Redis drops old steps, never blocks the GPU thread); a heartbeat about
every second keeps the claim (``HEARTBEAT``) and brings the control flag and the watcher count; the
finishers store the result with ``FINISH`` and ``release`` hands the job back (SIGTERM). Every write
carries the lease's fence, so a lease that was taken over cannot write (scripts/lease.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from sdworker.domain.control import CancelToken
from sdworker.events.types import JobCompleted, JobEvent, JobFailed, PreviewReady, end_marker
from sdworker.jobs.spec import JobSpec
from sdworker.stores.redis.codec import event_fields, text
from sdworker.stores.redis.connection import EVENTS_MAXLEN, ttl_ms

if TYPE_CHECKING:
    from sdworker.stores.redis.source import RedisJobSource

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 16  # progress/previews waiting for Redis; older ones are dropped past this
FINISH_RETRY_SECONDS = 60.0


class RedisLease:
    def __init__(self, source: RedisJobSource, spec: JobSpec, entry: str, fence: int, attempt: int) -> None:
        self._source = source
        self.spec = spec
        self.attempt = attempt
        self.control = CancelToken()
        self._entry = entry
        self._fence = str(fence)
        self._watchers = 0
        self._lost = False
        self._started = time.time()
        source.metrics.job_queue_seconds.labels(model=spec.request.model or "").observe(
            max(0.0, self._started - spec.created_at)
        )
        self._outbox: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write(), name=f"sdworker-lease-{spec.job_id}")
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat(), name=f"sdworker-beat-{spec.job_id}")

    @property
    def lost(self) -> bool:
        return self._lost

    def watchers(self) -> int:
        return self._watchers

    def publish(self, event: JobEvent) -> None:
        if self._lost:
            return
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            with contextlib.suppress(asyncio.QueueEmpty):
                self._outbox.get_nowait()  # Redis is slow or away: an old step is worth least
        self._outbox.put_nowait(event)

    async def complete(self, images: tuple[bytes, ...], seeds: tuple[int, ...], width: int, height: int) -> bool:
        data = {"seed": seeds[0], "seeds": list(seeds), "width": width, "height": height, "images": len(images)}
        end = end_marker(
            JobCompleted(job_id=self.spec.job_id, images=(), seed=seeds[0], seeds=seeds, width=width, height=height)
        )
        return await self._finish("completed", data, end.marker, images=images, seeds=seeds, width=width, height=height)

    async def fail(self, code: str, message: str, *, cancelled: bool = False) -> bool:
        if cancelled and self._source.stopping:
            code, message = "shutting_down", "the worker is shutting down; the job was cancelled"
        end = end_marker(JobFailed(job_id=self.spec.job_id, code=code, message=message))
        return await self._finish(
            "cancelled" if cancelled else "failed",
            {"code": code, "message": message},
            end.marker,
            code=code,
            message=message,
        )

    async def release(self) -> None:
        """Hand back now: the next worker takes it at once (no claim timeout), and it is not an attempt."""
        if self._lost:
            return
        self._lost = True
        k = self._source.keys
        model = self.spec.request.model or ""
        try:
            await self._source.release_script(
                keys=[
                    k.job(self.spec.job_id),
                    k.queue(model),
                    k.queued,
                    k.queued_model(model),
                    k.events(self.spec.job_id),
                    k.preview(self.spec.job_id),
                ],
                args=[self._fence, self.spec.job_id, ttl_ms(self._source.settings), EVENTS_MAXLEN],
            )
            await self._source.publish_positions(model)
        except (RedisError, OSError):
            log.warning("could not hand job %s back; it is retried after the claim time", self.spec.job_id)
        await self._stop_tasks()

    def on_control(self, mode: str) -> None:
        if mode == "interrupt":
            self.control.interrupt()
        elif mode == "cancel":
            self.control.cancel()

    async def _finish(
        self,
        outcome: str,
        data: dict[str, Any],
        marker: str,
        *,
        images: tuple[bytes, ...] = (),
        seeds: tuple[int, ...] = (),
        width: int = 0,
        height: int = 0,
        code: str = "",
        message: str = "",
    ) -> bool:
        await self._flush()
        k = self._source.keys
        job_id = self.spec.job_id
        keys = [k.job(job_id), k.events(job_id), k.preview(job_id), k.queue(self.spec.request.model or "")]
        keys += [k.image(job_id, i) for i in range(len(images))]
        try:  # with --results-s3 the PNGs go to the bucket first, Redis gets their keys (stores/redis/results.py)
            values = await self._source.results.values(job_id, images, self._source.settings.result_ttl_seconds)
        except Exception:
            log.exception("job %s: its images could not be stored; the job is retried", job_id)
            self._lost = True
            await self._stop_tasks()
            return False
        args: list[Any] = [
            self._fence,
            outcome,
            json.dumps(data),
            ttl_ms(self._source.settings),
            EVENTS_MAXLEN,
            json.dumps(list(seeds)),
            width,
            height,
            code,
            message,
            json.dumps({"marker": marker}),
        ]
        args += values
        deadline = time.monotonic() + FINISH_RETRY_SECONDS
        delay = 0.2
        try:
            while True:
                if self._lost:
                    return False
                try:
                    seq = await self._source.finish_script(keys=keys, args=args)
                    if not int(seq):
                        log.warning("job %s: attempt %d was fenced off; its result is dropped", job_id, self.attempt)
                        return False
                    self._source.metrics.jobs_finished.labels(outcome=outcome).inc()
                    self._source.metrics.job_run_seconds.labels(model=self.spec.request.model or "").observe(
                        max(0.0, time.time() - self._started)
                    )
                    return True
                except (RedisError, OSError):
                    if time.monotonic() > deadline:
                        log.error("job %s: Redis unreachable; its result is lost and the job will be retried", job_id)
                        return False
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            self._lost = True
            await self._stop_tasks()

    async def _flush(self) -> None:
        self._outbox.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=10.0)

    async def _write(self) -> None:
        k = self._source.keys
        job_id = self.spec.job_id
        warned = False
        while (event := await self._outbox.get()) is not None:
            if self._lost:
                continue
            kind, data, step, total, image = event_fields(event)
            args: list[Any] = [self._fence, kind, json.dumps(data), step, total, EVENTS_MAXLEN]
            if isinstance(event, PreviewReady) and image is not None:
                args.append(image)
            try:
                seq = await self._source.publish_script(
                    keys=[k.job(job_id), k.events(job_id), k.preview(job_id)], args=args
                )
                if not int(seq):
                    self._lose("its attempt was fenced off")
            except (RedisError, OSError) as exc:
                if not warned:
                    warned = True
                    log.warning("job %s: progress not recorded while Redis is away (%s)", job_id, type(exc).__name__)

    async def _heartbeat(self) -> None:
        k = self._source.keys
        job_id = self.spec.job_id
        interval = min(1.0, self._source.settings.lease_heartbeat_seconds)
        while not self._lost:
            try:
                result = await self._source.heartbeat_script(
                    keys=[k.job(job_id), k.queue(self.spec.request.model or ""), k.watchers(job_id)],
                    args=[self._fence, self._entry, self._source.consumer],
                )
                if not int(result[0]):
                    self._lose("another worker took the job over")
                    return
                self.on_control(text(result[1]) or "")
                self._watchers = int(result[2])
            except (RedisError, OSError):
                pass  # the claim time covers a short outage; a long one hands the job to another worker
            await asyncio.sleep(interval)

    def _lose(self, why: str) -> None:
        if not self._lost:
            log.warning("job %s: lease lost (%s); stopping it here", self.spec.job_id, why)
            self._lost = True
            self.control.cancel()

    async def _stop_tasks(self) -> None:
        self._source.forget(self)
        self._beat.cancel()
        if not self._writer.done():
            self._outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._writer, timeout=5.0)
