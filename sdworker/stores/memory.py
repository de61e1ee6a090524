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
        self._pngs: dict[str, bytes] = {}  # by reference, when there is no result store
        self._images: dict[str, tuple[str, ...]] = {}  # each job's references
        self._webhooks: dict[str, WebhookMessage] = {}  # by message id, in the order first written

    def load(self) -> list[StoredJob]:
        return []

    def save(self, record: JobRecord, *, durable: bool = False) -> None:
        pass

    def append_event(self, event: JobEvent) -> None:
        pass

    def events(self, job_id: str) -> list[JobEvent]:
        return []  # the bus keeps a memory job's events for as long as the job is kept

    def write_images(self, job_id: str, images: tuple[bytes, ...]) -> tuple[str, ...]:
        if self.results is not None:
            return tuple(self.results.put(job_id, i, png) for i, png in enumerate(images))
        refs = tuple(f"{job_id}/{i}" for i in range(len(images)))
        self._pngs.update(zip(refs, images, strict=True))  # one dict update: safe from the writer thread
        return refs

    def save_images(self, record: JobRecord, refs: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        self._images[record.job_id] = refs

    def discard_images(self, refs: Iterable[str]) -> None:
        refs = list(refs)
        if self.results is not None:
            self.results.delete(refs)
        for ref in refs:
            self._pngs.pop(ref, None)

    def image(self, job_id: str, index: int) -> bytes | None:
        refs = self._images.get(job_id, ())
        if not 0 <= index < len(refs):
            return None
        return self._pngs.get(refs[index]) if self.results is None else self.results.get(refs[index])

    def delete(self, job_ids: Iterable[str]) -> None:
        gone = set(job_ids)
        for job_id in gone:
            self.discard_images(self._images.pop(job_id, ()))
        self._webhooks = {k: m for k, m in self._webhooks.items() if m.job_id not in gone}

    def save_webhook(self, message: WebhookMessage) -> None:
        self._webhooks[message.message_id] = message

    def pending_webhooks(self) -> list[WebhookMessage]:
        return [m for m in self._webhooks.values() if m.state == "pending"]

    def webhooks(self, job_id: str) -> list[WebhookMessage]:
        return [m for m in self._webhooks.values() if m.job_id == job_id]

    def close(self) -> None:
        self._images.clear()
        self._pngs.clear()
