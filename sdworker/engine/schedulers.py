"""Schedulers by name: our short names -> a diffusers class + config overrides + A1111's display name.

A job gets a fresh scheduler (``Cls.from_config(model_config, **overrides)``): schedulers keep state
between steps (step index, multistep history), so one instance must never serve two jobs, and building
one from a config is cheap (microseconds next to a UNet step). The overrides say everything that makes
the name mean what it says (e.g. ``use_karras_sigmas=False`` for plain ``dpmpp_2m``), so a model whose
own scheduler has other options still gets the sampler the user named.
"""

from __future__ import annotations

import copy
from typing import Any

from sdworker.domain.scheduler_names import SCHEDULER_SPECS, get_spec


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
    for spec in SCHEDULER_SPECS:
        if spec.class_name != class_name:
            continue
        if all(config.get(key, value) == value for key, value in spec.overrides.items() if key != "skip_prk_steps"):
            return spec.name
    return class_name


class SchedulerFactory:
    """Fresh schedulers for one model, fast: ``from_config`` (1-2 ms: config parsing, signature
    inspection) runs once per name; each job gets a ``deepcopy`` of that unused prototype (a few tenths
    of a millisecond), a scheduler of its own all the same."""

    def __init__(self, model_scheduler: Any) -> None:
        self.model_scheduler = model_scheduler
        self._prototypes: dict[str | None, tuple[Any, str]] = {}

    def create(self, name: str | None) -> tuple[Any, str]:
        key = None if name is None else get_spec(name).name
        prototype = self._prototypes.get(key)
        if prototype is None:
            prototype = self._prototypes[key] = create_scheduler(key, self.model_scheduler)
        return copy.deepcopy(prototype[0]), prototype[1]
