"""MCP clients of the official SDK for the tests: Streamable HTTP to /mcp, and stdio through
``sdworker mcp --url`` (a subprocess), plus what both transports' tests check."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.live.server import ROOT


@asynccontextmanager
async def http_client(
    url: str, key: str | None, mode: str = "auto", statuses: list[int] | None = None
) -> AsyncIterator[Client]:
    """``statuses`` collects the HTTP status of every answer the SDK's client got."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    async with (
        httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(60, read=120), event_hooks={"response": [record]}
        ) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@asynccontextmanager
async def stdio_client(worker_url: str, key: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    env = {k: v for k, v in os.environ.items() if k != "SDWORKER_API_KEY"}
    if key:
        env["SDWORKER_API_KEY"] = key
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "sdworker", "mcp", "--url", worker_url], env=env, cwd=ROOT
    )
    async with Client(params, mode=mode) as client:
        yield client


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def summary_of(result: types.CallToolResult) -> dict[str, Any]:
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    return dict(json.loads(texts[-1]))


def inline_image(result: types.CallToolResult) -> Image.Image:
    images = [c for c in result.content if isinstance(c, types.ImageContent)]
    assert len(images) == 1, result
    image = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    image.load()
    return image
