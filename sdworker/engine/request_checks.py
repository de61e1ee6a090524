"""Checks of a generation's parameters shared by every door: the API's submit (``jobs/inputs.py``,
both backends, the OpenAI and A1111 doors too), ``sdworker generate`` (``cli/generate.py``) and the
engine itself (``diffusers_engine.validate_request``). One function per rule, so a bad request is
refused the same way, with the same message, wherever it comes in; each caller names its own fields
(``strength`` on the wire, ``--strength`` on the command line)."""

from __future__ import annotations

from sdworker.engine.protocol import Operation
from sdworker.errors import InvalidRequest


def check_strength(
    operation: Operation,
    strength: float,
    num_inference_steps: int,
    *,
    strength_field: str = "strength",
    steps_field: str = "steps",
) -> None:
    """img2img and inpainting run ``int(steps x strength)`` denoising steps (diffusers'
    ``get_timesteps``): below 1 the pipeline would run none and return noise or fail deep inside."""
    if operation is Operation.TEXT_TO_IMAGE:
        return
    if not 0.0 < strength <= 1.0:  # NaN fails too
        raise InvalidRequest(f"{strength_field}: {strength} is not in (0, 1]", field=strength_field.lstrip("-"))
    if int(num_inference_steps * strength) < 1:
        raise InvalidRequest(
            f"{strength_field} {strength} x {steps_field} {num_inference_steps} leaves no denoising step to run "
            f"(their product must be at least 1)",
            field=strength_field.lstrip("-"),
        )
