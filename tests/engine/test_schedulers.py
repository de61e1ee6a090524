"""Scheduler names: what each builds, fresh per job, and what a model's own scheduler is called."""

from __future__ import annotations

import pytest
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
)

from sdworker.domain.scheduler_names import SCHEDULER_NAMES, a1111_name, get_spec
from sdworker.engine.demo_model import SCHEDULER_CONFIG
from sdworker.engine.schedulers import SchedulerFactory, describe_scheduler
from sdworker.errors import UnknownScheduler


def test_the_issues_names_are_all_there() -> None:
    assert {"euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lms", "pndm", "unipc"} <= set(SCHEDULER_NAMES)
    assert a1111_name("euler_a") == "Euler a" and a1111_name("dpmpp_2m_karras") == "DPM++ 2M Karras"


def test_unknown_name_names_the_field_and_the_choices() -> None:
    with pytest.raises(UnknownScheduler) as caught:
        get_spec("k_euler_turbo")
    assert caught.value.field == "scheduler"
    assert "k_euler_turbo" in caught.value.message and "dpmpp_2m_karras" in caught.value.message
    assert get_spec("Euler-A").name == "euler_a"


def test_factory_gives_a_fresh_scheduler_per_job_with_the_names_options() -> None:
    own = DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG, use_karras_sigmas=True)
    factory = SchedulerFactory(own)
    first, name = factory.create("dpmpp_2m")
    second, _ = factory.create("dpmpp_2m")
    assert name == "dpmpp_2m" and first is not second
    assert first.config.use_karras_sigmas is False  # the name wins over the model's own options
    assert first.config.beta_schedule == "scaled_linear"  # the model's betas are kept
    first.set_timesteps(4)
    assert second.num_inference_steps is None  # no state shared between jobs
    karras, _ = factory.create("dpmpp_2m_karras")
    assert karras.config.use_karras_sigmas is True
    euler_a, _ = factory.create("euler_a")
    assert isinstance(euler_a, EulerAncestralDiscreteScheduler)
    model_own, own_name = factory.create(None)
    assert type(model_own) is DPMSolverMultistepScheduler and model_own is not own and own_name == "dpmpp_2m_karras"


def test_describe_a_models_own_scheduler() -> None:
    assert describe_scheduler(PNDMScheduler.from_config(SCHEDULER_CONFIG)) == "pndm"
    assert describe_scheduler(DDPMScheduler.from_config(SCHEDULER_CONFIG)) == "DDPMScheduler"
