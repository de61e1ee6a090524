"""``sdworker generate PROMPT``: one generation on this machine, written as PNGs with A1111 metadata.

Every argument is checked before the model loads, so a typo costs no load time. With ``--n 3 -o
out.png`` the files are ``out-0.png``, ``out-1.png``, ``out-2.png`` (image i has seed S + i); each path
is printed on stdout, one per line, so scripts can pick them up.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from sdworker.cli.library_noise import quiet_libraries
from sdworker.cli.outputs import output_paths
from sdworker.domain.checks import check_strength
from sdworker.domain.request import GenerationRequest, InputImage, Operation
from sdworker.domain.scheduler_names import get_spec
from sdworker.engine.protocol import StepView
from sdworker.errors import InvalidRequest
from sdworker.imaging.decode import check_mask_matches, read_image_file
from sdworker.imaging.encode import encode_image, encode_png
from sdworker.imaging.metadata import PNG_KEY
from sdworker.previews.options import DECODER_METHODS, PREVIEW_FORMATS
from sdworker.settings import Settings

DEFAULT_SIZE = 512


def run_generate(args: argparse.Namespace) -> int:
    from sdworker.cli import settings_from_args

    settings = settings_from_args(args)
    request = build_request(args, settings)
    outputs = output_paths(Path(args.output), request.num_images)
    preview_config = _preview_config(args, settings)

    quiet_libraries(download_bars=not args.quiet)
    from sdworker.domain.parameters import parameters_text
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.engine.models import resolve_source

    resolve_source(settings)  # a missing path or a refused pickle: one error line, before anything else
    engine = DiffusersEngine(settings)
    if not args.quiet:
        print(f"loading {settings.model} ...", file=sys.stderr)
    engine.load()
    progress = _Progress(disabled=args.quiet)
    previews = _PreviewWriter(**preview_config) if preview_config else None

    def on_step(view: StepView) -> None:
        progress.update(view)
        if previews is not None:
            previews.offer(view)

    try:
        result = engine.generate(request, on_step=on_step)
    finally:
        progress.close()
        if previews:
            previews.close()
    for index, (image, path) in enumerate(zip(result.images, outputs, strict=True)):
        text = parameters_text(request, result, index, settings.model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(image, {PNG_KEY: text}))
        print(path)
    if not args.quiet:
        seeds = ", ".join(str(s) for s in result.seeds)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"seed {seeds}; {result.steps_run} steps with {result.scheduler} in {result.seconds:.1f} s",
              file=sys.stderr)
    return 0


def build_request(args: argparse.Namespace, settings: Settings) -> GenerationRequest:
    """Validate every flag (one clear error naming it) and read the images; no model needed."""
    if args.scheduler is not None:
        get_spec(args.scheduler)  # UnknownScheduler lists the valid names
    if args.steps is not None and args.steps < 1:
        raise InvalidRequest(f"--steps {args.steps}: must be at least 1", field="steps")
    if args.n < 1:
        raise InvalidRequest(f"--n {args.n}: must be at least 1", field="n")
    if args.mask and not args.init_image:
        raise InvalidRequest("--mask needs --init-image (the image to inpaint)", field="mask")
    strength = 0.8 if args.strength is None else args.strength
    if Path(args.output).suffix.lower() != ".png":
        raise InvalidRequest(f"-o {args.output}: images are written as PNG; name the file .png", field="output")
    init = mask = None
    if args.init_image:
        init = read_image_file(args.init_image, field="--init-image", max_pixels=settings.max_pixels)
    if args.mask:
        mask = read_image_file(args.mask, field="--mask", max_pixels=settings.max_pixels, mode="L")
        assert init is not None
        check_mask_matches(init, mask, field="--mask")
    width = args.width if args.width is not None else _default_side(init, 0)
    height = args.height if args.height is not None else _default_side(init, 1)
    for flag, value in (("--width", width), ("--height", height)):
        if value < 8 or value % 8:
            raise InvalidRequest(f"{flag} {value}: must be a positive multiple of 8", field=flag.strip("-"))
    operation = Operation.INPAINT if mask else Operation.IMAGE_TO_IMAGE if init else Operation.TEXT_TO_IMAGE
    check_strength(operation, strength, args.steps, strength_field="--strength", steps_field="--steps")
    return GenerationRequest(
        prompt=args.prompt,
        operation=operation,
        negative_prompt=args.negative or "",
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        width=width,
        height=height,
        seed=args.seed,
        scheduler=get_spec(args.scheduler).name if args.scheduler else None,
        num_images=args.n,
        init_image=InputImage.from_image(init, "--init-image") if init is not None else None,
        mask_image=InputImage.from_image(mask, "--mask") if mask is not None else None,
        strength=strength,
    )


def _default_side(init: Any, axis: int) -> int:
    """The init image's side rounded down to a multiple of 8, else 512."""
    if init is None:
        return DEFAULT_SIZE
    return max(8, init.size[axis] // 8 * 8)


class _Progress:
    """A tqdm bar on stderr (step, it/s, ETA), made at the first step, when the real total is known."""

    def __init__(self, *, disabled: bool) -> None:
        self.disabled = disabled
        self.bar: Any = None

    def update(self, view: StepView) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=view.total, unit="step", file=sys.stderr, desc="denoising", dynamic_ncols=True)
        self.bar.update(view.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _PreviewWriter:
    """Writes ``step-NNN.<fmt>`` previews from one background thread.

    The denoising thread decodes (it must: decoding uses the model), then hands the pixels over and
    goes on; encoding and disk writes happen here. While a preview is still being written, the next
    due ones are skipped rather than queued, so previews never slow the denoising down.
    """

    def __init__(self, directory: Path, method: str, every: int, fmt: str, quality: int, max_size: int) -> None:
        self.directory = directory
        self.method, self.every, self.fmt, self.quality, self.max_size = method, every, fmt, quality, max_size
        self._pending: tuple[int, Any] | None = None
        self._wake = threading.Condition()
        self._closed = False
        self.written: list[Path] = []
        self._thread = threading.Thread(target=self._run, name="preview-writer", daemon=True)
        self._thread.start()

    def offer(self, view: StepView) -> None:
        if view.step % self.every and view.step != view.total:
            return
        with self._wake:
            if self._pending is not None:
                return  # still busy with the last one: skip
        preview = view.render_preview(self.method, self.max_size)
        if preview is None:
            return
        with self._wake:
            self._pending = (view.step, preview.pixels)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._pending is None:
                    return
                step, pixels = self._pending
            path = self.directory / f"step-{step:03d}.{self.fmt}"
            path.write_bytes(encode_image(pixels, self.fmt, self.quality))
            self.written.append(path)
            with self._wake:
                self._pending = None

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()


def _preview_config(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    if not args.preview_dir:
        return None
    method = args.preview_method or settings.preview_method
    fmt = args.preview_format or settings.preview_format
    every = args.preview_every if args.preview_every is not None else settings.preview_every
    if method not in ("auto", *DECODER_METHODS):
        raise InvalidRequest(
            f"--preview-method {method}: not one of auto, {', '.join(DECODER_METHODS)}", field="preview_method"
        )
    if fmt not in PREVIEW_FORMATS:
        raise InvalidRequest(f"--preview-format {fmt}: not one of {', '.join(PREVIEW_FORMATS)}", field="preview_format")
    if every < 1:
        raise InvalidRequest(f"--preview-every {every}: must be at least 1", field="preview_every")
    directory = Path(args.preview_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return {"directory": directory, "method": method, "every": every, "fmt": fmt,
            "quality": settings.preview_quality, "max_size": settings.preview_max_size}
