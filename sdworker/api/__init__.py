"""The HTTP layer: FastAPI app factory, wire schemas, routes and SSE framing. Never imports torch."""
