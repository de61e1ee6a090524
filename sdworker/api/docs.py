"""``/docs`` without the internet: Swagger UI's files are served from the ``swagger-ui-bundle-v2``
package (FastAPI's default page loads them from a CDN, so it is blank on an offline machine)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

ASSETS_PATH = "/docs/assets"
_MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _bundle_dir() -> Path:
    import swagger_ui_bundle  # imported when /docs is asked for: nothing else needs it

    return Path(str(swagger_ui_bundle.swagger_ui_path))


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="sdworker - API docs",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
    )


@router.get(ASSETS_PATH + "/{name}")
async def swagger_asset(name: str) -> FileResponse:
    """Only the three files the page loads; any other name is 404."""
    if name not in _MEDIA_TYPES:
        raise HTTPException(404, f"no docs file {name[:60]!r}")
    headers = {"Cache-Control": "public, max-age=86400"}
    return FileResponse(_bundle_dir() / name, media_type=_MEDIA_TYPES[name], headers=headers)
