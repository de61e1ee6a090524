"""The ``sdworker`` command line. Parses flags, builds ``Settings`` and hands over; no business logic.

Every flag that is a setting is also an environment variable ``SDWORKER_<NAME>``; a flag given on the
command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from sdworker import __version__
from sdworker.errors import SdworkerError
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


def _add_fleet_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", dest="redis_url", help="redis://[:password@]host:6379/0 - join a fleet")
    p.add_argument("--redis-prefix", dest="redis_prefix", help="key prefix (sdw)")
    p.add_argument("--claim-idle-seconds", dest="claim_idle_seconds", type=float,
                   help="retry a job whose worker was silent this long (30)")
    p.add_argument("--lease-heartbeat-seconds", dest="lease_heartbeat_seconds", type=float, help="(5)")
    p.add_argument("--max-attempts", dest="max_attempts", type=int, help="then dead-letter with worker_lost (3)")
    p.add_argument("--worker-id", dest="worker_id", help="this worker's id in the fleet (host + random)")
    p.add_argument("--default-model", dest="default_model", help="model for jobs that name none")


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
    _add_fleet_flags(serve)

    api = sub.add_parser("api", help="an HTTP node of a Redis fleet (no GPU, no torch)")
    api.add_argument("--host", help="bind address (127.0.0.1)")
    api.add_argument("--port", type=int, help="port (7833)")
    api.add_argument("--max-queue", dest="max_queue", type=int, help="queued jobs in the whole fleet before 429")
    api.add_argument("--result-ttl-seconds", dest="result_ttl_seconds", type=float)
    api.add_argument("--max-pixels", dest="max_pixels", type=int)
    api.add_argument("--max-steps", dest="max_steps", type=int)
    api.add_argument("--max-images", dest="max_images", type=int)
    api.add_argument("--max-body-bytes", dest="max_body_bytes", type=int)
    api.add_argument("--shutdown-grace-seconds", dest="shutdown_grace_seconds", type=float)
    api.add_argument("--preview-min-interval-ms", dest="preview_min_interval_ms", type=int)
    api.add_argument("--log-level", dest="log_level", default="info")
    _add_fleet_flags(api)

    worker = sub.add_parser("worker", help="a GPU worker of a Redis fleet (no public HTTP)")
    _add_model_flags(worker)
    worker.add_argument("--max-pixels", dest="max_pixels", type=int)
    worker.add_argument("--result-ttl-seconds", dest="result_ttl_seconds", type=float)
    worker.add_argument("--shutdown-grace-seconds", dest="shutdown_grace_seconds", type=float)
    worker.add_argument("--log-level", dest="log_level", default="info")
    _add_fleet_flags(worker)

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
            from sdworker.cli.generate import run_generate

            return run_generate(args)
        if args.command == "api":
            from sdworker.cli.api_node import run_api

            return run_api(args)
        if args.command == "worker":
            from sdworker.cli.worker_node import run_worker

            return run_worker(args)
        if args.command == "demo-model":
            from sdworker.cli.demo import run_demo_model

            return run_demo_model(args)
    except SdworkerError as exc:
        print(f"sdworker: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by every flag that names a setting and was given."""
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})
