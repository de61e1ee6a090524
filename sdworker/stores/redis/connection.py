"""Connecting to Redis, for API nodes and workers alike: clients that fail fast instead of hanging,
survive a Redis restart, and name themselves; and the few numbers every Redis side shares."""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from sdworker.settings import Settings

EVENTS_MAXLEN = 4096  # a job writes about 2 events per step; steps are capped far below this
POOL_CONNECTIONS = 4  # per client; see connect()
HEALTH_CHECK_SECONDS = 5


def connect(url: str, *, name: str, timeout_seconds: float = 5.0, single: bool = False) -> Any:
    """A client whose calls fail after ``timeout_seconds`` instead of hanging on a dead server.

    The shared client's pool is bounded (``POOL_CONNECTIONS``) and blocking: a burst of requests
    (200 watchers opening their streams at once) waits a moment for a connection instead of opening
    one each, so a node holds a few Redis connections whatever its load. Commands take well under a
    millisecond; a connection not free within ``timeout_seconds`` is a 503 like any Redis failure.
    Every connection carries ``name`` (``CLIENT SETNAME``), so ``CLIENT LIST`` shows which node or
    worker holds it.

    After a Redis restart every pooled connection is stale, and the first command on each would fail
    (a 503 on every API node): a connection idle for ``HEALTH_CHECK_SECONDS`` is PINGed before use,
    and a ``ConnectionError`` (the socket broke, so nothing of the command ran on the new server) is
    retried once on a fresh connection. A timeout, where the server may have run the command, is
    never retried: a retried submit must not queue a job twice."""
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout_seconds,
        "socket_timeout": None if single else timeout_seconds,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        "client_name": re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:100],
    }
    if single:
        return aioredis.Redis.from_url(url, single_connection_client=True, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_CONNECTIONS, timeout=timeout_seconds, **options
    )
    return aioredis.Redis(connection_pool=pool)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def ttl_ms(settings: Settings) -> int:
    """Results expire ``result_ttl_seconds`` after the job ends (milliseconds for PEXPIRE)."""
    return max(1, int(settings.result_ttl_seconds * 1000))


def live_window_seconds(settings: Settings) -> float:
    return max(3.0 * settings.lease_heartbeat_seconds, 10.0)
