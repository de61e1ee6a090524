"""``StreamHub``: one Redis reader per API node for every job watched on that node, fanned out in
process through the ``EventBus``.

A thousand watchers of one job on one node cost one channel in the bus and one stream key in the
hub's single blocking ``XREAD`` (on its own connection), not a thousand Redis connections. When a
job gets its first local watcher the hub loads the job's history (``XRANGE``) into the bus, then
reads on from the last id it has; a new job interrupts the blocking read (``CLIENT UNBLOCK``) so its
live events are not delayed. Channels nobody has watched for ``IDLE_SECONDS`` are forgotten.

Watchers are also advertised to the workers (``P:job:{id}:w``, node -> count, short TTL): a worker
decodes previews only while somebody, on any node, watches; and a watched queued job joins its
model's ``P:watchq:{model}``, the only jobs told their new position when the queue moves.

If Redis goes away, every watched stream gets a ``notice`` (no id, not replayed) and the hub retries
with back-off; when Redis is back it reads on from the last id, so no event is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from sdworker.events.bus import EventBus, Subscription
from sdworker.events.types import JobEvent, StreamNotice, ends_stream
from sdworker.stores.redis import scripts
from sdworker.stores.redis.codec import decode_event, seq_of, text
from sdworker.stores.redis.keys import Keys
from sdworker.stores.redis.results import FleetResults

log = logging.getLogger(__name__)

BLOCK_MS = 5000
IDLE_SECONDS = 10.0
WATCH_TTL_SECONDS = 10
WATCH_REFRESH_SECONDS = 3.0


class StreamHub:
    def __init__(self, client: Any, reader: Any, keys: Keys, bus: EventBus, node_id: str,
                 results: FleetResults) -> None:
        self._redis = client
        self._results = results  # the final PNGs: in Redis, or fetched from the bucket
        self._reader = reader  # single connection: the only one that blocks
        self._keys = keys
        self._bus = bus
        self._node_id = node_id
        self._last: dict[str, int] = {}  # job -> last seq read
        self._idle_since: dict[str, float] = {}
        self._advertised: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._reader_id: int | None = None
        self._blocked = False
        self._task: asyncio.Task[None] | None = None
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._down_since: float | None = None
        self._watch = client.register_script(scripts.WATCH)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sdworker-redis-hub")

    async def close(self) -> None:
        if self._task is not None:
            # Bounded: on Python 3.11 a cancel that meets a timeout's expiry can be lost, so a second
            # cancel follows instead of waiting forever.
            for _ in range(3):
                self._task.cancel()
                done, _ = await asyncio.wait({self._task}, timeout=1.0)
                if done:
                    break
        with contextlib.suppress(Exception):
            await self._clear_advertised()

    def streams(self, job_id: str) -> bool:
        """The job's channel is open on this node (its history loaded, its events read on)."""
        return job_id not in self._loading and self._bus.knows(job_id)

    async def subscribe(self, job_id: str, after: int, *, counted: bool = True) -> Subscription | None:
        if job_id in self._loading or not self._bus.knows(job_id):
            await self._load_once(job_id)
        if self._bus.is_finished(job_id) and after >= self._bus.last_seq(job_id):
            return None
        sub = self._bus.subscribe(job_id, after, counted=counted)
        self._idle_since.pop(job_id, None)
        if counted and not self._bus.is_finished(job_id):
            await self._advertise(job_id)
        return sub

    async def _load_once(self, job_id: str) -> None:
        """Many watchers arriving at once for a job new to this node share one history load (one
        ``XRANGE``), instead of each loading it on its own connection."""
        task = self._loading.get(job_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(job_id), name=f"sdworker-load-{job_id}")
            self._loading[job_id] = task
            task.add_done_callback(lambda _: self._loading.pop(job_id, None))
        await asyncio.shield(task)

    async def _load(self, job_id: str) -> None:
        # Everything that can fail comes before the channel opens: a failed load leaves nothing
        # behind, so the next watcher loads again (an open channel without a reader would hang it).
        entries = await self._redis.xrange(self._keys.events(job_id), "-", "+")
        events = await self._decode(job_id, entries)
        self._bus.open(job_id)
        for event in events:
            self._bus.accept(event)
        self._last[job_id] = seq_of(entries[-1][0]) if entries else 0
        if not self._bus.is_finished(job_id):
            self._wake.set()
            await self._unblock()

    async def _decode(self, job_id: str, entries: list[Any]) -> list[JobEvent]:
        if not entries:
            return []
        kinds = {text(fields.get(b"t")) for _, fields in entries}
        preview = None
        if "preview" in kinds:
            seq, image = await self._redis.hmget(self._keys.preview(job_id), ["seq", "image"])
            if seq is not None and image is not None:
                preview = (int(seq), bytes(image))
        images: tuple[bytes, ...] = ()
        if "complete" in kinds:
            count = int(await self._redis.hget(self._keys.job(job_id), "images") or 0)
            keys = [self._keys.image(job_id, i) for i in range(count)]
            values = await self._redis.mget(keys) if keys else []
            pngs = [await self._results.png(bytes(v)) for v in values if v is not None]
            images = tuple(png for png in pngs if png is not None)
        events = []
        for entry_id, fields in entries:
            event = decode_event(job_id, entry_id, fields, preview, images)
            if event is not None:
                events.append(event)
        return events

    async def _unblock(self) -> None:
        if self._blocked and self._reader_id is not None:
            with contextlib.suppress(RedisError):
                await self._redis.client_unblock(self._reader_id)

    def _active(self) -> dict[str, int]:
        return {job: seq for job, seq in self._last.items() if self._bus.knows(job) and not self._bus.is_finished(job)}

    async def _run(self) -> None:
        backoff = 0.2
        last_refresh = 0.0
        while True:
            try:
                if self._reader_id is None:
                    self._reader_id = int(await self._reader.client_id())
                active = self._active()
                now = time.monotonic()
                if now - last_refresh >= WATCH_REFRESH_SECONDS:
                    last_refresh = now
                    await self._refresh_watchers()
                    self._forget_idle(now)
                if not active:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(WATCH_REFRESH_SECONDS):  # wait_for can swallow a cancel
                            await self._wake.wait()
                    continue
                streams = {self._keys.events(job): f"0-{seq}" for job, seq in active.items()}
                self._blocked = True
                try:
                    result = await self._reader.xread(streams, block=BLOCK_MS)
                finally:
                    self._blocked = False
                for key, entries in result or []:
                    job_id = text(key).split(":job:", 1)[1].rsplit(":ev", 1)[0]  # type: ignore[union-attr]
                    await self._deliver(job_id, entries)
                if self._down_since is not None:
                    log.info("Redis is back after %.0f s; streams resume", time.monotonic() - self._down_since)
                    self._down_since = None
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._reader_id = None
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("Redis unavailable (%s); streams wait for it", type(exc).__name__)
                    for job_id in self._active():
                        self._bus.notify(
                            job_id,
                            StreamNotice(
                                job_id=job_id,
                                code="redis_unavailable",
                                message="the job store is unreachable; this stream resumes when it is back",
                            ),
                        )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("the Redis stream hub failed; retrying")
                await asyncio.sleep(1.0)

    async def _deliver(self, job_id: str, entries: list[Any]) -> None:
        if not entries or not self._bus.knows(job_id):
            return
        # Deliver first, then advance: a Redis error while decoding leaves ``_last`` where it was, so
        # the next read returns the same entries (the terminal event is never skipped).
        events = await self._decode(job_id, entries)
        for event in events:
            self._bus.accept(event)
        self._last[job_id] = max(self._last.get(job_id, 0), seq_of(entries[-1][0]))
        if any(ends_stream(event) for event in events):
            await self._withdraw(job_id)

    async def _advertise(self, job_id: str) -> None:
        """Tell the workers how many watch here. Only when the answer to "does anybody watch?" changes
        (a worker asks no more): a thousand watchers connecting cost one write, not a thousand;
        ``_refresh_watchers`` sends the exact count every few seconds."""
        count = self._bus.subscriber_count(job_id)
        previous = self._advertised.get(job_id)
        if previous is not None and (previous > 0) == (count > 0):
            return
        # Recorded before the write, so the watchers that subscribe while it is in flight do not each
        # send one too (a thousand at once did); forgotten if it fails, so the next one sends it.
        self._advertised[job_id] = count
        keys = [self._keys.watchers(job_id), self._keys.job(job_id)]
        try:
            await self._watch(keys=keys, args=[self._node_id, count, WATCH_TTL_SECONDS, self._keys.prefix, job_id])
        except BaseException:
            if self._advertised.get(job_id) == count:
                self._advertised.pop(job_id, None)
            raise

    async def _withdraw(self, job_id: str) -> None:
        if self._advertised.pop(job_id, None) is not None:
            await self._redis.hdel(self._keys.watchers(job_id), self._node_id)

    async def _refresh_watchers(self) -> None:
        for job_id in list(self._active()):
            self._advertised.pop(job_id, None)  # re-send: the key's TTL needs refreshing anyway
            await self._advertise(job_id)

    async def _clear_advertised(self) -> None:
        for job_id in list(self._advertised):
            await self._withdraw(job_id)

    def _forget_idle(self, now: float) -> None:
        for job_id in list(self._last):
            if not self._bus.knows(job_id):
                self._last.pop(job_id, None)
                continue
            if self._bus.subscriber_count(job_id) > 0:
                self._idle_since.pop(job_id, None)
                continue
            since = self._idle_since.setdefault(job_id, now)
            if now - since >= IDLE_SECONDS:
                self._bus.forget(job_id)
                self._last.pop(job_id, None)
                self._idle_since.pop(job_id, None)
                self._advertised.pop(job_id, None)
