"""AUTOMATIC1111's ``/sdapi/v1`` routes. Thin: parse, make one call, shape the result. Routes that
A1111 answers with ``{}`` or ``null`` answer the same JSON (clients call ``response.json()``), and
their requests may have no body."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel

from sdworker.api import deps
from sdworker.api.compat import a1111_catalog as catalog
from sdworker.api.compat import a1111_door as door
from sdworker.api.compat import a1111_extras as extras
from sdworker.api.compat.a1111_schemas import Img2ImgRequest, Txt2ImgRequest
from sdworker.api.compat.a1111_state import Checkpoint, checkpoints
from sdworker.api.compat.jobs import served_names
from sdworker.errors import NotReady

router = APIRouter(prefix="/sdapi/v1", tags=["automatic1111"])


class PngInfoRequest(BaseModel):
    image: str


@router.post("/txt2img", summary="A1111 txt2img: one job, answered when it is done")
async def txt2img(body: Txt2ImgRequest, request: Request) -> dict[str, Any]:
    return await door.generate(request, body)


@router.post("/img2img", summary="A1111 img2img (and inpainting with a mask, white = repaint)")
async def img2img(body: Img2ImgRequest, request: Request) -> dict[str, Any]:
    return await door.generate(request, body)


@router.post("/extra-single-image", summary="A1111 extras: upscale one image (an image_upscale job)")
async def extra_single_image(body: extras.ExtrasSingleRequest, request: Request) -> dict[str, Any]:
    return await extras.upscale_one(request, body)


@router.get("/progress", summary="A1111 progress: the running job's step, ETA and latest preview")
async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    watcher = door.a1111_state(request).progress
    return await watcher.report(deps.service(request), deps.owner(request), with_image=not skip_current_image)


@router.post("/interrupt", summary="Stop the running job at its next step; it completes with what it has")
async def interrupt(request: Request) -> dict[str, Any]:
    await door.interrupt(request)
    return {}


@router.post("/skip", summary="As interrupt (a job here is one batch)")
async def skip(request: Request) -> None:
    await door.interrupt(request)


@router.get("/options", summary="A1111 options (sd_model_checkpoint is the chosen model)")
async def get_options(request: Request) -> dict[str, Any]:
    return catalog.options(await _current(request), deps.settings(request))


@router.post("/options", summary="Set options: sd_model_checkpoint chooses the model; the rest is accepted")
async def set_options(request: Request, body: Annotated[dict[str, Any] | None, Body()] = None) -> None:
    wanted = (body or {}).get("sd_model_checkpoint")
    if isinstance(wanted, str) and wanted:
        await door.choose_checkpoint(request, wanted)


@router.get("/sd-models", summary="Served models as A1111 checkpoints (title = 'name [hash10]')")
async def sd_models(request: Request) -> list[dict[str, Any]]:
    return catalog.sd_models(await _known(request))


@router.get("/samplers", summary="A1111 sampler names this model runs")
async def samplers(request: Request) -> list[dict[str, Any]]:
    return catalog.samplers(await deps.service(request).fleet())


@router.get("/schedulers", summary="A1111 schedule types this worker honours")
async def schedulers() -> list[dict[str, Any]]:
    return catalog.schedulers()


@router.get("/scripts", summary="No scripts (webuiapi asks on construction)")
async def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@router.post("/png-info", summary="A PNG's text chunks; parameters parsed as A1111 infotext")
async def png_info(body: PngInfoRequest) -> dict[str, Any]:
    return catalog.png_info(body.image)


@router.get("/embeddings", summary="No textual-inversion embeddings")
async def embeddings() -> dict[str, Any]:
    return {"loaded": {}, "skipped": {}}


@router.get("/memory", summary="RAM of this API process's machine")
async def memory() -> dict[str, Any]:
    return catalog.memory()


@router.get("/cmd-flags", summary="How this worker was started, in A1111's terms")
async def cmd_flags(request: Request) -> dict[str, Any]:
    return catalog.cmd_flags(deps.settings(request))


@router.get("/upscalers", summary="Image upscalers for the hires fix (PIL's None, Lanczos, Nearest; --upscalers-dir)")
async def upscalers(request: Request) -> list[dict[str, Any]]:
    return catalog.upscalers((await deps.service(request).fleet()).upscalers)


@router.get("/latent-upscale-modes", summary="The hires fix's latent upscale modes")
async def latent_upscale_modes() -> list[dict[str, str]]:
    return catalog.latent_upscale_modes()


async def _nothing() -> None:
    return None


async def _empty() -> list[Any]:
    return []


for _name in ("refresh-checkpoints", "refresh-loras", "refresh-vae", "refresh-embeddings"):
    router.add_api_route(f"/{_name}", _nothing, methods=["POST"], summary="Nothing to refresh: answers null")
for _name in catalog.EMPTY_LISTS:
    router.add_api_route(f"/{_name}", _empty, methods=["GET"], summary="None here: an empty list")


async def _known(request: Request) -> list[Checkpoint]:
    return await checkpoints(served_names(await deps.service(request).fleet()), deps.settings(request).cache_dir)


async def _current(request: Request) -> Checkpoint:
    known = await _known(request)
    if not known:  # the model failed to load (or none is served yet): say why rather than name one
        _, reason = await deps.node(request).readiness()
        raise NotReady(f"no model is served: {reason or 'none is loaded'}", field="sd_model_checkpoint")
    chosen = door.a1111_state(request).checkpoint or deps.settings(request).model
    return next((c for c in known if c.model == chosen), known[0])
