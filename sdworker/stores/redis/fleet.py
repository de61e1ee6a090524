"""The fleet as an API node sees it: ``read_fleet`` reads the live workers and the registrations of
the last day from Redis into a ``FleetInfo``; ``place`` picks the queue (model) a job goes to on it and
runs the checks that need the fleet; the other functions read what workers registered (a model's
library entry, native size and family defaults, the workers' limits). ``PromptCounters`` builds the
prompt tokenizers workers stored, once each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.checks import Limits
from sdworker.domain.families import family_facts
from sdworker.domain.parameters import model_label
from sdworker.domain.prompt_length import PromptTokenizer, TokenCounter, check_counts, counted_texts
from sdworker.domain.request import GenerationRequest
from sdworker.errors import InvalidRequest, NotReady
from sdworker.jobs.inputs import DEFAULT_PARAMETERS, DEFAULT_SIZE
from sdworker.jobs.protocol import FleetInfo
from sdworker.jobs.spec import JobDraft
from sdworker.jobs.state import WorkerInfo
from sdworker.jobs.submission import (
    check_against_engine,
    check_family_rules,
    check_guidance_names,
    check_lora_names,
    check_model_fits,
    resolve_model,
)
from sdworker.settings import Settings
from sdworker.stores.redis.codec import parse_guidance, parse_library, parse_limits, parse_worker, text
from sdworker.stores.redis.connection import live_window_seconds
from sdworker.stores.redis.keys import Keys

log = logging.getLogger(__name__)

REGISTRATION_KEEP_SECONDS = 24 * 3600  # a stopped worker's models still take jobs this long (scale to zero)
Call = Callable[[Awaitable[Any]], Awaitable[Any]]  # a Redis call with its errors made 503s


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


async def read_fleet(redis: Any, keys: Keys, settings: Settings, call: Call) -> FleetInfo:
    """The fleet as Redis has it now (``RedisJobService.fleet`` caches it for
    requests; the sweep reads its own)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.workers)
        pipe.zcard(keys.queued)
        pipe.hgetall(keys.registered)
        raw, depth, registered = await call(pipe.execute())
    window = live_window_seconds(settings)
    workers = []
    engine: EngineInfo | None = None
    stale = []
    libraries = {}
    guidance = []
    for worker_id, value in raw.items():
        info, worker_engine = parse_worker(value)
        if time.time() - info.last_seen > window:
            stale.append(worker_id)
            continue
        workers.append((info, worker_engine))
        if info.status not in ("stopping", "failed"):
            libraries[info.id] = parse_library(value)
            guidance.append(parse_guidance(value))
        engine = engine or worker_engine
    if stale and any(time.time() - parse_worker(raw[w])[0].last_seen > 24 * 3600 for w in stale):
        await call(redis.hdel(keys.workers, *stale))
    library = union_by_name(m for models, _ in libraries.values() for m in models)
    loras = union_by_name(lora for _, each in libraries.values() for lora in each)
    # What the compat doors list: a model whose workers all failed to load it is offered by none.
    models = tuple(sorted({info.model for info, _ in workers if info.status != "failed"}))
    return FleetInfo(
        models=models,
        engine=engine,
        workers=tuple(info for info, _ in workers),
        queue_depth=int(depth),
        backend="redis",
        extra={
            "engines": {info.model: e for info, e in workers if e is not None},
            "libraries": libraries,
            "registered": await _registrations(redis, keys, registered, call),
        },
        library=library,
        loras=loras,
        controlnets=tuple(sorted({name for g in guidance for name in g.controlnets})),
        upscalers=tuple(sorted({name for g in guidance for name in g.upscalers})),
        ip_adapters=tuple(sorted({name for g in guidance for name in g.ip_adapters})),
    )


async def _registrations(redis: Any, keys: Keys, raw: dict[bytes, bytes], call: Call) -> tuple[Registration, ...]:
    """What workers registered within ``REGISTRATION_KEEP_SECONDS`` (live or not); older records go."""
    found = []
    old = []
    for worker_id, value in raw.items():
        info, engine = parse_worker(value)
        if time.time() - info.last_seen > REGISTRATION_KEEP_SECONDS:
            old.append(worker_id)
            continue
        library = parse_library(value)[0]
        names = (info.model, model_label(info.model), *(entry.name for entry in library))
        found.append(
            Registration(names=tuple(dict.fromkeys(names)), engine=engine, limits=parse_limits(value), library=library)
        )
    if old:
        await call(redis.hdel(keys.registered, *old))
    return tuple(found)


def place(draft: JobDraft, fleet: FleetInfo, settings: Settings) -> str:
    """The queue (model) a job goes to on ``fleet``, after the checks that need the fleet: the
    model is served (or expected), the job fits its engine, family and LoRAs
    (the queue's room is the caller's to check)."""
    served: dict[str, str] = {}
    engines: dict[str, EngineInfo] = {}
    worker_models: set[str] = set()
    libraries = libraries_of(fleet)
    for worker, engine in live_workers_with_engines(fleet):
        served.setdefault(worker.model, worker.model)
        served.setdefault(model_label(worker.model), worker.model)
        worker_models.add(worker.model)
        # A worker also serves every model of its library: jobs for one queue under its name.
        for entry in libraries.get(worker.id, ((), ()))[0]:
            served.setdefault(entry.name, entry.name)
            if engine is not None:
                engines.setdefault(entry.name, engine)
        if engine is not None:
            engines.setdefault(worker.model, engine)
    # Scale to zero: a model some worker registered within a day, or that this node expects, takes
    # jobs with no live worker; they wait for one (or fail no_worker after --queue-timeout-seconds).
    for registration in registrations_of(fleet):
        for name in registration.names:
            served.setdefault(name, registration.names[0] if name == model_label(registration.names[0]) else name)
            if registration.engine is not None:
                engines.setdefault(served[name], registration.engine)
    for name in settings.expect_models:
        served.setdefault(name, name)
        served.setdefault(model_label(name), name)
    default = settings.default_model if settings.default_model in served else None
    default = default or (sorted(worker_models)[0] if worker_models else None)
    default = default or (sorted(set(served.values()))[0] if served else None)
    refuse_failed_only(draft.request.model or default, served, fleet)
    model = resolve_model(draft.request.model, served, default)
    check_against_engine(draft, engines.get(model))
    check_model_fits([entry for models, _ in libraries.values() for entry in models if entry.name == model])
    if fleet.library:  # workers list their LoRAs: refuse unknown names here, not as a failed job
        served_model = library_entry(model, fleet)
        check_lora_names(draft, fleet.loras, served_model.family if served_model else None)
        check_family_rules(draft, served_model)
        check_guidance_names(
            draft.request, controlnets=fleet.controlnets, ip_adapters=fleet.ip_adapters, upscalers=fleet.upscalers
        )
    return model


def refuse_failed_only(model: str | None, served: dict[str, str], fleet: FleetInfo) -> None:
    """Only broken workers hold this model: a 503 saying why (as one broken ``serve`` says), not a
    404 as if nobody had ever served it."""
    if (model is None and served) or (model is not None and model in served):
        return
    for worker in fleet.workers:
        if worker.status == "failed" and (model is None or model in (worker.model, model_label(worker.model))):
            raise NotReady(f"the worker cannot run jobs: {worker.reason or 'it failed'}")
