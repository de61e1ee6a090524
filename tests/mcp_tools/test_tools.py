"""The MCP tools over both transports, with the official ``mcp`` client SDK against a real uvicorn:
``/mcp`` (Streamable HTTP, stateless) and ``sdworker mcp --url`` (stdio, client-only)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.api.helpers import png_b64
from tests.mcp_tools.conftest import KEY, OTHER_KEY, Worker
from tests.mcp_tools.session import http_client, inline_image, stdio_client, summary_of, text_of

pytestmark = pytest.mark.live  # a real uvicorn (conftest.py): Streamable HTTP responses must stream

Connect = Callable[..., AbstractAsyncContextManager[Client]]


def _http(worker: Worker, key: str | None, mode: str = "auto") -> AbstractAsyncContextManager[Client]:
    return http_client(worker.mcp_url, key, mode)


def _stdio(worker: Worker, key: str | None, mode: str = "auto") -> AbstractAsyncContextManager[Client]:
    return stdio_client(worker.url, key, mode)


@pytest.fixture(params=["http", "stdio"])
def connect(request: pytest.FixtureRequest) -> Connect:
    return _http if request.param == "http" else _stdio


# The SDK's client is entered and left in one task (anyio cancel scopes): each test opens its own.


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # the 2026-07-28 protocol, and the 2025-11-25 handshake
async def test_lists_the_five_tools_with_schemas_from_the_http_api(worker: Worker, connect: Connect, mode: str) -> None:
    async with connect(worker, KEY, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"generate_image", "edit_image", "list_models", "get_job", "cancel_job"}
    for tool in tools.values():
        assert tool.description
        if mode == "legacy":  # tasks exist in 2025-11-25 only: declared forbidden there
            assert tool.execution is not None and tool.execution.task_support == "forbidden"
    generate = tools["generate_image"].input_schema
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
        served = (await http.get(worker.url + "/openapi.json")).json()  # with this server's own bounds
    api = served["components"]["schemas"]["JobRequest"]["properties"]
    assert generate["required"] == ["prompt"]
    api_steps = next(o for o in api["steps"].get("anyOf", [api["steps"]]) if o.get("type") == "integer")
    assert generate["properties"]["steps"]["maximum"] == api_steps["maximum"]  # null: the family's default
    assert generate["properties"]["width"]["multipleOf"] == 8
    lora = generate["properties"]["loras"]["items"]
    assert set(lora["properties"]) == {"path", "strength"}  # $ref inlined from the API's LoraRequest
    assert "512 px" in str(tools["generate_image"].description)
    assert {"image", "mask", "strength"} <= set(tools["edit_image"].input_schema["properties"])


async def test_generate_sends_progress_before_the_result(worker: Worker, connect: Connect) -> None:
    async with connect(worker, KEY) as client:
        await _generate_with_progress(client, worker)


async def _generate_with_progress(client: Client, worker: Worker) -> None:
    seen: list[tuple[str, Any]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(("progress", (value, total, message)))

    result = await client.call_tool(
        "generate_image", {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 11},
        progress_callback=progress,
    )
    seen.append(("result", result))
    assert not result.is_error, text_of(result)
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "result" and "progress" in kinds
    steps = [value for kind, value in seen if kind == "progress"]
    assert steps[-1][:2] == (4, 4)
    summary = summary_of(result)
    assert summary["seed"] == 11 and (summary["width"], summary["height"]) == (64, 64)
    assert summary["parameters"]["prompt"] == "a lighthouse"
    links = [c for c in result.content if isinstance(c, types.ResourceLink)]
    assert len(links) == 1 and links[0].mime_type == "image/png"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        png = await http.get(str(links[0].uri))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert inline_image(result).size == (64, 64)  # small images are not upscaled
    assert (await worker.job(summary["job_id"]))["status"] == "completed"


async def test_cancelling_the_request_cancels_the_job(worker: Worker, connect: Connect) -> None:
    async with connect(worker, KEY) as client:
        await _cancel(client, worker)


async def _cancel(client: Client, worker: Worker) -> None:
    job_ids: list[str] = []
    started = asyncio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if message and (found := re.search(r"job (\S+):", message)):
            job_ids.append(found.group(1))
            started.set()

    call = asyncio.create_task(
        client.call_tool("generate_image", {"prompt": "a long one", "steps": 150, "width": 64, "height": 64},
                         progress_callback=progress)
    )
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({call, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert started.is_set() and not call.done(), call.result() if call.done() else "no progress in 30 s"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    job = await worker.wait_status(job_ids[0], "cancelled")
    assert job["step"] is not None and int(str(job["step"])) < 150


async def test_a_bad_argument_is_a_tool_error_with_the_api_code(worker: Worker, connect: Connect) -> None:
    async with connect(worker, KEY) as client:
        await _bad_arguments(client)


async def _bad_arguments(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "a cat", "steps": 0})
    assert result.is_error
    assert text_of(result).startswith("invalid_request: steps")
    assert result.structured_content == {
        "error": {"code": "invalid_request", "message": text_of(result).removeprefix("invalid_request: "),
                  "field": "steps"}
    }
    unknown = await client.call_tool("generate_image", {"prompt": "a cat", "sampler": "euler"})
    assert unknown.is_error and text_of(unknown).startswith("invalid_request: sampler: unknown argument")
    missing = await client.call_tool("get_job", {"job_id": "no-such-job"})
    assert missing.is_error and text_of(missing).startswith("job_not_found:")


async def test_list_models_and_jobs_of_another_key(worker: Worker, connect: Connect) -> None:
    async with connect(worker, KEY) as client:
        await _models_and_owners(client, worker, connect)


async def _models_and_owners(client: Client, worker: Worker, connect: Connect) -> None:
    models = await client.call_tool("list_models", {})
    assert not models.is_error
    assert models.structured_content is not None and models.structured_content["models"]
    done = await client.call_tool("generate_image", {"prompt": "mine", "steps": 2, "width": 64, "height": 64})
    job_id = summary_of(done)["job_id"]
    assert summary_of(await client.call_tool("get_job", {"job_id": job_id}))["status"] == "completed"
    async with connect(worker, OTHER_KEY) as other:
        theirs = await other.call_tool("get_job", {"job_id": job_id})
        assert theirs.is_error and text_of(theirs).startswith("job_not_found:")


async def test_edit_image_runs_img2img_and_inpainting(worker: Worker, connect: Connect) -> None:
    async with connect(worker, KEY) as client:
        await _edit(client)


async def _edit(client: Client) -> None:
    result = await client.call_tool(
        "edit_image", {"image": png_b64(64, 64), "prompt": "make it blue", "steps": 3, "strength": 0.5}
    )
    assert not result.is_error, text_of(result)
    assert summary_of(result)["parameters"]["operation"] == "image_transform"
    mask = await client.call_tool(
        "edit_image", {"image": png_b64(64, 64), "mask": png_b64(64, 64, "L"), "prompt": "a hat", "steps": 2}
    )
    assert not mask.is_error and summary_of(mask)["parameters"]["operation"] == "image_inpaint"
    # On an edit model (listed with its variant), the image is the reference of the model's edit job.
    edit = await client.call_tool("edit_image", {"image": png_b64(64, 64), "prompt": "make it red", "steps": 2,
                                                 "model": "kontext", "strength": 0.5})
    assert not edit.is_error, text_of(edit)
    parameters = summary_of(edit)["parameters"]
    assert parameters["operation"] == "image_edit" and parameters["model"] == "kontext", parameters
    klein = await client.call_tool("edit_image", {"image": png_b64(64, 64), "prompt": "make it red", "steps": 2,
                                                  "model": "klein"})
    assert not klein.is_error, text_of(klein)
    assert summary_of(klein)["parameters"]["operation"] == "image_edit"  # FLUX.2 edits (by its architecture)


async def test_without_the_key(worker: Worker, connect: Connect) -> None:
    if connect is _http:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(worker.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert answer.json()["code"] == "unauthorized"
        statuses: list[int] = []
        with pytest.raises(Exception):  # noqa: B017 - the SDK reports it as an MCPError in a group
            async with http_client(worker.mcp_url, None, statuses=statuses) as session:
                await session.list_tools()
        assert statuses and set(statuses) == {401}
    else:  # stdio: the host starts us; the worker refuses each job without the key, as a tool error
        async with connect(worker, None) as session:
            result = await session.call_tool("generate_image", {"prompt": "a cat", "steps": 2})
            assert result.is_error and text_of(result).startswith("unauthorized:")


async def test_stdio_names_a_worker_it_cannot_reach() -> None:
    from tests.live.server import free_port

    async with stdio_client(f"http://127.0.0.1:{free_port()}", KEY) as session:
        with pytest.raises(MCPError, match=r"cannot reach|connection"):
            await session.list_tools()
        result = await session.call_tool("get_job", {"job_id": "x"})
        assert result.is_error and text_of(result).startswith("connection_lost:")
