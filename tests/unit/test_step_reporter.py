"""The runner's step hook: when a preview is decoded, that encoding stays off the GPU thread, and
that a busy encoder makes the next preview be skipped rather than waited for."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from sdworker.events.types import JobEvent, PreviewReady, StepProgressed
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.progress import StepReporter
from sdworker.previews.options import PreviewOptions, PreviewPixels


class View:
    def __init__(self, step: int, total: int, calls: list[int], pass_number: int = 1) -> None:
        self.step, self.total, self._calls, self.pass_number = step, total, calls, pass_number

    def latents(self) -> Any:
        return None

    def predicted_x0(self) -> Any:
        return None

    def render_preview(self, method: str, max_size: int) -> PreviewPixels:
        self._calls.append(self.step)
        return PreviewPixels(pixels=np.full((12, 16, 3), self.step, dtype=np.uint8), method="latent2rgb", source="x0")


class Harness:
    def __init__(self, options: PreviewOptions, *, watchers: int = 1, encode: Any = None) -> None:
        self.events: list[JobEvent] = []
        self.renders: list[int] = []
        self.now = 0.0
        self.watchers = watchers
        self.encoder = ThreadPoolExecutor(max_workers=1)
        self.lock = threading.Lock()
        self.reporter = StepReporter(
            "job",
            options,
            publish=self._publish,
            watcher_count=lambda: self.watchers,
            encoder=self.encoder,
            encode=encode or (lambda pixels, fmt, quality: b"%s:%d" % (fmt.encode(), int(pixels[0, 0, 0]))),
            metrics=ServiceMetrics(),
            clock=lambda: self.now,
        )

    def _publish(self, event: JobEvent) -> None:
        with self.lock:
            self.events.append(event)

    def run(self, total: int, seconds_per_step: float = 0.1, *, wait_each: bool = True, second_from: int = 0) -> None:
        """``second_from``: steps from there on belong to a hires fix's second pass."""
        for step in range(1, total + 1):
            self.now += seconds_per_step
            self.reporter(View(step, total, self.renders, 2 if second_from and step >= second_from else 1))
            if wait_each:
                self.reporter.wait_idle(5)
        self.reporter.wait_idle(5)
        self.encoder.shutdown(wait=True)

    def preview_steps(self) -> list[int]:
        return sorted(e.step for e in self.events if isinstance(e, PreviewReady))

    def steps_reported(self) -> list[int]:
        return sorted(e.step for e in self.events if isinstance(e, StepProgressed | PreviewReady))


def test_every_n_steps_and_never_the_last_step() -> None:
    h = Harness(PreviewOptions(every=3, min_interval_ms=0))
    h.run(10)
    assert h.preview_steps() == [3, 6, 9]
    assert h.renders == [3, 6, 9]
    assert h.steps_reported() == list(range(1, 11))  # a preview stands in for its step's progress
    first = next(e for e in h.events if isinstance(e, PreviewReady))
    assert (first.width, first.height, first.format, first.image) == (16, 12, "jpeg", b"jpeg:3")


def test_events_say_their_pass() -> None:
    h = Harness(PreviewOptions(every=3, min_interval_ms=0))
    h.run(8, second_from=6)
    passes = {e.step: e.pass_number for e in h.events if isinstance(e, StepProgressed | PreviewReady)}
    assert passes == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2}
    assert [e.pass_number for e in h.events if isinstance(e, PreviewReady)] == [1, 2]  # steps 3 and 6


def test_min_interval_throttles_by_time() -> None:
    h = Harness(PreviewOptions(every=1, min_interval_ms=250))
    h.run(12, seconds_per_step=0.1)  # steps at t=0.1, 0.2, ...: at most one preview per 0.25 s
    assert h.preview_steps() == [1, 4, 7, 10]
    assert h.steps_reported() == list(range(1, 13))


@pytest.mark.parametrize("options", [PreviewOptions(every=0), PreviewOptions(method="none")])
def test_disabled_previews_never_decode(options: PreviewOptions) -> None:
    h = Harness(options)
    h.run(5)
    assert h.renders == [] and h.preview_steps() == []


def test_no_watcher_means_no_decode() -> None:
    h = Harness(PreviewOptions(every=1, min_interval_ms=0), watchers=0)
    h.run(6)
    assert h.renders == []
    assert h.steps_reported() == list(range(1, 7))


def test_busy_encoder_skips_the_next_preview_instead_of_waiting() -> None:
    release = threading.Event()

    def slow_encode(pixels: Any, fmt: str, quality: int) -> bytes:
        release.wait(5)  # the first preview stays "being encoded" until the loop has gone on
        return b"x"

    h = Harness(PreviewOptions(every=1, min_interval_ms=0), encode=slow_encode)
    for step in range(1, 5):
        h.reporter(View(step, 6, h.renders))  # returns at once although the encoder is stuck
    assert h.renders == [1]
    assert h.reporter.previews_skipped == 3
    release.set()
    h.reporter.wait_idle(5)
    h.reporter(View(5, 6, h.renders))
    h.reporter.wait_idle(5)
    assert h.renders == [1, 5]
    assert h.steps_reported() == [1, 2, 3, 4, 5]
    published = [e.step for e in h.events if isinstance(e, StepProgressed | PreviewReady)]
    assert published == [1, 2, 3, 4, 5]  # the lagging preview of step 1 still came out first
    h.encoder.shutdown(wait=True)


def test_failed_encoding_still_reports_the_step() -> None:
    def broken(pixels: Any, fmt: str, quality: int) -> bytes:
        raise OSError("disk on fire")

    h = Harness(PreviewOptions(every=2, min_interval_ms=0), encode=broken)
    h.run(4)
    assert h.preview_steps() == []
    assert h.steps_reported() == [1, 2, 3, 4]
