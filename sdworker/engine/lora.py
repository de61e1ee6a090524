"""LoRA adapters on one loaded model, through diffusers' LoRA loader (peft).

Per job the engine calls ``activate`` with the job's LoRAs and weights; that alone decides what runs:

- a LoRA not yet loaded is read (safetensors only) and loaded as a peft adapter of its own into the
  shared UNet and text encoders (diffusers converts kohya's ``lora_unet_*``/``lora_te_*`` layout);
  loaded adapters stay cached (up to ``max_cached``; the least recently used unused one is deleted
  beyond that), so a LoRA used again costs nothing to load;
- the job's adapters are activated with their weights (``set_adapters``), every other one is inactive;
- a job without LoRAs disables all adapters: peft's wrapped layers then compute ``base_layer(x)`` and
  nothing else, the very same arithmetic as a model that never saw a LoRA, so the pixels equal a fresh
  worker's (tests check this against diffusers).

Adapters stay unfused by default: an active LoRA costs a small extra matmul per wrapped layer, but
switching LoRAs between jobs is exact. ``fuse=True`` merges the active set into the base weights (no
per-step cost) and unmerges it when the set changes; unmerging subtracts what was added, which is not
bit-exact in floating point, so a later job's pixels may differ in the last bits (``bench/models.py``
measures both the cost and the difference).
"""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sdworker.domain.result import AppliedLora
from sdworker.engine.hashing import HashCache
from sdworker.engine.library import LoraEntry
from sdworker.errors import LoraIncompatible

log = logging.getLogger(__name__)

# Adapter names are unique in the process, not per model: a text encoder shared by two models holds
# both models' adapters, and peft refuses a second adapter of the same name.
_ADAPTER_NUMBERS = itertools.count(1)


class LoraAdapters:
    """The adapters loaded into one model's modules. Used on the engine thread only."""

    def __init__(
        self, pipe: Any, model_name: str, hashes: HashCache, *, max_cached: int = 8, fuse: bool = False
    ) -> None:
        self.pipe = pipe
        self.model_name = model_name
        self.hashes = hashes
        self.max_cached = max(1, max_cached)
        self.fuse = fuse
        self._adapters: OrderedDict[str, str] = OrderedDict()  # LoRA path -> adapter name
        self._active: tuple[tuple[str, float], ...] = ()
        self._fused: tuple[tuple[str, float], ...] = ()
        self._enabled = True

    @property
    def loaded(self) -> list[str]:
        return list(self._adapters)

    @property
    def unet_is_base(self) -> bool:
        """True when the UNet computes with its base weights alone: no adapter active (disabled peft
        layers compute ``base_layer(x)``), or the active set fused into those weights. ``--compile``
        runs its graph, traced without peft layers, only then."""
        return not self._active or self._fused == self._active

    def activate(self, loras: list[tuple[LoraEntry, float]], *, field: str = "loras") -> tuple[AppliedLora, ...]:
        """Make exactly ``loras`` active with their weights (none: every adapter off)."""
        wanted: list[tuple[str, float]] = []
        applied: list[AppliedLora] = []
        for entry, weight in loras:
            adapter = self._load(entry, keep={str(e.path) for e, _ in loras}, field=field)
            wanted.append((adapter, float(weight)))
            applied.append(AppliedLora(entry.name, float(weight), self._short_hash(entry)))
        state = tuple(wanted)
        if state != self._active or (not state and self._enabled and self._adapters):
            self._apply(state)
        return tuple(applied)

    def _apply(self, state: tuple[tuple[str, float], ...]) -> None:
        pipe = self.pipe
        if self._fused and self._fused != state:
            pipe.unfuse_lora()
            self._fused = ()
        if not state:
            if self._adapters:
                pipe.disable_lora()
            self._enabled = False
        else:
            # Always: loading an adapter does not re-enable layers a LoRA-free job disabled, and a layer
            # left disabled would silently drop part of this job's LoRA.
            pipe.enable_lora()
            self._enabled = True
            pipe.set_adapters([a for a, _ in state], adapter_weights=[w for _, w in state])
            if self.fuse and self._fused != state:
                pipe.fuse_lora(adapter_names=[a for a, _ in state], lora_scale=1.0)
                self._fused = state
        self._active = state

    def step_aside(self) -> None:
        """Another model that shares a text encoder with this one is about to run: switch this model's
        adapters off (and unfuse them) and forget what was active, so the next ``activate`` here sets
        them again instead of trusting layers the other model's ``set_adapters`` changed."""
        if self._fused:
            self.pipe.unfuse_lora()
            self._fused = ()
        if self._adapters and self._enabled:
            self.pipe.disable_lora()
        self._enabled = False
        self._active = ()

    def close(self) -> None:
        """Delete every adapter (the model leaves memory while a part of it, shared, stays)."""
        self.step_aside()
        if self._adapters:
            self._forget_all(list(self._adapters.values()))
        self._adapters.clear()

    def _forget_all(self, adapters: list[str]) -> None:
        try:
            self.pipe.delete_adapters(adapters)
        except Exception:
            log.debug("deleting adapters %s failed", adapters, exc_info=True)

    def _load(self, entry: LoraEntry, *, keep: set[str], field: str) -> str:
        key = str(entry.path)
        adapter = self._adapters.get(key)
        if adapter is not None:
            self._adapters.move_to_end(key)
            return adapter
        self._evict(keep)
        from safetensors.torch import load

        adapter = f"{re.sub(r'[^0-9A-Za-z_]', '_', entry.name)[:48]}_{next(_ADAPTER_NUMBERS)}"
        # Read whole, not mmapped: safetensors 0.8's mmap path keeps ~60 bytes per tensor per load for
        # good, which a worker cycling LoRAs pays on every load; a LoRA file is small.
        state = load(entry.path.read_bytes())
        try:
            with _quiet_loader() as unplaced:
                self.pipe.load_lora_weights(state, adapter_name=adapter)
            if unplaced:
                # diffusers only warns; a LoRA with layers the model lacks is another architecture's
                # (attention-only LoRAs of SD 3.5, Qwen-Image and FLUX read alike), applied in part
                raise LoraIncompatible(f"it has layers the model lacks ({unplaced[0][:160]})", field=field)
        except Exception as exc:
            self._forget(adapter)
            # the loader may have switched layers before failing: the next job sets its state afresh
            self._active, self._enabled = (), True
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise LoraIncompatible(
                f"{field}: LoRA {entry.name!r} does not fit model {self.model_name!r}: {reason}", field=field
            ) from exc
        self._adapters[key] = adapter
        self._active = ()  # loading changes which adapters diffusers marks active: set them again
        return adapter

    def _evict(self, keep: set[str]) -> None:
        while len(self._adapters) >= self.max_cached:
            victim = next((k for k in self._adapters if k not in keep), None)
            if victim is None:
                return
            adapter = self._adapters.pop(victim)
            if self._fused:
                self.pipe.unfuse_lora()
                self._fused = ()
            self._forget(adapter)
            self._active = ()

    def _forget(self, adapter: str) -> None:
        try:
            self.pipe.delete_adapters([adapter])
        except Exception:  # a half-loaded adapter may not be registered everywhere
            log.debug("deleting adapter %s failed", adapter, exc_info=True)

    def _short_hash(self, entry: LoraEntry) -> str | None:
        try:
            return self.hashes.get(entry.path, "addnet")[:12]
        except OSError:
            return None


class _UnplacedKeys(logging.Handler):
    """Collects diffusers' "unexpected keys" report: LoRA weights no layer of the model took."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "unexpected keys" in message:
            self.found.append(message.split(":", 1)[-1].strip())


@contextmanager
def _quiet_loader() -> Iterator[list[str]]:
    """diffusers and transformers log load reports meant for training code ("missing keys" for every
    base weight when an adapter loads); the worker reports failures itself. Yields the list that
    receives diffusers' report of LoRA weights no layer took (its ``_maybe_warn_for_unhandled_keys``)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    reporter = logging.getLogger("diffusers.utils.peft_utils")
    handler = _UnplacedKeys()
    level, propagate = reporter.level, reporter.propagate
    reporter.setLevel(logging.WARNING)
    reporter.propagate = False  # heard here only, not printed
    reporter.addHandler(handler)
    try:
        with warnings.catch_warnings():
            # peft warns that a model holding an adapter gets another: several adapters is the design here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield handler.found
    finally:
        reporter.removeHandler(handler)
        reporter.setLevel(level)
        reporter.propagate = propagate
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
