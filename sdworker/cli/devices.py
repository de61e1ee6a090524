"""Device names as a command-line check: ``settings.device_name`` with our error type (exit 2)."""

from __future__ import annotations

from sdworker.errors import ModelError
from sdworker.settings import device_name as _device_name


def device_name(name: str) -> str:
    """Our device name for one of ours or rbee's; ``ModelError`` (exit 2) for anything else."""
    try:
        return _device_name(name)
    except ValueError as exc:
        raise ModelError(f"--device {exc}", field="device") from None
