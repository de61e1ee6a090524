"""OpenAI Images answers: the ``ImagesResponse`` body and the SSE stream of ``image_generation.*`` /
``image_edit.*`` events, exactly as the ``openai`` SDK parses them (``type`` inside every ``data``:
the SDK picks the event class from it and ignores the ``event:`` line)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from PIL import Image

from sdworker.api.sse import KEEPALIVE
from sdworker.events.bus import Subscription
from sdworker.events.types import JobCompleted, JobFailed, PreviewReady
from sdworker.imaging.encode import encode_image
from sdworker.jobs.protocol import JobService

USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


@dataclass(frozen=True, slots=True)
class Rendering:
    """How the client asked to see its images."""

    output_format: str  # png | jpeg | webp
    compression: int | None  # jpeg/webp quality 0-100
    quality: str  # reported: low | medium | high
    size: str  # WxH


def convert(png: bytes, fmt: str, compression: int | None) -> bytes:
    """Our PNG in the format the client asked for (CPU work: call it in a thread)."""
    if fmt == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        return encode_image(image.convert("RGB"), fmt, 95 if compression is None else max(1, compression))


async def images_response(
    pngs: list[bytes], rendering: Rendering, *, model: str | None, urls: list[str] | None
) -> dict[str, Any]:
    if urls is not None:
        data: list[dict[str, Any]] = [{"url": url} for url in urls]
    else:
        images = [await asyncio.to_thread(convert, png, rendering.output_format, rendering.compression) for png in pngs]
        data = [{"b64_json": _b64(image)} for image in images]
    return {
        "created": int(time.time()),
        "data": data,
        "model": model,
        "background": "opaque",
        "output_format": rendering.output_format if urls is None else "png",
        "quality": rendering.quality,
        "size": rendering.size,
        "usage": USAGE,
    }


async def stream_frames(
    service: JobService,
    sub: Subscription,
    *,
    kind: str,
    rendering: Rendering,
    targets: list[int],
    owner: str | None,
    keepalive_seconds: float,
) -> AsyncIterator[bytes]:
    """``kind`` is ``image_generation`` or ``image_edit``. Partial image ``i`` is the first preview at or
    after step ``targets[i]``; then one ``completed`` per image, in order. A client that hangs up
    mid-stream cancels its job (nobody else asked for it)."""
    common = {"size": rendering.size, "quality": "auto", "background": "auto", "output_format": rendering.output_format}
    sent = 0
    finished = False
    try:
        while True:
            try:
                event = await sub.next(timeout=keepalive_seconds)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if event is None:
                return
            match event:
                case PreviewReady() if sent < len(targets) and event.step >= targets[sent]:
                    data = {"b64_json": _b64(event.image), "partial_image_index": sent, "created_at": int(event.at)}
                    yield _frame(f"{kind}.partial_image", {**data, **common})
                    sent += 1
                case JobCompleted():
                    finished = True
                    for png in event.images:
                        image = await asyncio.to_thread(
                            convert, png, rendering.output_format, rendering.compression
                        )
                        data = {"b64_json": _b64(image), "created_at": int(event.at), "usage": USAGE}
                        yield _frame(f"{kind}.completed", {**data, **common})
                    return
                case JobFailed(code=code, message=message):
                    finished = True
                    error = {"message": message, "type": "server_error", "param": None, "code": code}
                    yield _frame("error", {"error": error})
                    return
    finally:
        sub.close()
        if not finished:
            # Runs while the response is being cancelled (the client went away): shielded, or a
            # backend whose cancel awaits the network (Redis) would be cancelled before it asked.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await service.cancel(sub.job_id, owner=owner)


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data}, separators=(',', ':'))}\n\n".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
