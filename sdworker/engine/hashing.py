"""File hashes as A1111 writes them, cached by path, size and modification time.

- Model hash: sha256 of the checkpoint file (for a diffusers folder, of its UNet weights file); A1111's
  ``Model hash`` is its first 10 hex characters.
- LoRA hash: A1111's ``addnet`` hash: sha256 of a ``.safetensors`` file after its header (so editing
  metadata keeps the hash); ``Lora hashes`` shows its first 12 characters.

Hashing a 6 GB checkpoint reads 6 GB, so each is done once per file version and kept in
``cache_dir/hashes.json`` (the key includes size and mtime: a replaced file is hashed again). The cache
is read and written under a lock; the API thread may read it while the engine thread writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


def sha256_file(path: Path, *, skip_safetensors_header: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if skip_safetensors_header:
            length = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + length)
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 / addnet hashes by (path, size, mtime), persisted as JSON in ``cache_dir``."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.file = Path(cache_dir) / "hashes.json" if cache_dir is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] = {}
        if self.file is not None and self.file.is_file():
            try:
                self._entries = json.loads(self.file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("hash cache %s unreadable; starting afresh", self.file)

    def cached(self, path: Path, kind: str = "sha256") -> str | None:
        """The hash if known for this version of the file, without reading it."""
        key, stamp = self._key(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry.get("stamp") == stamp and isinstance(entry.get(kind), str):
                return str(entry[kind])
        return None

    def get(self, path: Path, kind: str = "sha256") -> str:
        """The hash, computed (and saved) when not cached. ``kind``: sha256 | addnet."""
        known = self.cached(path, kind)
        if known is not None:
            return known
        value = sha256_file(path, skip_safetensors_header=kind == "addnet")
        key, stamp = self._key(path)
        with self._lock:
            entry = self._entries.get(key)
            if not entry or entry.get("stamp") != stamp:
                entry = self._entries[key] = {"stamp": stamp}
            entry[kind] = value
            self._save()
        return value

    @staticmethod
    def _key(path: Path) -> tuple[str, list[int]]:
        stat = path.stat()
        return str(path.resolve()), [stat.st_size, stat.st_mtime_ns]

    def _save(self) -> None:
        if self.file is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".hashes-", dir=self.file.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._entries, handle)
            os.replace(temp, self.file)  # atomic: a reader never sees half a file
        except OSError as exc:
            log.warning("cannot write the hash cache %s: %s", self.file, exc)
