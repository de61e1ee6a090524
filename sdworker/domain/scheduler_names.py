"""Scheduler names, torch-free: our short names, the diffusers class each means, A1111's display name.

Kept apart from ``schedulers`` (which builds diffusers objects) so the job and API layers can validate a
name and write PNG metadata without importing torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdworker.errors import UnknownScheduler


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    name: str
    class_name: str  # in diffusers
    a1111_name: str  # what A1111 writes as "Sampler:" (PNG metadata, what other tools read back)
    overrides: dict[str, Any] = field(default_factory=dict)
    schedule_type: str | None = None  # A1111's "Schedule type:" when not the sampler's default


SCHEDULER_SPECS = (
    SchedulerSpec("euler", "EulerDiscreteScheduler", "Euler", {"use_karras_sigmas": False}),
    SchedulerSpec("euler_a", "EulerAncestralDiscreteScheduler", "Euler a"),
    SchedulerSpec("heun", "HeunDiscreteScheduler", "Heun", {"use_karras_sigmas": False}),
    SchedulerSpec("ddim", "DDIMScheduler", "DDIM", {"clip_sample": False, "set_alpha_to_one": False}),
    SchedulerSpec(
        "dpmpp_2m",
        "DPMSolverMultistepScheduler",
        "DPM++ 2M",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    SchedulerSpec(
        "dpmpp_2m_karras",
        "DPMSolverMultistepScheduler",
        "DPM++ 2M Karras",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        schedule_type="Karras",
    ),
    SchedulerSpec(
        "dpmpp_2m_sde",
        "DPMSolverMultistepScheduler",
        "DPM++ 2M SDE",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    SchedulerSpec("lms", "LMSDiscreteScheduler", "LMS"),
    SchedulerSpec("pndm", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    SchedulerSpec("unipc", "UniPCMultistepScheduler", "UniPC", {"use_karras_sigmas": False}),
)

SCHEDULERS: dict[str, SchedulerSpec] = {spec.name: spec for spec in SCHEDULER_SPECS}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


def get_spec(name: str) -> SchedulerSpec:
    """The spec for ``name`` (case and ``-`` tolerant); ``UnknownScheduler`` naming the field otherwise."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    spec = SCHEDULERS.get(key)
    if spec is None:
        raise UnknownScheduler(
            f"scheduler: unknown scheduler {name!r}; valid: {', '.join(SCHEDULER_NAMES)}", field="scheduler"
        )
    return spec


def a1111_name(name: str) -> str:
    """A1111's sampler name for one of our names; an unknown (model-own) name is passed through."""
    spec = SCHEDULERS.get(name)
    return spec.a1111_name if spec else name
