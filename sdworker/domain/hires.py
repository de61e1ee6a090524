"""The hires fix (A1111's ``enable_hr``): a text-to-image job in two passes, one image.

Pass 1 makes the image at the job's size; it is upscaled, then pass 2 runs image-to-image on the
upscaled image at the larger size (``strength``, A1111's ``denoising_strength``), with the same seeds:
the second pass's generators start again from ``seed, seed + 1, ...``, so the job equals diffusers'
text-to-image pipeline followed by its image-to-image pipeline, each called with a fresh
``torch.Generator("cpu").manual_seed(seed)``.

Upscalers, by A1111's names:

- latent modes (``Latent``, ``Latent (antialiased)``, ``Latent (bicubic)``, ...): the first pass's
  latents are resized with ``torch.nn.functional.interpolate`` (A1111's ``shared.latent_upscale_modes``)
  and handed to the image-to-image pipeline as latents (no VAE round trip);
- image upscalers that need no weights (``None``, ``Lanczos``, ``Nearest``): the first pass is decoded
  and resized with PIL, then the image-to-image pipeline encodes it again;
- upscaler models of ``--upscalers-dir`` by file name (ESRGAN/Real-ESRGAN, ``engine.upscalers``): as
  the image upscalers, with the model's upscale before the resize.

Sizes follow A1111's ``StableDiffusionProcessingTxt2Img.init``: ``scale`` times the first pass's size,
or ``resize_width``/``resize_height`` (one of them keeps the aspect; both crop the centre to that
aspect), each rounded down to the latent grid (multiples of 8). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdworker.errors import InvalidRequest

# name -> (torch interpolate mode, antialias): A1111's modules/shared_items latent_upscale_modes
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# image upscalers that need no model weights: name -> PIL resampling filter name
IMAGE_UPSCALERS: dict[str, str] = {"None": "LANCZOS", "Lanczos": "LANCZOS", "Nearest": "NEAREST"}
DEFAULT_UPSCALER = "Latent"  # A1111's latent_upscale_default_mode, used when hr_upscaler is unset
MAX_SCALE = 8.0
GRID = 8


@dataclass(frozen=True, slots=True)
class HiresFix:
    """The second pass of a text-to-image job. ``steps`` None = the first pass's step count;
    ``prompt``/``negative_prompt`` None = the first pass's."""

    scale: float = 2.0
    resize_width: int | None = None  # A1111's hr_resize_x (0 there = unset)
    resize_height: int | None = None
    upscaler: str = DEFAULT_UPSCALER
    steps: int | None = None
    strength: float = 0.7
    prompt: str | None = None
    negative_prompt: str | None = None

    @property
    def latent(self) -> bool:
        return self.upscaler in LATENT_UPSCALE_MODES


@dataclass(frozen=True, slots=True)
class HiresSize:
    """The upscale target (``width``/``height``) and the centre crop after it (in pixels, multiples of
    8): the final image is ``width - crop_x`` by ``height - crop_y``."""

    width: int
    height: int
    crop_x: int = 0
    crop_y: int = 0

    @property
    def final(self) -> tuple[int, int]:
        return self.width - self.crop_x, self.height - self.crop_y


def hires_size(width: int, height: int, hires: HiresFix) -> HiresSize:
    """A1111's arithmetic for the second pass's size from the first pass's ``width`` x ``height``."""
    rx, ry = hires.resize_width or 0, hires.resize_height or 0
    crop_x = crop_y = 0
    if rx == 0 and ry == 0:
        to_x, to_y = int(width * hires.scale), int(height * hires.scale)
    elif ry == 0:
        to_x, to_y = rx, rx * height // width
    elif rx == 0:
        to_x, to_y = ry * width // height, ry
    else:
        if width / height < rx / ry:
            to_x, to_y = rx, rx * height // width
        else:
            to_x, to_y = ry * width // height, ry
        crop_x, crop_y = (to_x - rx) // GRID * GRID, (to_y - ry) // GRID * GRID
    return HiresSize(to_x // GRID * GRID, to_y // GRID * GRID, crop_x, crop_y)


def check_upscaler_name(hires: HiresFix, upscaler_models: tuple[str, ...] | None, *, prefix: str = "hires.") -> None:
    """A latent mode, a PIL upscaler or one of ``upscaler_models`` (None: any other name passes here)."""
    built_in = hires.upscaler in LATENT_UPSCALE_MODES or hires.upscaler in IMAGE_UPSCALERS
    if not built_in and upscaler_models is not None and hires.upscaler not in upscaler_models:
        known = ", ".join(repr(n) for n in (*LATENT_UPSCALE_MODES, *IMAGE_UPSCALERS, *upscaler_models))
        raise InvalidRequest(f"{prefix}upscaler: {hires.upscaler!r} is not an upscaler of this worker; known: {known}",
                             field=f"{prefix}upscaler")


def check_hires(hires: HiresFix, width: int, height: int, steps: int, *, max_pixels: int | None = None,
                prefix: str = "hires.", upscaler_models: tuple[str, ...] | None = None) -> None:
    """The hires fix's own rules, with field names as the caller spells them (``prefix``): the native
    API's ``hires.scale``, the A1111 door's ``hr_scale`` (prefix ``hr_``). ``upscaler_models``: the
    worker's upscaler models (``--upscalers-dir``); None where they are not known (the doors: the
    engine checks the name at submit)."""
    check_upscaler_name(hires, upscaler_models, prefix=prefix)
    if not 1.0 <= hires.scale <= MAX_SCALE:  # NaN fails too
        raise InvalidRequest(f"{prefix}scale: {hires.scale} is not in 1..{MAX_SCALE:g}", field=f"{prefix}scale")
    for name, value in (("resize_x" if prefix == "hr_" else "resize_width", hires.resize_width),
                        ("resize_y" if prefix == "hr_" else "resize_height", hires.resize_height)):
        if value is not None and not 0 <= value <= 16_384:
            raise InvalidRequest(f"{prefix}{name}: {value} is not in 0..16384", field=f"{prefix}{name}")
    if not 0.0 < hires.strength <= 1.0:
        field = "denoising_strength" if prefix == "hr_" else f"{prefix}strength"
        raise InvalidRequest(f"{field}: {hires.strength} is not in (0, 1] (the second pass's strength)", field=field)
    second = hires.steps or steps
    if int(second * hires.strength) < 1:
        field = "hr_second_pass_steps" if prefix == "hr_" else f"{prefix}steps"
        raise InvalidRequest(f"{field}: {second} steps x strength {hires.strength} leaves no step to run in the "
                             "second pass", field=field)
    size = hires_size(width, height, hires)
    final = size.final
    if min(final) < GRID:
        raise InvalidRequest(f"{prefix}scale: the second pass's size {final[0]}x{final[1]} is too small",
                             field=f"{prefix}scale")
    if max_pixels is not None and size.width * size.height > max_pixels:
        raise InvalidRequest(
            f"{prefix}scale: the second pass's size {size.width}x{size.height} = {size.width * size.height} pixels "
            f"is above the limit of {max_pixels} pixels",
            field=f"{prefix}scale",
        )
