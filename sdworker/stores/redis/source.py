"""``RedisJobSource``: the GPU side of a Redis fleet (its leases: ``lease.py``).

The claim loop (run by the ordinary ``JobRunner``):

1. ``XAUTOCLAIM`` entries whose worker has been silent for ``claim_idle_seconds`` (it died, or is
   paused): another worker takes them over;
2. else ``XREADGROUP ... >`` blocks up to a second for a new entry of a model this worker serves;
3. the ``CLAIM`` script then fences the job (attempt + 1 unless it was handed back, new fence),
   appends ``retrying``/``started``, or dead-letters it after ``max_attempts``. A new entry is a
   ticket: the job that starts is the head of the claim order (priority, then round-robin by owner;
   ``fair.py``), which takes over its own entry, and the job whose entry was read gets a new one.

While a job runs its lease sends a heartbeat about every second (``HEARTBEAT``: still ours? reset
the entry's idle time, read the control flag and the watcher count). A cancel reaches the lease at
once through pub/sub, and through the heartbeat's control flag if that message was missed. When the
fence has moved on (a zombie after SIGSTOP/SIGCONT), the lease is ``lost``: it stops the engine and
every write it tries is refused by the scripts anyway.

The worker registers itself in ``P:workers`` (rbee's WorkerInfo fields plus its engine details),
refreshed every ``lease_heartbeat_seconds``; API nodes route jobs by the models live workers serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError, ResponseError

from sdworker import __version__
from sdworker.domain.catalog import EngineInfo, ModelInfo
from sdworker.domain.checks import Limits
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.protocol import Lease
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import WorkerInfo
from sdworker.jobs.submission import ModelLibrary
from sdworker.settings import Settings
from sdworker.stores.redis import scripts
from sdworker.stores.redis.codec import (
    GuidanceNames,
    batch_key_text,
    library_record,
    text,
    worker_record,
)
from sdworker.stores.redis.connection import EVENTS_MAXLEN, connect, redacted, ttl_ms
from sdworker.stores.redis.keys import GROUP, Keys
from sdworker.stores.redis.lease import RedisLease
from sdworker.stores.redis.results import FleetResults
from sdworker.stores.results import S3Results

log = logging.getLogger(__name__)

PARTNER_WINDOW = 16  # waiting jobs a batch looks at for partners: a constant, so a claim stays O(1)
TOKENIZER_REFRESH_SECONDS = 86400.0  # a stored prompt tokenizer is written again after a day (kept for two)


class RedisJobSource:
    def __init__(self, settings: Settings, *, metrics: ServiceMetrics | None = None, device: str = "unknown") -> None:
        if not settings.redis_url:
            raise ValueError("RedisJobSource needs settings.redis_url")
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.consumer = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"  # unique per process, even for a reused id
        self._device = device
        name = f"sdworker-worker-{self.worker_id}"
        self._redis = connect(settings.redis_url, name=name)
        self._blocking = connect(settings.redis_url, name=name, single=True)  # XREADGROUP BLOCK: no socket timeout
        self._listener = connect(settings.redis_url, name=name, single=True)  # pub/sub: waits indefinitely
        self.results = FleetResults(S3Results(settings.results_s3) if settings.results_s3 else None, self.keys,
                                    self._redis)
        self.publish_script = self._redis.register_script(scripts.PUBLISH)
        self.finish_script = self._redis.register_script(scripts.FINISH)
        self.heartbeat_script = self._redis.register_script(scripts.HEARTBEAT)
        self.release_script = self._redis.register_script(scripts.RELEASE)
        self._claim_script = self._redis.register_script(scripts.CLAIM)
        self._partners_script = self._redis.register_script(scripts.PARTNERS)
        self._positions_script = self._redis.register_script(scripts.POSITIONS)
        self._leases: dict[str, RedisLease] = {}
        self._groups: set[str] = set()
        self._engine: EngineInfo | None = None
        self._state = "starting"
        self._reason: str | None = None
        self.metrics = metrics or ServiceMetrics()
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = asyncio.Event()
        self._closing = False
        self._down_logged = False
        self._library: ModelLibrary | None = None
        self._refreshed_at = 0.0
        self._tokenizers_stored: dict[str, float] = {}  # sha256 -> when this worker last stored it

    # --- JobSource ---------------------------------------------------------------------------------

    async def claim(self, models: Collection[str] | None, *, limit: int = 1, wait_seconds: float = 1.0) -> list[Lease]:
        self._ensure_started()
        names = list(models) if models is not None else [self.settings.model]
        try:
            for model in names:
                await self._ensure_group(model)
            lease = await self._reclaim(names) or await self._read_new(names, wait_seconds)
            self._down_logged = False
            if lease is None:
                return []
            partners = await self._take_partners(lease.spec, limit - 1) if limit > 1 else []
        except (RedisError, OSError) as exc:
            if not self._down_logged:
                self._down_logged = True
                log.warning("Redis at %s unavailable (%s); retrying", redacted(self.settings.redis_url or ""),
                            type(exc).__name__)
            await asyncio.sleep(min(wait_seconds, 1.0))
            return []
        return [lease, *partners]

    async def claim_partners(self, first: JobSpec, *, limit: int, wait_seconds: float) -> list[Lease]:
        try:
            partners = await self._take_partners(first, limit)
            if not partners and wait_seconds > 0 and not self.stopping:
                await asyncio.sleep(wait_seconds)  # polled: the runner's batch wait is short
                partners = await self._take_partners(first, limit)
        except (RedisError, OSError):
            return []
        return list(partners)

    @property
    def batches(self) -> bool:
        """True: after claiming the head job a worker takes, in one script (``PARTNERS``), the waiting
        jobs among the next ``PARTNER_WINDOW`` of its model that share its batch key
        (``can_share_unet``'s rule, stored with each job at submit). A job that does not fit stays in
        the queue for the next idle worker; nothing is held back to see if it fits."""
        return True

    async def set_engine(self, info: EngineInfo | None, *, state: str, reason: str | None = None) -> None:
        self._engine = info if info is not None else self._engine
        self._state = {"loading": "starting", "failed": "failed"}.get(state, state)
        self._reason = reason if state == "failed" else None
        if state == "stopping":
            self.stopping = True
        self._ensure_started()
        try:
            await self._register()
        except (RedisError, OSError):
            log.warning("could not register with Redis yet; retrying in the background")
        self._registered.set()

    @property
    def reachable(self) -> bool:
        """False from a failed claim (Redis away) until the next one that reaches Redis: a worker's
        ``/ready``."""
        return not self._down_logged

    def stop_claiming(self) -> None:
        """A blocked XREADGROUP returns within its one-second wait; cancelling it could orphan a job
        that Redis had just handed over, so it is not cancelled."""
        self.stopping = True

    async def close(self) -> None:
        # A flag and a wake-up end the registry loop; cancellation is only the fallback, and the wait
        # for the tasks is bounded: on Python 3.11 a cancel that meets a timeout's expiry can be lost.
        self._closing = True
        self._registered.set()
        for task in self._tasks:
            if task.get_name() != "sdworker-registry":
                task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=3.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.hdel(self.keys.workers, self.worker_id)
        for client in (self._redis, self._blocking, self._listener):
            with contextlib.suppress(Exception):
                await client.aclose()

    # --- used by leases -------------------------------------------------------------------------

    async def publish_positions(self, model: str) -> None:
        """New positions for the watched queued jobs of ``model`` (O(watched x owners), scripts.POSITIONS)."""
        await self._positions_script(keys=[self.keys.watched(model)], args=[self.keys.prefix, EVENTS_MAXLEN])

    def forget(self, lease: RedisLease) -> None:
        if self._leases.get(lease.spec.job_id) is lease:
            del self._leases[lease.spec.job_id]
            self._registered.set()

    # --- internals -----------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._register_loop(), name="sdworker-registry"),
                loop.create_task(self._control_loop(), name="sdworker-control"),
            ]

    async def _ensure_group(self, model: str) -> None:
        if model in self._groups:
            return
        try:
            await self._redis.xgroup_create(self.keys.queue(model), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(model)

    async def _reclaim(self, models: list[str]) -> RedisLease | None:
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        for model in models:
            _, entries, *_ = await self._redis.xautoclaim(
                self.keys.queue(model), GROUP, self.consumer, idle_ms, start_id="0-0", count=1
            )
            for entry_id, fields in entries:
                lease = await self._take(model, text(entry_id) or "", fields, fresh=False)
                if lease is not None:
                    return lease
        return None

    async def _read_new(self, models: list[str], wait_seconds: float) -> RedisLease | None:
        streams = {self.keys.queue(model): ">" for model in models}
        result = await self._blocking.xreadgroup(
            GROUP, self.consumer, streams, count=1, block=max(1, int(wait_seconds * 1000))
        )
        for key, entries in result or []:
            model = (text(key) or "").split(":q:", 1)[1]
            for entry_id, fields in entries:
                lease = await self._take(model, text(entry_id) or "", fields, fresh=True)
                if lease is not None:
                    return lease
        return None

    async def _take(self, model: str, entry_id: str, fields: dict[bytes, bytes] | None, *, fresh: bool
                    ) -> RedisLease | None:
        job_id = text((fields or {}).get(b"job_id"))
        k = self.keys
        if job_id is None:  # the entry was deleted (a cancelled job): just acknowledge it
            await self._redis.xack(k.queue(model), GROUP, entry_id)
            await self._redis.xdel(k.queue(model), entry_id)
            return None
        result = await self._claim_script(
            keys=[k.job(job_id), k.events(job_id), k.preview(job_id), k.queue(model), k.queued, k.queued_model(model),
                  k.dead],
            args=[entry_id, self.consumer, self.settings.max_attempts, job_id, EVENTS_MAXLEN,
                  ttl_ms(self.settings), self.worker_id, 1 if fresh else 0, k.prefix],
        )
        await self.publish_positions(model)
        if int(result[0]) != 1:
            return None
        # The job that starts is the head of the claim order, not always the one whose entry was read.
        return await self._lease(text(result[3]) or job_id, text(result[4]) or entry_id, int(result[1]),
                                 int(result[2]))

    async def _lease(self, job_id: str, entry_id: str, fence: int, attempt: int) -> RedisLease:
        raw = await self._redis.hget(self.keys.job(job_id), "spec")
        spec = JobSpec.from_dict(json.loads(raw))
        lease = RedisLease(self, spec, entry_id, fence, attempt)
        self._leases[job_id] = lease
        self._registered.set()
        return lease

    async def _take_partners(self, first: JobSpec, limit: int) -> list[RedisLease]:
        key = batch_key_text(first.request)
        if limit <= 0 or not key or self.stopping:
            return []
        model = first.request.model or self.settings.model
        k = self.keys
        found = await self._partners_script(
            keys=[k.queued_model(model), k.queue(model), k.queued, k.dead],
            args=[k.prefix, key, limit, PARTNER_WINDOW, self.consumer, self.settings.max_attempts, EVENTS_MAXLEN,
                  ttl_ms(self.settings), self.worker_id, model],
        )
        leases = []
        for i in range(0, len(found), 4):
            job_id, entry_id = text(found[i]) or "", text(found[i + 1]) or ""
            leases.append(await self._lease(job_id, entry_id, int(found[i + 2]), int(found[i + 3])))
        if leases:
            await self.publish_positions(model)
        return leases

    def attach_library(self, library: ModelLibrary) -> None:
        """The engine's model library: listed in this worker's registry entry (so API nodes list and
        check names), rescanned when an API node sets the refresh flag."""
        self._library = library

    async def _library_entry(self) -> dict[str, Any] | None:
        library = self._library
        if library is None or self._engine is None:
            return None  # listed once the engine is loaded (it builds the library while loading)
        asked = text(await self._redis.get(self.keys.models_refresh))
        try:
            if asked is not None and float(asked) > self._refreshed_at:
                self._refreshed_at = float(asked)
                await asyncio.to_thread(library.refresh)
            models, loras, guidance = await asyncio.to_thread(
                lambda: (library.list_models(), library.list_loras(),
                         GuidanceNames(library.list_controlnets(), library.list_upscalers(),
                                       library.list_ip_adapters()))
            )
        except Exception:  # a folder gone or unreadable: keep registering (the job's own check reports it)
            log.warning("listing the model library failed", exc_info=True)
            return None
        return library_record(await self._with_prompt_tokenizers(library, models), loras, guidance)

    async def _with_prompt_tokenizers(self, library: ModelLibrary,
                                      models: tuple[ModelInfo, ...]) -> tuple[ModelInfo, ...]:
        """The models with how their prompts are counted, each tokenizer stored in Redis (under its hash,
        kept two days, stored again daily): API nodes then refuse a too-long prompt at submit, as this
        worker's engine would, without the model's files (``domain.prompt_length``)."""
        try:
            tokenizers = await asyncio.to_thread(library.prompt_tokenizers)
        except Exception:  # an unreadable tokenizer: API nodes skip the check, this engine still makes it
            log.warning("reading the prompt tokenizers failed", exc_info=True)
            return models
        now = time.time()
        for registered, tokenizer_json in tokenizers.values():
            if now - self._tokenizers_stored.get(registered.sha256, 0.0) > TOKENIZER_REFRESH_SECONDS:
                await self._redis.set(self.keys.tokenizer(registered.sha256), tokenizer_json,
                                      ex=int(2 * TOKENIZER_REFRESH_SECONDS))
                self._tokenizers_stored[registered.sha256] = now
        return tuple(replace(m, prompt_tokenizer=tokenizers[m.name][0]) if m.name in tokenizers else m
                     for m in models)

    async def _register(self) -> None:
        current = next(iter(self._leases), None)
        status = self._state
        if status == "ready" and current is not None:
            status = "busy"
        info = WorkerInfo(id=self.worker_id, model=self.settings.model, device=self._device_name(), status=status,
                          current_job=current, last_seen=time.time(), version=__version__, reason=self._reason)
        library = await self._library_entry()
        s = self.settings
        limits = Limits(max_steps=s.max_steps, max_images=s.max_images, max_pixels=s.max_pixels)
        record = worker_record(info, self._engine, library, limits)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.workers, self.worker_id, record)
            if self._engine is not None and status != "failed":
                # Kept after this worker stops: API nodes accept its models for 24 h (scale to zero).
                pipe.hset(self.keys.registered, self.worker_id, record)
            await pipe.execute()

    async def _register_loop(self) -> None:
        interval = self.settings.lease_heartbeat_seconds
        while not self._closing:
            with contextlib.suppress(RedisError, OSError):
                await self._register()
            if self._closing:
                return
            self._registered.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: it can swallow the close's cancel
                    await self._registered.wait()

    def _device_name(self) -> str:
        return self._engine.device if self._engine is not None else self._device

    async def _control_loop(self) -> None:
        """Cancel/interrupt messages for the jobs this worker runs, as they are sent."""
        while True:
            pubsub = self._listener.pubsub()
            try:
                await pubsub.subscribe(self.keys.control)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    job_id, _, mode = (text(message["data"]) or "").partition(" ")
                    lease = self._leases.get(job_id)
                    if lease is not None:
                        lease.on_control(mode)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # the heartbeat's control flag covers the gap
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
