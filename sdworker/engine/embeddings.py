"""Textual-inversion embeddings from ``--embeddings-dir``, used by their file name in a prompt (A1111).

A file ``easynegative.safetensors`` makes the word ``easynegative`` in a prompt stand for its vectors.
Formats read (safetensors only: ``.pt``/``.bin`` embeddings are pickles and are skipped with a log line):

- A1111's: one tensor ``emb_params`` of shape (vectors, dim) (SD 1.x: dim 768, SD 2.x: 1024);
- diffusers' ``learned_embeds.safetensors``: one tensor under the token's name, (dim,) or (vectors, dim);
- SDXL's: ``clip_l`` (vectors, 768) and ``clip_g`` (vectors, 1280), one per text encoder.

An embedding whose width does not fit the model's encoder is not an embedding for this model: its name
stays plain text (A1111 skips it the same way). Names match whole words, case-insensitively (CLIP
lower-cases prompts). Files are read once and kept; ``refresh`` rescans the folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextualInversion:
    name: str
    tensors: dict[str, torch.Tensor]  # "single" or "clip_l"/"clip_g"; each (vectors, dim)

    def vectors_for(self, encoder_index: int, hidden_size: int) -> torch.Tensor:
        """The vectors for text encoder ``encoder_index`` (0 = CLIP-L or the only one, 1 = bigG)."""
        key = "clip_g" if encoder_index == 1 else "clip_l"
        tensor = self.tensors.get(key, self.tensors.get("single"))
        if tensor is None or tensor.shape[-1] != hidden_size:
            raise KeyError(f"embedding {self.name} has no vectors of width {hidden_size}")
        return tensor

    def fits(self, hidden_sizes: tuple[int, ...]) -> bool:
        try:
            for index, size in enumerate(hidden_sizes):
                self.vectors_for(index, size)
        except KeyError:
            return False
        return True


def read_embedding(path: Path) -> TextualInversion | None:
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
    except Exception as exc:
        log.warning("embedding %s is not a readable safetensors file: %s", path, exc)
        return None
    tensors: dict[str, torch.Tensor] = {}
    if "clip_l" in data or "clip_g" in data:
        tensors = {k: _as_matrix(data[k]) for k in ("clip_l", "clip_g") if k in data}
    elif "emb_params" in data:
        tensors = {"single": _as_matrix(data["emb_params"])}
    elif len(data) == 1:
        tensors = {"single": _as_matrix(next(iter(data.values())))}
    else:
        log.warning("embedding %s: unknown layout (keys %s)", path, sorted(data)[:5])
        return None
    return TextualInversion(path.stem, {k: v.float() for k, v in tensors.items()})


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1, -1) if tensor.ndim == 1 else tensor.reshape(-1, tensor.shape[-1])


class EmbeddingStore:
    """The embeddings of one folder, each checked against the model that uses it."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder).expanduser() if folder else None
        self._paths: dict[str, Path] = {}
        self._loaded: dict[str, TextualInversion | None] = {}
        self._pattern: re.Pattern[str] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folder. Safe while another thread encodes: new tables replace the old ones whole."""
        paths: dict[str, Path] = {}
        if self.folder is not None and self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                if path.suffix.lower() == ".safetensors" and path.is_file():
                    paths[path.stem.lower()] = path
                elif path.suffix.lower() in (".pt", ".bin"):
                    log.warning("embedding %s skipped: pickled embeddings are not loaded; use .safetensors", path)
        names = sorted(paths, key=len, reverse=True)  # longest first: "bad-hands-5" before "bad"
        self._paths, self._loaded = paths, {}
        self._pattern = (
            re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?![\w-])", re.IGNORECASE)
            if names
            else None
        )

    def names(self) -> list[str]:
        return [p.stem for p in self._paths.values()]

    def get(self, name: str) -> TextualInversion | None:
        key = name.lower()
        if key not in self._loaded:
            path = self._paths.get(key)
            self._loaded[key] = read_embedding(path) if path is not None else None
        return self._loaded[key]

    def split(self, text: str, hidden_sizes: tuple[int, ...]) -> Iterator[str | TextualInversion]:
        """``text`` cut into plain text and the embeddings it names that fit a model whose text encoders
        are ``hidden_sizes`` wide."""
        if self._pattern is None:
            yield text
            return
        position = 0
        for match in self._pattern.finditer(text):
            embedding = self.get(match.group(1))
            if embedding is None or not embedding.fits(hidden_sizes):
                continue
            if match.start() > position:
                yield text[position : match.start()]
            yield embedding
            position = match.end()
        if position < len(text):
            yield text[position:]
