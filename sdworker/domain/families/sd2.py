"""Stable Diffusion 2.x: SD 1.x's shape with an OpenCLIP-H encoder (1024 wide), 768 px v-models."""

from __future__ import annotations

from dataclasses import replace

from sdworker.domain.families import sd1

FACTS = replace(sd1.FACTS, name="sd2", label="Stable Diffusion 2.x", native_size=768, index_classes=())
