"""Where a fleet's final PNGs live: in Redis (``P:job:{id}:img:{n}`` holds the PNG, the default), or,
with ``--results-s3``, in the bucket, with Redis holding only ``ref:`` + the object key in the same
place. Redis memory then no longer grows with image sizes.

The worker uploads before its finish script runs (so a job is never ``completed`` with an image that
is not there yet) and records each object in ``P:results:expiry``, scored by the job's expiry. Redis
forgets the job by key TTL, which calls nothing back, so the API nodes' sweep deletes the objects
whose time has come; an object of a job whose finish was fenced off (a zombie's) is swept too.
Every node of a fleet needs the same ``--results-s3``: a node without it reads a ``ref:`` value as
an image it cannot fetch, and answers that the image is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sdworker.errors import NotReady
from sdworker.stores.redis.keys import Keys
from sdworker.stores.results import ResultStore

log = logging.getLogger(__name__)

REF = b"ref:"  # a PNG starts with b"\x89PNG": the two never meet
SWEEP_BATCH = 500


class FleetResults:
    def __init__(self, results: ResultStore | None, keys: Keys, redis: Any) -> None:
        self.store = results
        self._keys = keys
        self._redis = redis

    async def values(self, job_id: str, images: tuple[bytes, ...], ttl_seconds: float) -> list[bytes]:
        """What the finish script writes for each image: the PNG itself, or (uploaded) its reference."""
        store = self.store
        if store is None or not images:
            return list(images)
        refs = [await asyncio.to_thread(store.put, job_id, i, png) for i, png in enumerate(images)]
        expires = time.time() + ttl_seconds
        await self._redis.zadd(self._keys.results_expiry, dict.fromkeys(refs, expires))
        return [REF + ref.encode() for ref in refs]

    async def png(self, value: bytes | None) -> bytes | None:
        """The PNG a stored value stands for (None: gone, or in a bucket this node does not know)."""
        if value is None or not value.startswith(REF):
            return value
        if self.store is None:
            log.warning("an image is in a result store this node was not given (--results-s3)")
            return None
        return await asyncio.to_thread(self.store.get, value[len(REF):].decode())

    async def sweep(self) -> int:
        """Delete the objects of expired jobs; how many. Every API node sweeps: deleting twice is harmless."""
        if self.store is None:
            return 0
        due = await self._redis.zrangebyscore(self._keys.results_expiry, "-inf", time.time(), start=0, num=SWEEP_BATCH)
        if not due:
            return 0
        refs = [bytes(ref).decode() for ref in due]
        try:
            await asyncio.to_thread(self.store.delete, refs)
        except NotReady as exc:
            log.warning("expired results not deleted yet: %s", exc)
            return 0
        await self._redis.zrem(self._keys.results_expiry, *due)
        return len(refs)
