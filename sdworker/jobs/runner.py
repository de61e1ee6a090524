"""``JobRunner``: one thread for all GPU work, fed by an asyncio dispatch task that claims jobs from a
``JobSource`` (the memory backend in ``serve``, Redis in ``worker``; the loop is the same for both).

Threads, and why:

- ``sdworker-gpu`` (one thread, a single-worker executor): ``engine.load()`` and then every
  ``engine.generate()``, one job at a time. Models are not thread-safe and a GPU runs one job well.
- ``sdworker-encode`` (one thread): preview and final-image encoding, so PNG/JPEG work never sits on
  the denoising loop (Pillow releases the GIL while it encodes).
- the event loop: the dispatch task claims a lease and awaits the executor's future. Steps and
  previews come back only through ``loop.call_soon_threadsafe(lease.publish, event)``; nothing else
  crosses threads.

Cross-job batching (``max_batch`` > 1): after claiming a job the dispatch task asks the source for
queued jobs that could share its UNet calls, for at most ``batch_wait_ms`` by the runner's clock (a
lone job waits no longer than that; with nobody queued at claim time and a wait of 0 it waits not at
all), then hands the whole group to ``engine.generate_batch``. Each job keeps its own lease, events,
cancel token and result; the engine decides which of them really share a UNet call.

Cancellation is cooperative: the lease's ``control`` token is set by a cancel (memory: directly;
Redis: a message the lease listens for); the engine checks it after every step and raises
``JobCancelled``. Shutdown (``stop``): take no further job, give the running one ``grace_seconds`` to
finish, then either cancel it (memory: nobody else could run it) or hand it back to the queue at once
(Redis: another worker runs it; a hand-back is not an attempt).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sdworker.domain.batch_plan import resolve_max_batch
from sdworker.domain.control import CancelToken
from sdworker.domain.parameters import parameters_text
from sdworker.domain.request import GenerationRequest
from sdworker.domain.result import GenerationResult
from sdworker.engine.protocol import BatchItem, Engine
from sdworker.errors import JobCancelled, SdworkerError
from sdworker.events.types import JobEvent, ModelLoading
from sdworker.imaging.encode import encode_image, encode_png
from sdworker.imaging.metadata import PNG_KEY
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.progress import EncodeFn, StepReporter
from sdworker.jobs.protocol import JobSource, Lease
from sdworker.jobs.spec import JobSpec
from sdworker.previews.options import PreviewOptions
from sdworker.settings import Settings

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
# After the grace and the cancel, how long a running job gets to stop before it is abandoned.
STOP_SECONDS = 2.0
# The batch wait is taken in slices this long, so the runner's clock decides when it is over.
PARTNER_POLL_SECONDS = 0.005
PngText = Callable[[JobSpec, GenerationRequest, GenerationResult, int], dict[str, str]]


def _default_encode(pixels: Any, fmt: str, quality: int) -> bytes:
    return encode_image(pixels, fmt, quality)


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        source: JobSource,
        metrics: ServiceMetrics,
        *,
        models: Collection[str] | None = None,
        encode: EncodeFn | None = None,
        png_text: PngText | None = None,
        default_aliases: Collection[str] = (),
        max_batch: int | None = 1,
        batch_wait_ms: int = 0,
        clock: Callable[[], float] = time.monotonic,
        preview_defaults: PreviewOptions | None = None,
    ) -> None:
        """``default_aliases``: model names that mean the engine's default model (what ``--model``
        said, e.g. ``demo``: a Redis queue is keyed by it, while the engine's library names the default
        model by its own name). ``max_batch`` None: 1 on CPU, 4 on CUDA (``resolve_max_batch``, once the
        engine says its device). ``clock``: seconds, for the batch wait (tests inject one)."""
        self._engine = engine
        self._source = source
        self._metrics = metrics
        metrics.loaded_model_bytes.set_function(lambda: float(engine.loaded_bytes))
        self._models = models
        self._encode = encode or _default_encode
        self._png_text = png_text
        self._default_aliases = frozenset(default_aliases)
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdworker-gpu")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdworker-encode")
        self._main: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: list[Lease] = []  # the job(s) on the GPU thread now
        self._max_batch = max_batch
        self._batch_limit = max_batch or 1
        self._batch_wait_seconds = batch_wait_ms / 1000.0
        self._clock = clock
        # A fleet worker's own ``--preview-*`` settings, for what each job left to the server (the
        # API node that took it filled those from its settings; the worker knows its device).
        self._preview_defaults = preview_defaults
        self._stopping = False
        self._hand_back = False
        self._grace_over = False
        self._listeners: list[Callable[[], None]] = []
        self.fail_on_death = False  # create_app: True in memory mode (see _thread_died)
        self.on_death: list[Callable[[str], None]] = []
        self.dead = False  # the GPU thread died (_thread_died)
        self.abandoned = False  # the GPU thread was stuck at shutdown and left behind (_abandon)
        self.state = "loading"  # loading | ready | failed | stopped
        self.reason: str | None = "the model is loading"

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self._stopping

    @property
    def current_job(self) -> str | None:
        return self._running[0].spec.job_id if self._running else None

    @property
    def batch_limit(self) -> int:
        """How many jobs may run as one batch (``max_batch``, resolved once the engine is loaded)."""
        return self._batch_limit

    @property
    def status(self) -> str:
        """rbee's worker status: starting | ready | busy | stopping | error."""
        if self._stopping or self.state == "stopped":
            return "stopping"
        if self.state == "loading":
            return "starting"
        if self.state == "failed":
            return "error"
        return "busy" if self._running else "ready"

    def listen(self, callback: Callable[[], None]) -> None:
        """``callback()`` on the event loop whenever ``status`` may have changed (heartbeats)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("a runner state listener failed")

    def start(self) -> None:
        self._main = asyncio.get_running_loop().create_task(self._run(), name="sdworker-dispatch")
        self._main.add_done_callback(self._on_main_done)

    async def stop(self, grace_seconds: float, *, hand_back: bool = False) -> None:
        """Take no new job; let the running one finish within ``grace_seconds``, then cancel it or
        (``hand_back``) give it back to the queue at once.

        The dispatch task is never cancelled while it may be inside ``claim``: a job claimed at that
        moment would be held by nobody. It is left to return (``claim`` waits at most a second); a job
        it claimed just then runs within the grace like any other, or is stopped once the grace is over.
        """
        self._stopping = True
        self._source.stop_claiming()
        self._hand_back = hand_back
        self.reason = "the server is shutting down"
        await self._source.set_engine(None, state="stopping", reason=self.reason)
        self._changed()
        main = self._main
        if main is not None and not main.done():
            done, _ = await asyncio.wait({main}, timeout=grace_seconds)
            if not done:
                self._grace_over = True
                for lease in list(self._running):
                    await self._stop_lease(lease)
                done, _ = await asyncio.wait({main}, timeout=STOP_SECONDS)
                if not done:
                    await self._abandon()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
        self.state = "stopped"

    async def _abandon(self) -> None:
        """The job did not stop within ``STOP_SECONDS`` of its cancel: the step is stuck inside the
        engine (a hung kernel, a deadlock) and no cancel token reaches it. End the job from here so
        its watchers get their terminal event (memory: ``shutting_down``; a fleet: handed back), and
        mark the GPU thread abandoned so nothing waits on it again (``close`` skips the engine; the CLI
        exits hard once the streams are ended, as the interpreter would join the thread forever)."""
        log.error("the running job did not stop within %.0f s of its cancel; abandoning the GPU thread",
                  STOP_SECONDS)
        self.abandoned = True
        for lease in list(self._running):
            if self._hand_back:
                await lease.release()
            else:
                await lease.fail(CANCELLED, "the job was cancelled", cancelled=True)
        main = self._main
        if main is not None and not main.done():
            main.cancel()

    async def _stop_lease(self, lease: Lease) -> None:
        if self._hand_back:
            await lease.release()
        lease.control.cancel()

    async def close(self, timeout_seconds: float = 10.0) -> None:
        """Free the engine on its own thread (it is not thread-safe), then let both threads go. If the
        GPU thread is stuck (a model still loading), give up after ``timeout_seconds``."""
        loop = asyncio.get_running_loop()
        if self.dead or self.abandoned:
            timeout_seconds = 0.1  # the GPU thread is stuck or broken: queue nothing behind it
        try:
            await asyncio.wait_for(loop.run_in_executor(self._gpu, self._engine.close), timeout_seconds)
        except Exception:
            log.warning("closing the engine failed or timed out", exc_info=True)
        self._gpu.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._source.set_engine(None, state="loading", reason=self.reason)
        try:
            await loop.run_in_executor(self._gpu, self._engine.load)
        except SdworkerError as exc:
            log.error("loading the model failed: %s", exc.message)
            await self._die(exc.message)
            return
        except Exception as exc:
            log.exception("loading the model failed")
            await self._die(f"loading the model failed: {type(exc).__name__}")
            return
        if self._models is not None:
            # A fleet worker takes jobs for every model of its library too (they queue by name).
            names = await loop.run_in_executor(None, self._library_names)
            self._models = tuple(dict.fromkeys((*self._models, *names)))
        # Announced before this runner says ready, so an API node routes jobs to it from then on.
        info = self._engine.info
        if not self._source.batches:
            self._batch_limit = 1
        else:
            self._batch_limit = resolve_max_batch(self._max_batch, info.device)
        await self._source.set_engine(info, state="ready")
        self.state, self.reason = "ready", None
        self._changed()
        while not self._stopping and not self.dead:
            leases = await self._source.claim(self._models, limit=self._batch_limit, wait_seconds=1.0)
            if not leases:
                continue
            if len(leases) < self._batch_limit and self._batch_wait_seconds > 0:
                leases += await self._wait_for_partners(leases[0].spec, self._batch_limit - len(leases))
            if self._grace_over:
                for lease in leases:
                    await self._stop_lease(lease)  # claimed as the grace ran out: handed back or cancelled
            self._running = leases
            self._changed()
            try:
                if len(leases) == 1:
                    await self._run_job(loop, leases[0])
                else:
                    await self._run_batch(loop, leases)
            finally:
                self._running = []
                self._changed()

    async def _wait_for_partners(self, first: JobSpec, limit: int) -> list[Lease]:
        """Jobs that arrive within ``batch_wait_ms`` (by ``clock``) and can share ``first``'s batch.
        Stops early when the batch is full or a shutdown begins."""
        deadline = self._clock() + self._batch_wait_seconds
        partners: list[Lease] = []
        while len(partners) < limit and not self._stopping:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            partners += await self._source.claim_partners(
                first, limit=limit - len(partners), wait_seconds=min(remaining, PARTNER_POLL_SECONDS)
            )
        return partners

    def _library_names(self) -> tuple[str, ...]:
        try:
            return tuple(model.name for model in self._engine.list_models())
        except Exception:  # no library to list (an empty folder): the worker serves its --model only
            log.warning("listing the model library failed", exc_info=True)
            return ()

    async def _run_job(self, loop: asyncio.AbstractEventLoop, lease: Lease) -> None:
        spec = lease.spec

        def publish(event: JobEvent) -> None:
            loop.call_soon_threadsafe(lease.publish, event)

        reporter = self._reporter(lease, publish)
        try:
            # Not cancellable from the loop: a job ends through its control token, never mid-step.
            request, result = await asyncio.shield(
                loop.run_in_executor(self._gpu, self._generate, spec, reporter, lease.control, publish)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._settle(loop, lease, None, exc)
            return
        except BaseException as exc:  # the generation thread died: see _thread_died
            await self._thread_died([lease], exc)
            return
        await self._settle(loop, lease, request, result)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, leases: list[Lease]) -> None:
        """Several jobs in one ``engine.generate_batch`` call; each ends on its own outcome."""
        reporters: list[StepReporter] = []
        for lease in leases:
            def publish(event: JobEvent, lease: Lease = lease) -> None:
                loop.call_soon_threadsafe(lease.publish, event)

            reporters.append(self._reporter(lease, publish))

        def publish_all(event: JobEvent) -> None:
            for lease in leases:
                loop.call_soon_threadsafe(lease.publish, dataclasses.replace(event, job_id=lease.spec.job_id))

        try:
            outcomes = await asyncio.shield(
                loop.run_in_executor(self._gpu, self._generate_batch, leases, reporters, publish_all)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # generate_batch reports per job; this is a bug of ours
            log.exception("a batch of %d jobs failed", len(leases))
            outcomes = [(None, exc) for _ in leases]
        except BaseException as exc:  # the generation thread died: see _thread_died
            await self._thread_died(leases, exc)
            return
        for lease, (request, outcome) in zip(leases, outcomes, strict=True):
            await self._settle(loop, lease, request, outcome)

    async def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        lease: Lease,
        request: GenerationRequest | None,
        outcome: GenerationResult | BaseException,
    ) -> None:
        """End a job on what its generation gave: a result (encoded and completed in a task, so the
        GPU thread moves on to the next job while the PNGs are made) or the error it raised."""
        if isinstance(outcome, JobCancelled):
            if not lease.lost:
                await lease.fail(CANCELLED, "the job was cancelled", cancelled=True)
        elif isinstance(outcome, SdworkerError):
            await lease.fail(outcome.code, outcome.message)
        elif isinstance(outcome, BaseException):
            log.error("job %s failed", lease.spec.job_id, exc_info=outcome)
            await lease.fail("generation_failed", f"generation failed: {type(outcome).__name__}")
        elif request is not None:
            task = loop.create_task(self._finish(loop, lease, request, outcome))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _reporter(self, lease: Lease, publish: Callable[[JobEvent], None]) -> StepReporter:
        preview = lease.spec.preview
        if self._preview_defaults is not None:
            preview = preview.with_defaults(self._preview_defaults)
        return StepReporter(
            lease.spec.job_id,
            preview,
            publish=publish,
            watcher_count=lease.watchers,
            encoder=self._encoder,
            encode=self._encode,
            metrics=self._metrics,
        )

    def _request(self, spec: JobSpec) -> GenerationRequest:
        request = spec.request
        if request.model in self._default_aliases:
            request = dataclasses.replace(request, model=None)
        return request

    def _generate_batch(
        self, leases: list[Lease], reporters: list[StepReporter], publish_all: Callable[[JobEvent], None]
    ) -> list[tuple[GenerationRequest | None, GenerationResult | BaseException]]:
        """On the GPU thread: decode each job's request (a bad one fails alone), run the rest together."""
        requests: list[GenerationRequest | None] = []
        outcomes: list[GenerationResult | BaseException] = []
        items: list[BatchItem] = []
        for lease, reporter in zip(leases, reporters, strict=True):
            try:
                request = self._request(lease.spec)
            except Exception as exc:
                requests.append(None)
                outcomes.append(exc)
                continue
            requests.append(request)
            outcomes.append(JobCancelled("not run"))  # replaced below
            items.append(BatchItem(request, on_step=reporter, cancel=lease.control))

        def on_model_load(model: str, phase: str, seconds: float) -> None:
            publish_all(ModelLoading(job_id="", model=model, phase=phase, seconds=seconds))

        results = iter(self._engine.generate_batch(items, on_model_load=on_model_load) if items else [])
        for index, decoded in enumerate(requests):
            if decoded is not None:
                outcomes[index] = next(results)
        return list(zip(requests, outcomes, strict=True))

    def _generate(
        self, spec: JobSpec, reporter: StepReporter, control: CancelToken, publish: Callable[[JobEvent], None]
    ) -> tuple[GenerationRequest, GenerationResult]:
        request = self._request(spec)

        def on_model_load(model: str, phase: str, seconds: float) -> None:
            # On the GPU thread, like the step hook: hand the event over to the loop and return.
            publish(ModelLoading(job_id=spec.job_id, model=model, phase=phase, seconds=seconds))

        return request, self._engine.generate(request, on_step=reporter, cancel=control, on_model_load=on_model_load)

    async def _finish(
        self, loop: asyncio.AbstractEventLoop, lease: Lease, request: GenerationRequest, result: GenerationResult
    ) -> None:
        try:
            pngs = await loop.run_in_executor(self._encoder, self._encode_final, lease.spec, request, result)
        except Exception as exc:
            log.exception("encoding the result of job %s failed", lease.spec.job_id)
            await lease.fail("generation_failed", f"encoding the image failed: {type(exc).__name__}")
            return
        if lease.control.cancelled and not lease.control.interrupted:
            # A cancel that arrived while the last step or the PNG encode ran: the caller was told
            # "cancelling", so the job ends cancelled, never "cancel requested" then completed. (An
            # interrupt, A1111's, asks for the image it has: that one completes.)
            await lease.fail(CANCELLED, "the job was cancelled", cancelled=True)
            return
        await lease.complete(pngs, result.seeds, result.width, result.height)

    def _encode_final(self, spec: JobSpec, request: GenerationRequest, result: GenerationResult) -> tuple[bytes, ...]:
        return tuple(
            encode_png(image, self._png_text(spec, request, result, index) if self._png_text else None)
            for index, image in enumerate(result.images)
        )

    async def _thread_died(self, leases: list[Lease], exc: BaseException) -> None:
        """A ``BaseException`` out of the engine (a fatal CUDA error, ``SystemExit`` in the thread, an
        interpreter-level failure): the GPU thread cannot be trusted with another job. The running job
        fails with ``worker_died`` when nobody else can run it (``fail_on_death``: memory mode); in a
        fleet its lease is left to expire, so another worker takes it over (an attempt, so a job that
        kills every worker ends dead-lettered). Then this runner stops taking jobs (``/ready`` 503) and
        tells ``on_death`` (the node drains and the process exits non-zero for its supervisor)."""
        reason = f"the generation thread died: {type(exc).__name__}"
        log.critical("%s (job %s)", reason, ", ".join(lease.spec.job_id for lease in leases), exc_info=exc)
        self.dead = True
        if self.fail_on_death:
            for lease in leases:
                await lease.fail("worker_died", f"{reason}; the worker restarts")
        await self._die(reason)
        for callback in self.on_death:
            callback(reason)

    async def _die(self, reason: str) -> None:
        self.state, self.reason = "failed", reason
        await self._source.set_engine(None, state="failed", reason=reason)
        self._changed()

    def _on_main_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            log.error("the job dispatcher died", exc_info=exc)
            task = asyncio.get_running_loop().create_task(self._die(f"the job dispatcher died: {type(exc).__name__}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def png_text_for(settings: Settings) -> PngText:
    """A1111's ``parameters`` chunk, so other tools read the settings back from the PNG."""

    def png_text(spec: JobSpec, request: GenerationRequest, result: GenerationResult, index: int) -> dict[str, str]:
        return {PNG_KEY: parameters_text(request, result, index, spec.request.model or settings.model)}

    return png_text
