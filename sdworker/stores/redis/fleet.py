"""What the API side reads from the fleet's registrations to accept a job: which worker serves a
model, its library entry (native size, family defaults), its limits, and the prompt tokenizers
workers registered. Pure functions over ``FleetInfo`` (``RedisJobService._read_fleet`` builds it),
plus ``PromptCounters``, which reads the tokenizers from Redis once each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.checks import Limits
from sdworker.domain.families import family_facts
from sdworker.domain.parameters import model_label
from sdworker.domain.prompt_length import PromptTokenizer, TokenCounter, check_counts, counted_texts
from sdworker.domain.request import GenerationRequest
from sdworker.errors import InvalidRequest
from sdworker.jobs.inputs import DEFAULT_PARAMETERS, DEFAULT_SIZE
from sdworker.jobs.protocol import FleetInfo
from sdworker.jobs.state import WorkerInfo
from sdworker.stores.redis.codec import text
from sdworker.stores.redis.keys import Keys

log = logging.getLogger(__name__)


class PromptCounters:
    """The prompt tokenizers workers registered, built on first use from the JSON they stored and kept
    by hash (a few per fleet): the API node's half of ``domain.prompt_length``."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis, self._keys = redis, keys
        self._counters: dict[str, TokenCounter | None] = {}

    async def check(self, request: GenerationRequest, entry: ModelInfo | None) -> None:
        if entry is None or entry.prompt_tokenizer is None:
            return  # a CLIP family, or a worker that registered no tokenizer: the worker checks it
        counter = await self._counter(entry.prompt_tokenizer)
        if counter is None:
            return
        facts = family_facts(entry.family)
        await asyncio.to_thread(
            check_counts, facts, counted_texts(facts, request.prompt, request.negative_prompt), counter
        )

    async def _counter(self, registered: PromptTokenizer) -> TokenCounter | None:
        if registered.sha256 in self._counters:
            return self._counters[registered.sha256]
        raw = await self._redis.get(self._keys.tokenizer(registered.sha256))
        if raw is None:
            return None  # expired or not stored yet: the worker's own check still refuses (as a failed job)
        try:
            counter: TokenCounter | None = await asyncio.to_thread(TokenCounter, text(raw) or "", registered)
        except Exception:  # no tokenizers package here, or a JSON it cannot read: leave it to the worker
            log.warning(
                "cannot read the prompt tokenizer %s; prompt lengths are checked by the worker",
                registered.sha256[:12],
                exc_info=True,
            )
            counter = None
        self._counters[registered.sha256] = counter
        return counter


@dataclass(frozen=True, slots=True)
class Registration:
    """What one worker registered (live now or within a day): the names it serves (its ``--model`` first),
    its engine, its job limits and its library."""

    names: tuple[str, ...]
    engine: EngineInfo | None
    limits: Limits | None
    library: tuple[ModelInfo, ...]


def registrations_of(fleet: FleetInfo) -> tuple[Registration, ...]:
    return tuple(fleet.extra.get("registered", ()))  # type: ignore[arg-type]


def ready_for(model: str, fleet: FleetInfo) -> bool:
    """Whether a worker of ``fleet`` that is ready or busy serves ``model`` (its own or its library's)."""
    libraries = libraries_of(fleet)
    for worker in fleet.workers:
        if worker.status in ("ready", "busy"):
            names = {worker.model, model_label(worker.model)}
            names.update(entry.name for entry in libraries.get(worker.id, ((), ()))[0])
            if model in names:
                return True
    return False


def decodes_images(request: GenerationRequest) -> bool:
    """Whether ``check_inputs`` decodes an image for ``request`` (what makes it slow)."""
    return bool(
        request.init_image
        or request.mask_image
        or request.reference_images
        or request.controlnet
        or (request.ip_adapter is not None and request.ip_adapter.images)
    )


def check_worker_limits(request: GenerationRequest, model: str, fleet: FleetInfo) -> None:
    """The job's size against the ``--max-pixels`` the workers of ``model`` registered (the largest of
    them: some worker can run it), not this node's own device: a CPU-hosted API node does not refuse
    what GPUs can run. (Steps and image counts stay the API node's: a worker has no flag for them.)"""
    limits = [r.limits for r in registrations_of(fleet) if model in r.names and r.limits is not None]
    if not limits:
        return  # nobody registered it (--expect-models): this node's own limits applied at the edge
    max_pixels = max(each.max_pixels for each in limits)
    width, height = request.width or 0, request.height or 0
    if width * height > max_pixels:
        raise InvalidRequest(
            f"width: {width}x{height} = {width * height} pixels; the workers of {model!r} take at most {max_pixels}",
            field="width",
        )


N = TypeVar("N", ModelInfo, LoraInfo)


def union_by_name(entries: Iterable[N]) -> tuple[N, ...]:
    """One entry per name (the first worker's), sorted by name."""
    found: dict[str, N] = {}
    for entry in entries:
        found.setdefault(entry.name, entry)
    return tuple(found[name] for name in sorted(found))


def libraries_of(fleet: FleetInfo) -> dict[str, tuple[tuple[ModelInfo, ...], tuple[LoraInfo, ...]]]:
    return dict(fleet.extra.get("libraries", {}))  # type: ignore[call-overload]


def library_entry(model: str, fleet: FleetInfo) -> ModelInfo | None:
    """What workers listed about ``model`` (for a worker's ``--model`` name: its default model); with no
    live worker, what one registered within a day."""
    for entry in fleet.library:
        if entry.name == model:
            return entry
    for registration in registrations_of(fleet):
        for entry in registration.library:
            if entry.name == model or (entry.is_default and registration.names[0] == model):
                return entry
    for worker in fleet.workers:
        if worker.model == model:
            for entry in libraries_of(fleet).get(worker.id, ((), ()))[0]:
                if entry.is_default:
                    return entry
    return None


def family_defaults(model: str, fleet: FleetInfo) -> tuple[int, float]:
    """Steps and guidance of a job on ``model`` that names none: its family's, where a worker listed it."""
    entry = library_entry(model, fleet)
    return (entry.default_steps, entry.default_guidance) if entry is not None else DEFAULT_PARAMETERS


def native_size(model: str, fleet: FleetInfo) -> int:
    """The default width/height of a job on ``model``: its native size where a worker listed it."""
    entry = library_entry(model, fleet)
    return entry.native_size if entry is not None else DEFAULT_SIZE


def live_workers_with_engines(fleet: FleetInfo) -> list[tuple[WorkerInfo, EngineInfo | None]]:
    engines: dict[str, Any] = dict(fleet.extra.get("engines", {}))  # type: ignore[call-overload]
    return [(w, engines.get(w.model)) for w in fleet.workers if w.status not in ("stopping", "failed")]
