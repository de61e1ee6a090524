"""What to say when a command needs the worker's packages and only the client is installed.

``pip install sdworker`` is the client alone (httpx, Pillow, and pydantic for the settings every
command reads); ``serve``, ``api``, ``worker``, ``demo-model`` and local ``generate`` need
``sdworker[all]`` (torch, diffusers, FastAPI, ...). Rather than a traceback ending in
``No module named 'torch'``, the CLI prints one line naming the fix.
"""

from __future__ import annotations

# Top-level modules of the `engine` and `server` extras (and of the settings they need).
WORKER_MODULES = frozenset({
    "torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "scipy",
    "fastapi", "starlette", "uvicorn", "prometheus_client", "redis", "peft", "multipart",
})


def missing_worker_package(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one-line message for ``exc``, or None when the missing module is not one of the extras'."""
    top = (exc.name or "").split(".")[0]
    if command == "mcp" and top in ("mcp", "mcp_types"):
        return f"`sdworker mcp` needs the MCP SDK (no module {top!r}): pip install 'sdworker[mcp]'"
    if top not in WORKER_MODULES:
        return None
    return (
        f"`sdworker {command}` needs the worker's packages, which are not installed here (no module {top!r}): "
        f"pip install 'sdworker[all]' - or run `sdworker generate --url URL ...` against a remote worker"
    )
