"""Prometheus metrics, one registry per app (so tests can build many apps in one process).

prometheus_client's metrics are thread-safe; the GPU and encoder threads observe their timings
directly (the one exception to "only events cross threads": a counter increment is not state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("sdworker_queue_depth", "Jobs waiting in the queue", registry=r)
        self.jobs_submitted = Counter("sdworker_jobs_submitted", "Jobs accepted", registry=r)
        self.jobs_finished = Counter("sdworker_jobs_finished", "Jobs finished, by outcome", ["outcome"], registry=r)
        # The view's queue_seconds / run_seconds (RunPod's delayTime / executionTime), per model.
        self.job_queue_seconds = Histogram(
            "sdworker_job_queue_seconds", "Seconds from submit to start, by model", ["model"], buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.job_run_seconds = Histogram(
            "sdworker_job_run_seconds", "Seconds from start to end (any outcome), by model", ["model"],
            buckets=_JOB_BUCKETS, registry=r,
        )
        self.step_seconds = Histogram(
            "sdworker_step_seconds", "Seconds per denoising step", buckets=_STEP_BUCKETS, registry=r
        )
        self.preview_decode_seconds = Histogram(
            "sdworker_preview_decode_seconds", "Preview decode time (GPU thread)", buckets=_FAST_BUCKETS, registry=r
        )
        self.preview_encode_seconds = Histogram(
            "sdworker_preview_encode_seconds", "Preview encode time (encoder thread)", buckets=_FAST_BUCKETS, registry=r
        )
        self.previews = Counter(
            "sdworker_previews", "Previews by result (sent, skipped_busy, failed)", ["result"], registry=r
        )
        self.loaded_model_bytes = Gauge(
            "sdworker_loaded_model_bytes", "Bytes of model weights in memory (shared parts counted once)", registry=r
        )
        self.watchers = Gauge("sdworker_sse_watchers", "Watchers subscribed to job events", registry=r)
        self.streams_open = Gauge("sdworker_sse_streams_open", "SSE responses in progress", registry=r)
        self.fleet_workers = Gauge(
            "sdworker_fleet_workers", "Live workers of the fleet by status (Redis mode)", ["status"], registry=r
        )
        # Per model, for autoscalers (KEDA's prometheus trigger scales a model's workers from zero).
        self.model_queue_depth = Gauge(
            "sdworker_model_queue_depth", "Jobs waiting for a worker, per model (Redis mode)", ["model"], registry=r
        )
        self.model_oldest_age = Gauge(
            "sdworker_model_oldest_queued_seconds", "Age of the oldest waiting job, per model (Redis mode)", ["model"],
            registry=r,
        )
        for outcome in ("completed", "failed", "cancelled"):
            self.jobs_finished.labels(outcome=outcome)
        for result in ("sent", "skipped_busy", "failed"):
            self.previews.labels(result=result)

    def bind(self, queue_depth: Callable[[], float], watchers: Callable[[], float]) -> None:
        """Gauges read at scrape time (on the event loop)."""
        self.queue_depth.set_function(queue_depth)
        self.watchers.set_function(watchers)

    def render(self) -> bytes:
        return generate_latest(self.registry)
