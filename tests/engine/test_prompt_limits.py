"""Prompt lengths: a prompt longer than a transformer family's main text encoder reads (the pipeline's
``max_sequence_length``) is refused at submit naming the field, counted as the pipeline's own tokenizer
counts it (so exactly the prompts diffusers would cut are refused); CLIP families take any length."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))


def _words(count: int) -> str:
    return " ".join(["cat"] * count)


@pytest.mark.parametrize(("model", "subfolder", "limit"), [("demo-flux1", "tokenizer_2", 512),
                                                          ("demo-sd3", "tokenizer_3", 256)])
def test_t5_limit_is_where_diffusers_would_truncate(
    engine: DiffusersEngine, demo_bundle: Path, model: str, subfolder: str, limit: int
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_bundle / "models" / model / subfolder)
    fits, over = _words(limit - 1), _words(limit)  # T5 adds </s>: limit - 1 words are limit tokens
    assert len(tokenizer(fits).input_ids) == limit
    cut = tokenizer(over, max_length=limit, truncation=True).input_ids  # what the pipeline does
    assert len(cut) < len(tokenizer(over).input_ids)
    engine.validate_request(GenerationRequest(fits, model=model))
    with pytest.raises(InvalidRequest, match=rf"prompt: {limit + 1} tokens, more than the {limit}") as caught:
        engine.validate_request(GenerationRequest(over, model=model))
    assert caught.value.field == "prompt"


def test_negative_prompt_is_checked_where_the_family_uses_it(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        engine.validate_request(GenerationRequest("a cat", negative_prompt=_words(300), model="demo-sd3"))
    assert caught.value.field == "negative_prompt"
    # FLUX.1 ignores the negative prompt (a warning says so): its length does not matter.
    engine.validate_request(GenerationRequest("a cat", negative_prompt=_words(900), model="demo-flux1"))


def test_llm_encoders_count_the_chat_template_and_clip_families_take_any_length(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest, match="Qwen3") as caught:
        engine.validate_request(GenerationRequest(_words(130), model="demo-zimage"))  # 4 byte tokens a word
    assert caught.value.field == "prompt"
    engine.validate_request(GenerationRequest(_words(120), model="demo-zimage"))
    with pytest.raises(InvalidRequest, match=r"FLUX\.2"):
        engine.validate_request(GenerationRequest(_words(130), model="demo-flux2"))
    engine.validate_request(GenerationRequest(_words(250), model="demo-qwenimage"))  # 1000 tokens of 1024
    engine.validate_request(GenerationRequest(_words(900), model="demo-sd15"))  # A1111 chunks: no limit


@pytest.mark.parametrize("model", ["demo-flux1", "demo-sd3", "demo-zimage", "demo-qwenimage", "demo-flux2"])
def test_what_a_worker_registers_counts_as_the_engine_counts(engine: DiffusersEngine, model: str) -> None:
    """An API node's count (``TokenCounter``: the registered tokenizers JSON and chat template text)
    refuses exactly where the engine does."""
    from sdworker.domain.families import family_facts
    from sdworker.domain.prompt_length import TokenCounter, check_counts

    registered, tokenizer_json = engine.prompt_tokenizers()[model]
    counter = TokenCounter(tokenizer_json, registered)
    facts = family_facts(engine.library.model(model).family)
    for words in range(0, 1100, 7):
        text = _words(words) + (" and a red barn, at dusk" if words % 2 else "")
        engine_refuses = api_refuses = False
        try:
            engine.validate_request(GenerationRequest(text or "x", model=model))
        except InvalidRequest:
            engine_refuses = True
        try:
            check_counts(facts, {"prompt": text or "x"}, counter)
        except InvalidRequest:
            api_refuses = True
        assert engine_refuses == api_refuses, (model, words)
