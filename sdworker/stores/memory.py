"""The memory store: nothing outlives the process (``sdworker serve --store memory``, and tests).

The service already holds every live record and the bus every event in memory, so this store only
keeps the final PNGs and the webhook outbox, in dicts; everything else is a no-op."""

from __future__ import annotations

from collections.abc import Iterable

from sdworker.events.types import JobEvent
from sdworker.jobs.outbox import WebhookMessage
from sdworker.jobs.store import JobRecord, StoredJob


class MemoryStore:
    name = "memory"
    durable = False

    def __init__(self) -> None:
        self._images: dict[str, tuple[bytes, ...]] = {}
        self._webhooks: dict[str, WebhookMessage] = {}  # by message id, in the order first written

    def load(self) -> list[StoredJob]:
        return []

    def save(self, record: JobRecord, *, durable: bool = False) -> None:
        pass

    def append_event(self, event: JobEvent) -> None:
        pass

    def events(self, job_id: str) -> list[JobEvent]:
        return []  # the bus keeps a memory job's events for as long as the job is kept

    def save_images(self, record: JobRecord, images: tuple[bytes, ...]) -> None:
        self._images[record.job_id] = images

    def image(self, job_id: str, index: int) -> bytes | None:
        images = self._images.get(job_id, ())
        return images[index] if 0 <= index < len(images) else None

    def delete(self, job_ids: Iterable[str]) -> None:
        gone = set(job_ids)
        for job_id in gone:
            self._images.pop(job_id, None)
        self._webhooks = {k: m for k, m in self._webhooks.items() if m.job_id not in gone}

    def save_webhook(self, message: WebhookMessage) -> None:
        self._webhooks[message.message_id] = message

    def pending_webhooks(self) -> list[WebhookMessage]:
        return [m for m in self._webhooks.values() if m.state == "pending"]

    def webhooks(self, job_id: str) -> list[WebhookMessage]:
        return [m for m in self._webhooks.values() if m.job_id == job_id]

    def close(self) -> None:
        self._images.clear()
