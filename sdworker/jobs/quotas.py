"""Per-key quotas at submit (the keys file's ``priority``, ``max_queued`` and ``rate``; ``KeyQuota``).

One rule for every store; what differs is only where the counts live: the one-process service counts
in memory (``QuotaGate`` below), a Redis fleet in Redis (``stores/redis/service.py``), so every API
node sees the same counts. ``lookup`` is the key ring's (``api/auth.py: KeyRing.quota``), so a SIGHUP
that re-reads the keys file changes quotas at once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from sdworker.errors import InvalidRequest, QuotaExceeded
from sdworker.settings import KeyQuota

RATE_WINDOW_SECONDS = 60.0
QuotaLookup = Callable[[str | None], KeyQuota | None]


def no_quota(owner: str | None) -> KeyQuota | None:
    return None


def check_priority(quota: KeyQuota | None, owner: str | None, priority: int) -> None:
    """A key may ask up to its ``priority``; without a keys-file entry only an unauthenticated caller
    or an admin key (owner None) may ask for more than 0."""
    allowed = quota.priority if quota is not None else (100 if owner is None else 0)
    if priority > allowed:
        raise InvalidRequest(f"priority: this API key may ask for at most {allowed}, got {priority}", field="priority")


def check_queued(quota: KeyQuota | None, queued: int) -> None:
    if quota is not None and quota.max_queued is not None and queued >= quota.max_queued:
        raise QuotaExceeded(
            f"max_queued: this API key already has {queued} jobs waiting, its quota is {quota.max_queued}; "
            "try again when one has started",
            field="max_queued", retry_after_seconds=5,
        )


def rate_exceeded(quota: KeyQuota, retry_after_seconds: float) -> QuotaExceeded:
    return QuotaExceeded(
        f"rate: this API key may submit {quota.rate} jobs a minute; try again in {math.ceil(retry_after_seconds)} s",
        field="rate", retry_after_seconds=max(1, math.ceil(retry_after_seconds)),
    )


class RateWindow:
    """Submits per owner in the last minute, in one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: dict[str, deque[float]] = {}

    def take(self, quota: KeyQuota | None, owner: str | None) -> None:
        """Count one submit of ``owner``, or raise ``QuotaExceeded`` (``rate``) when over its rate."""
        if quota is None or quota.rate is None or owner is None:
            return
        now = self._clock()
        times = self._times.setdefault(owner, deque())
        while times and times[0] <= now - RATE_WINDOW_SECONDS:
            times.popleft()
        if len(times) >= quota.rate:
            raise rate_exceeded(quota, times[0] + RATE_WINDOW_SECONDS - now)
        times.append(now)
