"""The sha256 of a model's weights, as A1111 shows it (``hash`` = the first 10 hex digits, ``title =
"name [hash10]"``). Torch-free, so the API layer can answer ``/sdapi/v1/sd-models`` without the engine.

A single-file checkpoint is hashed whole (A1111's own ``sha256`` of the file); a diffusers folder by
its UNet weights file, the part that makes one fine-tune differ from another. Hashing a 2-7 GB file
takes seconds, so results are cached by path, size and mtime (a replaced file is hashed again); call
it from a worker thread. A model that is not a local path (a hub id, or a file only the GPU nodes see)
has no hash: None.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

DEMO_FOLDER = "demo-v8/models/demo-sd15"  # demo_model.ensure_demo_model (not imported here: torch)
UNET_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin",
)
_CHUNK = 1 << 20

_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def weights_file(model: str, cache_dir: Path) -> Path | None:
    """The file whose hash names ``model`` (a path, a diffusers folder or ``demo``), or None."""
    path = Path(cache_dir) / DEMO_FOLDER if model == "demo" else Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in UNET_WEIGHTS:
            if (path / name).is_file():
                return path / name
    return None


def checkpoint_sha256(model: str, cache_dir: Path) -> str | None:
    path = weights_file(model, cache_dir)
    if path is None:
        return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        known = _cache.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _lock:
        _cache[key] = value
    return value
