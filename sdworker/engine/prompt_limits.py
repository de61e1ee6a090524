"""Prompt lengths where the engine runs: the model's own tokenizers, loaded from its (or its config
folder's) files once per model, counted by the rule in ``sdworker.domain.prompt_length``.

The count is what the pipeline's tokenizer makes of the text it is given: the prompt after LoRA tags
and A1111 syntax are removed, wrapped in the chat template where the pipeline wraps it (Z-Image, FLUX.2
klein); Qwen-Image's template prefix is dropped by the pipeline, so only the prompt counts there. FLUX.1
and SD 3.5 also feed a CLIP encoder that reads the first 77 tokens; like ComfyUI and Forge we do not
refuse for that, since their T5 reads the whole prompt.

``export`` gives a fleet's API node the same count without the files (``PromptTokenizer``): the
tokenizer's ``tokenizers`` backend, serialised. transformers 5 gives every tokenizer class of these
families' encoders (T5, Qwen2, Llama/Mistral) that backend, converting the slow files at load when the
folder has no ``tokenizer.json`` (Qwen's ``vocab.json``/``merges.txt``; T5's ``spiece.model``, which
needs the ``sentencepiece`` and ``protobuf`` packages, without which neither this check nor the
pipeline can load the model). A tokenizer without that backend (a pure-Python one, mistral-common's)
is exported as nothing: the API node accepts the job and the worker refuses a long prompt when it takes
it, the job failing with the same ``invalid_request`` error and message. Converting such a tokenizer
ourselves would give the API node a count that may differ from the worker's, the one thing this must
not do.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from sdworker.domain.families import FamilyFacts
from sdworker.domain.prompt_length import LIMITS, PromptTokenizer, TextEncoderLimit, check_counts

log = logging.getLogger(__name__)

MARKER = "\u2063sdworker-prompt\u2063"  # where the prompt goes in a rendered chat template


class PromptLimits:
    """Tokenizers by model folder, loaded on first use; ``check`` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Any] = {}
        self._exports: dict[str, tuple[PromptTokenizer, str] | None] = {}

    def check(self, facts: FamilyFacts, folder: str | None, texts: dict[str, str]) -> None:
        """Refuse a text of ``texts`` (field -> text) longer than the family's ``max_prompt_tokens``.
        ``folder``: the diffusers folder holding the tokenizer (None: not known here, nothing is checked)."""
        limit = LIMITS.get(facts.name)
        if limit is None or folder is None:
            return
        tokenizer = self._tokenizer(Path(folder) / limit.subfolder)
        if tokenizer is not None:
            check_counts(facts, texts, lambda text: _count(tokenizer, text, limit))

    def export(self, facts: FamilyFacts, folder: str | None) -> tuple[PromptTokenizer, str] | None:
        """What an API node needs to count this model's prompts: (the registration, the tokenizer's
        ``tokenizers`` JSON), or None (no limit, no readable tokenizer, or one without a fast backend)."""
        limit = LIMITS.get(facts.name)
        if limit is None or folder is None:
            return None
        path = Path(folder) / limit.subfolder
        with self._lock:
            if str(path) in self._exports:
                return self._exports[str(path)]
        tokenizer = self._tokenizer(path)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if tokenizer is not None and backend is None:
            log.info("the tokenizer in %s (%s) has no tokenizers backend: API nodes leave its prompt lengths to "
                     "the worker", path, type(tokenizer).__name__)
        exported = None
        if backend is not None:
            text = backend.to_str()
            prefix, suffix = "", ""
            if limit.chat_template is not None and getattr(tokenizer, "chat_template", None):
                prefix, _, suffix = _wrap(tokenizer, MARKER, limit).partition(MARKER)
            exported = PromptTokenizer(hashlib.sha256(text.encode()).hexdigest(), prefix, suffix), text
        with self._lock:
            self._exports[str(path)] = exported
        return exported

    def _tokenizer(self, path: Path) -> Any:
        key = str(path)
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = _load(path)
            return self._tokenizers[key]


def _load(path: Path) -> Any:
    if not path.is_dir():
        return None  # a hub model or an odd layout: the pipeline truncates as diffusers does
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception:  # a tokenizer the library cannot read must not refuse jobs: the pipeline truncates
        log.warning("cannot read the tokenizer in %s; prompt lengths go unchecked", path, exc_info=True)
        return None


def _wrap(tokenizer: Any, text: str, limit: TextEncoderLimit) -> str:
    wrapped: str = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True, **(limit.chat_template or {}))
    return wrapped


def _count(tokenizer: Any, text: str, limit: TextEncoderLimit) -> int:
    if limit.chat_template is not None and getattr(tokenizer, "chat_template", None):
        text = _wrap(tokenizer, text, limit)
    return len(tokenizer(text, truncation=False)["input_ids"])
