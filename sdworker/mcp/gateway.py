"""What the MCP tools need from a worker, as one small protocol, and its client implementation.

``ClientGateway`` drives a remote worker with ``sdworker.client.AsyncClient`` (``sdworker mcp --url``);
the in-process implementation for ``/mcp`` is ``sdworker.api.mcp_mount.ServiceGateway``. Both turn
every refusal into ``ToolError`` carrying the HTTP API's stable ``code``, so a host sees the same codes
on either transport.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from sdworker.client import AsyncClient, ClientError, JobCompleted, JobFailed, StepProgressed
from sdworker.client.wire import job_path


class ToolError(Exception):
    """A refusal the host's model should read: the API's ``code``, a message naming the field."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class Finished:
    """A completed job's first image and what was used to make it."""

    png: bytes
    seed: int
    width: int
    height: int


class Gateway(Protocol):
    """The worker as the tools see it. Every method raises ``ToolError`` for a refusal."""

    async def submit(self, body: dict[str, Any]) -> str:
        """A ``POST /v1/jobs`` body in, the job id out (validated exactly as the HTTP API does)."""
        ...

    def follow(self, job_id: str) -> AsyncIterator[Progress | Finished]:
        """The job's progress, then its result; a failed or cancelled job raises ``ToolError``."""
        ...

    async def get(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}`` as JSON."""
        ...

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v1/jobs/{id}`` as JSON."""
        ...

    async def models(self) -> dict[str, Any]:
        """``GET /v1/models`` and ``GET /v1/loras`` as ``{"models": [...], "loras": [...]}``."""
        ...

    async def openapi(self) -> dict[str, Any]:
        """The API's OpenAPI document (the tools' input schemas are cut from it)."""
        ...

    def image_url(self, job: dict[str, Any]) -> str:
        """An absolute URL of the job's full PNG (signed when the server signs its links)."""
        ...

    async def image_base64(self, ref: str, field: str) -> str:
        """An input image given by the host (base64, a data: URL, and where allowed a path or URL)."""
        ...


_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF", b"GIF8", b"BM")


def decode_base64_image(ref: str, field: str) -> str | None:
    """``ref`` as base64 when it is base64 of an image or a base64 ``data:`` URL; None otherwise
    (a path or a URL). The image itself is checked by the server, as for any job."""
    text = ref.strip()
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ToolError(
                "invalid_request", f"{field}: a data: URL must be base64 (data:image/png;base64,...)", field
            )
        text = payload
    try:
        head = base64.b64decode(text[:64].ljust(4 * ((min(len(text), 64) + 3) // 4), "="), validate=True)
    except (binascii.Error, ValueError):
        return None
    return text if head.startswith(_IMAGE_MAGIC) else None


class ClientGateway:
    """A remote worker through ``sdworker.client``: the stdio server's gateway. Runs on the host's
    machine, so an input image may also be a local path or an http(s) URL it can fetch."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._openapi: dict[str, Any] | None = None

    async def submit(self, body: dict[str, Any]) -> str:
        fields = dict(body)
        prompt = fields.pop("prompt", "")
        for name in ("init_image", "mask_image"):  # the client takes image bytes and sends base64
            if isinstance(fields.get(name), str):
                fields[name] = base64.b64decode(fields[name])
        if isinstance(fields.get("reference_images"), list):
            fields["reference_images"] = [base64.b64decode(image) for image in fields["reference_images"]]
        try:
            job = await self.client.submit(prompt, **fields)
        except ClientError as exc:
            raise _tool_error(exc) from exc
        return job.job_id

    async def follow(self, job_id: str) -> AsyncIterator[Progress | Finished]:
        try:
            async for event in self.client.events(job_id):
                if isinstance(event, StepProgressed):
                    yield Progress(event.step, event.total)
                elif isinstance(event, JobCompleted):
                    yield Finished(event.pngs[0], event.seed, event.width, event.height)
                    return
            result = await self.client.wait(job_id)  # the stream had ended: ask for the result
            yield Finished(result.pngs[0], result.seed, result.width, result.height)
        except JobFailed as exc:
            raise ToolError(exc.code, exc.message) from exc
        except ClientError as exc:
            raise _tool_error(exc) from exc

    async def get(self, job_id: str) -> dict[str, Any]:
        try:
            return (await self.client.get(job_id)).raw
        except ClientError as exc:
            raise _tool_error(exc) from exc

    async def cancel(self, job_id: str) -> dict[str, Any]:
        try:
            return (await self.client.cancel(job_id)).raw
        except ClientError as exc:
            raise _tool_error(exc) from exc

    async def models(self) -> dict[str, Any]:
        try:
            return {"models": await self.client.models(), "loras": await self.client.loras()}
        except ClientError as exc:
            raise _tool_error(exc) from exc

    async def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            try:
                self._openapi = await self.client.openapi()
            except ClientError as exc:
                raise _tool_error(exc) from exc
        return self._openapi

    def image_url(self, job: dict[str, Any]) -> str:
        url = str(job.get("image_url") or job_path(str(job["job_id"]), "/image"))
        return url if url.startswith(("http://", "https://")) else self.client.base_url + url  # presigned: absolute

    async def image_base64(self, ref: str, field: str) -> str:
        if (data := decode_base64_image(ref, field)) is not None:
            return data
        if ref.startswith(("http://", "https://")):
            try:
                async with httpx.AsyncClient(timeout=30.0, follow_redirects=True) as http:
                    response = await http.get(ref)
                    response.raise_for_status()
            except httpx.HTTPError as exc:
                raise ToolError("invalid_request", f"{field}: cannot fetch {ref}: {exc}", field) from exc
            return base64.b64encode(response.content).decode("ascii")
        path = Path(ref.removeprefix("file://")).expanduser()
        try:
            return base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as exc:
            raise ToolError(
                "invalid_request", f"{field}: not base64, a data: URL, an http(s) URL or a readable file "
                f"({exc.strerror or exc})", field,
            ) from exc



def _tool_error(exc: ClientError) -> ToolError:
    return ToolError(exc.code, exc.message, exc.field)
