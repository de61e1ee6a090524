"""Job routes on the real app with the FakeEngine: lifecycle, streams and replay, queue limits,
cancellation, readiness, failures."""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import datetime

import httpx
import pytest
from PIL import Image

from sdworker.engine.fake import FakeEngine

from .helpers import SMALL, parse_sse, png_b64, running_app


async def test_submit_status_list_and_image() -> None:
    async with running_app() as app:
        response = await app.client.post("/v1/jobs", json={"operation": "ImageGeneration", "prompt": "cat", **SMALL})
        assert response.status_code == 202
        body = response.json()
        job_id = body["job_id"]
        assert body["sse_url"] == f"/v1/jobs/{job_id}/stream"
        status = await app.wait_status(job_id, "completed")
        assert status["step"] == status["total"] == 3
        assert status["parameters"]["prompt"] == "cat" and status["parameters"]["operation"] == "image_generation"
        assert status["seed"] == 7 and status["finished_at"] >= status["started_at"] >= status["created_at"]
        started, finished, created = (
            datetime.fromisoformat(status[key]).timestamp() for key in ("started_at", "finished_at", "created_at")
        )
        assert status["queue_seconds"] == pytest.approx(started - created, abs=0.002)
        assert status["run_seconds"] == pytest.approx(finished - started, abs=0.002)
        image = await app.client.get(f"/v1/jobs/{job_id}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)
        listed = (await app.client.get("/v1/jobs")).json()["jobs"]
        assert [j["job_id"] for j in listed] == [job_id] and listed[0]["status"] == "completed"
        second = await app.submit()
        newest = (await app.client.get("/v1/jobs", params={"limit": 1})).json()["jobs"]
        assert [j["job_id"] for j in newest] == [second]
        assert (await app.client.get("/v1/jobs", params={"limit": 0})).status_code == 422


async def test_stream_replay_last_event_id_and_204_after_the_end() -> None:
    async with running_app() as app:
        job_id = await app.submit(steps=4, preview={"every": 2})
        await app.wait_status(job_id, "completed")
        full = await app.client.get(f"/v1/jobs/{job_id}/stream")
        assert full.status_code == 200 and full.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(full.text)
        ids = [e[0] for e in events]
        assert ids == list(range(1, len(ids) + 1))
        assert [e[1] for e in events][:2] == ["queued", "started"] and events[-2][1] == "complete"
        assert events[-1][1:] == ("end", "[DONE]")  # rbee's completion marker closes every stream
        assert all(e[2]["type"] == e[1] for e in events[:-1])
        for after in range(0, ids[-1]):
            replay = parse_sse(
                (await app.client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": str(after)})).text
            )
            assert [e[0] for e in replay] == ids[after:]
        via_query = await app.client.get(f"/v1/jobs/{job_id}/stream", params={"last_event_id": ids[-3]})
        assert [e[1] for e in parse_sse(via_query.text)] == ["complete", "end"]
        done = await app.client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": str(ids[-1])})
        assert done.status_code == 204


async def test_full_queue_answers_429_with_retry_after() -> None:
    gate = threading.Event()
    async with running_app(FakeEngine(load_gate=gate), wait_ready=False, max_queue=2) as app:
        assert (await app.client.get("/ready")).status_code == 503
        first = await app.submit()
        await app.submit()
        full = await app.client.post("/v1/jobs", json={"prompt": "x", **SMALL})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        # a full queue refuses before decoding images
        img = await app.client.post(
            "/v1/jobs", json={"prompt": "x", "operation": "image_transform", "input_image": "!!not base64!!", **SMALL}
        )
        assert img.status_code == 429
        assert (await app.client.delete(f"/v1/jobs/{first}")).json()["status"] == "cancelled"
        third = await app.submit()
        assert (await app.status(third))["queue_position"] == 2
        gate.set()
        await app.wait_status(third, "completed")


async def test_cancel_queued_and_running_jobs() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate, step_seconds=0.02)
    async with running_app(engine, wait_ready=False) as app:
        running = await app.submit(steps=150)
        queued = await app.submit(steps=3)
        assert (await app.status(queued))["queue_position"] == 2
        gate.set()
        await app.wait_status(running, "running")
        assert (await app.status(queued))["queue_position"] == 1
        cancelled = (await app.client.delete(f"/v1/jobs/{queued}")).json()
        assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
        events = parse_sse((await app.client.get(f"/v1/jobs/{queued}/stream")).text)
        assert events[-2][1] == "error" and events[-2][2]["code"] == "cancelled"
        assert events[-1][1:] == ("end", "[CANCELLED]")
        assert "started" not in [e[1] for e in events]

        stream = asyncio.create_task(app.client.get(f"/v1/jobs/{running}/stream"))
        await app.wait_for(lambda: _has_watchers(app.client, running))
        answer = (await app.client.delete(f"/v1/jobs/{running}")).json()
        assert answer["cancel_requested"] is True
        final = await app.wait_status(running, "cancelled", timeout=2.0)
        assert final["step"] < 150 and final["error"]["code"] == "cancelled"
        events = parse_sse((await stream).text)
        assert events[-2][1] == "error" and events[-2][2]["code"] == "cancelled"
        assert events[-1][1:] == ("end", "[CANCELLED]")
        assert engine.generate_calls == 1  # the cancelled queued job never ran
        again = await app.client.delete(f"/v1/jobs/{running}")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent
        assert (await app.client.get(f"/v1/jobs/{running}/image")).status_code == 409


async def _has_watchers(client: httpx.AsyncClient, job_id: str) -> bool:
    return bool((await client.get(f"/v1/jobs/{job_id}")).json()["watchers"] > 0)


async def test_ready_is_503_while_loading_and_when_the_model_fails() -> None:
    gate = threading.Event()
    async with running_app(FakeEngine(load_gate=gate), wait_ready=False) as app:
        assert (await app.client.get("/health")).json()["status"] == "healthy"
        loading = await app.client.get("/ready")
        assert loading.status_code == 503 and loading.json()["ready"] is False and loading.json()["reason"]
        assert loading.headers["retry-after"] == "2"  # a 503 says when to ask again
        gate.set()
        await app.wait_for(lambda: _ready(app.client))
        assert (await app.client.get("/ready")).json()["ready"] is True
    async with running_app(FakeEngine(load_error="no such model: /x"), wait_ready=False) as app:
        await app.wait_for(lambda: _reason_contains(app.client, "no such model"))
        refused = await app.client.post("/v1/jobs", json={"prompt": "x", **SMALL})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert refused.headers["retry-after"] == "2"
        assert (await app.client.get("/health")).status_code == 200


async def test_a_model_that_fails_to_load_is_logged_and_offered_by_no_door(caplog: pytest.LogCaptureFixture) -> None:
    # Open WebUI's Verify lists sd-models and reads options: a model every job would wait on forever
    # must not be there; /ready says why, the log says it at error level, rbee's beat says "error".
    with caplog.at_level("ERROR", logger="sdworker.jobs.runner"):
        async with running_app(FakeEngine(load_error="no such model: /x"), wait_ready=False) as app:
            await app.wait_for(lambda: _reason_contains(app.client, "no such model"))
            # (A fleet's API node reads the workers' state at most a second late.)
            await app.wait_for(lambda: _no_models(app.client))
            assert (await app.client.get("/sdapi/v1/sd-models")).json() == []
            options = await app.client.get("/sdapi/v1/options")
            assert options.status_code == 503 and "no such model" in options.text
            assert app.app.state.node.worker_status() == "error"  # what the heartbeat sends
    assert any(r.levelname == "ERROR" and "no such model" in r.getMessage() for r in caplog.records)


async def _no_models(client: httpx.AsyncClient) -> bool:
    return (await client.get("/v1/models")).json()["data"] == []


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/ready")).status_code == 200


async def _reason_contains(client: httpx.AsyncClient, text: str) -> bool:
    response = await client.get("/ready")
    return response.status_code == 503 and text in (response.json()["reason"] or "")


async def test_engine_failure_is_an_error_event_and_the_service_goes_on() -> None:
    async with running_app(FakeEngine(fail_at_step=2)) as app:
        job_id = await app.submit(steps=4)
        status = await app.wait_status(job_id, "failed")
        assert status["error"]["code"] == "generation_failed"
        events = parse_sse((await app.client.get(f"/v1/jobs/{job_id}/stream")).text)
        assert events[-2][1] == "error" and events[-2][2]["code"] == "generation_failed"
        assert events[-1][1:] == ("end", f"[ERROR] {events[-2][2]['message']}")
        app.engine.fail_at_step = None
        assert (await app.wait_status(await app.submit(), "completed", "failed"))["status"] == "completed"


async def test_img2img_size_from_image_inpaint_and_several_images() -> None:
    async with running_app() as app:
        body = {
            "prompt": "x",
            "operation": "image_transform",
            "input_image": png_b64(100, 77),
            "steps": 4,
            "strength": 0.5,
        }
        job_id = (await app.client.post("/v1/jobs", json=body)).json()["job_id"]
        status = await app.wait_status(job_id, "completed")
        assert (status["width"], status["height"]) == (96, 72)  # rounded down to multiples of 8
        assert status["total"] == 2  # strength 0.5 of 4 steps
        inpaint = {
            "prompt": "x",
            "operation": "ImageInpaint",
            "init_image": png_b64(64, 64),
            "mask_image": png_b64(64, 64, "L"),
            "steps": 2,
        }
        job_id = (await app.client.post("/v1/jobs", json=inpaint)).json()["job_id"]
        assert (await app.wait_status(job_id, "completed"))["width"] == 64
        job_id = await app.submit(n=3, seed=10)
        status = await app.wait_status(job_id, "completed")
        assert status["seeds"] == [10, 11, 12] and len(status["images"]) == 3
        events = parse_sse((await app.client.get(f"/v1/jobs/{job_id}/stream")).text)
        complete = events[-2][2]
        assert len(complete["images"]) == 3 and complete["image"] == complete["images"][0]
        third = await app.client.get(f"/v1/jobs/{job_id}/image", params={"index": 2})
        assert third.status_code == 200 and third.content != (await app.client.get(f"/v1/jobs/{job_id}/image")).content


async def test_info_metrics_and_docs() -> None:
    async with running_app() as app:
        info = (await app.client.get("/v1/info")).json()
        assert info["model"]["model"] == "fake" and "euler" in info["model"]["schedulers"]
        assert info["limits"]["max_queue"] == 32 and info["preview_defaults"]["format"] == "jpeg"
        job_id = await app.submit()
        await app.wait_status(job_id, "completed")
        metrics = (await app.client.get("/metrics")).text
        for name in (
            "sdworker_queue_depth",
            'sdworker_jobs_finished_total{outcome="completed"} 1.0',
            "sdworker_step_seconds_bucket",
            "sdworker_preview_encode_seconds",
            "sdworker_sse_watchers",
            "sdworker_preview_decode_seconds",
        ):
            assert name in metrics, name
        assert (await app.client.get("/docs")).status_code == 200
        assert (await app.client.get("/openapi.json")).json()["paths"]["/v1/jobs"]
        assert "access-control-allow-origin" not in (await app.client.get("/health")).headers  # CORS off by default
        # The page, CORS and the rest of the edge: tests/api/test_edge.py.


async def test_finished_jobs_and_images_are_forgotten_after_the_ttl() -> None:
    async with running_app(result_ttl_seconds=0.2) as app:
        job_id = await app.submit()
        await app.wait_status(job_id, "completed")

        async def forgotten() -> bool:
            return (await app.client.get(f"/v1/jobs/{job_id}")).status_code == 404

        await app.wait_for(forgotten, timeout=5.0)  # the housekeeping task runs every second
        assert (await app.client.get(f"/v1/jobs/{job_id}/image")).status_code == 404
        assert (await app.client.get(f"/v1/jobs/{job_id}/stream")).status_code == 404
        assert (await app.client.get("/v1/jobs")).json()["jobs"] == []


async def test_an_unexpected_error_is_a_logged_500_and_the_service_keeps_serving() -> None:
    async with running_app() as app:

        async def broken() -> None:
            raise RuntimeError("a bug of ours")

        app.app.add_api_route("/test-only/broken", broken)
        response = await app.client.get("/test-only/broken")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error" and "bug" not in response.text
        assert (await app.wait_status(await app.submit(), "completed"))["status"] == "completed"


async def test_the_job_list_is_paged_newest_first() -> None:
    async with running_app() as app:
        ids = [await app.submit(seed=n) for n in range(5)]
        seen: list[str] = []
        url: str | None = "/v1/jobs?limit=2"
        pages = 0
        while url is not None:
            answer = (await app.client.get(url)).json()
            seen += [job["job_id"] for job in answer["jobs"]]
            url = answer.get("next")
            pages += 1
        assert seen == list(reversed(ids)) and pages == 3
        assert (await app.client.get("/v1/jobs?before=" + "x" * 65)).status_code == 422
