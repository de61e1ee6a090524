"""The step hook the runner gives the engine: progress events and live previews, off the critical path.

Runs on the GPU thread, once per denoising step, and must return quickly. A preview is decoded here
(it touches the model) only when all of these hold:

- the job wants previews (``every`` > 0, method not ``none``) and ``step % every == 0``;
- it is not the last step (the final image follows at once, so decoding it would be wasted);
- at least ``min_interval_ms`` passed since the last preview (a fast GPU must not flood clients);
- somebody is watching the job right now (no watcher -> no decode at all);
- the encoder thread has finished this job's previous preview (if not, this one is skipped: the
  denoising loop never waits for an encoder).

The decoded pixels go to the encoder thread, which encodes and publishes ``PreviewReady``; the
step hook returns at once. A preview stands in for its step's progress event; a step without one
publishes ``StepProgressed`` - through the encoder's queue while a preview is being encoded, so that
events keep step order. Events reach the event loop only through ``publish`` (the runner's
``loop.call_soon_threadsafe`` wrapper).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from sdworker.engine.protocol import StepView
from sdworker.events.types import JobEvent, PreviewReady, StepProgressed
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.previews.options import PreviewOptions, PreviewPixels

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

EncodeFn = Callable[["npt.NDArray[np.uint8]", str, int], bytes]


class StepReporter:
    def __init__(
        self,
        job_id: str,
        options: PreviewOptions,
        *,
        publish: Callable[[JobEvent], None],
        watcher_count: Callable[[], int],
        encoder: Executor,
        encode: EncodeFn,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._job_id = job_id
        self._options = options
        self._publish = publish
        self._watcher_count = watcher_count
        self._encoder = encoder
        self._encode = encode
        self._metrics = metrics
        self._clock = clock
        self._last_step_at: float | None = None
        self._last_preview_at = -float("inf")
        self._encoding: Future[Any] | None = None
        self.previews_skipped = 0

    def __call__(self, view: StepView) -> None:
        now = self._clock()
        if self._last_step_at is not None:
            self._metrics.step_seconds.observe(now - self._last_step_at)
        self._last_step_at = now
        step, total = view.step, view.total
        if self._preview_due(step, total, now) and self._submit_preview(view, now):
            return
        event = StepProgressed(job_id=self._job_id, step=step, total=total, pass_number=view.pass_number)
        if self._encoding is not None and not self._encoding.done():
            # Queue it behind the preview being encoded (one FIFO thread) so watchers see steps in
            # order; the GPU thread still does not wait.
            self._encoder.submit(self._publish, event)
        else:
            self._publish(event)

    def wait_idle(self, timeout: float | None = None) -> None:
        """Block until the encoder is done with this job's last preview (tests, end of job)."""
        if self._encoding is not None:
            self._encoding.exception(timeout=timeout)

    def _preview_due(self, step: int, total: int, now: float) -> bool:
        o = self._options
        if not o.enabled or step % o.every != 0 or step >= total:
            return False
        if (now - self._last_preview_at) * 1000.0 < o.min_interval_ms:
            return False
        if self._watcher_count() <= 0:
            return False
        if self._encoding is not None and not self._encoding.done():
            self.previews_skipped += 1
            self._metrics.previews.labels(result="skipped_busy").inc()
            return False
        return True

    def _submit_preview(self, view: StepView, now: float) -> bool:
        started = time.perf_counter()
        pixels = view.render_preview(self._options.method, self._options.max_size)
        self._metrics.preview_decode_seconds.observe(time.perf_counter() - started)
        if pixels is None:
            return False
        self._last_preview_at = now
        self._encoding = self._encoder.submit(self._encode_and_publish, pixels, view.step, view.total,
                                              view.pass_number)
        return True

    def _encode_and_publish(self, pixels: PreviewPixels, step: int, total: int, pass_number: int = 1) -> None:
        """Encoder thread. A failed encode still reports the step, so no step goes missing."""
        started = time.perf_counter()
        try:
            data = self._encode(pixels.pixels, self._options.format, self._options.quality)
        except Exception:
            log.exception("encoding a preview of job %s failed", self._job_id)
            self._metrics.previews.labels(result="failed").inc()
            self._publish(StepProgressed(job_id=self._job_id, step=step, total=total, pass_number=pass_number))
            return
        self._metrics.preview_encode_seconds.observe(time.perf_counter() - started)
        self._metrics.previews.labels(result="sent").inc()
        height, width = pixels.pixels.shape[:2]
        self._publish(
            PreviewReady(
                job_id=self._job_id,
                step=step,
                total=total,
                image=data,
                format=self._options.format,
                width=int(width),
                height=int(height),
                method=pixels.method,
                pass_number=pass_number,
            )
        )
