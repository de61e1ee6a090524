"""What a job is asked to do, as frozen values. Built by the API from the wire schema; nothing here
knows about pydantic or HTTP.

``JobSpec`` is plain data that survives a trip through JSON (``to_dict``/``from_dict``): images are
the client's encoded bytes, not decoded pictures, and the seed is always set (drawn at submit when the
client gave none), so any worker that runs the job - the first, or another after the first died -
makes the same pixels. The GPU side decodes the images after it claims the job (``to_request``).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any

from sdworker.domain.request import GenerationRequest, LoraRef, Operation
from sdworker.imaging.decode import decode_image_bytes
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
    model: str | None = None  # None = the default model
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight)
    clip_skip: int | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job ready to queue: JSON-able values, images as the client's encoded bytes."""

    job_id: str
    prompt: str
    operation: Operation
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    scheduler: str | None
    num_images: int
    strength: float
    preview: PreviewOptions
    created_at: float
    init_image: bytes | None = None
    init_image_field: str = "init_image"
    mask_image: bytes | None = None
    owner: str | None = None  # the API key's name that submitted it (None without auth)
    model: str | None = None  # the model it runs on (resolved at submit)
    hive_id: str | None = None
    worker_id: str | None = None
    loras: tuple[tuple[str, float], ...] = ()
    clip_skip: int | None = None

    def to_request(self, *, max_pixels: int) -> GenerationRequest:
        """The engine request, images decoded (GPU side, after the claim; the API checked them)."""
        init = mask = None
        if self.init_image is not None:
            init = decode_image_bytes(self.init_image, field=self.init_image_field, max_pixels=max_pixels)
        if self.mask_image is not None and self.operation is Operation.INPAINT:
            mask = decode_image_bytes(self.mask_image, field="mask_image", max_pixels=max_pixels, mode="L")
        return GenerationRequest(
            prompt=self.prompt,
            operation=self.operation,
            negative_prompt=self.negative_prompt,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            width=self.width,
            height=self.height,
            seed=self.seed,
            scheduler=self.scheduler,
            num_images=self.num_images,
            init_image=init,
            mask_image=mask,
            strength=self.strength,
            model=self.model,
            loras=tuple(LoraRef(name, weight) for name, weight in self.loras),
            clip_skip=self.clip_skip,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["operation"] = self.operation.value
        for key in ("init_image", "mask_image"):
            value = getattr(self, key)
            data[key] = base64.b64encode(value).decode("ascii") if value is not None else None
        data["loras"] = [list(pair) for pair in self.loras]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        values = dict(data)
        values["operation"] = Operation(values["operation"])
        values["preview"] = PreviewOptions(**values["preview"])
        for key in ("init_image", "mask_image"):
            if values.get(key) is not None:
                values[key] = base64.b64decode(values[key])
        values["loras"] = tuple((str(name), float(weight)) for name, weight in values.get("loras") or ())
        return cls(**values)
