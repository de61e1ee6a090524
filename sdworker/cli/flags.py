"""Command-line flags made from the ``Settings`` declaration, and the one place that turns them back.

Each setting's flag is ``--`` + its name with dashes (``max_queue`` -> ``--max-queue``) unless
``FLAG_NAMES`` says otherwise; its help line is the field's description, its default and its
environment variable. Flags are added with ``default=SUPPRESS``: a flag not given does not appear
in the parsed namespace, so ``Settings(**given)`` lets the environment, then the default, fill it in
(flag given > ``SDWORKER_*`` > default). Values stay strings here; pydantic converts and validates
them, so a bad flag and a bad variable get the same one-line message (``settings_from_args``).

Which command gets which settings is ``COMMAND_FIELDS``: ``serve`` has every setting but the worker
node's ``--health-port``; ``api`` (an HTTP node of a Redis fleet) has no model or device flags except
``--default-model`` and has the scale-to-zero flags (``--expect-models``, ``--queue-timeout-seconds``);
``worker`` (a GPU node) has no HTTP flags except ``--health-port`` and the
``--host`` it binds, and of the job limits only ``--max-pixels`` (checked by the worker against its
own device) and ``--result-ttl-seconds`` (how long Redis keeps what it finished): a worker keeps no
results itself, so the stores' retention flags (``--max-results``, ``--max-result-bytes``) are the
API node's.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sdworker.errors import InvalidSettings
from sdworker.settings import KeysFileError, Settings, describe_error, env_name, unknown_env_names

FLAG_NAMES = {
    "model_config_dir": "--model-config",
    "redis_url": "--redis",
    "api_keys": "--api-key",
    "admin_api_keys": "--admin-api-key",
}

GROUPS: dict[str, tuple[str, ...]] = {
    "model and device": (
        "model", "model_config_dir", "device", "dtype", "allow_unsafe_pickle", "taesd", "taesdxl", "cache_dir",
        "models_dir", "default_model", "max_loaded_models", "max_loaded_bytes", "offload", "lora_dir", "embeddings_dir",
        "controlnet_dir", "ip_adapter_dir", "upscalers_dir",
    ),
    "speed": ("compile", "compile_sizes", "quantize", "max_batch", "batch_wait_ms"),
    "HTTP": (
        "host", "port", "max_body_bytes", "cors_origins", "allowed_hosts", "public_url", "header_timeout_seconds",
        "body_timeout_seconds", "body_min_rate_bytes",
        "mcp",
    ),
    "auth": ("api_keys", "api_keys_file", "admin_api_keys", "signing_secret", "allow_no_auth", "metrics_public"),
    "jobs": (
        "max_queue", "max_results", "max_result_bytes", "result_ttl_seconds", "max_pixels", "max_steps", "max_images",
        "shutdown_grace_seconds",
    ),
    "storage": ("store", "data_dir", "keep_outputs"),
    "result store": ("results_s3",),
    "webhooks": ("webhook_secret", "webhook_max_attempts", "webhook_allow_private"),
    "streams": ("keepalive_seconds", "watcher_stall_seconds"),
    "preview defaults": (
        "preview_method", "preview_every", "preview_min_interval_ms", "preview_max_size", "preview_format",
        "preview_quality",
    ),
    "Redis fleet": ("redis_url", "redis_prefix", "claim_idle_seconds", "lease_heartbeat_seconds", "max_attempts"),
    "worker node": ("worker_id", "health_port", "queen_url", "heartbeat_seconds"),
    "scale to zero": ("expect_models", "queue_timeout_seconds"),
}

_ALL = tuple(name for names in GROUPS.values() for name in names)
_MODEL_GROUP = GROUPS["model and device"]

COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "serve": tuple(name for name in _ALL if name != "health_port" and name not in GROUPS["scale to zero"]),
    "api": (
        "default_model", *GROUPS["HTTP"], *GROUPS["auth"], *GROUPS["jobs"], *GROUPS["streams"], *GROUPS["webhooks"],
        *GROUPS["preview defaults"], *GROUPS["Redis fleet"], *GROUPS["scale to zero"], *GROUPS["result store"],
    ),
    "worker": (
        *_MODEL_GROUP, *GROUPS["speed"], *GROUPS["preview defaults"], *GROUPS["Redis fleet"], *GROUPS["worker node"],
        *GROUPS["result store"], "shutdown_grace_seconds", "result_ttl_seconds", "max_pixels", "host",
    ),
    "generate": tuple(n for n in _MODEL_GROUP
                      if n not in ("default_model", "max_loaded_models", "max_loaded_bytes", "models_dir")),
}

_LIST_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if getattr(info.annotation, "__origin__", None) is tuple
)


def flag_name(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of ``command``'s settings, in titled groups, each help line with its default."""
    wanted = set(COMMAND_FIELDS[command])
    for title, names in GROUPS.items():
        chosen = [n for n in names if n in wanted]
        if not chosen:
            continue
        group = parser.add_argument_group(title)
        for name in chosen:
            _add_flag(group, name)


def _add_flag(group: Any, name: str) -> None:
    info = Settings.model_fields[name]
    help_text = f"{info.description} (default: {_default_text(name)}; env {env_name(name)})"
    help_text = help_text.replace("%", "%%")
    flag = flag_name(name)
    if info.annotation is bool:
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
    elif name in _LIST_FIELDS:
        group.add_argument(flag, dest=name, action="append", default=argparse.SUPPRESS, metavar=_metavar(name),
                           help=help_text + "; repeat the flag or give a comma list")
    else:
        group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=_metavar(name), help=help_text)


def _default_text(name: str) -> str:
    info = Settings.model_fields[name]
    if name == "cache_dir":
        return "~/.cache/sdworker"
    if name == "data_dir":
        return "~/.local/share/sdworker"
    if name == "max_batch":
        return "1 on CPU, 4 on CUDA"
    value = info.get_default(call_default_factory=True)
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _metavar(name: str) -> str:
    for suffix, metavar in (("_seconds", "SECONDS"), ("_ms", "MS"), ("_bytes", "BYTES"), ("_dir", "DIR"),
                            ("_file", "FILE"), ("_url", "URL"), ("_port", "PORT")):
        if name.endswith(suffix):
            return metavar
    annotation = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(typing.get_args(annotation))
    return "N" if annotation is int else name.upper().removesuffix("S") if name in _LIST_FIELDS else name.upper()


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The one place flags become Settings: flags given > ``SDWORKER_*`` > defaults, validated.

    A bad value raises ``InvalidSettings`` with one line naming the flag or variable; unknown
    ``SDWORKER_*`` variables (typos) are reported on stderr and otherwise ignored.
    """
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    for name in unknown_env_names():
        print(f"sdworker: warning: {name} is not a setting; ignored", file=sys.stderr)
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise InvalidSettings(describe_error(exc, {name: flag_name(name) for name in given})) from None
    check_taesd(settings)
    return settings


# TAESD-like decoders of other architectures than AutoencoderTiny: not loadable yet.
_OTHER_TINY_DECODERS = {"flux2": "TAEF2", "qwenimage": "TAEHV (Wan's tiny decoder)"}


def check_taesd(settings: Settings) -> None:
    """Each ``--taesd FAMILY=DIR`` names a known family and a folder whose ``config.json`` has that
    family's latent channels: a wrong one exits 2 at start, in one line, not at the first preview."""
    import json

    from sdworker.domain.families import all_families, family_facts

    known = {facts.name for facts in all_families()}
    for family, folder in settings.taesd_folders().items():
        if family not in known:
            raise InvalidSettings(f"--taesd {family}={folder}: {family!r} is not a model family "
                                  f"({', '.join(sorted(known))})")
        if family in _OTHER_TINY_DECODERS:
            raise InvalidSettings(f"--taesd {family}={folder}: {_OTHER_TINY_DECODERS[family]} is not an "
                                  "AutoencoderTiny and is not supported yet; previews use latent2rgb or vae")
        try:
            config = json.loads((Path(folder).expanduser() / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidSettings(f"--taesd {folder}: no readable config.json there ({exc.__class__.__name__}); "
                                  "expected an AutoencoderTiny folder") from None
        channels, wanted = config.get("latent_channels"), family_facts(family).latent.channels
        if channels != wanted:
            raise InvalidSettings(f"--taesd {family}={folder}: its latent_channels is {channels}; "
                                  f"{family_facts(family).label} latents have {wanted}")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond this machine with no API key, unless told so (``--allow-no-auth``)."""
    if is_loopback(settings.host) or settings.has_auth() or settings.allow_no_auth:
        return
    raise InvalidSettings(
        f"--host {settings.host} is reachable from other machines and no API key is set, so anyone there could "
        f"run jobs: give --api-key (or {env_name('api_keys')}, --api-keys-file), or pass --allow-no-auth"
    )


def check_files(settings: Settings) -> None:
    """Files named by settings that are read later: a missing one is a start-up error, not a 500."""
    if settings.models_dir is not None:
        from sdworker.engine.model_options import read_model_options

        read_model_options(Path(settings.models_dir).expanduser(), settings)  # its per-model offload
    if settings.api_keys_file is not None:
        try:
            settings.all_api_keys()  # the same check a SIGHUP reload makes
        except KeysFileError as exc:
            raise InvalidSettings(str(exc)) from None
