"""rbee's shared job client (``bin/99_shared_crates/job-client``, ``stream_job_results``), step by
step in Python, so tests read our streams exactly as rbee's orchestrator does: no SSE library; bytes
split at ``\\n``; each line trimmed; ``data: `` or ``data:`` stripped; every other non-empty line handed
over as it is (``id: 3``, ``event: end``, ``retry: 2000``, ``: keep-alive``); stop at a completion
marker (``[DONE]`` ok, ``[CANCELLED]``, ``[ERROR] <message>``). A stream that ends without a marker is
a success to rbee - which is why every stream must end with one."""

from __future__ import annotations

from collections.abc import Callable

import httpx

DONE = "[DONE]"
ERROR_PREFIX = "[ERROR]"
CANCELLED = "[CANCELLED]"


class RbeeJobError(Exception):
    """What ``stream_job_results`` returns as ``Err``."""


def is_completion_marker(line: str) -> bool:
    return line in (DONE, CANCELLED) or line.startswith(ERROR_PREFIX)


def _data(line: str) -> str:
    if line.startswith("data: "):
        return line[len("data: ") :]
    if line.startswith("data:"):
        return line[len("data:") :]
    return line


async def stream_job_results(client: httpx.AsyncClient, job_id: str, line_handler: Callable[[str], None]) -> None:
    """Returns on success; raises ``RbeeJobError`` with rbee's wording otherwise."""
    async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        if not response.is_success:
            raise RbeeJobError(f"SSE stream returned error: {(await response.aread()).decode(errors='replace')}")
        buffer = bytearray()
        async for chunk in response.aiter_bytes():
            buffer.extend(chunk)
            while (newline := buffer.find(b"\n")) != -1:
                line_bytes = bytes(buffer[: newline + 1])
                del buffer[: newline + 1]
                try:
                    line = line_bytes.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                data = _data(line.strip())
                if not data:
                    continue
                line_handler(data)
                if is_completion_marker(data):
                    if data == DONE:
                        return
                    if data == CANCELLED:
                        raise RbeeJobError("Job was cancelled")
                    rest = data[len(ERROR_PREFIX) :]
                    message = rest[1:] if rest.startswith(" ") else data
                    raise RbeeJobError(f"Job failed: {message}")
        if buffer:
            rest_line = buffer.decode("utf-8", errors="strict").strip()
            data = rest_line[len("data: ") :] if rest_line.startswith("data: ") else rest_line
            if data:
                line_handler(data)
