"""``GET /v1/models`` in OpenAI's list shape: every model this worker (or fleet) serves. Its own
module so the models work can grow it (load state, LoRAs, details) without touching the compat doors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sdworker.api import deps

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="Models this worker (or fleet) serves, in OpenAI's list shape")
async def list_models(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    return {"object": "list", "data": [model_entry(model) for model in fleet.models]}


def model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "owned_by": "sdworker", "created": 0, "loaded": True}
