"""Webhooks of a Redis fleet, sent by the API nodes; the outbox is in Redis, so a node's death loses none.

Jobs with a ``webhook`` are listed in ``P:wh:jobs``. Every API node runs a ``RedisWebhookRelay``; for a
job, one node at a time holds a short lease (``P:wh:lease:{id}``, renewed while it works), so a job's
webhooks go out once and in order, and when that node dies its lease runs out (after
``--claim-idle-seconds``, the fleet's one "a dead node's work is taken over" time) and another node
goes on from where the outbox says.

The outbox of a job is ``P:job:{id}:wh`` (a hash): ``cursor``, the last event of the job's event
stream turned into messages, ``due``, when its first pending message is to be tried, and one field
per message (``WebhookMessage`` as JSON). A message's id is
made from the job and its event's seq (``msg_<job>_<seq>``), so a node that takes over after a death
writes exactly the message the dead node would have: same ``webhook-id``, and receivers dedupe. The
body is the job's view when the relay reads the event (normally within a fraction of a second).

Delivery is the one-process outbox's rule (``jobs/outbox.py``): in order per job, signed afresh per
attempt, retried after 2, 4, 8 ... s up to ``--webhook-max-attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from sdworker.errors import InvalidRequest
from sdworker.jobs.outbox import WebhookMessage, iso_now
from sdworker.jobs.state import JobStatus, JobView
from sdworker.settings import Settings
from sdworker.stores.redis.codec import text
from sdworker.stores.redis.keys import Keys
from sdworker.webhooks.delivery import TIMEOUT, Attempt, backoff_seconds, deliver
from sdworker.webhooks.signing import owner_secret
from sdworker.webhooks.targets import check_target

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
PROGRESS_SECONDS = 1.0
JOBS_PER_ROUND = 100
_EVENTS = {"started": "start", "progress": "progress", "end": "completed"}


class RedisWebhookRelay:
    def __init__(
        self,
        redis: Any,
        keys: Keys,
        settings: Settings,
        secrets: tuple[str, ...],
        node_id: str,
        view: Callable[[str], Any],
    ) -> None:
        """``view``: an async function giving a job's ``JobView`` (the service's ``get``)."""
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._secrets = secrets
        self._node_id = node_id
        self._view = view
        self.render: Callable[[JobView], dict[str, Any]] = lambda v: {"job_id": v.job_id, "status": v.status.value}
        self._task: asyncio.Task[None] | None = None
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._lease_ms = max(1000, int(settings.claim_idle_seconds * 1000))

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sdw-webhooks")

    async def close(self) -> None:
        # The flag ends the relay loop even if a cancellation is swallowed inside a Redis call (seen as
        # a shutdown that never finished); the wait is bounded for the same reason.
        self._stopping = True
        tasks = [t for t in (self._task, *self._busy.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def watch(self, job_id: str, created_at: float) -> None:
        """List a job whose webhooks this fleet owes (at submit)."""
        await self._redis.zadd(self._keys.webhook_jobs, {job_id: created_at})

    async def messages(self, job_id: str) -> list[WebhookMessage]:
        fields = await self._redis.hgetall(self._keys.webhooks(job_id))
        return _messages(fields)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            while not self._stopping:
                try:
                    ids = await self._redis.zrange(self._keys.webhook_jobs, 0, JOBS_PER_ROUND - 1)
                    for raw in ids:
                        job_id = text(raw) or ""
                        if job_id not in self._busy and await self._lease(job_id):
                            task = asyncio.get_running_loop().create_task(self._serve_job(client, job_id))
                            self._busy[job_id] = task
                            task.add_done_callback(self._done)
                except Exception:
                    log.debug("webhook relay: a round failed; next round", exc_info=True)
                await asyncio.sleep(POLL_SECONDS)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy = {job_id: t for job_id, t in self._busy.items() if t is not task}

    async def _lease(self, job_id: str) -> bool:
        key = self._keys.webhook_lease(job_id)
        if await self._redis.set(key, self._node_id, nx=True, px=self._lease_ms):
            return True
        return text(await self._redis.get(key)) == self._node_id

    async def _serve_job(self, client: httpx.AsyncClient, job_id: str) -> None:
        """Turn the job's new events into messages, then send its first pending message when due. A job
        with no new event and nothing due costs one round trip (its ``seq`` against the outbox's
        ``cursor`` and ``due``), however many jobs are listed."""
        k = self._keys
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.pexpire(k.webhook_lease(job_id), self._lease_ms)
                pipe.hget(k.job(job_id), "seq")
                pipe.hmget(k.webhooks(job_id), ["cursor", "due"])
                _, seq, (cursor, due) = await pipe.execute()
            if seq is not None and int(seq) <= int(cursor or 0) and (due is None or float(due) > time.time()):
                return
            view: JobView = await self._view(job_id)
        except Exception:  # the job expired (JobNotFound) or Redis is away: nothing to owe any more
            with contextlib.suppress(Exception):
                if not await self._redis.exists(k.job(job_id)):
                    await self._redis.zrem(k.webhook_jobs, job_id)
            return
        try:
            fields = await self._redis.hgetall(k.webhooks(job_id))
            messages = _messages(fields)
            messages += await self._new_messages(job_id, view, int(fields.get(b"cursor", b"0")), messages)
            pending = [m for m in messages if m.state == "pending"]
            if pending and pending[0].next_at <= time.time():
                sent = await self._attempt(client, pending[0])
                pending = [sent, *pending[1:]] if sent.state == "pending" else pending[1:]
            if pending:
                await self._redis.hset(k.webhooks(job_id), "due", repr(pending[0].next_at))
            elif view.status.finished and _cursor_done(messages, view):
                await self._redis.zrem(k.webhook_jobs, job_id)
                ttl_ms = max(1, int(self._settings.result_ttl_seconds * 1000))
                await self._redis.hdel(k.webhooks(job_id), "due")
                await self._redis.pexpire(k.webhooks(job_id), ttl_ms)
                await self._redis.delete(k.webhook_lease(job_id))
            else:
                await self._redis.hdel(k.webhooks(job_id), "due")
        except Exception:
            log.exception("webhooks of job %s: a round failed", job_id)

    async def _new_messages(
        self, job_id: str, view: JobView, cursor: int, known: list[WebhookMessage]
    ) -> list[WebhookMessage]:
        webhook = view.spec.webhook
        if webhook is None:
            return []
        entries = await self._redis.xrange(self._keys.events(job_id), min=f"0-{cursor + 1}")
        made: list[WebhookMessage] = []
        last_progress = max((m.created_at for m in known if m.event == "progress"), default=0.0)
        last = cursor
        now = time.time()
        for entry_id, data in entries:
            last = int(text(entry_id).split("-")[1])  # type: ignore[union-attr]
            event = _EVENTS.get(text(data.get(b"t")) or "")
            if event is None or event not in webhook.events:
                continue
            if event == "progress" and now - last_progress < PROGRESS_SECONDS:
                continue  # at most one a second, as in one process
            if event == "progress":
                last_progress = now
            if event == "completed" and not view.status.finished:
                view = await self._view(job_id)  # the end came after the view was read: read it again
            shown = view if event == "completed" else _as_at(view, data)
            body = {"type": f"job.{event}", "timestamp": iso_now(now), "data": self.render(shown)}
            made.append(WebhookMessage(
                message_id=f"msg_{job_id}_{last}", job_id=job_id, owner=view.spec.owner, url=webhook.url,
                event=event, body=json.dumps(body, separators=(",", ":")).encode(), created_at=now, next_at=now,
            ))
        if last != cursor:
            async with self._redis.pipeline(transaction=True) as pipe:
                for message in made:
                    pipe.hsetnx(self._keys.webhooks(job_id), f"m:{message.message_id}", json.dumps(message.to_dict()))
                pipe.hset(self._keys.webhooks(job_id), "cursor", last)
                await pipe.execute()
        return made

    async def _attempt(self, client: httpx.AsyncClient, message: WebhookMessage) -> WebhookMessage:
        try:
            allow_private = self._settings.webhook_allow_private
            target = await asyncio.to_thread(check_target, message.url, allow_private=allow_private)
        except InvalidRequest as exc:
            attempt = Attempt(time.time(), None, exc.message[:300])
        else:
            secrets = tuple(owner_secret(secret, message.owner) for secret in self._secrets)
            attempt = await deliver(client, target, secrets, message.message_id, message.body)
        attempts = (*message.attempts, attempt)
        if attempt.delivered:
            updated = replace(message, attempts=attempts, state="delivered")
        elif len(attempts) >= self._settings.webhook_max_attempts:
            updated = replace(message, attempts=attempts, state="failed")
        else:
            updated = replace(message, attempts=attempts, next_at=attempt.at + backoff_seconds(len(attempts)))
        await self._redis.hset(self._keys.webhooks(message.job_id), f"m:{message.message_id}",
                               json.dumps(updated.to_dict()))
        return updated


def _messages(fields: dict[bytes, bytes]) -> list[WebhookMessage]:
    found = [WebhookMessage.from_dict(json.loads(v)) for k, v in fields.items() if k.startswith(b"m:")]
    return sorted(found, key=lambda m: int(m.message_id.rsplit("_", 1)[1]))


def _as_at(view: JobView, entry: dict[bytes, bytes]) -> JobView:
    """The job as it was at a ``started`` or ``progress`` event, even when the relay reads the event
    late (a busy node): running, at that step, not yet finished."""
    data = json.loads(entry.get(b"d") or b"{}")
    at = float(text(entry.get(b"at")) or 0) or view.started_at
    step = int(data.get("step", 0))
    return replace(
        view, status=JobStatus.RUNNING, step=step, finished_at=None, error_code=None, error_message=None,
        image_count=0, seeds=(), started_at=view.started_at if step else at,
        attempt=int(data.get("attempt", view.attempt)),
    )


def _cursor_done(messages: list[WebhookMessage], view: JobView) -> bool:
    """Every message owed is made: the completion is among them (or was not asked for)."""
    webhook = view.spec.webhook
    return webhook is None or "completed" not in webhook.events or any(m.event == "completed" for m in messages)
