"""sdworker as an MCP server: one set of tools, two transports.

- ``/mcp`` on ``serve`` and ``api`` nodes (``api/mcp_mount.py``): Streamable HTTP in stateless mode,
  behind the same API keys and job ownership as the rest of the HTTP API; the tools reach the job
  service in-process (``ServiceGateway``).
- ``sdworker mcp --url URL`` (``mcp/stdio.py``): stdio, for hosts that start a command; it drives a
  remote worker through ``sdworker.client`` (``ClientGateway``) and imports no torch and no server code.

The tools (``mcp/tools.py``) are written once against the small ``Gateway`` protocol
(``mcp/gateway.py``); their input schemas are cut from the HTTP API's own ``JobRequest`` schema, as the
app publishes it in ``/openapi.json``, so a bound or a field changed there changes here too.
"""
