"""What a job is asked to do, as frozen values. Built by the API from the wire schema; nothing here
knows about pydantic or HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdworker.engine.protocol import GenerationRequest, Operation
from sdworker.previews.options import PreviewOptions


@dataclass(frozen=True, slots=True)
class JobDraft:
    """A validated submission whose images are still base64 text: the service reserves a queue slot
    before decoding them, so a full queue answers 429 without spending time on a 30 MB image.

    ``width``/``height`` None = 512 for text-to-image, the init image's size (rounded down to a
    multiple of 8) otherwise.
    """

    prompt: str
    operation: Operation = Operation.TEXT_TO_IMAGE
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    num_images: int = 1
    strength: float = 0.8
    init_image: str | None = None  # base64
    init_image_field: str = "init_image"  # the wire name it came in as (img2img also says input_image)
    mask_image: str | None = None  # base64
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    hive_id: str | None = None
    worker_id: str | None = None
    model: str | None = None  # informational: the worker serves the model it loaded


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job ready to run: the engine request with decoded images, its preview options and bookkeeping."""

    job_id: str
    request: GenerationRequest
    preview: PreviewOptions
    created_at: float
    hive_id: str | None = None
    worker_id: str | None = None
    model: str | None = None

    def parameters(self) -> dict[str, Any]:
        """The job's parameters as shown by ``GET /v1/jobs/{id}`` (no image bytes)."""
        r = self.request
        params: dict[str, Any] = {
            "operation": r.operation.value,
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt,
            "steps": r.num_inference_steps,
            "guidance_scale": r.guidance_scale,
            "seed": r.seed,
            "width": r.width,
            "height": r.height,
            "scheduler": r.scheduler,
            "n": r.num_images,
            "preview": {
                "every": self.preview.every,
                "min_interval_ms": self.preview.min_interval_ms,
                "method": self.preview.method,
                "max_size": self.preview.max_size,
                "format": self.preview.format,
                "quality": self.preview.quality,
            },
        }
        if r.operation is not Operation.TEXT_TO_IMAGE:
            params["strength"] = r.strength
        for key in ("hive_id", "worker_id", "model"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        return params
