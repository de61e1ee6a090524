"""The ``sdworker`` command line. Parses flags, builds ``Settings`` and hands over; no business logic.

Every flag that is a setting is also an environment variable ``SDWORKER_<NAME>``; a flag given on the
command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sdworker import __version__
from sdworker.cli.extras import missing_worker_package
from sdworker.errors import SdworkerError

if TYPE_CHECKING:  # imported when used: a client-only install has no server settings' packages
    from sdworker.settings import Settings


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="diffusers folder, .safetensors file, hub id, or 'demo' (default)")
    p.add_argument("--model-config", dest="model_config", help="diffusers folder of configs for a single file")
    p.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", help="auto (default: float16 on CUDA, else float32) | float16 | bfloat16 | float32")
    p.add_argument("--taesd", help="folder with TAESD weights (AutoencoderTiny) for cheap previews")
    p.add_argument(
        "--allow-unsafe-pickle", dest="allow_unsafe_pickle", action="store_true", default=None,
        help="allow .ckpt/.pt pickles (loaded with weights_only=True)",
    )
    p.add_argument("--cache-dir", dest="cache_dir", help="where the demo model is built (~/.cache/sdworker)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdworker", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"sdworker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service and one generation worker")
    _add_model_flags(serve)
    serve.add_argument("--host", help="bind address (127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (7833)")
    serve.add_argument("--max-queue", dest="max_queue", type=int, help="queued jobs before 429 (32)")
    serve.add_argument("--result-ttl-seconds", dest="result_ttl_seconds", type=float)
    serve.add_argument("--max-pixels", dest="max_pixels", type=int, help="width*height limit")
    serve.add_argument("--max-steps", dest="max_steps", type=int)
    serve.add_argument("--max-images", dest="max_images", type=int)
    serve.add_argument("--max-body-bytes", dest="max_body_bytes", type=int)
    serve.add_argument("--shutdown-grace-seconds", dest="shutdown_grace_seconds", type=float)
    serve.add_argument("--preview-method", dest="preview_method")
    serve.add_argument("--preview-every", dest="preview_every", type=int)
    serve.add_argument("--preview-min-interval-ms", dest="preview_min_interval_ms", type=int)
    serve.add_argument("--preview-max-size", dest="preview_max_size", type=int)
    serve.add_argument("--preview-format", dest="preview_format")
    serve.add_argument("--preview-quality", dest="preview_quality", type=int)
    serve.add_argument("--log-level", dest="log_level", default="info")

    gen = sub.add_parser("generate", help="generate images from a prompt and write PNGs")
    gen.add_argument("prompt")
    _add_model_flags(gen)
    gen.add_argument("-o", "--output", default="out.png", help="PNG path; with --n > 1, out-0.png, out-1.png, ...")
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--width", type=int, default=None, help="default 512, or the init image's width")
    gen.add_argument("--height", type=int, default=None, help="default 512, or the init image's height")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--scheduler", default=None)
    gen.add_argument("--guidance", type=float, default=7.5)
    gen.add_argument("--negative", default="")
    gen.add_argument("--init-image", dest="init_image", default=None)
    gen.add_argument("--mask", default=None, help="white = repaint; needs --init-image")
    gen.add_argument("--strength", type=float, default=None, help="img2img/inpaint strength (0.8)")
    gen.add_argument("--n", type=int, default=1, help="number of images")
    gen.add_argument("--preview-dir", dest="preview_dir", default=None, help="also write previews here")
    gen.add_argument("--preview-every", dest="preview_every", type=int, default=None)
    gen.add_argument("--preview-method", dest="preview_method", default=None)
    gen.add_argument("--preview-format", dest="preview_format", default=None)
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--url", default=None, help="run on the sdworker at this URL (also SDWORKER_URL)")

    demo = sub.add_parser("demo-model", help="write the tiny random-weight demo model to DIR")
    demo.add_argument("dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from sdworker.cli.serve import run_serve

            return run_serve(args)
        if args.command == "generate":
            from sdworker.cli.remote import remote_url, run_remote_generate

            if url := remote_url(args):
                return run_remote_generate(args, url)
            from sdworker.cli.generate import run_generate

            return run_generate(args)
        if args.command == "demo-model":
            from sdworker.cli.demo import run_demo_model

            return run_demo_model(args)
    except SdworkerError as exc:
        print(f"sdworker: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if (message := missing_worker_package(exc, args.command)) is None:
            raise
        print(f"sdworker: error: {message}", file=sys.stderr)
        return 2
    return 2


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by every flag that names a setting and was given."""
    from sdworker.settings import Settings

    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})
