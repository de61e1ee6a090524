"""``sdworker mcp --url URL``: the MCP server on stdio, driving a remote worker through ``sdworker.client``.

For hosts that start a command (Claude Desktop, Cursor, ...). Client-only: no torch, no model, no
server code (an import-linter contract keeps it so); installed with ``pip install 'sdworker[mcp]'``.
The API key comes from ``--api-key`` or ``SDWORKER_API_KEY``; nothing is written to stdout but the
protocol (logs go to stderr).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from sdworker.client import AsyncClient
from sdworker.mcp.gateway import ClientGateway
from sdworker.mcp.server import build_server

KEY_VARIABLE = "SDWORKER_API_KEY"


async def serve_stdio(url: str, api_key: str | None) -> None:
    async with AsyncClient(url, api_key) as client:
        gateway = ClientGateway(client)

        def gateway_for(ctx: ServerRequestContext[Any]) -> ClientGateway:
            return gateway

        server = build_server(gateway_for, local_files=True)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


def run_stdio(url: str, api_key: str | None = None) -> int:
    anyio.run(serve_stdio, url, api_key or os.environ.get(KEY_VARIABLE) or None)
    return 0
