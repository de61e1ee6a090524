"""Engine adapters of the transformer (flow-matching) families: how to load a family's files into
diffusers pipelines, what to pass them for a job, and how to read their latents for previews.

The facts (sizes, defaults, what a field means) live in ``sdworker.domain.families``; this package
holds only what needs torch and diffusers. The UNet families (sd1, sd2, sdxl) are the engine's
original path and have no adapter here.
"""

from __future__ import annotations

from typing import Any

import torch

from sdworker.domain.families import FamilyFacts
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
    return None


def ignored_field_warnings(
    request: GenerationRequest, facts: FamilyFacts, variant: str, *, syntax_removed: bool
) -> tuple[str, ...]:
    """One line per field the family ignores that the request set (the job's ``warnings``)."""
    said: list[str] = []
    if "negative_prompt" in facts.ignored_fields and request.negative_prompt.strip():
        said.append(f"negative_prompt: ignored, {facts.label} has no classifier-free guidance pass")
    if "clip_skip" in facts.ignored_fields and request.clip_skip is not None:
        said.append(f"clip_skip: ignored, {facts.label} does not take it")
    distilled_without = facts.guidance == "distilled" and facts.defaults_for(variant).guidance == 0  # schnell
    if distilled_without and request.guidance_scale not in (0, facts.defaults_for("").guidance):
        said.append(f"guidance_scale: ignored, {facts.label} {variant} is distilled without guidance")
    if syntax_removed:
        said.append(f"prompt: A1111 emphasis syntax removed, {facts.label}'s text encoders do not weight tokens")
    return tuple(said)


def unpacking_renderer(
    render_preview: PreviewRenderer, adapter: FlowAdapter, request: GenerationRequest, pipe: Any
) -> PreviewRenderer:
    """Previews of a family whose loop holds packed latents: unpack to (B, C, h, w) first."""
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    assert request.width is not None and request.height is not None  # settled before the run
    width, height = request.width, request.height

    def render(method: str, max_size: int, latents: torch.Tensor, source: str) -> Any:
        return render_preview(method, max_size, adapter.unpack(latents, width, height, factor), source)

    return render
