"""How a job is stopped while it runs: a token set from any thread and read by the engine after
every denoising step."""

from __future__ import annotations

import threading

from sdworker.errors import JobCancelled


class CancelToken:
    """Set from any thread; read by the engine after every denoising step.

    Two ways to stop: ``cancel`` (the job ends with no image) and ``interrupt`` (A1111's: stop at the
    next step and finish with what the latents hold now; an engine that cannot, cancels). Either one
    makes ``cancelled`` true, so an engine that only knows cancel still stops.
    """

    __slots__ = ("_event", "_interrupt")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._interrupt = False

    def cancel(self) -> None:
        self._event.set()

    def interrupt(self) -> None:
        self._interrupt = True
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt and self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled("the job was cancelled")
