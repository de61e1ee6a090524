"""How many bytes a model will hold once loaded, judged from its safetensors headers (no tensor is read).

A model is a tuple of ``WeightFiles``, one per component (``unet``, ``transformer``, ``text_encoder``,
``vae``...; a single-file checkpoint is one ``checkpoint`` part). Each part's ``bytes`` is the sum over
its tensors of ``numel x element size`` at the dtype the worker loads in (floating tensors are cast to
it; integer ones keep theirs), so a float32 file loaded as float16 counts half its size.

Text encoders and the VAE are the parts two models may share (FLUX.1 fine-tunes differ only in the
transformer): ``SHAREABLE`` names them, and the engine's ``ComponentPool`` keys them by the sha256 of
their files. Torch-free: the API thread calls this at submit time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdworker.settings import Settings

_MAX_HEADER_BYTES = 100 * 1024 * 1024
SHAREABLE = frozenset({"text_encoder", "text_encoder_2", "text_encoder_3", "vae"})
_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_OTHER_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
# diffusers' and transformers' weight names, sharded or not; variants (".fp16") load only when asked.
_PLAIN_WEIGHTS = re.compile(r"^(?:diffusion_pytorch_model|model)(?:-\d+-of-\d+)?\.safetensors$")


@dataclass(frozen=True, slots=True)
class WeightFiles:
    """One component's weights: its files and the bytes it will hold at the load dtype."""

    name: str  # the component (model_index.json's key), or "checkpoint" for a single file
    files: tuple[Path, ...]
    bytes: int
    class_name: str = ""  # model_index.json's class for it (a shared part must be loaded as the same class)

    @property
    def shareable(self) -> bool:
        return self.name in SHAREABLE and bool(self.files)


def load_element_bytes(settings: Settings) -> int:
    """The element size floating weights get: float16/bfloat16 = 2, float32 = 4; ``auto`` is float16 on
    CUDA and float32 elsewhere (as ``engine.models.resolve_device`` decides)."""
    dtype = settings.dtype
    if dtype in ("float16", "bfloat16"):
        return 2
    if dtype == "float32":
        return 4
    device = settings.device
    on_cuda = device.startswith("cuda") or (device == "auto" and Path("/proc/driver/nvidia/version").exists())
    return 2 if on_cuda else 4


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype/shape/offsets), without the data."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= _MAX_HEADER_BYTES:
            raise ValueError("not a safetensors file (bad header length)")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a map)")
    header.pop("__metadata__", None)
    return header


def file_bytes(path: Path, element_bytes: int, header: dict[str, Any] | None = None) -> int:
    """Bytes the tensors of one safetensors file hold when floating ones are cast to ``element_bytes``."""
    total = 0
    for info in (header if header is not None else read_safetensors_header(path)).values():
        if not isinstance(info, dict):
            continue
        numel = 1
        for side in info.get("shape", []):
            numel *= int(side)
        dtype = str(info.get("dtype", "F32"))
        total += numel * (element_bytes if dtype in _FLOAT_BYTES else _OTHER_BYTES.get(dtype, 4))
    return total


def folder_parts(folder: Path, element_bytes: int, *, skip: frozenset[str] = frozenset()) -> tuple[WeightFiles, ...]:
    """The components of a diffusers folder that have safetensors weights (``skip``: names left out,
    e.g. the transformer a single file replaces)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    parts: list[WeightFiles] = []
    for name, value in sorted(index.items()):
        if name.startswith("_") or name in skip or not (folder / name).is_dir():
            continue
        files = component_files(folder / name)
        if not files:
            continue
        class_name = str(value[1]) if isinstance(value, list) and len(value) == 2 else ""
        parts.append(WeightFiles(name, files, sum(file_bytes(f, element_bytes) for f in files), class_name))
    return tuple(parts)


def component_files(folder: Path) -> tuple[Path, ...]:
    """The weight files diffusers loads for a component folder (no variant asked: the plain names)."""
    files = sorted(p for p in folder.glob("*.safetensors") if _PLAIN_WEIGHTS.match(p.name))
    return tuple(files)


def total_bytes(parts: tuple[WeightFiles, ...]) -> int:
    return sum(part.bytes for part in parts)


def format_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'; for messages (the exact count is given beside it)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
