"""OpenAI Images API routes: ``POST /v1/images/generations`` (JSON) and ``/v1/images/edits``
(multipart). Thin: parse, hand to ``openai_door.run``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from sdworker.api.compat import openai_door
from sdworker.api.compat.openai_schemas import ImagesRequest

router = APIRouter(prefix="/v1/images", tags=["openai"])


STREAM_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The images (JSON), or with stream=true their events (text/event-stream)",
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/generations", summary="OpenAI images.generate (b64_json, url, or stream=true)", responses=STREAM_OR_JSON
)
async def generate_images(body: ImagesRequest, request: Request) -> Response:
    return await openai_door.run(request, body, kind="image_generation")


@router.post(
    "/edits", summary="OpenAI images.edit (multipart: image or image[], optional mask)", responses=STREAM_OR_JSON
)
async def edit_images(request: Request) -> Response:
    edit = await openai_door.read_edit_form(request)
    return await openai_door.run(request, edit.body, kind="image_edit", edit=edit)
