"""A Qwen2-style tokenizer the project builds itself (byte-level BPE with Qwen's chat markers and a
chat template), for the demo models whose text encoder is an LLM (Z-Image: Qwen3; Qwen-Image:
Qwen2.5-VL; FLUX.2 klein: Qwen3). No merges: every byte is a token, which is all a random-weight
encoder needs; the pipelines' own code (chat template, padding, masks) runs unchanged.
"""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen's ChatML template (the parts the pipelines use: roles, generation prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2Tokenizer

    from sdworker.engine.clip_tokenizer import bytes_to_unicode

    vocab = {symbol: i for i, symbol in enumerate(sorted(set(bytes_to_unicode().values())))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return Qwen2Tokenizer(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,  # type: ignore[arg-type]
        bos_token=None, chat_template=CHAT_TEMPLATE, model_max_length=32768,
    )
