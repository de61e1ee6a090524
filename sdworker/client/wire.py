"""The HTTP contract as plain functions shared by ``Client`` and ``AsyncClient`` (no I/O here): the
job body from typed fields, error responses to exceptions, ``Retry-After``, and the reconnect back-off.
"""

from __future__ import annotations

import base64
import email.utils
import io
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict
from urllib.parse import quote

import httpx

from sdworker import __version__
from sdworker.client.errors import (
    APIError,
    BadRequest,
    ClientError,
    JobCancelled,
    JobFailed,
    NotFound,
    QueueFull,
    ServerError,
    Unauthorized,
)
from sdworker.client.events import JobCompleted
from sdworker.client.records import GenerationResult, JobInfo

if TYPE_CHECKING:
    from PIL import Image

# A file path, encoded image bytes (PNG, JPEG, WebP...) or a Pillow image (sent as PNG).
ImageInput: TypeAlias = "bytes | str | os.PathLike[str] | Image.Image"

OperationName = Literal["image_generation", "image_transform", "image_inpaint", "image_edit", "image_upscale"]


@dataclass(frozen=True, slots=True)
class PreviewOptions:
    """A job's ``preview`` object; a field left None takes the server's default. ``every=0`` = none."""

    every: int | None = None
    min_interval_ms: int | None = None
    method: Literal["auto", "latent2rgb", "taesd", "vae", "none"] | None = None
    max_size: int | None = None
    format: Literal["jpeg", "webp", "png"] | None = None
    quality: int | None = None


class JobFields(TypedDict, total=False):
    """The native fields of ``POST /v1/jobs`` besides ``prompt`` (see the README); left out = the
    server's default. Images are file paths, encoded image bytes or Pillow images; ``operation`` is
    inferred (reference images mean an edit, an upscaler an upscale, a mask inpainting, an init image
    alone image-to-image) unless given."""

    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    scheduler: str
    n: int
    init_image: ImageInput
    mask_image: ImageInput  # white = repaint
    strength: float
    preview: PreviewOptions | Mapping[str, Any]
    operation: OperationName
    hive_id: str
    worker_id: str
    model: str
    reference_images: Sequence[ImageInput]  # image_edit on an edit model (FLUX.1 Kontext...)
    ip_adapter: Mapping[str, Any]  # {"model": name, "images": [ImageInput, ...], "scale": 1.0}
    upscaler: str  # image_upscale: an upscaler model or None/Lanczos/Nearest


def job_body(prompt: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a job: only the fields given (None = left out), images as base64."""
    body: dict[str, Any] = {"prompt": prompt}
    for name, value in fields.items():
        if value is None:
            continue
        if name in ("init_image", "mask_image"):
            value = _image_base64(value, name)
        elif name == "reference_images":
            value = [_image_base64(image, f"{name}.{i}") for i, image in enumerate(value)]
        elif name == "ip_adapter":
            images = [_image_base64(image, f"ip_adapter.images.{i}") for i, image in enumerate(value["images"])]
            value = {**value, "images": images}
        elif name == "preview":
            items = asdict(value) if isinstance(value, PreviewOptions) else dict(value)
            value = {k: v for k, v in items.items() if v is not None}
        body[name] = value
    if "operation" not in body:
        if "reference_images" in body:
            body["operation"] = "image_edit"
        elif "upscaler" in body:
            body["operation"] = "image_upscale"
        elif "mask_image" in body:
            body["operation"] = "image_inpaint"
        elif "init_image" in body:
            body["operation"] = "image_transform"
    return body


def _image_base64(value: Any, field: str) -> str:
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str | os.PathLike):
        data = Path(value).read_bytes()
    elif hasattr(value, "save"):  # a Pillow image: sent losslessly
        buffer = io.BytesIO()
        value.save(buffer, "PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"{field}: expected a path, image bytes or a PIL image, got {type(value).__name__}")
    return base64.b64encode(data).decode("ascii")


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer (the body must have been read)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    error = body.get("error")
    inner: dict[str, Any] = error if isinstance(error, dict) else body
    status = response.status_code
    code = str(inner.get("code") or f"http_{status}")
    message = str(inner.get("message") or f"HTTP {status} from {response.request.url}")
    field = inner.get("field")
    kwargs: dict[str, Any] = {"status_code": status, "code": code, "field": field, "body": body}
    if status == 429:
        return QueueFull(message, retry_after_seconds=retry_after_seconds(response), **kwargs)
    if status in (401, 403):
        return Unauthorized(message, **kwargs)
    if status == 404:
        return NotFound(message, **kwargs)
    if status >= 500:
        return ServerError(message, **kwargs)
    if status >= 400:
        return BadRequest(message, **kwargs)
    return APIError(message, **kwargs)


DEFAULT_RETRY_AFTER_SECONDS = 1.0


def retry_after_seconds(response: httpx.Response, now: Callable[[], float] = time.time) -> float:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); 1 s when absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return DEFAULT_RETRY_AFTER_SECONDS
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_SECONDS


# Longer than the server's 15 s keep-alive: a stream silent for this long is dead and is resumed.
STREAM_READ_TIMEOUT_SECONDS = 45.0

# Answers worth another try on a stream: a proxy or load balancer in front of a restarting node.
RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How hard the client tries again after a dropped connection: up to ``attempts`` tries in a row
    (the count starts over once an event arrives), waiting ``initial_delay_seconds`` doubled each time
    up to ``max_delay_seconds``, with jitter so a fleet of clients does not return in one wave.

    The server's SSE ``retry:`` hint is for browsers' fixed delay; resuming at once is safe here
    because ``Last-Event-ID`` makes the server replay exactly what was missed.
    """

    attempts: int = 8
    initial_delay_seconds: float = 0.25
    max_delay_seconds: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (1-based)."""
        base = min(self.max_delay_seconds, self.initial_delay_seconds * 2 ** max(0, attempt - 1))
        return base * random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class ReconnectNotice:
    """Passed to an ``on_reconnect`` callback before each wait: what failed and what comes next."""

    job_id: str
    attempt: int
    delay_seconds: float
    last_event_id: str | None
    error: str


def resume_headers(last_event_id: str | None) -> dict[str, str]:
    return {"Last-Event-ID": last_event_id} if last_event_id is not None else {}


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def client_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"sdworker-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def result_from_event(event: JobCompleted) -> GenerationResult:
    return GenerationResult(
        job_id=event.job_id, pngs=event.pngs, seed=event.seed, seeds=event.seeds, width=event.width, height=event.height
    )


def result_from_info(info: JobInfo, fetch_image: Callable[[int], bytes]) -> GenerationResult:
    """A completed job's result from its status (``images`` come from ``fetch_image``); a failed or
    cancelled one raises as its ``error`` event would have."""
    if info.status == "completed":
        pngs = tuple(fetch_image(i) for i in range(max(1, len(info.seeds))))
        raw = info.raw
        return GenerationResult(
            job_id=info.job_id, pngs=pngs, seed=int(raw.get("seed", info.seeds[0] if info.seeds else 0)),
            seeds=info.seeds, width=int(raw.get("width", 0)), height=int(raw.get("height", 0)),
        )
    if info.status in ("failed", "cancelled"):
        code = info.error_code or info.status
        error = JobCancelled if code == "cancelled" else JobFailed
        raise error(info.error_message or code, code=code, job_id=info.job_id)
    raise ClientError(f"the event stream of job {info.job_id} ended while it is {info.status}", code="stream_ended")
