"""``--model`` checked at start, before anything binds. A module of its own: it imports the engine's
model code (torch), which the commands that run no model (``api``, ``generate --url``, ``mcp``) must
not import, even through ``flags``."""

from __future__ import annotations

from sdworker.engine.models import resolve_source
from sdworker.settings import Settings


def check_model(settings: Settings) -> None:
    """``--model`` names a model that exists (a folder with ``model_index.json``, a checkpoint file) or
    a hub id, decided without loading anything: a typo exits 2 at start instead of a server that
    answers ``/health`` and fails every job. ``demo`` is not looked at here: it is built when the
    engine loads it (and never with ``--models-dir``), so a start never builds it twice."""
    if settings.model.strip() == "demo":
        return
    resolve_source(settings)
