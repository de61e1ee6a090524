"""The MCP tools: their definitions (schemas cut from the HTTP API's ``JobRequest``) and what a call does.

A tool call becomes one job. While it runs, each step becomes an MCP progress notification (the SDK
sends nothing when the caller gave no progress token); when the host cancels the request (a
``notifications/cancelled`` on stdio, a closed response stream on Streamable HTTP) the call is
cancelled and the job with it, shielded so the cancel reaches the worker. The result is the image
downsized for a model to look at, a resource link to the full PNG, and the job's id, seed and
parameters as JSON text. Every refusal - the API's own validation, a full queue, a failed job - is a
tool error (``isError``) whose text starts with the API's ``code``; nothing a caller sends turns into
a protocol error.

Tasks (``tasks/*``) are not built: each tool declares ``execution.taskSupport = "forbidden"``. A job
already is a durable, pollable handle: ``get_job`` and ``cancel_job`` by the id every result and
every progress message names.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types

from sdworker.mcp.gateway import Finished, Gateway, Progress, ToolError

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 512  # px: the longest side of the image a tool returns inline
PREVIEW_QUALITY = 85

ReportProgress = Callable[[float, float | None, str | None], Awaitable[None]]

# Descriptions for a model choosing arguments; bounds and types come from the API's schema.
_FIELD_HINTS = {
    "prompt": "What the image shows, in plain descriptive words (subject, setting, style, lighting). "
    "Weights like (word:1.3) and <lora:name:0.8> are understood.",
    "negative_prompt": "What the image must not show (e.g. 'blurry, text, watermark'). Optional.",
    "model": "A model id from list_models. Leave out to use the default model.",
    "width": "Image width in pixels, a multiple of 8. Leave out for the model's native size (see list_models).",
    "height": "Image height in pixels, a multiple of 8. Leave out for the model's native size.",
    "steps": "Denoising steps: more is slower and finer; 20-30 is usual, 4-8 for turbo/lightning models.",
    "seed": "Seed for a reproducible image; leave out for a random one (the result states the seed used).",
    "guidance_scale": "How strictly to follow the prompt: 5-9 is usual; 0-2 for turbo models.",
    "scheduler": "Sampler name (e.g. 'euler_a', 'dpm++_2m_karras'). Leave out for the model's default.",
    "loras": "LoRAs to apply, each {path: name from list_models' loras, strength: 1.0 as trained}.",
    "strength": "How much to change the input image: 0.3 keeps it close, 0.8 (default) repaints most of it.",
}
_GENERATE_FIELDS = (
    "prompt", "negative_prompt", "model", "width", "height", "steps", "seed", "guidance_scale", "scheduler", "loras",
)
_EDIT_FIELDS = (
    "prompt", "negative_prompt", "model", "strength", "steps", "seed", "guidance_scale", "scheduler", "loras",
)
# (architecture, variant) of the edit models (sdworker.domain.edit, not imported: the MCP side is client-only):
# FLUX.1 Kontext, Qwen-Image-Edit(-Plus), FLUX.2 (which edits as well as generates; FLUX.1 dev is no edit model)
EDIT_MODELS = frozenset({("flux1", "kontext"), ("qwenimage", "edit"), ("qwenimage", "edit-plus"),
                         ("flux2", "klein"), ("flux2", "klein-base"), ("flux2", "dev")})
_RESULT_NOTE = (
    f" Returns the image downsized to at most {PREVIEW_MAX_SIDE} px on its longest side (JPEG), a resource "
    "link to the full-size PNG, and the job id, seed and parameters as JSON text. Takes seconds to minutes; "
    "progress is reported per denoising step, and cancelling the request cancels the job."
)
_IMAGE_HINT = (
    "The input image: base64 (PNG, JPEG or WebP), a data: URL{where}. Its size sets the output size."
)
_JOB_ID = {"type": "string", "minLength": 1, "maxLength": 256, "description": "The job id a tool result named."}


def tool_list(openapi: dict[str, Any], *, local_files: bool) -> list[types.Tool]:
    """The five tools. ``openapi`` is the worker's OpenAPI document; ``local_files``: the gateway may
    read a path or fetch a URL for an input image (stdio, on the host's machine)."""
    fields = _job_request_fields(openapi)
    where = ", an http(s) URL or a local file path" if local_files else " (this server reads no paths or URLs)"
    image = {"type": "string", "minLength": 1, "description": _IMAGE_HINT.format(where=where)}
    mask = {
        "type": "string", "minLength": 1,
        "description": "Optional inpainting mask, same forms as image: white = repaint, black = keep. "
        "Without it the whole image is transformed (img2img).",
    }
    forbidden = types.ToolExecution(task_support="forbidden")
    return [
        types.Tool(
            name="generate_image",
            title="Generate an image",
            description="Generate one image from a text prompt with Stable Diffusion." + _RESULT_NOTE,
            input_schema=_object({name: fields[name] for name in _GENERATE_FIELDS if name in fields}, ["prompt"]),
            execution=forbidden,
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False),
        ),
        types.Tool(
            name="edit_image",
            title="Edit an image",
            description="Change an existing image following a prompt: img2img (whole image) or inpainting "
            "(only where the mask is white). On an edit model (list_models: variant kontext, edit or edit-plus, "
            "or a flux2 architecture) without a mask, the prompt is an instruction ('make the door red') that "
            "the model's edit pipeline follows, keeping the rest of the image." + _RESULT_NOTE,
            input_schema=_object(
                {"image": image, "mask": mask, **{n: fields[n] for n in _EDIT_FIELDS if n in fields}},
                ["image", "prompt"],
            ),
            execution=forbidden,
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False),
        ),
        types.Tool(
            name="list_models",
            title="List models and LoRAs",
            description="The models this worker serves (id, family, native size, which is the default) and "
            "the LoRAs a prompt may use, with the family each fits. Call before generate_image to pick "
            "a model, a size and LoRAs.",
            input_schema=_object({}, []),
            execution=forbidden,
            annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
        ),
        types.Tool(
            name="get_job",
            title="Get a job",
            description="A job's status (queued, running, completed, failed, cancelled), step, parameters, "
            "seed and the URL of its full-size PNG once completed.",
            input_schema=_object({"job_id": _JOB_ID}, ["job_id"]),
            execution=forbidden,
            annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
        ),
        types.Tool(
            name="cancel_job",
            title="Cancel a job",
            description="Cancel a queued or running job (a finished job is returned unchanged).",
            input_schema=_object({"job_id": _JOB_ID}, ["job_id"]),
            execution=forbidden,
            annotations=types.ToolAnnotations(destructive_hint=True, idempotent_hint=True, open_world_hint=False),
        ),
    ]


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _job_request_fields(openapi: dict[str, Any]) -> dict[str, Any]:
    """``JobRequest``'s properties with ``$ref`` inlined, ``null`` alternatives dropped (leaving a
    field out means the same) and our descriptions for a model in place of the API's."""
    schemas: dict[str, Any] = openapi.get("components", {}).get("schemas", {})
    job = schemas.get("JobRequest") or schemas.get("JobRequest-Input")
    if job is None:
        raise ToolError("unsupported", "the worker's /openapi.json has no JobRequest schema (too old a worker?)")
    fields = {}
    for name, schema in job.get("properties", {}).items():
        field = _without_null(_inline(copy.deepcopy(schema), schemas))
        field.pop("title", None)
        if name in _FIELD_HINTS:
            field["description"] = _FIELD_HINTS[name]
        fields[name] = field
    return fields


def _inline(schema: Any, schemas: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(item, schemas) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = copy.deepcopy(schemas[str(schema["$ref"]).rsplit("/", 1)[-1]])
        target.pop("title", None)
        return _inline(target, schemas)
    return {key: _inline(value, schemas) for key, value in schema.items() if key != "title"}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**kept[0], **rest}
    if schema.get("default") is None:
        schema.pop("default", None)
    return schema


class ToolRunner:
    """Runs one tool call against a gateway; never raises (a refusal is a tool error result)."""

    def __init__(self, gateway: Gateway, report: ReportProgress) -> None:
        self.gateway = gateway
        self.report = report

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        try:
            match name:
                case "generate_image":
                    return await self._generate(arguments, edit=False)
                case "edit_image":
                    return await self._generate(arguments, edit=True)
                case "list_models":
                    _only(arguments, ())
                    return _json_result(await self.gateway.models())
                case "get_job":
                    _only(arguments, ("job_id",))
                    return _json_result(await self.gateway.get(_job_id(arguments)))
                case "cancel_job":
                    _only(arguments, ("job_id",))
                    return _json_result(await self.gateway.cancel(_job_id(arguments)))
            raise ToolError("unknown_tool", f"no tool named {name!r}; the tools are those of tools/list")
        except ToolError as exc:
            return tool_error(exc)
        except Exception:  # our bug: the host gets a tool error, the log gets the traceback
            log.exception("MCP tool %s failed", name)
            return tool_error(ToolError("internal_error", f"{name} failed on the server; see its log"))

    async def _generate(self, arguments: dict[str, Any], *, edit: bool) -> types.CallToolResult:
        allowed = (*_EDIT_FIELDS, "image", "mask") if edit else _GENERATE_FIELDS
        _only(arguments, allowed)
        body = {k: v for k, v in arguments.items() if k not in ("image", "mask")}
        body["preview"] = {"every": 0}  # an MCP host gets progress, not preview images: decode none
        if edit:
            if not isinstance(arguments.get("image"), str):
                raise ToolError("invalid_request", "image: required (base64, a data: URL, or a path/URL)", "image")
            body["init_image"] = await self.gateway.image_base64(arguments["image"], "image")
            body["operation"] = "image_transform"
            if arguments.get("mask") is None and await self._is_edit_model(arguments.get("model")):
                # an edit model follows the instruction from its reference image (its own pipeline)
                body["reference_images"] = [body.pop("init_image")]
                body["operation"] = "image_edit"
                body.pop("strength", None)
            if arguments.get("mask") is not None:
                if not isinstance(arguments["mask"], str):
                    raise ToolError("invalid_request", "mask: expected a string (base64, data: URL, path/URL)", "mask")
                body["mask_image"] = await self.gateway.image_base64(arguments["mask"], "mask")
                body["operation"] = "image_inpaint"
        job_id = await self.gateway.submit(body)
        finished = await self._follow(job_id)
        job = await self.gateway.get(job_id)
        return self._result(job_id, finished, job)

    async def _is_edit_model(self, model: object) -> bool:
        """Whether ``model`` (None: the default) is an edit model (``variant`` in ``GET /v1/models``)."""
        for entry in (await self.gateway.models())["models"]:
            if entry.get("id") == model or (model is None and entry.get("default")):
                return (entry.get("architecture"), entry.get("variant")) in EDIT_MODELS
        return False

    async def _follow(self, job_id: str) -> Finished:
        try:
            async for item in self.gateway.follow(job_id):
                if isinstance(item, Progress):
                    await self.report(item.step, item.total, f"job {job_id}: step {item.step}/{item.total}")
                elif isinstance(item, Finished):
                    return item
        except anyio.get_cancelled_exc_class():
            # The host cancelled the request: the job must not run on for nobody. Shielded, because
            # this task is being cancelled and an unshielded await would be cancelled too.
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await self.gateway.cancel(job_id)
                except ToolError as exc:
                    log.warning("cancelling job %s after the MCP request was cancelled: %s", job_id, exc.message)
            raise
        raise ToolError("stream_ended", f"job {job_id}: its events ended without a result; try get_job")

    def _result(self, job_id: str, finished: Finished, job: dict[str, Any]) -> types.CallToolResult:
        url = self.gateway.image_url(job)
        summary = {
            "job_id": job_id,
            "seed": finished.seed,
            "width": finished.width,
            "height": finished.height,
            "image_url": url,
            "parameters": job.get("parameters", {}),
        }
        return types.CallToolResult(
            content=[
                types.ImageContent(data=downsized_jpeg(finished.png), mime_type="image/jpeg"),
                types.ResourceLink(
                    name=f"{job_id}.png", uri=url, mime_type="image/png",
                    description=f"the full-size PNG, {finished.width}x{finished.height}",
                ),
                types.TextContent(text=json.dumps(summary, indent=1)),
            ],
            structured_content=summary,
        )


def downsized_jpeg(png: bytes, max_side: int = PREVIEW_MAX_SIDE) -> str:
    """The image as base64 JPEG, at most ``max_side`` px on its longest side (never upscaled)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=PREVIEW_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def tool_error(exc: ToolError) -> types.CallToolResult:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.field is not None:
        error["field"] = exc.field
    return types.CallToolResult(
        content=[types.TextContent(text=f"{exc.code}: {exc.message}")], structured_content={"error": error},
        is_error=True,
    )


def _json_result(body: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(body, indent=1))], structured_content=body)


def _only(arguments: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in arguments:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise ToolError("invalid_request", f"{name}: unknown argument; allowed: {known}", name)


def _job_id(arguments: dict[str, Any]) -> str:
    value = arguments.get("job_id")
    if not isinstance(value, str) or not value:
        raise ToolError("invalid_request", "job_id: required, the job id a tool result named", "job_id")
    return value
