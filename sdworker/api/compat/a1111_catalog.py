"""The bodies of A1111's informational routes (options, models, samplers, ...), each in A1111's shape,
with empty lists where sdworker has nothing of the kind (upscalers, VAEs, embeddings, scripts)."""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

from sdworker.api.compat.a1111_samplers import SCHEDULES, listed
from sdworker.api.compat.a1111_state import Checkpoint
from sdworker.domain.hires import IMAGE_UPSCALERS, LATENT_UPSCALE_MODES
from sdworker.imaging.decode import decode_base64
from sdworker.imaging.metadata import PNG_KEY, parse_parameters
from sdworker.jobs.protocol import FleetInfo
from sdworker.settings import Settings


def options(current: Checkpoint, settings: Settings) -> dict[str, Any]:
    """A1111's option keys that clients read (``sd_model_checkpoint`` above all)."""
    return {
        "sd_model_checkpoint": current.title,
        "sd_checkpoint_hash": current.sha256,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
        "sd_checkpoint_cache": 0,
        "sd_vae_checkpoint_cache": 0,
        "live_previews_enable": settings.preview_every > 0,
        "show_progress_every_n_steps": settings.preview_every,
        "live_preview_content": "Prompt",
        "eta_noise_seed_delta": 0,
        "sd_model_name": current.model_name,
    }


def sd_models(known: list[Checkpoint]) -> list[dict[str, Any]]:
    return [
        {
            "title": c.title,
            "model_name": c.model_name,
            "hash": c.hash10,
            "sha256": c.sha256,
            "filename": c.model,
            "config": None,
        }
        for c in known
    ]


def samplers(fleet: FleetInfo) -> list[dict[str, Any]]:
    available = tuple(fleet.engine.schedulers) if fleet.engine is not None else None
    return [{"name": s.name, "aliases": list(s.aliases), "options": s.options()} for s in listed(available)]


def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "label": s.label, "aliases": s.aliases, "default_rho": s.default_rho,
         "need_inner_model": False}
        for s in SCHEDULES
    ]


def png_info(image: str) -> dict[str, Any]:
    """The text chunks of a PNG (``parameters`` parsed as A1111 infotext). Reads the header only."""
    data = decode_base64(image, field="image")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            items = {k: v for k, v in opened.info.items() if isinstance(v, str)}
    except Exception:
        items = {}
    text = items.get(PNG_KEY, "")
    return {"info": text, "items": items, "parameters": parse_parameters(text) if text else {}}


def memory() -> dict[str, Any]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
        ram: dict[str, Any] = {"free": free, "used": total - free, "total": total}
    except (ValueError, OSError, AttributeError):
        ram = {"error": "not available on this system"}
    return {"ram": ram, "cuda": {"error": "not reported by sdworker's API"}}


def cmd_flags(settings: Settings) -> dict[str, Any]:
    return {
        "api": True,
        "nowebui": True,
        "listen": settings.host not in ("127.0.0.1", "localhost"),
        "port": settings.port,
        "ckpt": settings.model,
        "api_auth": None,
        "sdworker": True,
    }


def upscalers(models: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The image upscalers the hires fix takes (PIL's, no weights, then the worker's upscaler models by
    file name), in A1111's shape."""
    return [{"name": name, "model_name": None if name in IMAGE_UPSCALERS else "ESRGAN", "model_path": None,
             "model_url": None, "scale": 4} for name in (*IMAGE_UPSCALERS, *models)]


def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


EMPTY_LISTS = ("sd-vae", "hypernetworks", "face-restorers",
               "realesrgan-models", "prompt-styles", "script-info", "extensions", "loras")
