"""A1111's sampler and schedule-type names mapped to our schedulers (torch-free).

Since v1.9 A1111 names a sampler (``DPM++ 2M``) and a schedule type (``Karras``) apart; older clients
(LibreChat, scripts) still send the combined ``DPM++ 2M Karras`` and aliases (``k_euler_a``). As A1111
does, a trailing schedule name is split off a combined name, ``automatic`` means the sampler's own
default (Karras for DPM++ 2M), and a sampler name we do not know falls back to the API default
(``Euler``, A1111's ``sampler_index`` default) - reported in the answer's ``info`` as ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Sampler:
    name: str  # A1111's
    scheduler: str  # ours, with the uniform (non-Karras) schedule
    karras: str | None = None  # ours, with the Karras schedule
    default_schedule: str = "uniform"  # what "automatic" means for it
    aliases: tuple[str, ...] = ()

    def options(self) -> dict[str, str]:
        return {"scheduler": self.default_schedule} if self.default_schedule != "uniform" else {}


SAMPLERS = (
    Sampler("DPM++ 2M", "dpmpp_2m", "dpmpp_2m_karras", "karras", ("k_dpmpp_2m",)),
    Sampler("DPM++ 2M SDE", "dpmpp_2m_sde", aliases=("k_dpmpp_2m_sde",)),
    Sampler("Euler a", "euler_a", aliases=("k_euler_a", "k_euler_ancestral")),
    Sampler("Euler", "euler", aliases=("k_euler",)),
    Sampler("LMS", "lms", aliases=("k_lms",)),
    Sampler("Heun", "heun", aliases=("k_heun",)),
    Sampler("DDIM", "ddim", aliases=("ddim",)),
    Sampler("PLMS", "pndm", aliases=("plms", "pndm")),
    Sampler("UniPC", "unipc", aliases=("unipc",)),
)
DEFAULT_SAMPLER = "Euler"  # A1111's API default (sampler_index)


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0


SCHEDULES = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform"),
    Schedule("karras", "Karras", default_rho=7.0),
)


@dataclass(frozen=True, slots=True)
class SamplerChoice:
    scheduler: str | None  # ours; None = the model's own
    sampler: str  # A1111's name, as reported back
    schedule: str  # A1111's schedule label, as reported back
    ignored: dict[str, str] = field(default_factory=dict)


def _lookup(name: str) -> Sampler | None:
    folded = name.strip().lower()
    for sampler in SAMPLERS:
        if folded == sampler.name.lower() or folded in sampler.aliases or folded == sampler.scheduler:
            return sampler
    return None


def choose(sampler_name: str | None, schedule: str | None, available: tuple[str, ...] | None) -> SamplerChoice:
    """Our scheduler for A1111's ``sampler_name`` (or ``sampler_index``) and ``scheduler``.
    ``available``: the engine's schedulers (None = not known yet: assume all)."""
    ignored: dict[str, str] = {}
    name = (sampler_name or DEFAULT_SAMPLER).strip()
    sampler = _lookup(name)
    suffix = None
    if sampler is None:  # a combined legacy name: "DPM++ 2M Karras", "Euler a Uniform"
        for candidate in (s for s in SCHEDULES if s.name != "automatic"):
            for spelled in (candidate.label, candidate.name):
                if name.lower().endswith(" " + spelled.lower()):
                    sampler, suffix = _lookup(name[: -len(spelled) - 1]), candidate.name
                    break
            if sampler is not None:
                break
    if sampler is None and name.lower() == "k_dpmpp_2m_ka":
        sampler, suffix = SAMPLERS[0], "karras"
    if sampler is None:
        ignored["sampler_name"] = f"unknown sampler {name!r}; {DEFAULT_SAMPLER} was used"
        sampler = _lookup(DEFAULT_SAMPLER)
        assert sampler is not None
    wanted = (schedule or "").strip().lower().replace(" ", "_") or "automatic"
    if suffix is not None and wanted == "automatic":
        wanted = suffix
    if wanted in ("sgmuniform",):
        wanted = "sgm_uniform"
    if wanted == "automatic":
        wanted = sampler.default_schedule
    if wanted == "karras" and sampler.karras is None:
        ignored["scheduler"] = f"{sampler.name} has no Karras schedule here; its own was used"
        wanted = "uniform"
    elif wanted not in ("karras", "uniform"):
        ignored["scheduler"] = f"schedule {schedule!r} is not available; {sampler.name}'s own was used"
        wanted = sampler.default_schedule
    ours = sampler.karras if wanted == "karras" and sampler.karras else sampler.scheduler
    if available is not None and ours not in available:
        ignored["sampler_name"] = f"{sampler.name} is not available on this model; the model's own was used"
        return SamplerChoice(None, sampler.name, "Automatic", ignored)
    label = "Karras" if wanted == "karras" else "Uniform"
    if wanted == sampler.default_schedule:
        label = "Automatic"
    return SamplerChoice(ours, sampler.name, label, ignored)


def listed(available: tuple[str, ...] | None) -> list[Sampler]:
    return [s for s in SAMPLERS if available is None or s.scheduler in available]
