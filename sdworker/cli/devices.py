"""Device names: ours (torch's) and the ones rbee's hive passes with ``--device``.

rbee names a worker's device ``cpu``/``CPU-N`` (its CPU "devices" are all the one CPU), ``GPU-N`` or
``cuda:N`` (an NVIDIA GPU) and ``metal`` (Apple); torch calls them ``cpu``, ``cuda:N`` and ``mps``.
Anything else is refused here, at start, with the names we take, instead of failing later in torch.
"""

from __future__ import annotations

import re

from sdworker.errors import ModelError

_OURS = re.compile(r"auto|cpu|cuda|cuda:[0-9]{1,3}|mps")
_RBEE_CPU = re.compile(r"cpu-[0-9]{1,3}")
_RBEE_GPU = re.compile(r"gpu-([0-9]{1,3})")


def device_name(name: str) -> str:
    """Our device name for one of ours or rbee's; ``ModelError`` (exit 2) for anything else."""
    lowered = name.strip().lower()
    if _OURS.fullmatch(lowered):
        return lowered
    if _RBEE_CPU.fullmatch(lowered):
        return "cpu"
    if gpu := _RBEE_GPU.fullmatch(lowered):
        return f"cuda:{int(gpu.group(1))}"
    if lowered == "metal":
        return "mps"
    raise ModelError(
        f"--device {name!r} is not a device sdworker knows: auto, cpu, cuda, cuda:N, mps, "
        "or rbee's CPU-N, GPU-N (= cuda:N), metal (= mps)",
        field="device",
    )
