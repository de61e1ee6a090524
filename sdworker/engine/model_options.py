"""Per-model settings in the models folder: ``sdworker.toml`` beside the models.

    # /models/sdworker.toml
    [models."flux-dev"]         # a model's name as GET /v1/models lists it
    offload = "model"           # none | model | sequential: this model's --offload

    [models."sdxl/juggernaut"]
    offload = "none"            # loaded whole even when the worker runs with --offload model

A model without a table gets the worker's flags. The file lives with the models because it describes
them (a 24 GB FLUX beside 2 GB SD 1.5 models on a 16 GB card: offload only the one that does not fit).
Read torch-free with the library (``ModelLibrary.refresh``) and checked at start (``cli.flags.check_files``):
a key we do not know, a value that is not allowed, or offload without a CUDA card is a one-line error
(exit 2 at start), never a setting accepted and ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sdworker.errors import ModelError
from sdworker.settings import Settings, _runs_on_cuda

OPTIONS_FILE = "sdworker.toml"
OFFLOAD_CHOICES = ("none", "model", "sequential")


@dataclass(frozen=True, slots=True)
class ModelOptions:
    offload: str = ""  # "" = the worker's --offload


def read_model_options(models_dir: Path, settings: Settings) -> dict[str, ModelOptions]:
    """Model name -> its options, from ``models_dir/sdworker.toml`` (none: an empty map)."""
    path = models_dir / OPTIONS_FILE
    if not path.is_file():
        return {}
    where = f"--models-dir {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"{where}: not a readable TOML file ({exc})") from None
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise ModelError(f"{where}: unknown table {unknown[0]!r} (the file holds [models.\"NAME\"] tables)")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ModelError(f"{where}: 'models' must be a table of [models.\"NAME\"] tables")
    options: dict[str, ModelOptions] = {}
    for name, table in models.items():
        field = f"models.{name!r}"
        if not isinstance(table, dict):
            raise ModelError(f"{where}: {field} must be a table (e.g. offload = \"model\")")
        extra = sorted(set(table) - {"offload"})
        if extra:
            raise ModelError(f"{where}: {field}.{extra[0]} is not a per-model setting (known: offload)")
        offload = table.get("offload", "")
        if offload != "" and offload not in OFFLOAD_CHOICES:
            raise ModelError(f"{where}: {field}.offload {offload!r} is not one of {', '.join(OFFLOAD_CHOICES)}")
        if offload not in ("", "none") and not _runs_on_cuda(settings.device):
            raise ModelError(
                f"{where}: {field}.offload {offload!r} moves model parts between the CPU and a CUDA card while it "
                f"runs, and --device is {settings.device!r}: without a CUDA card there is no place to move them to "
                "(use offload = \"none\")"
            )
        options[str(name)] = ModelOptions(offload=str(offload))
    return options


def check_names(options: dict[str, ModelOptions], names: Iterable[str], models_dir: Path) -> None:
    """A table for a model the folder does not hold is a typo until shown otherwise: refuse it."""
    known = set(names)
    for name in options:
        if name not in known:
            shown = ", ".join(sorted(known)[:10]) or "none"
            raise ModelError(f"--models-dir {models_dir / OPTIONS_FILE}: models.{name!r} is not a model in the "
                             f"folder (models: {shown})")
