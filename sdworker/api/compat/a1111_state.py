"""What A1111 clients treat as global state, kept per API process: the chosen checkpoint
(``POST /options {"sd_model_checkpoint"}``) and the progress watcher behind ``GET /progress``.

In Redis mode each API node keeps its own: a checkpoint chosen through one node applies to the jobs
submitted through it (A1111 itself is one process, so its clients expect no more).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdworker.domain.checkpoint_hash import checkpoint_sha256
from sdworker.domain.parameters import model_label
from sdworker.errors import ModelNotFound
from sdworker.events.bus import Subscription
from sdworker.events.types import PreviewReady
from sdworker.jobs.protocol import JobService
from sdworker.jobs.state import JobStatus, JobView

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
_LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One served model as A1111 lists it."""

    model: str  # our id (what jobs say)
    name: str  # A1111's: the file or folder name
    model_name: str  # without extension
    sha256: str | None

    @property
    def hash10(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash10}]" if self.hash10 else self.name

    def names(self) -> set[str]:
        """What ``sd_model_checkpoint`` may say to choose it (A1111's aliases)."""
        found = {self.model, self.name, self.model_name, self.title}
        if self.sha256:
            found |= {self.sha256, self.hash10 or "", f"{self.model_name} [{self.hash10}]"}
        return found


async def checkpoints(models: tuple[str, ...], cache_dir: Path) -> list[Checkpoint]:
    """Served models with their hashes (hashed in a thread; cached by path, size and mtime)."""
    found = []
    for model in models:
        sha = await asyncio.to_thread(checkpoint_sha256, model, cache_dir)
        name = Path(model).name if ("/" in model or "\\" in model) and Path(model).expanduser().exists() else model
        found.append(Checkpoint(model, name, model_label(model), sha))
    return found


def find_checkpoint(known: list[Checkpoint], wanted: str) -> Checkpoint:
    for checkpoint in known:
        if wanted in checkpoint.names():
            return checkpoint
    titles = ", ".join(c.title for c in known) or "none"
    raise ModelNotFound(f"sd_model_checkpoint: {wanted!r} is not served here; served: {titles}", field="model")


class A1111State:
    def __init__(self) -> None:
        self.checkpoint: str | None = None  # our model id; None = the default model
        self.progress = ProgressWatcher()


class ProgressWatcher:
    """``GET /progress`` for A1111 clients, and why it subscribes.

    Previews are decoded only while somebody watches a job; an A1111 client polling ``/progress`` is
    such a watcher. So the first poll that sees a running job opens one subscription on it and keeps
    it; each poll takes the events that arrived since (the bus coalesces previews for a slow reader,
    keeping the newest image) and answers with the latest preview. No task runs in between: if polls
    stop, the subscription ends with the job, or the bus drops it as a stalled watcher.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._preview: bytes | None = None

    async def report(self, service: JobService, owner: str | None, *, with_image: bool) -> dict[str, Any]:
        active = [v for v in await service.list_jobs(owner=owner, limit=_LIST_LIMIT) if v.status in ACTIVE]
        running = sorted((v for v in active if v.status is not JobStatus.QUEUED), key=lambda v: v.started_at or 0.0)
        job = running[0] if running else None
        image = None
        if job is not None and with_image:
            async with self._lock:
                image = await self._latest_preview(service, job, owner)
        return _progress_body(job, len(active), image)

    async def _latest_preview(self, service: JobService, job: JobView, owner: str | None) -> str | None:
        if self._sub is None or self._sub.job_id != job.job_id:
            if self._sub is not None:
                self._sub.close()
            self._sub, self._preview = await service.open_stream(job.job_id, 0, owner=owner), None
        sub = self._sub
        while sub is not None:
            try:
                event = await sub.next(timeout=0)
            except TimeoutError:
                break
            if event is None:
                break
            if isinstance(event, PreviewReady):
                self._preview = event.image
        return base64.b64encode(self._preview).decode("ascii") if self._preview else None


def _progress_body(job: JobView | None, job_count: int, image: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "skipped": False,
        "interrupted": bool(job and job.cancel_requested),
        "job": "scripts_txt2img" if job else "",
        "job_count": job_count,
        "job_timestamp": _timestamp(job.started_at) if job and job.started_at else "0",
        "job_no": 0,
        "sampling_step": job.step if job else 0,
        "sampling_steps": job.total if job else 0,
    }
    if job_count == 0:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None,
                "current_task": None}
    progress = min(1.0, 0.01 + (job.step / job.total if job and job.total else 0.0))
    elapsed = time.time() - job.started_at if job and job.started_at else 0.0
    return {
        "progress": progress,
        "eta_relative": max(0.0, elapsed / progress - elapsed),
        "state": state,
        "current_image": image,
        "textinfo": None,
        "current_task": job.job_id if job else None,
    }


def _timestamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%d%H%M%S")
