"""``RedisJobService``: the API side of a Redis fleet. Any number of API nodes run one each; all state
is in Redis, so any node answers for any job, and ``Last-Event-ID`` from one node works on another.

A job is in Redis (and, with the server's AOF on, on disk: ``WAITAOF`` where the server has it)
before ``submit`` returns. Redis errors become ``NotReady`` (503) with a clear message, never a hang
(every call has a socket timeout) and never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from sdworker.errors import (
    InputsDropped,
    InvalidRequest,
    JobNotFinished,
    JobNotFound,
    NotReady,
    QueueFull,
    SdworkerError,
)
from sdworker.events.bus import EventBus, Subscription
from sdworker.events.types import ends_stream, stream_closing
from sdworker.jobs.inputs import check_inputs
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.outbox import WebhookMessage, server_secrets
from sdworker.jobs.protocol import FleetInfo
from sdworker.jobs.quotas import (
    RATE_WINDOW_SECONDS,
    QuotaLookup,
    check_priority,
    check_queued,
    no_quota,
    rate_exceeded,
)
from sdworker.jobs.spec import JobDraft
from sdworker.jobs.state import JobStatus, JobView
from sdworker.jobs.submission import (
    build_spec,
)
from sdworker.jobs.transitions import Action, dropped_input, rule, without_inputs
from sdworker.settings import KeyQuota, Settings
from sdworker.stores.redis import fair, scripts
from sdworker.stores.redis.codec import (
    batch_key_text,
    job_view,
    text,
)
from sdworker.stores.redis.connection import EVENTS_MAXLEN, connect, redacted, ttl_ms
from sdworker.stores.redis.fleet import (
    PromptCounters,
    check_worker_limits,
    decodes_images,
    family_defaults,
    library_entry,
    native_size,
    place,
    read_fleet,
    ready_for,
)
from sdworker.stores.redis.housekeeping import FleetHousekeeping
from sdworker.stores.redis.hub import StreamHub
from sdworker.stores.redis.keys import Keys
from sdworker.stores.redis.results import FleetResults
from sdworker.stores.redis.webhooks import RedisWebhookRelay
from sdworker.stores.results import S3Results
from sdworker.webhooks.signing import owner_secret
from sdworker.webhooks.targets import check_target

log = logging.getLogger(__name__)

PENDING = "pending:"  # an idempotency key whose first submit is still being accepted
PENDING_MS = 30_000

T = TypeVar("T")
FLEET_CACHE_SECONDS = 1.0
NO_FLEET_SECRET = "this fleet has no --webhook-secret (nor --signing-secret) shared by its API nodes to sign with"
STREAM_OWNERS_KEPT = 10_000  # owners of streamed jobs remembered (open_stream), oldest forgotten first

class RedisJobService:
    backend = "redis"

    def __init__(self, settings: Settings, metrics: ServiceMetrics, *, node_id: str | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("RedisJobService needs settings.redis_url")
        self._settings = settings
        self._metrics = metrics
        self._keys = Keys(settings.redis_prefix)
        self.node_id = node_id or uuid.uuid4().hex[:12]
        name = f"sdworker-api-{os.getpid()}-{self.node_id}"
        self._redis = connect(settings.redis_url, name=name)
        self._reader = connect(settings.redis_url, name=name, single=True)
        self.bus = EventBus(stall_seconds=settings.watcher_stall_seconds)
        self.results = FleetResults(S3Results(settings.results_s3) if settings.results_s3 else None, self._keys,
                                    self._redis)
        self._hub = StreamHub(self._redis, self._reader, self._keys, self.bus, self.node_id, self.results)
        self._prompt_counters = PromptCounters(self._redis, self._keys)
        self._stream_owners: dict[str, str | None] = {}
        self._owner_reads: dict[str, asyncio.Future[list[Any]]] = {}  # job -> the owner read in flight
        self._submit = self._redis.register_script(scripts.SUBMIT)
        self._quota: QuotaLookup = no_quota
        self._webhooks = RedisWebhookRelay(
            self._redis, self._keys, settings, server_secrets(settings), self.node_id, self.get
        )
        self._cancel = self._redis.register_script(scripts.CANCEL)
        self._positions = self._redis.register_script(scripts.POSITIONS)
        self._position = self._redis.register_script(fair.POSITION)
        self._accepting = True
        self._waitaof = True  # until the server says it does not know WAITAOF (before Redis 7.2)
        self._fleet: tuple[float, FleetInfo] | None = None
        self.housekeeping = FleetHousekeeping(self._redis, self._keys, settings, metrics, self.results,
                                              self._read_fleet)
        metrics.bind(queue_depth=lambda: float(self._fleet[1].queue_depth) if self._fleet else 0.0,
                     watchers=self.bus.total_watchers)

    # --- API side -----------------------------------------------------------------------------

    async def submit(
        self, draft: JobDraft, *, owner: str | None = None, idempotency_key: str | None = None
    ) -> JobView:
        if not self._accepting:
            raise NotReady("the server is shutting down and accepts no new jobs")
        await self._check_webhook(draft)
        if idempotency_key is None:
            return await self._submit_new(draft, owner, uuid.uuid4().hex)
        return await self._submit_once(draft, owner, self._keys.idempotency(owner, idempotency_key))

    async def _submit_once(self, draft: JobDraft, owner: str | None, key: str, tries: int = 3) -> JobView:
        """The key is taken before anything else (``pending:<id>``, short-lived), so of two concurrent
        submits with one key exactly one makes a job; the other waits for that job and returns it.
        A key whose submit failed is freed; a key whose job expired is replaced."""
        job_id = uuid.uuid4().hex
        first = text(await self._call(self._redis.set(key, f"{PENDING}{job_id}", nx=True, get=True,
                                                      px=PENDING_MS)))
        if first is None:
            try:
                view = await self._submit_new(draft, owner, job_id)
            except BaseException:
                with contextlib.suppress(RedisError, OSError):
                    if text(await self._redis.get(key)) == f"{PENDING}{job_id}":
                        await self._redis.delete(key)
                raise
            await self._call(self._redis.set(key, job_id, px=ttl_ms(self._settings) + 3_600_000))
            return view
        deadline = time.monotonic() + PENDING_MS / 1000
        while first is not None and first.startswith(PENDING) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the first submit is still checking its images
            first = text(await self._call(self._redis.get(key)))
        if first is not None and not first.startswith(PENDING):
            with contextlib.suppress(JobNotFound):
                return await self.get(first, owner=owner)
            await self._call(self._redis.delete(key))  # its job expired: the key is free again
        if tries <= 1:
            raise NotReady("another submit with this Idempotency-Key is still being accepted; try again")
        return await self._submit_once(draft, owner, key, tries - 1)

    async def _submit_new(self, draft: JobDraft, owner: str | None, job_id: str) -> JobView:
        # The fleet as read at most FLEET_CACHE_SECONDS ago: a submit costs one round trip to Redis
        # (the SUBMIT script), not two, and no re-parse of every worker's registration. It may accept
        # on a slightly old view (the script still refuses a full queue atomically), but it never
        # refuses on one: a refusal is checked again against the fleet as Redis has it now.
        fleet, fresh = await self._fleet_for_submit()
        try:
            model = self._place(draft, fleet)
        except SdworkerError:
            if fresh:
                raise
            fleet, fresh = await self.fleet(fresh=True), True
            model = self._place(draft, fleet)
        if not fresh and (decodes_images(draft.request) or not ready_for(model, fleet)):
            # The old view is trusted only to accept a job that a ready worker can take and that costs
            # nothing to check: a worker just failed (503) or a queue just filled (429, before images
            # are decoded) is seen as Redis has it now.
            fleet, fresh = await self.fleet(fresh=True), True
            model = self._place(draft, fleet)
        if fleet.library:  # the prompt counted as the model's worker counts it (its registered tokenizer)
            await self._call(self._prompt_counters.check(draft.request, library_entry(model, fleet)))
        quota = await self._check_quota(draft, owner)
        check = functools.partial(
            check_inputs, draft.request, max_pixels=self._settings.max_pixels, default_size=native_size(model, fleet),
            defaults=family_defaults(model, fleet),
        )
        # Decoding images takes milliseconds to seconds and goes to a thread; a request without any is
        # checked here (a thread hop would cost more than the check, and under load the handover of
        # the GIL to the pool thread and back was the largest part of a submit's time).
        checked = await asyncio.to_thread(check) if decodes_images(draft.request) else check()
        try:
            check_worker_limits(checked, model, fleet)
        except InvalidRequest:
            if fresh:
                raise
            fleet = await self.fleet(fresh=True)
            check_worker_limits(checked, model, fleet)
        spec = build_spec(draft, checked, job_id=job_id, created_at=time.time(), owner=owner, model=model,
                          entry=library_entry(model, fleet))
        await self._take_rate(quota, owner, job_id)
        if owner is not None and quota is not None and quota.max_queued is not None:
            await self._call(self._redis.zadd(self._keys.owner_queued(owner), {job_id: spec.created_at}))
        if spec.webhook is not None:
            await self._call(self._webhooks.watch(job_id, spec.created_at))  # before the job: never missed
        if spec.deadline_at is not None:
            # Before the job exists: an entry whose submit then fails finds no job and is dropped.
            await self._call(self._redis.zadd(self._keys.deadlines, {job_id: spec.deadline_at}))
        # The spec the job keeps once it finished, beside the spec it runs with: every terminal script
        # swaps it in, so the one definition of a finished job's spec is without_inputs.
        spec_json, done_spec_json = json.dumps(spec.to_dict()), json.dumps(without_inputs(spec).to_dict())
        position = await self._call(
            self._submit(
                keys=[
                    self._keys.job(job_id),
                    self._keys.events(job_id),
                    self._keys.queued,
                    self._keys.queued_model(model),
                    self._keys.queue(model),
                    self._keys.jobs,
                    self._keys.models,
                ],
                args=[job_id, spec_json, owner or "", model, spec.created_at,
                      self._settings.max_queue, spec.request.num_inference_steps, EVENTS_MAXLEN,
                      self._settings.max_results, batch_key_text(spec.request), spec.priority,
                      done_spec_json if done_spec_json != spec_json else "", self._settings.max_result_bytes],
            )
        )
        if int(position) < 0:
            raise self._queue_full()
        await self._durable()
        self._metrics.jobs_submitted.inc()
        total = spec.request.num_inference_steps or 0  # settled by check_inputs
        return JobView(spec=spec, status=JobStatus.QUEUED, total=total, queue_position=int(position))

    def _place(self, draft: JobDraft, fleet: FleetInfo) -> str:
        """The queue (model) a job goes to on ``fleet`` (fleet.place), if that queue has room."""
        model = place(draft, fleet, self._settings)
        if fleet.queue_depth >= self._settings.max_queue:
            raise self._queue_full()
        return model

    async def _read_fleet(self) -> FleetInfo:
        return await read_fleet(self._redis, self._keys, self._settings, self._call)

    async def _fleet_for_submit(self) -> tuple[FleetInfo, bool]:
        """The cached fleet while it is young enough, else a fresh read; and whether it is fresh."""
        if self._fleet is not None and time.monotonic() - self._fleet[0] < FLEET_CACHE_SECONDS:
            return self._fleet[1], False
        return await self.fleet(fresh=True), True

    async def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        fields = await self._call(self._redis.hgetall(self._keys.job(job_id)))
        return await self._view(job_id, fields, owner)

    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[JobView]:
        start = 0
        if before is not None:
            rank = await self._call(self._redis.zrevrank(self._keys.jobs, before))
            if rank is None:
                return []
            start = int(rank) + 1
        return await self._views(self._keys.jobs, owner=owner, limit=limit, start=start)

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        return await self._control(job_id, "cancel", owner)

    async def interrupt(self, job_id: str, *, owner: str | None = None) -> JobView:
        return await self._control(job_id, "interrupt", owner)

    async def open_stream(self, job_id: str, after: int = 0, *, owner: str | None = None) -> Subscription | None:
        # A job this node already streams was checked when its channel opened: its owner never changes,
        # so the thousandth watcher of a job costs no Redis read (the hub forgets idle channels, and
        # the owner with them: a later watcher of an expired job is checked again).
        if self._hub.streams(job_id) and job_id in self._stream_owners:
            if owner is not None and self._stream_owners[job_id] != owner:
                raise JobNotFound(f"no job {job_id!r} (unknown, or its result expired)", field="job_id")
        else:
            stored_owner = await self._owned(job_id, owner, shared=True)
            self._stream_owners[job_id] = stored_owner
            while len(self._stream_owners) > STREAM_OWNERS_KEPT:
                self._stream_owners.pop(next(iter(self._stream_owners)))
        return await self._call(self._hub.subscribe(job_id, after))

    async def wait(self, job_id: str, *, owner: str | None = None, timeout: float | None = None) -> JobView:
        async with asyncio.timeout(timeout):
            view = await self.get(job_id, owner=owner)
            if view.status.finished:
                return view
            # Not counted as a watcher: a caller waiting for the outcome sees no preview.
            sub = await self._call(self._hub.subscribe(job_id, 0, counted=False))
            if sub is not None:
                try:
                    while (event := await sub.next(timeout=self._settings.keepalive_seconds + 5)) is not None:
                        if ends_stream(event):
                            break
                except TimeoutError:
                    pass
                finally:
                    sub.close()
            while not (view := await self.get(job_id, owner=owner)).status.finished:
                await asyncio.sleep(0.25)
            return view

    async def image(self, job_id: str, index: int = 0, *, owner: str | None = None) -> bytes:
        view = await self.get(job_id, owner=owner)
        if view.status is not JobStatus.COMPLETED:
            raise JobNotFinished(f"job {job_id} is {view.status.value}; it has no image", field="job_id")
        if not 0 <= index < view.image_count:
            raise JobNotFound(f"index must be in 0..{view.image_count - 1}, got {index}", field="index")
        data = await self._call(self._redis.get(self._keys.image(job_id, index)))
        png = await self.results.png(None if data is None else bytes(data))
        if png is None:
            raise JobNotFound(f"the image of job {job_id!r} expired", field="job_id")
        return png

    def webhook_secrets(self, owner: str | None) -> tuple[str, ...]:
        secrets = server_secrets(self._settings)
        if not secrets:
            raise NotReady(NO_FLEET_SECRET)
        return tuple(owner_secret(secret, owner) for secret in secrets)

    async def webhook_messages(self, job_id: str, *, owner: str | None = None) -> list[WebhookMessage]:
        await self.get(job_id, owner=owner)
        return await self._call(self._webhooks.messages(job_id))

    def render_webhooks_with(self, render: Callable[[JobView], dict[str, Any]]) -> None:
        self._webhooks.render = render

    def use_quotas(self, lookup: QuotaLookup) -> None:
        self._quota = lookup

    async def _check_quota(self, draft: JobDraft, owner: str | None) -> KeyQuota | None:
        """The keys file's quotas, counted in Redis so every API node sees the same counts."""
        quota = self._quota(owner)
        check_priority(quota, owner, draft.priority)
        if quota is None or owner is None:
            return quota
        if quota.max_queued is not None:
            check_queued(quota, await self._queued_of(owner))
        return quota

    async def _queued_of(self, owner: str) -> int:
        """The owner's queued jobs: its list at submit, pruned of the jobs that have left the queue."""
        key = self._keys.owner_queued(owner)
        ids = [text(i) or "" for i in await self._call(self._redis.zrange(key, 0, -1))]
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._keys.job(job_id), "state")
            states = await self._call(pipe.execute())
        gone = [job_id for job_id, state in zip(ids, states, strict=True) if state != b"queued"]
        if gone:
            await self._call(self._redis.zrem(key, *gone))
        return len(ids) - len(gone)

    async def _take_rate(self, quota: KeyQuota | None, owner: str | None, job_id: str) -> None:
        if quota is None or quota.rate is None or owner is None:
            return
        key, now = self._keys.owner_rate(owner), time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - RATE_WINDOW_SECONDS)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zcard(key)
            _, oldest, count = await self._call(pipe.execute())
        if count >= quota.rate:
            raise rate_exceeded(quota, oldest[0][1] + RATE_WINDOW_SECONDS - now if oldest else RATE_WINDOW_SECONDS)
        await self._call(self._redis.zadd(key, {job_id: now}))
        await self._call(self._redis.pexpire(key, int(RATE_WINDOW_SECONDS * 1000)))

    async def _check_webhook(self, draft: JobDraft) -> None:
        if draft.webhook is None:
            return
        if not server_secrets(self._settings):
            # Every API node must sign alike, so a fleet needs a shared secret; none is made up here.
            raise InvalidRequest(f"webhook: {NO_FLEET_SECRET}", field="webhook")
        allow_private = self._settings.webhook_allow_private
        await asyncio.to_thread(check_target, draft.webhook.url, allow_private=allow_private)

    async def fleet(self, *, fresh: bool = False) -> FleetInfo:
        now = time.monotonic()
        if not fresh and self._fleet is not None and now - self._fleet[0] < FLEET_CACHE_SECONDS:
            return self._fleet[1]
        fleet = await self._read_fleet()
        self._fleet = (now, fleet)
        for status in ("starting", "ready", "busy", "stopping", "failed"):
            self._metrics.fleet_workers.labels(status=status).set(sum(1 for w in fleet.workers if w.status == status))
        return fleet

    async def refresh_models(self) -> None:
        """Per worker: set the refresh flag; each live worker rescans its folders at its next registry
        beat (``lease_heartbeat_seconds``) and lists what it found. Answers before they have."""
        await self._call(self._redis.set(self._keys.models_refresh, repr(time.time())))
        self._fleet = None

    async def dead_letters(self, *, limit: int = 100) -> list[JobView]:
        return await self._views(self._keys.dead, owner=None, limit=limit)

    async def requeue(self, job_id: str) -> JobView:
        score = await self._call(self._redis.zscore(self._keys.dead, job_id))
        if score is None:
            raise JobNotFound(f"no dead-lettered job {job_id!r}", field="job_id")
        old = await self.get(job_id)
        spec = old.spec
        dropped = dropped_input(spec)
        if dropped is not None:
            raise InputsDropped(
                f"job {job_id!r} ended without its input images ({dropped} among them), as every finished job "
                "does; submit it again with its images",
                field=dropped,
            )
        # Its webhook and priority go with it; a deadline was relative to the first submit, long past.
        draft = JobDraft(spec.request, preview=spec.preview, hive_id=spec.hive_id, worker_id=spec.worker_id,
                         webhook=spec.webhook, priority=spec.priority)
        view = await self.submit(draft, owner=spec.owner)
        await self._call(self._redis.zrem(self._keys.dead, job_id))
        return view

    async def readiness(self) -> tuple[bool, str | None]:
        try:
            await asyncio.wait_for(self._redis.ping(), timeout=2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            return False, f"Redis at {redacted(self._settings.redis_url or '')} is unreachable ({type(exc).__name__})"
        if not self._accepting:
            return False, "the server is shutting down"
        return True, None

    def retry_after_seconds(self) -> int:
        return max(1, min(300, math.ceil(5.0)))

    async def start(self) -> None:
        self._hub.start()
        await self._webhooks.start()
        self.housekeeping.start()

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, *, reject_queued: bool) -> None:
        self._accepting = False  # queued jobs stay: the fleet runs them

    async def close_streams(self) -> None:
        """Jobs that finished just before (the local runner's last job) first get their terminal
        event through the hub, within a bound; every other stream simply ends, and its watcher
        reconnects to another node with Last-Event-ID."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(3.0):
                for job_id in self.bus.channels():
                    while not self.bus.is_finished(job_id):
                        state = await self._redis.hget(self._keys.job(job_id), "state")
                        if state not in (b"completed", b"failed", b"cancelled"):
                            break
                        await asyncio.sleep(0.02)
        self.bus.close_all(stream_closing(
            "this API node is stopping; the job goes on in the fleet: reconnect (to any node) with Last-Event-ID"
        ))

    async def close(self) -> None:
        self.bus.close_all()
        await self.housekeeping.close()
        await self._webhooks.close()
        await self._hub.close()
        for client in (self._redis, self._reader):
            try:
                await client.aclose()
            except Exception:
                log.debug("closing a Redis client failed", exc_info=True)

    # --- internals -----------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Redis errors as 503s that say what is wrong (never the URL's password)."""
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            where = redacted(self._settings.redis_url or "")
            raise NotReady(f"the job store (Redis at {where}) is unavailable: {type(exc).__name__}") from None

    async def _durable(self) -> None:
        """On Redis 7.2+ with AOF on, wait until the job is fsynced before answering 202."""
        if not self._waitaof:
            return
        try:
            await self._redis.execute_command("WAITAOF", 1, 0, 200)
        except ResponseError:
            self._waitaof = False  # an older server, or AOF off: the server's fsync policy applies
        except (RedisError, OSError):
            pass

    def _queue_full(self) -> QueueFull:
        return QueueFull(
            f"the fleet's queue is full ({self._settings.max_queue} jobs waiting); try again later",
            retry_after_seconds=self.retry_after_seconds(),
        )

    async def _owned(self, job_id: str, owner: str | None, *, shared: bool = False) -> str | None:
        """The job's owner, after checking the job exists and ``owner`` (if given) is it.

        ``shared``: callers asking about one job at once share one read. A thousand watchers that
        connect together all arrive before the job's channel is open; each reading on its own put a
        thousand commands in front of the node's few pooled connections, and under load the last
        waited past the pool's timeout and got a 503."""
        if not shared:
            stored = await self._call(self._redis.hmget(self._keys.job(job_id), ["state", "owner"]))
        else:
            read = self._owner_reads.get(job_id)
            if read is None:
                read = asyncio.ensure_future(self._call(self._redis.hmget(self._keys.job(job_id), ["state", "owner"])))
                self._owner_reads[job_id] = read
                read.add_done_callback(lambda _: self._owner_reads.pop(job_id, None))
            stored = await asyncio.shield(read)
        if stored[0] is None or (owner is not None and text(stored[1]) != owner):
            raise JobNotFound(f"no job {job_id!r} (unknown, or its result expired)", field="job_id")
        return text(stored[1])

    async def _view(self, job_id: str, fields: dict[bytes, bytes], owner: str | None) -> JobView:
        if not fields or b"spec" not in fields or (owner is not None and text(fields.get(b"owner")) != owner):
            raise JobNotFound(f"no job {job_id!r} (unknown, or its result expired)", field="job_id")
        position = None
        if fields.get(b"state") == b"queued":
            # In the claim order (fair.py): O(owners waiting at the job's priority), computed now.
            found = await self._call(self._position(keys=[self._keys.job(job_id)], args=[job_id]))
            position = int(found) if found else None
        watchers = 0
        if fields.get(b"state") in (b"running", b"cancelling", b"queued"):
            counts = await self._call(self._redis.hvals(self._keys.watchers(job_id)))
            watchers = sum(int(c) for c in counts)
        return job_view(fields, position=position, watchers=watchers)

    async def _views(self, index_key: str, *, owner: str | None, limit: int, start: int = 0) -> list[JobView]:
        ids = [text(i) or "" for i in await self._call(self._redis.zrevrange(index_key, start, start + limit * 4 - 1))]
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._keys.job(job_id))
            rows = await self._call(pipe.execute())
        views: list[JobView] = []
        gone = []
        for job_id, fields in zip(ids, rows, strict=True):
            if not fields:
                gone.append(job_id)
                continue
            if owner is not None and text(fields.get(b"owner")) != owner:
                continue
            views.append(await self._view(job_id, fields, None))
            if len(views) >= limit:
                break
        if gone:
            await self._call(self._redis.zrem(index_key, *gone))  # expired results leave the index
        return views

    async def _control(self, job_id: str, mode: str, owner: str | None) -> JobView:
        view = await self.get(job_id, owner=owner)
        if rule(view.status, Action.INTERRUPT if mode == "interrupt" else Action.CLIENT_CANCEL) is None:
            return view  # nothing to do (a finished job): no script, the CANCEL script would say the same
        model = view.spec.request.model or ""
        state = await self._call(
            self._cancel(
                keys=[
                    self._keys.job(job_id),
                    self._keys.events(job_id),
                    self._keys.preview(job_id),
                    self._keys.queue(model),
                    self._keys.queued,
                    self._keys.queued_model(model),
                ],
                args=[mode, job_id, ttl_ms(self._settings), EVENTS_MAXLEN, self._keys.control],
            )
        )
        if text(state) == "cancelled":
            self._metrics.jobs_finished.labels(outcome="cancelled").inc()
            await self._call(self._positions(keys=[self._keys.watched(model)], args=[self._keys.prefix, EVENTS_MAXLEN]))
        return await self.get(job_id, owner=owner)
