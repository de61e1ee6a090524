"""The memory store's bounds: finished jobs above max_results / max_result_bytes go, oldest first."""

from __future__ import annotations

from sdworker.domain.request import GenerationRequest
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus
from sdworker.jobs.store import InMemoryJobStore, JobRecord
from sdworker.previews.options import PreviewOptions


def record(job_id: str, finished_at: float | None, size: int = 10) -> JobRecord:
    request = GenerationRequest("p", num_inference_steps=2, width=64, height=64, seed=1)
    spec = JobSpec(job_id=job_id, request=request, preview=PreviewOptions(), created_at=0.0)
    done = finished_at is not None
    return JobRecord(
        spec=spec, status=JobStatus.COMPLETED if done else JobStatus.RUNNING, finished_at=finished_at,
        images=(b"x" * size,) if done else (),
    )


def test_count_bound_drops_the_oldest_finished_never_running_jobs() -> None:
    store = InMemoryJobStore(3600, clock=lambda: 100.0, max_results=2)
    for job_id, at in (("a", 1.0), ("b", 2.0), ("run", None), ("c", 3.0)):
        store.add(record(job_id, at))
    assert store.trim(keep="c") == ["a"]
    assert [r.job_id for r in store.records()] == ["b", "run", "c"]


def test_byte_bound_keeps_the_job_that_just_finished() -> None:
    store = InMemoryJobStore(3600, clock=lambda: 100.0, max_result_bytes=25)
    for job_id, at in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        store.add(record(job_id, at))
    assert store.trim(keep="c") == ["a"]  # 20 bytes left
    store.add(record("huge", 4.0, size=100))
    assert store.trim(keep="huge") == ["b", "c"]
    assert [r.job_id for r in store.records()] == ["huge"]
