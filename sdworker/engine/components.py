"""The loaded parts of every model in memory, and what each part weighs: the engine's byte budget.

Every module of a loaded model (UNet or transformer, text encoders, VAE) is a ``Part`` with its bytes
(measured from its parameters and buffers once loaded) and the set of models using it. A text encoder
or VAE whose files are identical to one already loaded (same class, same config, same sha256 of its
weights, ``engine.hashing``) is not loaded again: the new model gets the loaded module, and the part
gains a user. Evicting a model removes it as a user; a part leaves memory when its last user has left,
so a shared encoder stays while any loaded model uses it.

The engine thread alone calls the pool (loads and evictions); ``loaded_bytes`` is read from other
threads (``/metrics``), a plain int.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from sdworker.engine.hashing import HashCache
from sdworker.engine.weights import WeightFiles

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Part:
    key: str
    module: Any  # the nn.Module (shared parts only; a private part's module lives in its model's pipeline)
    bytes: int
    users: set[str] = field(default_factory=set)


class ComponentPool:
    """Loaded parts by key: a shared part's key is its content, a private one's its model and name."""

    def __init__(self, hashes: HashCache) -> None:
        self.hashes = hashes
        self._parts: dict[str, Part] = {}
        self.loaded_bytes = 0
        self.loads = 0  # parts loaded from disk (a reused shared part is not counted): tests count these

    def shared_keys(self, parts: tuple[WeightFiles, ...]) -> dict[str, str]:
        """Component name -> content key, for the parts that may be shared (text encoders, VAE). Hashes
        their files (once per file version: ``HashCache`` keeps the result on disk)."""
        keys: dict[str, str] = {}
        for part in parts:
            if not part.shareable:
                continue
            try:
                digests = [self.hashes.get(path) for path in part.files]
                config = part.files[0].parent / "config.json"
                config_hash = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else ""
            except OSError as exc:
                log.warning("cannot hash %s (%s): it is loaded unshared", part.name, exc)
                continue
            keys[part.name] = f"{part.class_name}:{config_hash[:16]}:{'+'.join(digests)}"
        return keys

    def hold(self, user: str, keys: dict[str, str]) -> dict[str, Any]:
        """The loaded modules ``user`` can reuse (component name -> module), each now counting ``user``
        as a user, so evicting other models before the load keeps them."""
        reused: dict[str, Any] = {}
        for name, key in keys.items():
            part = self._parts.get(key)
            if part is not None and part.module is not None:
                part.users.add(user)
                reused[name] = part.module
        return reused

    def missing_bytes(self, parts: tuple[WeightFiles, ...], keys: dict[str, str]) -> int:
        """What loading ``parts`` adds (from their headers): every part not already in memory."""
        return sum(part.bytes for part in parts if keys.get(part.name) not in self._parts)

    def add(self, user: str, components: dict[str, Any], keys: dict[str, str]) -> None:
        """Record a freshly loaded model's modules (``pipe.components``)."""
        for name, module in components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            key = keys.get(name) or f"{user}/{name}"
            part = self._parts.get(key)
            if part is None:
                shared = name in keys
                part = self._parts[key] = Part(key, module if shared else None, module_bytes(module))
                self.loaded_bytes += part.bytes
                self.loads += 1
            part.users.add(user)

    def release(self, user: str) -> list[str]:
        """``user`` left memory: drop it from every part; parts without users go. Returns their keys."""
        gone: list[str] = []
        for key, part in list(self._parts.items()):
            part.users.discard(user)
            if not part.users:
                del self._parts[key]
                self.loaded_bytes -= part.bytes
                gone.append(key)
        return gone

    def bytes_of(self, user: str) -> int:
        """What ``user`` holds, shared parts included: its size were it alone in memory."""
        return sum(part.bytes for part in self._parts.values() if user in part.users)

    def sharers(self, user: str) -> set[str]:
        """The other models holding one of ``user``'s shared parts."""
        return {other for part in self._parts.values() if part.module is not None and user in part.users
                for other in part.users if other != user}

    def shared_with(self, user: str) -> list[str]:
        """``user``'s parts that another model uses too (their keys)."""
        return [part.key for part in self._parts.values() if user in part.users and len(part.users) > 1]


def module_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers (a tensor tied in two places counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        pointer = tensor.data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        total += tensor.numel() * tensor.element_size()
    return total
