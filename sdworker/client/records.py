"""What the client returns besides events: the submit handle's data, job status, server information,
and the result of ``generate``. Frozen records built from the server's JSON; ``raw`` keeps the whole
answer, so a field the server adds later is readable before the client knows it."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True, slots=True)
class Submitted:
    """The ``202`` answer of ``POST /v1/jobs``."""

    job_id: str
    sse_url: str
    status: str
    queue_position: int | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Submitted:
        job_id = str(body["job_id"])
        position = body.get("queue_position")
        return cls(
            job_id=job_id,
            sse_url=str(body.get("sse_url") or f"/v1/jobs/{job_id}/stream"),
            status=str(body.get("status", "queued")),
            queue_position=int(position) if position is not None else None,
        )


@dataclass(frozen=True, slots=True)
class JobInfo:
    """``GET /v1/jobs/{id}``: status is ``queued | running | completed | failed | cancelled``."""

    job_id: str
    status: str
    queue_position: int | None
    step: int | None
    total: int | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error_code: str | None
    error_message: str | None
    seeds: tuple[int, ...]
    parameters: dict[str, Any]
    # A completed job's image URLs: presigned in the bucket (absolute) when the server keeps results in
    # S3 (``--results-s3``), else its own paths, signed for your key; they all stop working at
    # ``expires_at`` (the job's retention), as the job itself does.
    image_urls: tuple[str, ...]
    expires_at: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobInfo:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        return cls(
            job_id=str(body["job_id"]),
            status=str(body["status"]),
            queue_position=body.get("queue_position"),
            step=body.get("step"),
            total=body.get("total"),
            created_at=body.get("created_at"),
            started_at=body.get("started_at"),
            finished_at=body.get("finished_at"),
            error_code=error.get("code") if error else None,
            error_message=error.get("message") if error else None,
            seeds=tuple(int(s) for s in body.get("seeds") or ()),
            parameters=dict(body.get("parameters") or {}),
            image_urls=tuple(str(url) for url in body.get("images") or ()),
            expires_at=body.get("expires_at"),
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """``GET /v1/info``: the loaded model, readiness, limits and preview defaults."""

    model: dict[str, Any]
    ready: bool
    limits: dict[str, Any]
    preview_defaults: dict[str, Any]
    operations: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ServerInfo:
        return cls(
            model=dict(body.get("model") or {}),
            ready=bool(body.get("ready")),
            limits=dict(body.get("limits") or {}),
            preview_defaults=dict(body.get("preview_defaults") or {}),
            operations=tuple(body.get("operations") or ()),
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /health``: the process answers (``status`` is ``healthy``)."""

    status: str
    timestamp: str | None

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What ``generate`` returns: the final images (decoded) and their PNG bytes, with the seeds."""

    job_id: str
    pngs: tuple[bytes, ...]  # as the server wrote them, A1111 ``parameters`` text chunk included
    seed: int
    seeds: tuple[int, ...]
    width: int
    height: int

    @property
    def images(self) -> list[Image.Image]:
        from PIL import Image

        images: list[Image.Image] = []
        for png in self.pngs:
            image = Image.open(io.BytesIO(png))
            image.load()
            images.append(image)
        return images
