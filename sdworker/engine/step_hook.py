"""The one step callback the diffusers engine installs, and the ``StepView`` it hands the job's hook.

How cancel stops the pipeline, and why this way
-----------------------------------------------
After every denoising step diffusers calls ``callback_on_step_end(pipe, i, t, kwargs)``. Ours (1)
reports the step to the job's hook through a ``StepView``, (2) lets the hook ask for a preview, and
(3) checks the ``CancelToken`` and, when it is set, *raises* ``JobCancelled``.

Raising leaves the denoising loop at once: no further UNet call, no final VAE decode (at 512 px the
decode alone costs about 1.6 UNet steps), no post-processing. The exception unwinds the pipeline's
frames, so the latents, the text embeddings and every intermediate tensor lose their last reference
and are freed; the engine then empties the CUDA cache. diffusers' own alternative, setting
``pipe._interrupt = True``, only makes the loop ``continue`` through the remaining timesteps and then
still runs the full VAE decode and returns an image nobody wants, and it is a flag on the shared
pipeline object that the next job would have to reset. A cancel therefore stops within one step:
the step that is running finishes (a UNet call cannot be interrupted from Python), then nothing more.

An *interrupt* (A1111's, ``CancelToken.interrupt``) leaves the loop the same way, raising
``Interrupted`` with the latents it has; the engine decodes those with the VAE and returns a normal
result, so the job completes with the image as it stood.

Steps count what the user asked for, not the loop's UNet calls (issue #20). PLMS (``PNDMScheduler``,
SD 1.x's default) spends two calls on its first step, a warm-up: its timesteps repeat one
(``[750, 500, 500, 250, 0]`` for 4 steps). Second-order schedulers (Heun) make two calls per step but
one for the last (2n - 1). So the loop has more iterations than steps, and ``steps_shown`` says how
many steps it is; call ``i`` of ``L`` ends the user's step ``(i + 1) * n // L``, which is exactly the
step that call completes for both kinds; a call that completes none (PLMS's warm-up, Heun's predictor
half) reports nothing, but a cancel is still checked after it. The reported step rises by one per
report and ends at ``n``; ``steps_done`` (the result's ``steps_run``) counts the same steps.

Cost when nobody watches: no preview requested means no tensor is touched here, nothing is synced
with the GPU, and x0 is never computed (it is computed lazily, only when a preview asks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sdworker.domain.control import CancelToken
from sdworker.engine.protocol import StepHook
from sdworker.engine.x0 import X0Recorder
from sdworker.errors import JobCancelled

if TYPE_CHECKING:
    import torch

    from sdworker.previews.options import PreviewPixels

log = logging.getLogger(__name__)

# (method, max_size, tensor, source) -> pixels or None; the engine owns the decoders.
PreviewRenderer = Callable[[str, int, "torch.Tensor", str], "PreviewPixels | None"]


def steps_shown(scheduler: Any, loop_steps: int) -> int:
    """How many of the user's steps a denoising loop of ``loop_steps`` calls runs with ``scheduler`` (after
    its ``set_timesteps``); img2img's loop is a tail of the schedule, so the count is taken from its length.

    A second-order scheduler (``order`` 2: Heun) makes ``2n - 1`` calls for ``n`` steps. Otherwise the
    extra calls of the whole schedule (``len(timesteps) - num_inference_steps``: PLMS's one warm-up) come
    once, at the start of any tail of it. No scheduler, or one without those attributes: one call a step.
    """
    if scheduler is None:
        return loop_steps
    order = int(getattr(scheduler, "order", 1) or 1)
    if order > 1:
        return max(1, -(-loop_steps // order))
    timesteps = getattr(scheduler, "timesteps", None)
    asked = getattr(scheduler, "num_inference_steps", None)
    if timesteps is None or not asked:
        return loop_steps
    extra = len(timesteps) - int(asked)
    return max(1, loop_steps - extra) if extra > 0 else loop_steps


class DiffusersStepView:
    """What the hook sees after step ``step`` of ``total``. Cheap to make; x0 is computed on demand."""

    __slots__ = ("_latents", "_recorder", "_renderer", "_x0", "_x0_done", "pass_number", "step", "total")

    def __init__(
        self,
        step: int,
        total: int,
        latents: torch.Tensor,
        recorder: X0Recorder | None,
        renderer: PreviewRenderer,
        pass_number: int = 1,
    ) -> None:
        self.step = step
        self.total = total
        self.pass_number = pass_number
        self._latents = latents
        self._recorder = recorder
        self._renderer = renderer
        self._x0: torch.Tensor | None = None
        self._x0_done = False

    def latents(self) -> torch.Tensor:
        return self._latents

    def predicted_x0(self) -> torch.Tensor | None:
        if not self._x0_done:
            self._x0_done = True
            if self._recorder is not None:
                try:
                    self._x0 = self._recorder.predicted_x0()
                except Exception:  # a preview is never worth failing a job for
                    log.warning("could not compute predicted x0", exc_info=True)
        return self._x0

    def render_preview(self, method: str, max_size: int) -> PreviewPixels | None:
        x0 = self.predicted_x0()
        if x0 is not None:
            return self._renderer(method, max_size, x0, "x0")
        return self._renderer(method, max_size, self._latents, "latents")


class Interrupted(Exception):
    """Raised by the step callback when the job was *interrupted* (A1111's interrupt, not a cancel).

    Carries the latents to finish with: the model's predicted x0 where the scheduler gives one (what
    A1111 decodes: its samplers keep ``denoised`` as the last latent), else the current latents. The
    engine catches it in ``generate`` and decodes them with the VAE into a normal result.
    """

    def __init__(self, latents: Any, steps_done: int) -> None:
        super().__init__("interrupted")
        self.latents = latents
        self.steps_done = steps_done


class StepCallback:
    """diffusers' ``callback_on_step_end`` for one job: report, preview on request, cancel by raising.

    Cancel: when the token is set, ``__call__`` raises ``JobCancelled`` after the step that just ran.
    The exception leaves the denoising loop at once and skips the final VAE decode; the pipeline's
    frames unwind and free the latents; the engine then empties the CUDA cache. We raise rather than set
    ``pipe._interrupt`` because that flag still walks the remaining timesteps and decodes an image nobody
    wants (see the module docstring for the full reasoning).

    Steps are the user's (``steps_shown``; see the module docstring), not the loop's calls. A job of several
    passes (the hires fix) reports them as one: pass ``pass_number`` starts after ``offset`` steps of a
    job of ``total`` steps in all (None: this pass's own count).
    """

    __slots__ = ("cancel", "offset", "on_step", "pass_number", "recorder", "renderer", "steps_done", "total")

    def __init__(
        self,
        on_step: StepHook | None,
        cancel: CancelToken | None,
        recorder: X0Recorder | None,
        renderer: PreviewRenderer,
        *,
        offset: int = 0,
        total: int | None = None,
        pass_number: int = 1,
    ) -> None:
        self.on_step = on_step
        self.cancel = cancel
        self.recorder = recorder
        self.renderer = renderer
        self.steps_done = 0
        self.offset = offset
        self.total = total
        self.pass_number = pass_number

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler is None and self.recorder is not None:  # the batch loop's stand-in pipeline has none
            scheduler = self.recorder.scheduler
        loop_steps = int(getattr(pipe, "_num_timesteps", None) or len(pipe.scheduler.timesteps))
        shown = steps_shown(scheduler, loop_steps)
        step = min((index + 1) * shown // loop_steps, shown)
        if step > self.steps_done:  # this call completed one of the user's steps
            self.steps_done = step
            if self.on_step is not None:
                self.on_step(DiffusersStepView(self.offset + step, self.total or shown, tensors["latents"],
                                               self.recorder, self.renderer, self.pass_number))
        if self.cancel is not None and self.cancel.interrupted:
            x0 = self.recorder.predicted_x0() if self.recorder is not None else None
            raise Interrupted(x0 if x0 is not None else tensors["latents"], self.steps_done)
        if self.cancel is not None and self.cancel.cancelled:
            raise JobCancelled("the job was cancelled")
        return tensors
