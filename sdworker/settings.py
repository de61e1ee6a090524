"""One frozen Settings object, built once (by the CLI or a test) and passed down.

Every field is also an environment variable, ``SDWORKER_<FIELD>`` (upper case), and every CLI flag
maps to a field of the same name. Nothing else in the package reads ``os.environ``; nothing is read
at import time. Units are part of the names (``*_seconds``, ``*_bytes``, ``*_ms``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "SDWORKER_"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "sdworker"


@dataclass(frozen=True, slots=True)
class Settings:
    # Model and device
    model: str = "demo"
    model_config: str | None = None  # diffusers folder with component configs, for single-file loads
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float16 | bfloat16 | float32
    allow_unsafe_pickle: bool = False
    taesd: str | None = None  # folder holding an AutoencoderTiny (e.g. madebyollin/taesd)
    cache_dir: Path = field(default_factory=_default_cache_dir)

    # HTTP
    host: str = "127.0.0.1"
    port: int = 7833
    max_body_bytes: int = 32 * 1024 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    # The worker's own URL as clients reach it (behind a proxy or load balancer): absolute image URLs in
    # OpenAI `response_format=url` answers. None = built from each request's Host.
    public_url: str | None = None

    # Jobs
    max_queue: int = 32
    result_ttl_seconds: float = 3600.0
    max_pixels: int = 2048 * 2048
    max_steps: int = 150
    max_images: int = 8
    shutdown_grace_seconds: float = 30.0

    # Streams
    keepalive_seconds: float = 15.0
    watcher_stall_seconds: float = 30.0  # a watcher that reads nothing for this long is dropped

    # Preview defaults (a request's `preview` object overrides them)
    preview_method: str = "auto"  # auto | latent2rgb | taesd | vae | none
    preview_every: int = 1
    preview_min_interval_ms: int = 200
    preview_max_size: int = 256
    preview_format: str = "jpeg"  # jpeg | webp | png
    preview_quality: int = 80

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``SDWORKER_*`` variables, then apply explicit overrides.

        Overrides whose value is None are ignored, so a CLI can pass every flag through and let an
        unset flag fall back to the environment and then the default.
        """
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, hints[f.name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "cache_dir" in values:
            values["cache_dir"] = Path(values["cache_dir"])
        return cls(**values)


def _parse(name: str, raw: str, hint: Any) -> Any:
    """Parse one environment value by the field's type; a bad value names the variable."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if isinstance(hint, types.UnionType) and args else hint
    try:
        if base is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if base is Path:
            return Path(raw)
        if typing.get_origin(base) is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if base is str and isinstance(hint, types.UnionType) and raw == "":
            return None
        return raw
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {base.__name__}") from None
