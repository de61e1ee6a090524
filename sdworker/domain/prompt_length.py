"""The longest prompt a transformer family's main text encoder reads, and how its tokens are counted:
the one rule the worker's engine (``engine.prompt_limits``, from the model's tokenizer files) and a
fleet's API node (from what the worker registered) both apply. Torch-free.

diffusers truncates a prompt past the encoder's ``max_sequence_length`` with a log line nobody sees,
so the end of a long prompt would silently do nothing. Here such a prompt is a 4xx naming ``prompt``
(or ``negative_prompt``), with the count and the limit. The CLIP-encoded families (SD 1.x, 2.x, SDXL)
have no limit: A1111's 75-token chunks encode any length.

What an API node needs to count as the worker counts, without the model's files or transformers: the
tokenizer itself as ``tokenizers`` JSON (the very tokenizer transformers runs, serialised by the
worker), and the text the pipeline's chat template puts around the prompt (Z-Image, FLUX.2 klein), split
at the prompt into a prefix and a suffix. The worker registers a ``PromptTokenizer`` per model and
stores the JSON once in Redis under its hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdworker.domain.families import FamilyFacts
from sdworker.domain.prompt_syntax import BREAK, extract_lora_tags, parse_prompt_attention
from sdworker.errors import InvalidRequest


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


@dataclass(frozen=True, slots=True)
class PromptTokenizer:
    """How a model's prompts are counted, as a worker registers it (the JSON travels separately)."""

    sha256: str  # of the tokenizer's ``tokenizers`` JSON
    prefix: str = ""  # the chat template's text before the prompt ("" where the pipeline wraps none)
    suffix: str = ""


def plain_prompt(prompt: str) -> tuple[str, bool]:
    """The text T5 or an LLM encoder gets: A1111's emphasis, ``[...]`` and ``BREAK`` removed (they mean
    nothing to them). Returns (text, whether anything was removed)."""
    runs = parse_prompt_attention(prompt)
    if runs == [(prompt, 1.0)]:
        return prompt, False
    return " ".join(" ".join(t.strip() for t, w in runs if (t, w) != BREAK and t.strip()).split()), True


def counted_texts(facts: FamilyFacts, prompt: str, negative_prompt: str) -> dict[str, str]:
    """Field -> the text its encoder reads: the prompt without LoRA tags and A1111 syntax, and the
    negative prompt where the family uses one."""
    texts = {"prompt": plain_prompt(extract_lora_tags(prompt)[0])[0]}
    if "negative_prompt" not in facts.ignored_fields:
        texts["negative_prompt"] = negative_prompt
    return texts


def check_counts(facts: FamilyFacts, texts: dict[str, str], count: Any) -> None:
    """Refuse a text of ``texts`` that ``count(text)`` finds longer than the family's
    ``max_prompt_tokens`` (the pipeline's ``max_sequence_length``)."""
    limit = LIMITS.get(facts.name)
    if limit is None:
        return
    for field, text in texts.items():
        if not text:
            continue
        tokens = int(count(text))
        if tokens > facts.max_prompt_tokens:
            raise InvalidRequest(
                f"{field}: {tokens} tokens, more than the {facts.max_prompt_tokens} that {facts.label}'s "
                f"{limit.encoder} text encoder reads (the rest would be cut off); shorten it",
                field=field,
            )


class TokenCounter:
    """A registered tokenizer on an API node: counts as the worker's transformers tokenizer does."""

    def __init__(self, tokenizer_json: str, registered: PromptTokenizer) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._prefix, self._suffix = registered.prefix, registered.suffix

    def __call__(self, text: str) -> int:
        return len(self._tokenizer.encode(self._prefix + text + self._suffix).ids)
