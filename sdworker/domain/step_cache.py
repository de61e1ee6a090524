"""Step caching, an opt-in per job: ``"cache": {"kind": "first_block", "threshold": 0.08}``.

A step cache reuses what the transformer computed at an earlier denoising step instead of running all
its blocks again (diffusers' hooks: First Block Cache, TaylorSeer, MagCache). It is faster and it
changes the image, so it is never on unless a job asks, and the job's parameters and PNG text say it
ran. Torch-free: the API checks a request against these rules at submit, the engine applies the hooks
(``sdworker.engine.step_cache``).

Which kinds a family takes is decided here, from what diffusers ships:

- ``first_block`` (FLUX.1): skips the rest of a step when the first block's output changed less than
  ``threshold`` (relative) since the last full step (higher = more skipped, faster, further from the
  uncached image). SD 3.5's last joint block returns no text stream, which diffusers' hook cannot take.
- ``taylorseer`` (FLUX.1, SD 3.5): forecasts the attention outputs from the last full steps.
- ``mag`` (FLUX.1): MagCache needs per-model magnitude ratios; diffusers ships FLUX.1's only.

Not the others: the UNet families (the hooks work on transformer blocks); Z-Image (its blocks take
``x``, not the ``hidden_states`` the hooks look for); Qwen-Image (its true CFG calls the transformer
twice per step, and one cache state would then mix the conditional and unconditional calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdworker.errors import InvalidRequest

CACHE_KINDS = ("first_block", "taylorseer", "mag")
DEFAULT_THRESHOLDS = {"first_block": 0.08, "mag": 0.06}  # diffusers' MagCache default; FBC: the issue's
FAMILY_CACHE_KINDS: dict[str, tuple[str, ...]] = {
    "flux1": ("first_block", "taylorseer", "mag"),
    "sd3": ("taylorseer",),
}


@dataclass(frozen=True, slots=True)
class StepCache:
    """The cache a job asked for. ``threshold``: first_block and mag only (None = the default)."""

    kind: str
    threshold: float | None = None

    @property
    def settled_threshold(self) -> float | None:
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS.get(self.kind)

    def text(self) -> str:
        """How the PNG text and the job's parameters say it: ``first_block 0.08``, ``taylorseer``."""
        threshold = self.settled_threshold
        return self.kind if threshold is None else f"{self.kind} {threshold:g}"


def check_cache(cache: StepCache | None, *, field: str = "cache") -> None:
    """The shape of the field, whatever the model: a known kind, a threshold in (0, 1] where it has one."""
    if cache is None:
        return
    if cache.kind not in CACHE_KINDS:
        raise InvalidRequest(f"{field}.kind: {cache.kind!r} is not one of {', '.join(CACHE_KINDS)}",
                             field=f"{field}.kind")
    if cache.threshold is None:
        return
    name = f"{field}.threshold"
    if cache.kind not in DEFAULT_THRESHOLDS:
        raise InvalidRequest(f"{name}: the {cache.kind} cache takes no threshold", field=name)
    if not (math.isfinite(cache.threshold) and 0.0 < cache.threshold <= 1.0):
        raise InvalidRequest(f"{name}: {cache.threshold} is not in (0, 1]", field=name)


def check_cache_family(cache: StepCache | None, family: str, label: str, model: str, *, field: str = "cache") -> None:
    """A kind the model's family cannot use is a 4xx naming the kind, the model and what it can use."""
    if cache is None:
        return
    check_cache(cache, field=field)
    kinds = FAMILY_CACHE_KINDS.get(family, ())
    if cache.kind in kinds:
        return
    usable = f"it takes {', '.join(kinds)}" if kinds else "step caching is for the transformer families"
    raise InvalidRequest(
        f"{field}.kind: {cache.kind!r} does not apply to model {model!r} ({label}); {usable}", field=f"{field}.kind"
    )
