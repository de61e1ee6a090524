"""The ``sdworker`` command line. Parses flags, builds ``Settings`` and hands over; no business logic.

Commands: ``serve`` (HTTP + one worker in one process), ``api`` and ``worker`` (the two halves of a
Redis fleet), ``generate`` (one generation, PNGs out), ``mcp`` (an MCP server on stdio for a remote
worker), ``demo-model``. Every setting has a flag and an
environment variable ``SDWORKER_<NAME>`` (made from ``Settings`` by ``cli/flags.py``); a flag given on
the command line wins over the environment, which wins over the default. A bad value, flag or
variable, is one line on stderr and exit code 2, before anything loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sdworker import __version__
from sdworker.cli.extras import missing_worker_package
from sdworker.cli.flags import add_setting_flags, settings_from_args
from sdworker.errors import SdworkerError
from sdworker.settings import Settings, env_name

__all__ = ["build_parser", "main", "settings_from_args"]

_PORT = Settings.model_fields["port"].default
# What ``sdworker --help`` says: for someone who has just installed it (the module docstring is for us).
DESCRIPTION = f"""\
sdworker generates images with Stable Diffusion, SDXL, FLUX and similar models, on this machine
or as an HTTP service (jobs, live progress and previews, PNGs with their parameters).

To start:
  sdworker serve --model demo               serve a tiny built-in model (noise, no download) on
                                            http://127.0.0.1:{_PORT}; its API is described at /docs
  sdworker generate "a cat" --model demo -o cat.png
                                            one image on this machine, written as a PNG
  sdworker serve --model PATH_OR_HUB_ID     your model: a diffusers folder, a .safetensors file or
                                            a Hugging Face id such as org/name
"""
EPILOG = """\
'sdworker COMMAND --help' lists a command's flags; each setting is also an environment variable
SDWORKER_<NAME>."""


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser, which reports an unknown argument itself: argparse hands a subcommand's
    leftovers back to the top parser, whose error shows ``usage: sdworker [-h] [--version] {serve,...}``
    and hides the flags that were meant (``sdworker serve --prot 1``)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdworker", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sdworker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    serve = sub.add_parser("serve", help="run the HTTP service and one generation worker in one process")
    _add_log_level(serve)
    add_setting_flags(serve, "serve")

    api = sub.add_parser("api", help="run an HTTP node of a Redis fleet (no model; jobs go to worker nodes)")
    _add_log_level(api)
    add_setting_flags(api, "api")

    worker = sub.add_parser("worker", help="run a GPU node of a Redis fleet (no HTTP but an optional --health-port)")
    _add_log_level(worker)
    add_setting_flags(worker, "worker")

    gen = sub.add_parser("generate", help="generate images from a prompt and write PNGs")
    gen.add_argument("prompt", help="what to draw, e.g. \"a photo of a cat\"")
    add_setting_flags(gen, "generate")
    _add_generate_flags(gen)

    mcp = sub.add_parser("mcp", help="an MCP server on stdio that drives the sdworker at --url (for MCP hosts)")
    mcp.add_argument("--url", default=None, help="the sdworker's URL (also SDWORKER_URL)")
    mcp.add_argument("--api-key", dest="api_key", default=None, help="its API key (better: SDWORKER_API_KEY)")

    demo = sub.add_parser("demo-model", help="write the tiny random-weight demo model to DIR")
    demo.add_argument("dir")
    return parser


def _add_generate_flags(gen: argparse.ArgumentParser) -> None:
    """The flags of one generation; each help says its default."""
    from sdworker.domain.scheduler_names import SCHEDULER_NAMES

    gen.add_argument("-o", "--output", default="out.png",
                     help="PNG path; with --n > 1, out-0.png, out-1.png, ... (default: out.png)")
    gen.add_argument("--steps", type=int, default=None, help="default: the model family's (SD 20, FLUX.1 dev 28...)")
    for side in ("width", "height"):
        # 512 is build_request's choice; a remote worker (--url) settles an unset size to the model's own.
        gen.add_argument(f"--{side}", type=int, default=None,
                         help=f"a multiple of 8 (default: the init image's {side} rounded down to a multiple of 8, "
                              "else 512; with --url the model's native size)")
    gen.add_argument("--seed", type=int, default=None, help="default: a random seed (printed at the end)")
    gen.add_argument("--scheduler", default=None,
                     help=f"one of {', '.join(SCHEDULER_NAMES)} (default: the one the model ships with)")
    gen.add_argument("--guidance", type=float, default=None, help="default: the model family's (SD 7.5...)")
    gen.add_argument("--negative", default="", help="negative prompt: what not to draw (default: none)")
    gen.add_argument("--init-image", dest="init_image", default=None,
                     help="an image to start from (img2img; default: none, text to image)")
    gen.add_argument("--mask", default=None, help="white = repaint; needs --init-image (default: none)")
    gen.add_argument("--strength", type=float, default=None,
                     help="img2img/inpaint strength, 0 to 1 (default: 0.8)")
    gen.add_argument("--n", type=int, default=1, help="number of images (default: 1)")
    gen.add_argument("--preview-dir", dest="preview_dir", default=None,
                     help="also write previews here (default: none, no previews)")
    gen.add_argument("--preview-every", dest="preview_every", type=int, default=None,
                     help=f"with --preview-dir, a preview every N steps (default: {env_name('preview_every')} or "
                          f"{Settings.model_fields['preview_every'].default})")
    gen.add_argument("--preview-method", dest="preview_method", default=None,
                     help=f"with --preview-dir: auto, latent2rgb, taesd or vae (default: "
                          f"{env_name('preview_method')} or {Settings.model_fields['preview_method'].default})")
    gen.add_argument("--preview-format", dest="preview_format", default=None,
                     help=f"with --preview-dir: jpeg, webp or png (default: {env_name('preview_format')} or "
                          f"{Settings.model_fields['preview_format'].default})")
    gen.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    gen.add_argument("--url", default=None,
                     help="run on the sdworker at this URL (default: SDWORKER_URL, else on this machine)")


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", dest="log_level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="(default: info; debug also shows the model libraries' own messages and progress bars)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from sdworker.cli.serve import run_serve

            return run_serve(args)
        if args.command in ("api", "worker"):
            return _run_fleet_node(args)
        if args.command == "generate":
            from sdworker.cli.remote import remote_url, run_remote_generate

            if url := remote_url(args):
                return run_remote_generate(args, url)
            from sdworker.cli.generate import run_generate

            return run_generate(args)
        if args.command == "mcp":
            return _run_mcp(args)
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


def _run_mcp(args: argparse.Namespace) -> int:
    """``sdworker mcp``: client-only (``sdworker[mcp]``), like ``generate --url``."""
    from sdworker.cli.remote import remote_url

    url = remote_url(args)
    if url is None:
        print("sdworker: error: mcp: give the worker's URL with --url or SDWORKER_URL", file=sys.stderr)
        return 2
    from sdworker.mcp.stdio import run_stdio

    return run_stdio(url, args.api_key)


def _run_fleet_node(args: argparse.Namespace) -> int:
    """``api`` and ``worker``: their modules import the Redis backend, so they load only when asked."""
    import importlib

    module_name, function = {"api": ("api_node", "run_api"), "worker": ("worker_node", "run_worker")}[args.command]
    try:
        module = importlib.import_module(f"sdworker.cli.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sdworker.cli.{module_name}":
            raise
        print(f"sdworker: error: the {args.command} command is not in this build yet", file=sys.stderr)
        return 2
    return int(getattr(module, function)(args))
