"""Schedulers by name: our short names -> a diffusers class + config overrides + A1111's display name.

A job gets a fresh scheduler (``Cls.from_config(model_config, **overrides)``): schedulers keep state
between steps (step index, multistep history), so one instance must never serve two jobs, and building
one from a config is cheap (microseconds next to a UNet step). The overrides say everything that makes
the name mean what it says (e.g. ``use_karras_sigmas=False`` for plain ``dpmpp_2m``), so a model whose
own scheduler has other options still gets the sampler the user named.
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


_SCHEDULERS = (
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

SCHEDULERS: dict[str, SchedulerSpec] = {spec.name: spec for spec in _SCHEDULERS}
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


def create_scheduler(name: str | None, model_scheduler: Any) -> tuple[Any, str]:
    """A fresh scheduler for one job and the name to report.

    ``name`` None = the model's own scheduler class and config (reported by our name when it is one of
    ours, else by its class name). ``model_scheduler`` is the scheduler the model was loaded with; its
    config (betas, timestep spacing, prediction type...) is the base every scheduler is built from.
    """
    import diffusers

    config = model_scheduler.config
    if name is None:
        return type(model_scheduler).from_config(config), describe_scheduler(model_scheduler)
    spec = get_spec(name)
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(config, **spec.overrides), spec.name


def describe_scheduler(scheduler: Any) -> str:
    """Our name for a loaded scheduler when its class and options match one; else its class name."""
    class_name = type(scheduler).__name__
    config = scheduler.config
    for spec in _SCHEDULERS:
        if spec.class_name != class_name:
            continue
        if all(config.get(key, value) == value for key, value in spec.overrides.items() if key != "skip_prk_steps"):
            return spec.name
    return class_name
