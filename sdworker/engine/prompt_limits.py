"""The longest prompt a transformer family's main text encoder reads, enforced at submit.

diffusers truncates a prompt past the encoder's ``max_sequence_length`` with a log line nobody sees,
so the end of a long prompt would silently do nothing. Here such a prompt is a 4xx naming ``prompt``
(or ``negative_prompt``), with the count and the limit. The CLIP-encoded families (SD 1.x, 2.x, SDXL)
have no limit: A1111's 75-token chunks encode any length. FLUX.1 and SD 3.5 also feed a CLIP encoder
that reads the first 77 tokens; like ComfyUI and Forge we do not refuse for that, since their T5 reads
the whole prompt.

The count is what the pipeline's tokenizer makes of the text it is given: the prompt after LoRA tags
and A1111 syntax are removed, wrapped in the chat template where the pipeline wraps it (Z-Image, FLUX.2
klein); Qwen-Image's template prefix is dropped by the pipeline, so only the prompt counts there. The
tokenizers load from the model's (or its config folder's) files, once per model, without torch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdworker.domain.families import FamilyFacts
from sdworker.errors import InvalidRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextEncoderLimit:
    subfolder: str  # the tokenizer's folder in the diffusers layout
    encoder: str  # for people
    chat_template: dict[str, Any] | None = None  # apply_chat_template's options when the pipeline wraps prompts


LIMITS: dict[str, TextEncoderLimit] = {
    "flux1": TextEncoderLimit("tokenizer_2", "T5"),
    "sd3": TextEncoderLimit("tokenizer_3", "T5"),
    "zimage": TextEncoderLimit("tokenizer", "Qwen3", {"enable_thinking": True}),
    "qwenimage": TextEncoderLimit("tokenizer", "Qwen2.5-VL"),
    "flux2": TextEncoderLimit("tokenizer", "LLM", {"enable_thinking": False}),
}


class PromptLimits:
    """Tokenizers by model folder, loaded on first use; ``check`` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Any] = {}

    def check(self, facts: FamilyFacts, folder: str | None, texts: dict[str, str]) -> None:
        """Refuse a text of ``texts`` (field -> text) longer than the family's ``max_prompt_tokens`` (the
        pipeline's ``max_sequence_length``). ``folder``: the diffusers folder holding the tokenizer
        (None: not known here, nothing is checked)."""
        limit = LIMITS.get(facts.name)
        if limit is None or folder is None:
            return
        tokenizer = self._tokenizer(Path(folder) / limit.subfolder)
        if tokenizer is None:
            return
        for field, text in texts.items():
            if not text:
                continue
            count = _count(tokenizer, text, limit)
            if count > facts.max_prompt_tokens:
                raise InvalidRequest(
                    f"{field}: {count} tokens, more than the {facts.max_prompt_tokens} that {facts.label}'s "
                    f"{limit.encoder} "
                    f"text encoder reads (the rest would be cut off); shorten it",
                    field=field,
                )

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


def _count(tokenizer: Any, text: str, limit: TextEncoderLimit) -> int:
    if limit.chat_template is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True, **limit.chat_template)
    return len(tokenizer(text, truncation=False)["input_ids"])
