"""One frozen Settings object, built once (by the CLI or a test) and passed down.

Every setting is declared once, below, with its type, default, bounds and help text. From that one
declaration come: the environment variable ``SDWORKER_<FIELD>`` (upper case), the command-line flag
(``cli/flags.py`` builds it from the field), the ``--help`` line with its default, and validation at
start (a bad value is refused before anything loads, in one line naming the variable or flag and what
is allowed; see ``describe_error``). Precedence: a value passed to ``Settings(...)`` (the CLI passes
only the flags that were given) > ``SDWORKER_*`` variable > default. Nothing else in the package reads
``os.environ``; nothing is read at import time. Units are part of the names (``*_seconds``,
``*_bytes``, ``*_ms``).

Secrets (``redis_url``, ``api_keys``, ``admin_api_keys``, ``signing_secret``, ``webhook_secret``) are kept out of
``repr`` and out of every error message (``redact_url`` for the Redis URL).

Lists (``api_keys``, ``cors_origins``, ``allowed_hosts``, ``compile_sizes``) are comma-separated in
the environment (``SDWORKER_API_KEYS=k1,k2``); the flags may be repeated, each may hold a comma list.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SDWORKER_"
MiB = 1024 * 1024

# Variables that share the prefix but are not settings (read by the test suite only).
_NOT_SETTINGS = re.compile(r"^SDWORKER_TEST_")

Seconds = Annotated[float, Field(gt=0, le=86400 * 7, allow_inf_nan=False)]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "sdworker"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        # "SDWORKER_TAESD=" means unset, like a missing variable.
        env_ignore_empty=True,
        # Lists are comma-separated in the environment, not JSON: see _split_list.
        enable_decoding=False,
        validate_default=True,
        # str(ValidationError) would print the value: it may be a key or a Redis password.
        hide_input_in_errors=True,
    )

    # Model and device
    model: str = Field("demo", min_length=1, description="diffusers folder, .safetensors file, hub id, or 'demo'")
    model_config_dir: Path | None = Field(
        None, description="diffusers folder of component configs, for a single-file --model"
    )
    device: str = Field("auto", min_length=1, description="auto | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto = float16 on CUDA, else float32"
    )
    allow_unsafe_pickle: bool = Field(False, description="allow .ckpt/.pt pickles (loaded with weights_only=True)")
    taesd: tuple[str, ...] = Field(
        (), description="TAESD folder for cheap previews, [FAMILY=]DIR: no prefix = SD 1.x/2.x (taesd), "
        "sdxl=DIR (taesdxl), flux1=DIR or zimage=DIR (taef1), sd3=DIR (taesd3)"
    )
    taesdxl: str | None = Field(None, description="folder holding the SDXL TAESD (taesdxl) for cheap SDXL previews")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="where the demo model is built")
    models_dir: Path | None = Field(None, description="folder of models that jobs may name by file or folder name")
    default_model: str | None = Field(None, min_length=1, description="the model a job gets when it names none")
    max_loaded_models: int | None = Field(
        None, ge=1, le=64, description="at most this many models loaded at once; none = the byte budget decides"
    )
    max_loaded_bytes: int | None = Field(
        None, ge=MiB, description="bytes of model weights kept loaded (e.g. 20GB, 12GiB); the least recently used "
        "model leaves first; none = 90% of the GPU's memory, or 75% of the RAM on the CPU"
    )
    offload: Literal["none", "model", "sequential"] = Field(
        "none", description="CUDA only: diffusers' model (whole parts) or sequential (layer by layer) CPU offload "
        "for a card smaller than the model"
    )
    lora_dir: Path | None = Field(None, description="folder of LoRA .safetensors that jobs may name")
    embeddings_dir: Path | None = Field(None, description="folder of textual-inversion embeddings")
    controlnet_dir: Path | None = Field(None, description="folder of ControlNet models (diffusers folders)")
    upscalers_dir: Path | None = Field(
        None, description="folder of upscaler models for the hires fix (ESRGAN/Real-ESRGAN .pth or .safetensors)"
    )
    ip_adapter_dir: Path | None = Field(
        None, description="folder of IP-Adapters (.safetensors files) with their CLIP image encoder in image_encoder/"
    )

    # Speed
    compile: bool = Field(False, description="torch.compile the UNet for --compile-sizes at load (others run eager)")
    compile_sizes: tuple[str, ...] = Field((), description="WxH sizes to compile ahead, e.g. 512x512,1024x1024")
    quantize: Literal["none", "fp8", "int8", "nf4"] = Field(
        "none", description="transformer and large text encoder weights: int8 (torchao, CPU too), fp8/nf4 (CUDA)"
    )
    max_batch: int | None = Field(
        None, ge=1, le=64, description="jobs of the same shape run together as one batch"
    )
    batch_wait_ms: int = Field(20, ge=0, le=10_000, description="how long a batch waits for more jobs")

    # HTTP
    host: str = Field("127.0.0.1", min_length=1, description="bind address")
    port: int = Field(7833, ge=0, le=65535, description="port (0 = any free port)")
    max_body_bytes: int = Field(32 * MiB, ge=1024, le=4096 * MiB, description="request body limit (413 above)")
    cors_origins: tuple[str, ...] = Field(
        (), description="origins allowed by CORS, e.g. https://app.example; none = CORS off"
    )
    allowed_hosts: tuple[str, ...] = Field(
        (), description="Host header names accepted ('*' = any); none = loopback names + the bound host"
    )
    public_url: str | None = Field(None, description="the URL clients reach this service at (links, allowed Host)")
    header_timeout_seconds: Seconds = Field(
        10.0, description="a connection whose request line and headers take longer is closed"
    )
    body_timeout_seconds: Seconds = Field(
        30.0, description="a request body must arrive within this (plus min-rate time for its bytes), else 408"
    )
    body_min_rate_bytes: int = Field(
        1024, ge=1, le=1024 * MiB, description="each byte received extends the body deadline by 1/this seconds"
    )
    mcp: bool = Field(True, description="serve the MCP tools at /mcp (Streamable HTTP; --no-mcp: off)")

    # Auth
    api_keys: tuple[str, ...] = Field((), repr=False, description="API keys for job routes (repeat the flag)")
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line, or a .toml file with per-key quotas (docs/security.md)"
    )
    admin_api_keys: tuple[str, ...] = Field((), repr=False, description="API keys that may see and cancel every job")
    signing_secret: str | None = Field(None, repr=False, min_length=16, description="secret for signed result URLs")
    allow_no_auth: bool = Field(False, description="serve without API keys on a non-loopback address")
    metrics_public: bool = Field(False, description="serve /metrics without an API key")

    # Jobs
    max_queue: int = Field(32, ge=1, le=100_000, description="queued jobs before 429")
    max_results: int = Field(1000, ge=1, le=1_000_000, description="finished jobs kept before the oldest is dropped")
    max_result_bytes: int = Field(
        512 * MiB, ge=MiB, le=1024 * 1024 * MiB, description="bytes of finished images kept before the oldest go"
    )
    result_ttl_seconds: Seconds = Field(3600.0, description="how long a finished job is kept")
    # None here is replaced by _default_max_pixels before validation: the limit depends on the device.
    max_pixels: int = Field(  # type: ignore[assignment]
        None,
        ge=64 * 64,
        le=16384 * 16384,
        description="width*height limit; default by device: 1024x1024 on CPU, 2048x2048 on CUDA/MPS",
    )
    max_steps: int = Field(150, ge=1, le=10_000, description="num_inference_steps limit")
    max_images: int = Field(8, ge=1, le=64, description="images per job limit")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, le=3600, allow_inf_nan=False, description="time the running job gets to finish on SIGTERM"
    )

    # Storage (serve)
    store: Literal["sqlite", "memory"] | None = Field(
        None, description="where serve keeps jobs: sqlite (survives restarts, in --data-dir) or memory; none = sqlite"
    )
    data_dir: Path | None = Field(
        None, description="SQLite store folder: jobs.db, outputs/, signing secret; none = ~/.local/share/sdworker"
    )
    keep_outputs: bool = Field(False, description="an expired job leaves its PNGs in the outputs folder (as A1111)")
    results_s3: str | None = Field(
        None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*'()/-]*)?$",
        description="keep final PNGs in S3-compatible storage, s3://bucket/prefix (endpoint, region and "
        "credentials from the AWS_* variables); image URLs are presigned; none = --data-dir/outputs (or Redis)",
    )

    # Streams
    keepalive_seconds: Seconds = Field(15.0, description="SSE keep-alive comment interval")
    watcher_stall_seconds: Seconds = Field(30.0, description="a watcher that reads nothing for this long is dropped")

    # Preview defaults (a request's `preview` object overrides them)
    preview_method: Literal["auto", "latent2rgb", "taesd", "vae", "none"] = Field("auto", description="preview decoder")
    preview_every: int = Field(1, ge=0, le=10_000, description="a preview every N steps; 0 = off")
    preview_min_interval_ms: int = Field(200, ge=0, le=600_000, description="at least this long between previews")
    preview_max_size: int = Field(256, ge=16, le=4096, description="longest preview side in px")
    preview_format: Literal["jpeg", "webp", "png"] = Field("jpeg", description="preview image format")
    preview_quality: int = Field(80, ge=1, le=100, description="JPEG/WebP quality")

    # Webhooks (docs/webhooks.md)
    webhook_secret: tuple[str, ...] = Field(
        (), repr=False,
        description="server secret the per-key whsec_ secrets derive from (repeat: sign with the first, "
        "rotate by listing the old one after it); none = --signing-secret",
    )
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="tries of one webhook (2, 4, 8 ... s apart)")
    webhook_allow_private: bool = Field(
        False, description="accept webhook URLs on private, loopback and link-local addresses (tests, closed networks)"
    )

    # Redis fleet (api + worker nodes)
    redis_url: str | None = Field(
        None, repr=False, description="redis://[user:password@]host:port/db; none = in-process queue"
    )
    redis_prefix: str = Field("sdw", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="prefix of every Redis key")
    claim_idle_seconds: Seconds = Field(30.0, description="a job idle this long on a dead worker is taken over")
    lease_heartbeat_seconds: Seconds = Field(5.0, description="how often a worker renews the lease of its job")
    max_attempts: int = Field(3, ge=1, le=100, description="tries of a job before it fails for good")
    expect_models: tuple[str, ...] = Field(
        (), description="API node: models to accept jobs for even when no worker has registered them (scale to zero)"
    )
    queue_timeout_seconds: Seconds = Field(
        600.0, description="API node: a queued job whose model no live worker serves fails (no_worker) after this"
    )
    worker_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$", description="this worker's id; none = generated"
    )
    health_port: int | None = Field(None, ge=0, le=65535, description="worker node: serve /health and /ready here")

    # rbee
    queen_url: str | None = Field(None, description="rbee queen to register with and send heartbeats to")
    heartbeat_seconds: Seconds = Field(30.0, description="interval of heartbeats to the queen")

    # -- validation of values that need more than a bound ------------------------------------------

    @field_validator(
        "api_keys", "admin_api_keys", "cors_origins", "allowed_hosts", "compile_sizes", "webhook_secret", "taesd",
        "expect_models", mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """'a,b' (env) or ['a', 'b,c'] (repeated flags) -> ('a', 'b', 'c'); blanks dropped."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            return tuple(part.strip() for item in value for part in str(item).split(",") if part.strip())
        return value

    @field_validator("max_loaded_bytes", mode="before")
    @classmethod
    def _parse_bytes(cls, value: Any) -> Any:
        if isinstance(value, str):
            parsed = parse_bytes(value)
            if isinstance(parsed, str):
                raise ValueError("not a size: give bytes, or a number with a unit (20GB, 12GiB, 512MiB)")
            return parsed
        return value

    @field_validator("dtype", "preview_method", "preview_format", "offload", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("compile_sizes")
    @classmethod
    def _check_sizes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for size in value:
            match = re.fullmatch(r"(\d+)x(\d+)", size.lower())
            if not match or any(int(side) < 8 or int(side) % 8 for side in match.groups()):
                raise ValueError(f"{size!r} is not WxH with sides multiples of 8 (e.g. 512x512)")
        return tuple(size.lower() for size in value)

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _check_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            if api_key_problem(key):
                raise ValueError(API_KEY_RULE)  # never echo the key itself
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"{origin!r} is not an origin like https://app.example or http://host:port, or *")
        return tuple(o if o == "*" else o.rstrip("/").lower() for o in value)

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if host != "*" and not re.fullmatch(r"(\*\.)?[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]", host):
                raise ValueError(f"{host!r} is not a host name, *.domain, [v6 address] or *")
        return tuple(h.lower() for h in value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return device_name(value)

    @field_validator("public_url", "queen_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
                # The value may hold a password: name the scheme only.
                raise ValueError(f"a redis://, rediss:// or unix:// URL is needed (got scheme {parts.scheme!r})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_max_pixels(cls, data: Any) -> Any:
        """What the device does in reasonable time: a 1024x1024 SD 1.5 job of 20 steps takes minutes on
        a CPU (2048x2048 would take most of an hour and ~16 GB), seconds on a GPU."""
        if isinstance(data, dict) and data.get("max_pixels") is None:
            device = str(data.get("device") or "auto").strip().lower()
            data = {**data, "max_pixels": CPU_MAX_PIXELS if _runs_on_cpu(device) else GPU_MAX_PIXELS}
        return data

    @model_validator(mode="after")
    def _check_quantize(self) -> Settings:
        # At start, before a model loads: fp8 and nf4 have CUDA kernels only (``engine.quantize``).
        device = self.device.strip().lower()
        cuda = device.startswith("cuda") or (device == "auto" and Path("/proc/driver/nvidia/version").exists())
        if self.quantize in ("fp8", "nf4") and not cuda:
            library = "torchao float8" if self.quantize == "fp8" else "bitsandbytes 4-bit"
            raise ValueError(f"quantize {self.quantize!r} needs a CUDA device ({library} kernels); "
                             f"on {device} use int8 or none")
        return self

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        if self.store is not None and self.redis_url:
            raise ValueError(f"store {self.store!r} and redis_url name two stores; give one (--store or --redis)")
        if self.offload != "none" and not _runs_on_cuda(self.device):
            raise ValueError(
                f"offload {self.offload!r} moves model parts between the CPU and a CUDA card while it runs, and "
                f"device is {self.device!r}: without a CUDA card there is no place to move them to (use offload none)"
            )
        if self.lease_heartbeat_seconds * 2 > self.claim_idle_seconds:
            raise ValueError(
                f"claim_idle_seconds ({self.claim_idle_seconds}) must be at least twice lease_heartbeat_seconds "
                f"({self.lease_heartbeat_seconds}), or live jobs would be taken over"
            )
        return self

    # -- helpers ------------------------------------------------------------------------------------

    def taesd_folders(self) -> dict[str, str]:
        """``--taesd`` as family -> folder (a folder without a ``FAMILY=`` prefix serves sd1 and sd2), with
        ``--taesdxl`` as sdxl's. Family names are checked where the families are known (the CLI)."""
        folders: dict[str, str] = {}
        for item in self.taesd:
            family, sep, folder = item.partition("=")
            if sep and _FAMILY_PREFIX.fullmatch(family):
                folders[family] = folder
            else:
                folders["sd1"] = folders["sd2"] = item
        if self.taesdxl:
            folders["sdxl"] = self.taesdxl
        return folders

    def all_api_keys(self) -> tuple[str, ...]:
        """``api_keys`` plus the keys in ``api_keys_file``, read when asked (the file may rotate: a
        SIGHUP re-reads it) and held to the same rule as ``--api-key`` at every read, start-up or
        reload. ``KeysFileError`` (naming the file and line, never a key) for an unreadable file, one
        without keys, or a key that breaks the rule."""
        return tuple(self.api_keys) + tuple(self.key_quotas())

    def key_quotas(self) -> dict[str, KeyQuota]:
        """The keys of ``api_keys_file`` with their quotas (``KeyQuota()``, none, for a plain line)."""
        path = self.api_keys_file
        if path is None:
            return {}
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise KeysFileError(f"--api-keys-file {path}: cannot read it ({reason})") from None
        if path.suffix == ".toml":
            return _toml_keys(path, content)
        lines = content.splitlines()
        from_file = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
        if not from_file:
            raise KeysFileError(f"--api-keys-file {path}: holds no key (one key per line)")
        for number, key in from_file:
            if api_key_problem(key):
                raise KeysFileError(f"--api-keys-file {path}: line {number}: {API_KEY_RULE}")
        return {key: KeyQuota() for _, key in from_file}

    def has_auth(self) -> bool:
        return bool(self.api_keys or self.admin_api_keys or self.api_keys_file)

    def redacted_redis_url(self) -> str | None:
        return redact_url(self.redis_url) if self.redis_url else None


class KeysFileError(ValueError):
    """The API keys file cannot be used (the CLI turns it into ``InvalidSettings``; a reload keeps the
    keys it had). The message names the file and the line, never a key."""


API_KEY_RULE = "each API key must be at least 16 printable characters without spaces"


@dataclass(frozen=True, slots=True)
class KeyQuota:
    """One API key's settings from a ``.toml`` keys file: the highest ``priority`` its jobs may ask
    for, how many of its jobs may wait at once (``max_queued``) and how many it may submit a minute
    (``rate``); None = no limit beyond the server's."""

    priority: int = 0
    max_queued: int | None = None
    rate: int | None = None


_QUOTA_BOUNDS = {"priority": (0, 100), "max_queued": (1, 1_000_000), "rate": (1, 1_000_000)}


def _toml_keys(path: Path, content: str) -> dict[str, KeyQuota]:
    """``[[keys]]`` tables: ``key`` (required) and ``priority``, ``max_queued``, ``rate`` (optional)."""
    where = f"--api-keys-file {path}"
    try:
        tables = tomllib.loads(content).get("keys")
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(f"{where}: not valid TOML ({exc})") from None
    if not isinstance(tables, list) or not tables:
        raise KeysFileError(f"{where}: holds no key (expected [[keys]] tables with key = \"...\")")
    found: dict[str, KeyQuota] = {}
    for number, table in enumerate(tables, 1):
        key = table.get("key") if isinstance(table, dict) else None
        if not isinstance(key, str) or api_key_problem(key):
            raise KeysFileError(f"{where}: [[keys]] number {number}: key: {API_KEY_RULE}")
        values: dict[str, int] = {}
        for name, value in table.items():
            if name == "key":
                continue
            if name not in _QUOTA_BOUNDS:
                raise KeysFileError(f"{where}: [[keys]] number {number}: unknown setting {name!r} "
                                    "(known: key, priority, max_queued, rate)")
            low, high = _QUOTA_BOUNDS[name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise KeysFileError(f"{where}: [[keys]] number {number}: {name} must be an integer in {low}..{high}")
            values[name] = value
        found[key] = KeyQuota(**values)
    return found


def api_key_problem(key: str) -> bool:
    """True when ``key`` breaks ``API_KEY_RULE`` (one rule for flags, variables and the keys file)."""
    return len(key) < 16 or not key.isprintable() or " " in key


CPU_MAX_PIXELS = 1024 * 1024
GPU_MAX_PIXELS = 2048 * 2048


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_bytes(text: str) -> int | str:
    """'12GiB', '20GB', '512M' or a plain integer -> bytes (GB = 10^9, GiB = 2^30). Anything else is
    returned as is, for pydantic to refuse naming the flag."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return text
    number, unit = match.group(1), (match.group(2) or "").lower()
    base = 1024 ** ("kmgt".index(unit[0]) + 1) if "i" in unit else _UNITS[unit[:1]]
    return int(float(number) * base)


def _runs_on_cuda(device: str) -> bool:
    """Whether ``device`` will be a CUDA card (``auto`` with an NVIDIA driver loaded), without torch."""
    if device == "auto":
        return Path("/proc/driver/nvidia/version").exists()
    return device.startswith("cuda")


def _runs_on_cpu(device: str) -> bool:
    """Whether ``device`` will be the CPU, without importing torch: ``auto`` picks CUDA when an NVIDIA
    driver is loaded, MPS on Apple silicon, else the CPU (as the engine resolves it)."""
    if device == "auto":
        import platform

        if Path("/proc/driver/nvidia/version").exists():
            return False
        return not (platform.system() == "Darwin" and platform.machine() == "arm64")
    return device.startswith("cpu")


SECRET_FIELDS = frozenset(name for name, info in Settings.model_fields.items() if not info.repr)


def redact_url(url: str) -> str:
    """The URL with any user name and password replaced by ``***`` (safe for logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def set_in_environment(field: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``SDWORKER_<FIELD>`` is set (a CLI asks whether a default is the user's choice)."""
    return env_name(field) in (os.environ if environ is None else environ)


def unknown_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """``SDWORKER_*`` variables that name no setting (typos: the CLI warns about them)."""
    environ = os.environ if environ is None else environ
    known = {env_name(name) for name in Settings.model_fields}
    return sorted(
        key for key in environ if key.upper().startswith(ENV_PREFIX) and key.upper() not in known
        and not _NOT_SETTINGS.match(key.upper())
    )


def describe_error(exc: ValidationError, given: Mapping[str, str], environ: Mapping[str, str] | None = None) -> str:
    """One line for the first bad value, naming where it came from and what is allowed.

    ``given`` maps field names to the flag that set them (``{"max_queue": "--max-queue"}``); a field
    not given as a flag came from its environment variable (or, for a cross-field check, from both).
    Secret values are never echoed.
    """
    environ = os.environ if environ is None else environ
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        # A check across fields: name each field as the operator set it.
        for name in sorted(Settings.model_fields, key=len, reverse=True):
            if re.search(rf"\b{name}\b", message):
                source = given.get(name) or (env_name(name) if env_name(name) in environ else None)
                message = re.sub(rf"\b{name}\b", source or name, message)
        return message
    field = loc[0]
    if field in given:
        source = given[field]
        value = error.get("input")
    elif env_name(field) in environ:
        source = env_name(field)
        value = environ[env_name(field)]
    else:
        source = field
        value = error.get("input")
    if field not in Settings.model_fields:
        return f"{source}: not a setting"
    if field in SECRET_FIELDS or value is None:
        shown = ""
    elif source.startswith(ENV_PREFIX):
        shown = f"={value}"
    else:
        shown = f" {' '.join(map(str, value)) if isinstance(value, list | tuple) else value}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{source}{shown}: {message}"


_OUR_DEVICES = re.compile(r"auto|cpu|cuda|cuda:[0-9]{1,3}|mps")
_FAMILY_PREFIX = re.compile(r"[a-z][a-z0-9]{1,15}")  # --taesd flux1=DIR: a family name, not a path
_RBEE_CPU = re.compile(r"cpu-[0-9]{1,3}")
_RBEE_GPU = re.compile(r"gpu-([0-9]{1,3})")


def device_name(name: str) -> str:
    """Our (torch's) device name for one of ours or one rbee's hive passes: ``cpu``/``CPU-N`` (its CPU
    "devices" are all the one CPU), ``GPU-N`` (= ``cuda:N``), ``metal`` (= ``mps``). Anything else is
    refused at start with the names we take, instead of failing later in torch."""
    lowered = name.strip().lower()
    if _OUR_DEVICES.fullmatch(lowered):
        return lowered
    if _RBEE_CPU.fullmatch(lowered):
        return "cpu"
    if gpu := _RBEE_GPU.fullmatch(lowered):
        return f"cuda:{int(gpu.group(1))}"
    if lowered == "metal":
        return "mps"
    raise ValueError(
        f"{name!r} is not a device sdworker knows: auto, cpu, cuda, cuda:N, mps, "
        "or rbee's CPU-N, GPU-N (= cuda:N), metal (= mps)"
    )
