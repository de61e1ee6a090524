"""Engine adapters of the transformer (flow-matching) families: how to load a family's files into
diffusers pipelines, what to pass them for a job, and how to read their latents for previews.

The facts (sizes, defaults, what a field means) live in ``sdworker.domain.families``; this package
holds only what needs torch and diffusers. The UNet families (sd1, sd2, sdxl) are the engine's
original path and have no adapter here.
"""

from __future__ import annotations

from typing import Any

import torch

from sdworker.domain.families import FamilyFacts, request_warnings
from sdworker.domain.request import GenerationRequest
from sdworker.engine.families.flow import FlowAdapter
from sdworker.engine.step_hook import PreviewRenderer


def flow_adapter(family: str) -> FlowAdapter | None:
    """The adapter of ``family``, or None for the UNet families."""
    if family == "flux1":
        from sdworker.engine.families import flux1

        return flux1.ADAPTER
    if family == "sd3":
        from sdworker.engine.families import sd3

        return sd3.ADAPTER
    if family == "zimage":
        from sdworker.engine.families import zimage

        return zimage.ADAPTER
    if family == "qwenimage":
        from sdworker.engine.families import qwenimage

        return qwenimage.ADAPTER
    if family == "flux2":
        from sdworker.engine.families import flux2

        return flux2.ADAPTER
    return None


def ignored_field_warnings(
    request: GenerationRequest, facts: FamilyFacts, variant: str, *, syntax_removed: bool
) -> tuple[str, ...]:
    """The job's ``warnings`` (``sdworker.domain.families.request_warnings``, which the job layer also
    uses at submit)."""
    return request_warnings(request, facts, variant, syntax_removed=syntax_removed)


def unpacking_renderer(
    render_preview: PreviewRenderer, adapter: FlowAdapter, request: GenerationRequest, pipe: Any
) -> PreviewRenderer:
    """Previews of a family whose loop holds packed latents: unpack to (B, C, h, w) first. ``request``'s
    size is settled."""
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    assert request.width is not None and request.height is not None
    width, height = request.width, request.height

    def render(method: str, max_size: int, latents: torch.Tensor, source: str) -> Any:
        return render_preview(method, max_size, adapter.unpack(latents, width, height, factor), source)

    return render
