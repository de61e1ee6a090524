"""A1111-style ``parameters`` text: what AUTOMATIC1111 writes into a PNG's tEXt chunk, so other tools
(A1111's "PNG info", ComfyUI, civitai, InvokeAI importers) read our settings back. Format::

    a photo of a cat
    Negative prompt: blurry
    Steps: 8, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 64x64, Model hash: 1a2b3c4d5e, Model: demo

The prompt may span lines; the negative line appears only when there is a negative prompt; the last
line is ``Key: value`` pairs separated by ", ". A value holding a comma, colon or quote is written as
a JSON string, as A1111 does, so it parses back unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PNG_KEY = "parameters"
_NEGATIVE = "Negative prompt:"
# A1111's own pattern (modules/infotext_utils.py): key, then a quoted or a plain value.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass(frozen=True, slots=True)
class ImageParameters:
    prompt: str
    negative_prompt: str
    steps: int
    sampler: str  # A1111's name, e.g. "Euler a", "DPM++ 2M Karras"
    cfg_scale: float
    seed: int
    width: int
    height: int
    model: str
    schedule_type: str | None = None  # e.g. "Karras"
    denoising_strength: float | None = None  # image-to-image and inpainting only
    model_hash: str | None = None  # A1111's 10-character short sha256
    clip_skip: int | None = None  # written when above 1, as A1111 does
    lora_hashes: tuple[tuple[str, str], ...] = ()  # (name, 12-character addnet hash), A1111's "Lora hashes"
    # the hires fix, as A1111 writes it ("Size" is then the first pass's): ("Hires upscale", "2"),
    # ("Hires resize", "1024x768"), ("Hires steps", "10"), ("Hires upscaler", "Latent"), ("Hires prompt", ...)
    hires: tuple[tuple[str, str], ...] = ()
    # sd-webui-controlnet's entries: ("ControlNet 0", "Module: canny, Model: name, Weight: 1, ...")
    controlnet: tuple[tuple[str, str], ...] = ()
    step_cache: str | None = None  # "first_block 0.08": the job's step cache (``domain.step_cache``)


def format_parameters(p: ImageParameters) -> str:
    pairs: list[tuple[str, object]] = [("Steps", p.steps), ("Sampler", p.sampler)]
    if p.schedule_type:
        pairs.append(("Schedule type", p.schedule_type))
    pairs += [("CFG scale", _number(p.cfg_scale)), ("Seed", p.seed), ("Size", f"{p.width}x{p.height}")]
    if p.model_hash:
        pairs.append(("Model hash", p.model_hash))
    pairs.append(("Model", p.model))
    if p.denoising_strength is not None:
        pairs.append(("Denoising strength", _number(p.denoising_strength)))
    if p.clip_skip is not None and p.clip_skip > 1:
        pairs.append(("Clip skip", p.clip_skip))
    pairs += p.hires
    pairs += p.controlnet
    if p.step_cache:
        pairs.append(("Step cache", p.step_cache))
    if p.lora_hashes:
        pairs.append(("Lora hashes", ", ".join(f"{name}: {digest}" for name, digest in p.lora_hashes)))
    lines = [p.prompt]
    if p.negative_prompt:
        lines.append(f"{_NEGATIVE} {p.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, str]:
    """Parse A1111 text back: ``{"Prompt": ..., "Negative prompt": ..., "Steps": "8", "Size": "64x64", ...}``.

    Values stay strings (as A1111 keeps them); a text without a settings line is all prompt.
    """
    lines = text.strip("\n").split("\n")
    settings: dict[str, str] = {}
    last = lines[-1] if lines else ""
    matches = _PARAM.findall(last)
    if len(matches) >= 3:  # A1111's test for "this is the settings line"
        lines = lines[:-1]
        for key, value in matches:
            settings[key.strip()] = _unquote(value.strip())
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith(_NEGATIVE):
            target = negative
            line = line[len(_NEGATIVE) :].lstrip(" ")
        target.append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **settings}


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def _number(value: float) -> str:
    """7.5 -> "7.5", 7.0 -> "7" (A1111 writes CFG scale 7 as "7")."""
    return f"{value:g}" if value == value else str(value)
