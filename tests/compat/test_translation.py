"""The compat doors' translation and error shapes, on the real app with the FakeEngine (no server)."""

from __future__ import annotations

import pytest
from api.helpers import running_app

from sdworker.api.compat.a1111_samplers import choose
from sdworker.engine.fake import FakeEngine

ALL = ("euler", "euler_a", "heun", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde", "lms", "pndm", "unipc")


@pytest.mark.parametrize(
    ("sampler", "schedule", "ours", "label"),
    [
        (None, None, "euler", "Automatic"),  # A1111's API default: sampler_index "Euler"
        ("Euler a", "automatic", "euler_a", "Automatic"),
        ("DPM++ 2M", None, "dpmpp_2m_karras", "Automatic"),  # v1.9+: DPM++ 2M's own schedule is Karras
        ("DPM++ 2M", "Uniform", "dpmpp_2m", "Uniform"),
        ("DPM++ 2M Karras", None, "dpmpp_2m_karras", "Automatic"),  # combined legacy name
        ("dpm++ 2m karras", "Automatic", "dpmpp_2m_karras", "Automatic"),
        ("k_dpmpp_2m_ka", None, "dpmpp_2m_karras", "Automatic"),
        ("PLMS", "karras", "pndm", "Automatic"),  # no Karras PLMS: its own, and said so
        ("Nonsense 3000", None, "euler", "Automatic"),
    ],
)
def test_sampler_names(sampler: str | None, schedule: str | None, ours: str, label: str) -> None:
    choice = choose(sampler, schedule, ALL)
    assert (choice.scheduler, choice.schedule) == (ours, label)
    assert bool(choice.ignored) == (sampler in ("PLMS", "Nonsense 3000"))


async def test_a_failed_job_is_a_5xx_in_each_dialect_and_openai_is_told_not_to_retry() -> None:
    async with running_app(FakeEngine(fail_at_step=1)) as app:
        openai = await app.client.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64"})
        assert openai.status_code == 500 and openai.headers["x-should-retry"] == "false"
        assert openai.json()["error"] == {
            "message": "the fake engine failed at step 1", "type": "server_error", "param": None,
            "code": "generation_failed",
        }
        a1111 = await app.client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64})
        assert a1111.status_code == 500 and a1111.json()["error"] == "generation_failed"
        assert "x-should-retry" not in a1111.headers
        stream = await app.client.post(
            "/v1/images/generations", json={"prompt": "a cat", "size": "64x64", "stream": "true"}
        )
        assert stream.status_code == 200
        assert [line for line in stream.text.splitlines() if line.startswith("event:")] == ["event: error"]
        assert '"type":"error","error":{"message":"the fake engine failed at step 1"' in stream.text


async def test_openai_errors_name_the_param_and_native_errors_keep_their_shape() -> None:
    async with running_app(FakeEngine()) as app:
        bad = await app.client.post("/v1/images/generations", json={"prompt": "a cat", "quality": "ultra"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "quality"
        assert bad.json()["error"]["type"] == "invalid_request_error"
        # multipart, as the SDK sends it (a urlencoded form is refused at the edge: 415)
        missing = await app.client.post("/v1/images/edits", files={"prompt": (None, "a cat")})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "image"
        native = await app.client.post("/v1/jobs", json={"prompt": "a cat", "steps": 0})
        assert native.status_code == 422 and native.json()["error"]["field"] == "steps"


async def test_url_answers_use_the_public_url_and_unknown_models_run_on_the_default() -> None:
    async with running_app(FakeEngine(), public_url="https://sd.example.org/worker/") as app:
        body = {"prompt": "a cat", "size": "64x64", "response_format": "url", "model": "dall-e-3", "n": 2}
        answer = (await app.client.post("/v1/images/generations?api-version=2024-02-01", json=body)).json()
        job_id = answer["data"][0]["url"].split("/")[-2]
        assert [item["url"] for item in answer["data"]] == [
            f"https://sd.example.org/worker/v1/jobs/{job_id}/image?index={i}" for i in range(2)
        ]
        assert answer["model"] == "demo"


# Written out, not read from QUALITY_STEPS: a changed step count must fail here.
STEPS_BY_QUALITY = {"low": 12, "medium": 25, "high": 40, "xhigh": 50, "max": 60, "auto": 25, "standard": 25, "hd": 40}


async def test_each_quality_without_steps_runs_its_step_count() -> None:
    async with running_app(FakeEngine()) as app:
        for quality, steps in [*STEPS_BY_QUALITY.items(), (None, 25)]:
            body = {"prompt": "a cat", "size": "64x64", **({"quality": quality} if quality else {})}
            answer = await app.client.post("/v1/images/generations", json=body)
            assert answer.status_code == 200, answer.text
            newest = (await app.client.get("/v1/jobs", params={"limit": 1})).json()["jobs"][0]
            detail = (await app.client.get(f"/v1/jobs/{newest['job_id']}")).json()
            assert detail["parameters"]["steps"] == steps, quality
