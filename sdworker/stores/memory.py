"""The memory store: nothing outlives the process (``sdworker serve --store memory``, and tests).

The service already holds every live record and the bus every event in memory, so this store only
keeps the final PNGs and the webhook outbox, in dicts (the PNGs in a bucket with ``--results-s3``);
everything else is a no-op."""

from __future__ import annotations

from collections.abc import Iterable

from sdworker.events.types import JobEvent
from sdworker.jobs.outbox import WebhookMessage
from sdworker.jobs.store import JobRecord, StoredJob
from sdworker.stores.results import ResultStore


class MemoryStore:
    name = "memory"
    durable = False

    def __init__(self, results: ResultStore | None = None) -> None:
        self.results = results
        self._images: dict[str, tuple[bytes, ...]] = {}  # the PNGs, or (results) their references
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
        if self.results is not None:
            images = tuple(self.results.put(record.job_id, i, png).encode() for i, png in enumerate(images))
        self._images[record.job_id] = images

    def image(self, job_id: str, index: int) -> bytes | None:
        images = self._images.get(job_id, ())
        if not 0 <= index < len(images):
            return None
        return images[index] if self.results is None else self.results.get(images[index].decode())

    def delete(self, job_ids: Iterable[str]) -> None:
        gone = set(job_ids)
        for job_id in gone:
            refs = self._images.pop(job_id, ())
            if self.results is not None and refs:
                self.results.delete(ref.decode() for ref in refs)
        self._webhooks = {k: m for k, m in self._webhooks.items() if m.job_id not in gone}

    def save_webhook(self, message: WebhookMessage) -> None:
        self._webhooks[message.message_id] = message

    def pending_webhooks(self) -> list[WebhookMessage]:
        return [m for m in self._webhooks.values() if m.state == "pending"]

    def webhooks(self, job_id: str) -> list[WebhookMessage]:
        return [m for m in self._webhooks.values() if m.job_id == job_id]

    def close(self) -> None:
        self._images.clear()
