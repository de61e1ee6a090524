"""The model library over HTTP: ``GET /v1/models`` (OpenAI's list shape, each entry with the library's
details), ``GET /v1/loras``, ``GET /v1/controlnets`` (and ``POST /v1/controlnets/preprocess``, a unit's
control map before the job), ``GET /v1/ip-adapters`` and ``POST /v1/models/refresh``. One
``/v1/models`` route serves our API and the OpenAI door alike (OpenAI clients read ``id`` and ignore the rest).

Memory mode lists this process's engine; Redis mode the union of what live workers registered (a
worker from before the library registered only its model name: that entry has no details)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdworker.api import deps
from sdworker.api.control_preview import control_map_base64
from sdworker.domain.catalog import LoraInfo, ModelInfo
from sdworker.domain.controlnet import preprocessor_name
from sdworker.domain.edit import edit_model

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="Models this worker (or fleet) serves, in OpenAI's list shape")
async def list_models(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    if fleet.library:
        return {"object": "list", "data": [library_entry(model) for model in fleet.library]}
    return {"object": "list", "data": [model_entry(model) for model in fleet.models]}


@router.get("/v1/loras", summary="LoRAs a job may name in `loras` or as <lora:name:weight> in its prompt")
async def list_loras(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    return {"object": "list", "data": [lora_entry(lora) for lora in fleet.loras]}


@router.get("/v1/controlnets", summary="ControlNets a job may name in `controlnet[].model` (--controlnet-dir)")
async def list_controlnets(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    return {"object": "list", "data": [{"name": name} for name in fleet.controlnets]}


class PreprocessRequest(BaseModel):
    """A unit's image and preprocessor, as ``controlnet[]`` of a job names them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    image: str = Field(min_length=1, description="base64 PNG/JPEG/WebP")
    preprocessor: str = Field("none", min_length=1, max_length=64, description="none | canny | invert | threshold")
    low: float = Field(100.0, ge=0.0, le=255.0, description="canny's low threshold; threshold's level")
    high: float = Field(200.0, ge=0.0, le=255.0, description="canny's high threshold")


@router.post("/v1/controlnets/preprocess", summary="The control map a ControlNet unit would use (base64 PNG)")
async def preprocess(body: PreprocessRequest, request: Request) -> dict[str, Any]:
    name = preprocessor_name(body.preprocessor, "preprocessor")
    image = await control_map_base64(body.image, name, body.low, body.high, field="image",
                                     module_field="preprocessor", max_pixels=deps.settings(request).max_pixels)
    return {"preprocessor": name, "image": image}


@router.get("/v1/ip-adapters", summary="IP-Adapters a job may name in `ip_adapter.model` (--ip-adapter-dir)")
async def list_ip_adapters(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    return {"object": "list", "data": [{"name": name} for name in fleet.ip_adapters]}


@router.post("/v1/models/refresh", summary="Rescan the models, LoRA and embeddings folders")
async def refresh_models(request: Request) -> dict[str, Any]:
    service = deps.service(request)
    await service.refresh_models()
    return await list_models(request)


def model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "owned_by": "sdworker", "created": 0, "loaded": True}


def library_entry(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "owned_by": "sdworker",
        "created": 0,
        "architecture": model.family,
        "hash": model.short_hash,  # A1111's 10 characters; null until the model's first load
        "loaded": model.loaded,
        "native_size": model.native_size,
        "default": model.is_default,
        "variant": model.variant or None,
        # What a job gets when it leaves these out (its family's, sdworker.domain.families).
        "defaults": {"steps": model.default_steps, "guidance_scale": model.default_guidance,
                     "width": model.native_size, "height": model.native_size},
        "size_multiple": model.size_multiple,
        # Bytes its weights hold once loaded (at the worker's dtype), from the safetensors headers; null
        # when the files cannot tell (a hub id, a pickle).
        "size_bytes": model.size_bytes,
        # An edit model runs image_edit jobs only, with up to this many reference images (null: not one).
        "edit_references": edit.max_references if (edit := edit_model(model.family, model.variant)) else None,
        # Why it cannot be used (unreadable files, or its load failed); null for a usable model.
        "error": model.error,
    }


def lora_entry(lora: LoraInfo) -> dict[str, Any]:
    return {"name": lora.name, "family": lora.family, "format": lora.format}
