"""A fleet's API node refuses a prompt longer than the model's text encoder reads at submit, counted as
the worker's engine counts it (``domain.prompt_length``): the workers register each model's tokenizer,
and the API node, which has neither the model's files nor transformers, counts with it. A refusal here
is a 422 answer to the POST, not a job that fails later on a worker."""

from __future__ import annotations

import httpx
import pytest

from .conftest import Fleet
from .stream import until

pytestmark = pytest.mark.live

SMALL = {"width": 64, "height": 64, "steps": 1}


def _words(count: int) -> str:
    return " ".join(["cat"] * count)


async def test_the_api_node_refuses_a_long_prompt_as_the_worker_would(fleet: Fleet) -> None:
    fleet.wait_workers(2)
    a = fleet.apis[0].url
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(**body: object) -> httpx.Response:
            return await client.post(f"{a}/v1/jobs", json={**SMALL, **body})

        async def registered() -> bool:  # a worker lists its tokenizers with its library, after loading
            response = await post(prompt=_words(512), model="demo-flux1")
            return response.status_code == 422

        await until(registered, what="the API node to count FLUX.1 prompts")
        # T5 adds </s>: 511 words are 512 tokens, the most FLUX.1's pipeline reads; 512 words are cut.
        refused = await post(prompt=_words(512), model="demo-flux1")
        error = refused.json()["error"]
        assert error["field"] == "prompt" and "513 tokens, more than the 512" in error["message"], error
        accepted = await post(prompt=_words(511), model="demo-flux1")
        assert accepted.status_code == 202, accepted.text
        # SD 3.5 reads the negative prompt too (256 T5 tokens); FLUX.1 ignores it, so any length passes.
        refused = await post(prompt="a cat", negative_prompt=_words(300), model="demo-sd3")
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "negative_prompt", refused.text
        ignored = await post(prompt="a cat", negative_prompt=_words(900), model="demo-flux1")
        assert ignored.status_code == 202, ignored.text
        # Z-Image's Qwen3 counts the pipeline's chat template around the prompt (the same bounds as the
        # engine's test: 130 words refused, 120 accepted); A1111 syntax is removed before counting.
        refused = await post(prompt=_words(130), model="demo-zimage")
        assert refused.status_code == 422 and "Qwen3" in refused.json()["error"]["message"], refused.text
        accepted = await post(prompt="(" + _words(120) + ":1.2)", model="demo-zimage")
        assert accepted.status_code == 202, accepted.text
        # CLIP families take any length (A1111's chunks).
        accepted = await post(prompt=_words(900), model="demo-sd15")
        assert accepted.status_code == 202, accepted.text
