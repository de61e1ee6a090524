"""A job's step cache (``sdworker.domain.step_cache``) on the transformer, for that job only.

The hooks go on before the pipeline call and come off after it, whatever happens (a cancel raises
from the step callback): diffusers keeps the cache's state (the previous step's residuals, Taylor
factors) in the hooks, so a hook left on would carry one job's tensors into the next and change its
pixels. Hooks are attached per job rather than kept and reset: attaching walks the block list
once, microseconds next to one transformer call, and a job without a cache then runs the model
exactly as loaded.

The hook functions are diffusers' own (``apply_first_block_cache``, ``apply_taylorseer_cache``,
``apply_mag_cache``), applied to the transformer module directly: Z-Image's transformer is not a
``CacheMixin`` (no ``enable_cache``), and the functions need none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sdworker.domain.step_cache import StepCache


@contextmanager
def step_cache(transformer: Any, cache: StepCache | None, num_inference_steps: int) -> Iterator[None]:
    """``cache`` on ``transformer`` for the ``with`` body (nothing when None)."""
    if cache is None:
        yield
        return
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    hooks = _apply(transformer, cache, num_inference_steps)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.invalidate_child_registries_cache()
    # The hooks keep their state per "cache context"; the pipelines of these families do not open one
    # (what ``CacheMixin.cache_context`` does inside some others), so the job is one context. Their
    # guidance runs cond and uncond rows in one transformer call (or none at all, FLUX.1), so one
    # context never mixes the two.
    _set_cache_context(transformer, CacheContext("cond", num_inference_steps=num_inference_steps))
    try:
        yield
    finally:
        _set_cache_context(transformer, None)
        for name in hooks:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()


def _apply(transformer: Any, cache: StepCache, steps: int) -> tuple[str, ...]:
    """Attach the hooks; returns their names (to remove them)."""
    import torch
    from diffusers import hooks

    threshold = cache.settled_threshold
    if cache.kind == "first_block":
        from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

        assert threshold is not None
        hooks.apply_first_block_cache(transformer, hooks.FirstBlockCacheConfig(threshold=threshold))
        return (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK)
    if cache.kind == "taylorseer":
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        # diffusers' defaults (3 full steps first, a full step every 5) with the factors in the model's
        # float type: bfloat16 factors on a float32 CPU model would cost a cast per module per step.
        dtype = next(transformer.parameters()).dtype
        factors = dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        hooks.apply_taylorseer_cache(transformer, hooks.TaylorSeerCacheConfig(taylor_factors_dtype=factors))
        return (_TAYLORSEER_CACHE_HOOK,)
    if cache.kind == "mag":
        from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK, FLUX_MAG_RATIOS

        assert threshold is not None
        config = hooks.MagCacheConfig(threshold=threshold, num_inference_steps=steps, mag_ratios=FLUX_MAG_RATIOS)
        hooks.apply_mag_cache(transformer, config)
        return (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)
    raise AssertionError(f"unchecked cache kind {cache.kind!r}")  # check_cache_family refuses it at submit
