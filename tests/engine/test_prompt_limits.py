"""Prompt lengths: a prompt longer than a transformer family's main text encoder reads (the pipeline's
``max_sequence_length``) is refused at submit naming the field, counted as the pipeline's own tokenizer
counts it (so exactly the prompts diffusers would cut are refused); CLIP families take any length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _slow_qwen_tokenizer(source: Path, folder: Path) -> None:
    """The demo Qwen tokenizer as slow files only (``vocab.json``, ``merges.txt``, no ``tokenizer.json``)."""
    import json
    import shutil

    model = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(model["model"]["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["model"]["merges"]]
    (folder / "merges.txt").write_text("".join(f"{m}\n" for m in merges), encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("backend", None)
    fields = ("content", "lstrip", "rstrip", "normalized", "single_word", "special")
    config["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in fields} for t in model["added_tokens"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copy(source / "chat_template.jinja", folder)


def _refusals(check: Any) -> list[bool]:
    refused = []
    for words in range(100, 140):
        try:
            check(_words(words) + (" and a red barn" if words % 2 else ""))
            refused.append(False)
        except InvalidRequest:
            refused.append(True)
    return refused


def test_a_tokenizer_of_slow_files_is_registered_and_counts_as_the_worker(demo_bundle: Path, tmp_path: Path) -> None:
    """transformers converts slow files to its tokenizers backend at load, so a worker whose Qwen
    tokenizer has no ``tokenizer.json`` still registers one that the API node counts with exactly."""
    from sdworker.domain.families import family_facts
    from sdworker.domain.prompt_length import TokenCounter, check_counts
    from sdworker.engine.prompt_limits import PromptLimits

    _slow_qwen_tokenizer(demo_bundle / "models" / "demo-zimage" / "tokenizer", tmp_path / "tokenizer")
    assert not (tmp_path / "tokenizer" / "tokenizer.json").exists()
    facts, limits = family_facts("zimage"), PromptLimits()
    exported = limits.export(facts, str(tmp_path))
    assert exported is not None
    counter = TokenCounter(exported[1], exported[0])
    worker = _refusals(lambda text: limits.check(facts, str(tmp_path), {"prompt": text}))
    api = _refusals(lambda text: check_counts(facts, {"prompt": text}, counter))
    assert worker == api and True in worker and False in worker  # the boundary (~125 words) lies inside


def test_a_tokenizer_without_a_tokenizers_backend_is_checked_by_the_worker_only(tmp_path: Path) -> None:
    """A pure-Python tokenizer (CTRL's here) has nothing an API node could count with: nothing is
    registered, and the worker's own check still refuses a long prompt."""
    import json

    from sdworker.domain.families import family_facts
    from sdworker.engine.prompt_limits import PromptLimits

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({"UNK": 0, "cat": 1, "a": 2, "red": 3, "barn": 4, "and": 5}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CTRLTokenizer", "unk_token": "UNK"}))
    facts, limits = family_facts("zimage"), PromptLimits()
    assert limits.export(facts, str(tmp_path)) is None
    limits.check(facts, str(tmp_path), {"prompt": "a red barn"})
    with pytest.raises(InvalidRequest, match=r"prompt: \d+ tokens, more than the 512"):
        limits.check(facts, str(tmp_path), {"prompt": _words(600)})
