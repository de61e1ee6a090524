"""Predicted x0: the model's current guess of the final (clean) latents, for previews.

diffusers' step callback sees only the latents after the step (still noisy, early ones look like
mud). The clean guess is what makes a preview worth looking at, but only some schedulers return it
(``pred_original_sample``) and the pipeline drops it anyway. So ``X0Recorder`` wraps ``step`` on the
job's own scheduler instance (an instance attribute on a scheduler made fresh for this job: the class
and every other job are untouched) and keeps *references* to what went in and out. Nothing is copied,
computed or synchronised unless a preview asks, so the per-step cost is a Python call and a few
assignments.

When asked, x0 is, in order of preference:

1. ``pred_original_sample`` where the scheduler returned it (Euler, Euler a, Heun, LMS, DDIM);
2. the converted model output of the multistep solvers that predict x0 (DPM-Solver++, UniPC): their
   ``model_outputs[-1]`` after the step *is* x0;
3. computed from the model output: flow matching (FLUX, SD3...) ``x0 = x_t - sigma * v``; sigma
   schedulers ``x0 = x - sigma * eps``; alpha schedulers
   (PNDM, DDPM...) ``x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)`` (v-prediction variants too).

With classifier-free guidance the recorded model output is the guided one, batch = number of images,
the same as the latents.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

_SIGMA_SCHEDULERS = frozenset(
    {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler"}
)
# Rectified flow (FLUX, SD3...): latents x_t = (1 - sigma) x0 + sigma noise, the model predicts the velocity
# v = noise - x0, so x0 = x_t - sigma v.
_FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler"})
_X0_SOLVERS = frozenset({"DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSinglestepScheduler"})


@dataclass(slots=True)
class StepRecord:
    """References to one ``scheduler.step`` call's inputs and outputs (no copies)."""

    model_output: torch.Tensor
    timestep: Any
    sample: torch.Tensor
    index: int | None  # the scheduler's step index this call used (sigma schedulers); None if it has none
    pred_original_sample: torch.Tensor | None
    converted_output: torch.Tensor | None  # multistep solvers' stored x0 after the step


class X0Recorder:
    """Records every ``step`` of one scheduler instance. Use ``close()`` (or a ``with``) to unwrap."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.last: StepRecord | None = None
        self._class_name = type(scheduler).__name__
        original = scheduler.step  # bound method of the class
        self._original = original

        # functools.wraps keeps step's signature visible (inspect follows __wrapped__): pipelines pass
        # ``generator``/``eta`` only when ``inspect.signature(scheduler.step)`` lists them, and without
        # the generator Euler a would draw its noise from the global RNG and lose seed equality.
        @functools.wraps(original)
        def recording_step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any,
                           **kwargs: Any) -> Any:
            result = original(model_output, timestep, sample, *args, **kwargs)
            self._record(model_output, timestep, sample, result)
            return result

        scheduler.step = recording_step

    def _record(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, result: Any) -> None:
        if isinstance(result, tuple):
            pred = result[1] if len(result) > 1 else None
        else:
            pred = getattr(result, "pred_original_sample", None)
        index = getattr(self.scheduler, "step_index", None)
        converted = None
        if self._class_name in _X0_SOLVERS and self._predicts_x0():
            outputs = getattr(self.scheduler, "model_outputs", None)
            converted = outputs[-1] if outputs else None
        self.last = StepRecord(
            model_output=model_output,
            timestep=timestep,
            sample=sample,
            index=None if index is None else int(index) - 1,  # step() has already advanced it
            pred_original_sample=pred if isinstance(pred, torch.Tensor) else None,
            converted_output=converted,
        )

    def _predicts_x0(self) -> bool:
        config = self.scheduler.config
        if self._class_name == "UniPCMultistepScheduler":
            return bool(config.get("predict_x0", True))
        return str(config.get("algorithm_type", "")) in ("dpmsolver++", "sde-dpmsolver++")

    def predicted_x0(self) -> torch.Tensor | None:
        """x0 for the last step (see the module docstring for where it comes from), or None."""
        record = self.last
        if record is None:
            return None
        if record.pred_original_sample is not None:
            return record.pred_original_sample
        if record.converted_output is not None:
            return record.converted_output
        return self.formula_x0()

    def formula_x0(self) -> torch.Tensor | None:
        """x0 computed from the last step's noise prediction, whatever the scheduler returned."""
        record = self.last
        if record is None:
            return None
        prediction = str(self.scheduler.config.get("prediction_type", "epsilon"))
        if self._class_name in _FLOW_SCHEDULERS:
            if record.index is None:
                return None
            sigma = self.scheduler.sigmas[record.index].to(record.sample.device)
            return record.sample.to(torch.float32) - sigma * record.model_output.to(torch.float32)
        if self._class_name in _SIGMA_SCHEDULERS:
            if record.index is None:
                return None
            return sigma_x0(self.scheduler.sigmas[record.index], record.sample, record.model_output, prediction)
        alphas = getattr(self.scheduler, "alphas_cumprod", None)
        if alphas is None or self._class_name in _X0_SOLVERS:
            return None
        t = int(record.timestep.item() if isinstance(record.timestep, torch.Tensor) else record.timestep)
        return alpha_x0(alphas[t], record.sample, record.model_output, prediction)

    def close(self) -> None:
        """Unwrap and drop the references (the tensors belong to the loop)."""
        self.scheduler.__dict__.pop("step", None)
        self.last = None

    def __enter__(self) -> X0Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sigma_x0(sigma: torch.Tensor, sample: torch.Tensor, model_output: torch.Tensor, prediction: str) -> torch.Tensor:
    """x0 for k-diffusion-style schedulers whose latents are ``x0 + sigma * noise``."""
    sample32 = sample.to(torch.float32)  # as those schedulers compute it
    sigma = sigma.to(sample.device)
    if prediction == "epsilon":
        return sample32 - sigma * model_output
    if prediction == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample32 / (sigma**2 + 1)
    return model_output  # "sample": the model predicts x0 itself


def alpha_x0(
    alpha_prod: torch.Tensor, sample: torch.Tensor, model_output: torch.Tensor, prediction: str
) -> torch.Tensor:
    """x0 for DDPM-style schedulers whose latents are ``sqrt(a) x0 + sqrt(1 - a) noise``."""
    alpha_prod = alpha_prod.to(sample.device)
    beta_prod = 1 - alpha_prod
    if prediction == "epsilon":
        return (sample - beta_prod**0.5 * model_output) / alpha_prod**0.5
    if prediction == "v_prediction":
        return alpha_prod**0.5 * sample - beta_prod**0.5 * model_output
    return model_output
