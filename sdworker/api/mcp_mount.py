"""``/mcp``: the MCP tools (``sdworker/mcp``) over Streamable HTTP, mounted in the app.

Stateless mode: no MCP session lives on the node, so any API node of a fleet answers any request
behind a load balancer (a job's state is in the job service, as for the HTTP API). The route sits
behind the same edge guard and ``AuthMiddleware`` as every other route, so it needs
``Authorization: Bearer <key>`` when keys are set, and the tools act as that key's owner: a caller
sees and cancels only its own jobs. Input images are base64 or data: URLs only; a server does not
read paths or fetch URLs a caller names.

The SDK's session manager owns a task group that must run for the app's lifetime: ``McpMount.run``
is entered in the app's lifespan.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Route

from sdworker.api.routes_models import library_entry, lora_entry, model_entry
from sdworker.api.schemas import JobRequest, to_draft
from sdworker.api.signing import JobLinks, LinkFn
from sdworker.api.views import job_detail
from sdworker.errors import SdworkerError
from sdworker.events.types import JobCompleted, JobFailed, PreviewReady, StepProgressed
from sdworker.jobs.protocol import JobService
from sdworker.mcp.gateway import Finished, Progress, ToolError, decode_base64_image
from sdworker.mcp.server import build_server
from sdworker.settings import Settings

PATH = "/mcp"


class ServiceGateway:
    """The tools' gateway on an API node: the job service in-process, as one caller (``owner``)."""

    def __init__(
        self, service: JobService, settings: Settings, links: LinkFn, openapi: Callable[[], dict[str, Any]],
        *, owner: str | None, base_url: str,
    ) -> None:
        self.service, self.settings, self.links, self._openapi = service, settings, links, openapi
        self.owner, self.base_url = owner, base_url.rstrip("/")

    async def submit(self, body: dict[str, Any]) -> str:
        try:
            request = JobRequest.model_validate_json(json.dumps(body))  # JSON mode, as the HTTP route
            view = await self.service.submit(to_draft(request, self.settings), owner=self.owner)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        except SdworkerError as exc:
            raise ToolError(exc.code, exc.message, exc.field) from None
        return view.job_id

    async def follow(self, job_id: str) -> AsyncIterator[Progress | Finished]:
        subscription = await self._call(self.service.open_stream(job_id, 0, owner=self.owner))
        try:
            while subscription is not None:
                try:
                    event = await subscription.next(self.settings.keepalive_seconds)
                except TimeoutError:
                    continue
                match event:
                    case None:
                        break
                    case StepProgressed() | PreviewReady():
                        yield Progress(event.step, event.total)
                    case JobCompleted():
                        yield Finished(event.images[0], event.seed, event.width, event.height)
                        return
                    case JobFailed():
                        raise ToolError(event.code, event.message)
        finally:
            if subscription is not None:
                subscription.close()
        view = await self._call(self.service.get(job_id, owner=self.owner))  # the stream had ended
        if view.error_code is not None:
            raise ToolError(view.error_code, view.error_message or view.error_code)
        png = await self._call(self.service.image(job_id, 0, owner=self.owner))
        yield Finished(png, view.seeds[0], view.width or 0, view.height or 0)

    async def get(self, job_id: str) -> dict[str, Any]:
        return job_detail(await self._call(self.service.get(job_id, owner=self.owner)), self.links)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return job_detail(await self._call(self.service.cancel(job_id, owner=self.owner)), self.links)

    async def models(self) -> dict[str, Any]:
        fleet = await self.service.fleet()
        models = [library_entry(m) for m in fleet.library] or [model_entry(m) for m in fleet.models]
        return {"models": models, "loras": [lora_entry(lora) for lora in fleet.loras]}

    async def openapi(self) -> dict[str, Any]:
        return self._openapi()

    def image_url(self, job: dict[str, Any]) -> str:
        url = str(job.get("image_url") or f"/v1/jobs/{job['job_id']}/image")
        return url if url.startswith(("http://", "https://")) else self.base_url + url  # presigned: absolute

    async def image_base64(self, ref: str, field: str) -> str:
        data = decode_base64_image(ref, field)
        if data is None:
            raise ToolError(
                "invalid_request", f"{field}: expected base64 image data or a data: URL (this server reads no "
                "paths and fetches no URLs)", field,
            )
        return data

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except SdworkerError as exc:
            raise ToolError(exc.code, exc.message, exc.field) from None


def _validation_error(exc: ValidationError) -> ToolError:
    """Pydantic's first complaint as the HTTP API words it: the field, the problem, the value."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "arguments"
    message = f"{field}: unknown field" if first.get("type") == "extra_forbidden" else f"{field}: {first.get('msg')}"
    if first.get("type") not in ("missing", "extra_forbidden") and "input" in first:
        message += f" (got {json.dumps(first['input'], default=str)[:60]})"
    return ToolError("invalid_request", message, field)


class McpMount:
    """The ``/mcp`` route and the lifetime of the SDK's session manager."""

    def __init__(self, service: JobService, settings: Settings, links: JobLinks,
                 openapi: Callable[[], dict[str, Any]]) -> None:
        def gateway_for(ctx: ServerRequestContext[Any]) -> ServiceGateway:
            request = ctx.request
            owner = getattr(request.state, "owner", None) if isinstance(request, Request) else None
            key = getattr(request.state, "key_id", None) if isinstance(request, Request) else None
            caller_links = links.for_key(key if isinstance(key, str) else None)  # signed for the caller's key
            # Links for the caller: --public-url behind a proxy, else the address the request came to.
            base_url = settings.public_url or (str(request.base_url) if isinstance(request, Request) else "")
            return ServiceGateway(
                service, settings, caller_links, openapi, owner=owner if isinstance(owner, str) else None,
                base_url=base_url,
            )

        # The edge guard (api/edge.py) already checks Host and Origin for every route: no second check.
        self.manager = StreamableHTTPSessionManager(
            app=build_server(gateway_for, local_files=False), stateless=True, security_settings=None,
            max_request_body_size=settings.max_body_bytes,
        )
        self.route = Route(PATH, endpoint=StreamableHTTPASGIApp(self.manager), methods=["GET", "POST", "DELETE"])

    def run(self) -> AbstractAsyncContextManager[None]:
        return self.manager.run()
