"""The MCP server object both transports serve: ``tools/list`` and ``tools/call`` over a gateway.

``gateway_for`` picks the gateway of one request: on ``/mcp`` it carries the caller's identity (the
owner the API key maps to), so a tool sees and cancels only the caller's jobs, as the HTTP API does;
on stdio it is the one ``ClientGateway``. Input validation is left to the HTTP API's own rules
(no ``get_tool_input_schema`` is given, so the SDK does not check arguments first), so a bad argument comes back as a
tool error naming the field and the allowed range, with the API's ``code``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from sdworker import __version__
from sdworker.mcp.gateway import Gateway, ToolError
from sdworker.mcp.tools import ToolRunner, tool_error, tool_list

INSTRUCTIONS = (
    "sdworker generates images with Stable Diffusion. Call list_models to see the models and LoRAs, "
    "generate_image to make an image from a prompt, edit_image to change one. A job takes seconds to "
    "minutes; its id is in every result, for get_job and cancel_job."
)


def build_server(gateway_for: Callable[[ServerRequestContext[Any]], Gateway], *, local_files: bool) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            openapi = await gateway_for(ctx).openapi()
            return types.ListToolsResult(tools=tool_list(openapi, local_files=local_files))
        except ToolError as exc:  # e.g. the worker of `sdworker mcp` cannot be reached: say so, with its code
            raise MCPError(types.INTERNAL_ERROR, f"{exc.code}: {exc.message}", {"code": exc.code}) from exc

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        if not isinstance(arguments, dict):
            return tool_error(ToolError("invalid_request", "arguments: expected an object"))

        async def report(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        return await ToolRunner(gateway_for(ctx), report).call(params.name, arguments)

    return Server(
        "sdworker",
        version=__version__,
        title="sdworker",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
