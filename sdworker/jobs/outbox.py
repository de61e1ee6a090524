"""The webhook outbox: every webhook a job owes is a message in the job store before anyone tries to
send it, so delivery is at least once and survives a restart (SQLite keeps the outbox in ``jobs.db``).

A message is written when its moment happens (the job started, made progress, ended), with its body
rendered then: a ``start`` webhook delivered late still says ``running``. ``WebhookOutbox`` sends the
pending messages in the background: for one job strictly in order (the next waits until the one
before is delivered or given up, so a receiver sees start, progress, completed in that order), jobs
side by side. Each attempt is signed afresh (``webhooks/delivery.py``); a failed one is retried after
2, 4, 8 ... seconds, ``--webhook-max-attempts`` in all, with the same ``webhook-id``. A restart
resends a message whose attempt was in flight when the process died: that is the "at least once",
and the unchanged ``webhook-id`` is how a receiver drops the copy.

The target is checked again before every attempt (``webhooks/targets.py``): a host name that now
resolves to a private address is refused then, not only at submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets as random_secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from sdworker.errors import InvalidRequest
from sdworker.jobs.state import JobView
from sdworker.settings import Settings
from sdworker.webhooks.delivery import TIMEOUT, Attempt, backoff_seconds, deliver
from sdworker.webhooks.signing import owner_secret
from sdworker.webhooks.targets import check_target

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16  # attempts at once (each is one short HTTP request to one job's receiver)
IDLE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WebhookMessage:
    """One webhook of one job and what became of it: ``pending`` (to be tried at ``next_at``),
    ``delivered`` (a 2xx answer) or ``failed`` (out of attempts)."""

    message_id: str  # the ``webhook-id`` of every attempt
    job_id: str
    owner: str | None
    url: str
    event: str  # start | progress | completed
    body: bytes
    created_at: float
    next_at: float
    attempts: tuple[Attempt, ...] = ()
    state: str = "pending"

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id, "job_id": self.job_id, "owner": self.owner, "url": self.url,
            "event": self.event, "body": self.body.decode(), "created_at": self.created_at, "next_at": self.next_at,
            "attempts": [[a.at, a.status, a.error] for a in self.attempts], "state": self.state,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookMessage:
        return cls(
            message_id=data["message_id"], job_id=data["job_id"], owner=data["owner"], url=data["url"],
            event=data["event"], body=data["body"].encode(), created_at=data["created_at"], next_at=data["next_at"],
            attempts=tuple(Attempt(at, status, error) for at, status, error in data["attempts"]), state=data["state"],
        )


class OutboxStore(Protocol):
    """The part of a job store that keeps webhook messages (memory, SQLite; see ``jobs/store.py``)."""

    def save_webhook(self, message: WebhookMessage) -> None:
        """Insert or replace the message, on disk before this returns (a durable store)."""
        ...

    def pending_webhooks(self) -> list[WebhookMessage]:
        """Every message still ``pending``, oldest first (what a restart resumes sending)."""
        ...

    def webhooks(self, job_id: str) -> list[WebhookMessage]:
        """The job's messages, oldest first (``GET /v1/jobs/{id}/webhooks``)."""
        ...


def server_secrets(settings: Settings) -> tuple[str, ...]:
    """The server secrets per-owner secrets derive from: ``--webhook-secret`` (newest first), else
    ``--signing-secret`` (``serve`` keeps one in its data folder); empty when neither is set."""
    if settings.webhook_secret:
        return settings.webhook_secret
    return (settings.signing_secret,) if settings.signing_secret else ()


def iso_now(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _minimal_view(view: JobView) -> dict[str, Any]:
    return {"job_id": view.job_id, "status": view.status.value}


class WebhookOutbox:
    """Writes webhook messages to the store and sends them; lives on the event loop."""

    def __init__(
        self,
        store: OutboxStore,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_attempts = settings.webhook_max_attempts
        self._allow_private = settings.webhook_allow_private
        # Without any configured secret, one made now: webhooks still verify, until a restart.
        self._secrets = server_secrets(settings) or (random_secrets.token_urlsafe(32),)
        self._transport = transport
        # The job's view as the API shows it (api/views.py: job_detail); set by create_app.
        self.render: Callable[[JobView], dict[str, Any]] = _minimal_view
        self._pending: dict[str, WebhookMessage] = {m.message_id: m for m in store.pending_webhooks()}
        self._busy_jobs: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()

    def secrets(self, owner: str | None) -> tuple[str, ...]:
        """``owner``'s ``whsec_`` secrets, newest first (every attempt carries a signature by each)."""
        return tuple(owner_secret(secret, owner) for secret in self._secrets)

    def add(self, view: JobView, url: str, event: str) -> None:
        """Owe one webhook: written to the store now (durably), sent by the background task."""
        now = self._clock()
        body = {"type": f"job.{event}", "timestamp": iso_now(now), "data": self.render(view)}
        message = WebhookMessage(
            message_id=f"msg_{uuid.uuid4().hex}", job_id=view.job_id, owner=view.spec.owner, url=url, event=event,
            body=json.dumps(body, separators=(",", ":")).encode(), created_at=now, next_at=now,
        )
        self._store.save_webhook(message)
        self._pending[message.message_id] = message
        if self._wake is not None:
            self._wake.set()

    def messages(self, job_id: str) -> list[WebhookMessage]:
        return self._store.webhooks(job_id)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sdworker-webhooks")

    async def close(self) -> None:
        """Stop sending; a message whose attempt is cut short stays pending and is sent after a restart."""
        tasks = [t for t in (self._task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        assert self._wake is not None
        async with httpx.AsyncClient(transport=self._transport, timeout=TIMEOUT) as client:
            while True:
                self._wake.clear()
                wait = self._send_due(client)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    def _send_due(self, client: httpx.AsyncClient) -> float:
        """Start an attempt for each job's first pending message that is due; seconds until the next."""
        now = self._clock()
        first: dict[str, WebhookMessage] = {}
        for message in self._pending.values():
            first.setdefault(message.job_id, message)
        wait = IDLE_SECONDS
        for job_id, message in first.items():
            if job_id in self._busy_jobs:
                continue
            if message.next_at > now:
                wait = min(wait, message.next_at - now)
                continue
            if len(self._attempts) >= MAX_IN_FLIGHT:
                break
            self._busy_jobs.add(job_id)
            task = asyncio.get_running_loop().create_task(self._attempt(client, message))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)
        return max(0.01, wait)

    async def _attempt(self, client: httpx.AsyncClient, message: WebhookMessage) -> None:
        try:
            attempt = await self._send(client, message)
            attempts = (*message.attempts, attempt)
            if attempt.delivered:
                updated = replace(message, attempts=attempts, state="delivered")
            elif len(attempts) >= self._max_attempts:
                updated = replace(message, attempts=attempts, state="failed")
                log.warning("webhook %s of job %s given up after %d attempts", message.message_id,
                            message.job_id, len(attempts))
            else:
                updated = replace(message, attempts=attempts, next_at=attempt.at + backoff_seconds(len(attempts)))
            self._store.save_webhook(updated)
            if updated.state == "pending":
                self._pending[message.message_id] = updated
            else:
                self._pending.pop(message.message_id, None)
        except Exception:
            log.exception("webhook %s of job %s: attempt failed unexpectedly", message.message_id, message.job_id)
        finally:
            self._busy_jobs.discard(message.job_id)
            if self._wake is not None:
                self._wake.set()

    async def _send(self, client: httpx.AsyncClient, message: WebhookMessage) -> Attempt:
        try:
            target = await asyncio.to_thread(check_target, message.url, allow_private=self._allow_private)
        except InvalidRequest as exc:
            return Attempt(self._clock(), None, exc.message[:300])
        return await deliver(client, target, self.secrets(message.owner), message.message_id, message.body,
                             now=self._clock())
