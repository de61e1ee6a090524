"""``AsyncClient``: the asyncio twin of ``Client`` (same calls, awaited; ``events`` is an async
iterator). Kept as a separate, parallel implementation rather than a wrapper, as httpx does: each
side stays plain code with no event loop hidden in a thread."""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any, Unpack

import httpx

from sdworker.client.errors import ConnectionLost, QueueFull
from sdworker.client.events import Event, JobCompleted, SSEDecoder, to_event
from sdworker.client.records import GenerationResult, Health, JobInfo, ServerInfo, Submitted
from sdworker.client.wire import (
    RETRYABLE_STATUSES,
    STREAM_READ_TIMEOUT_SECONDS,
    JobFields,
    Reconnect,
    ReconnectNotice,
    client_headers,
    describe,
    error_from_response,
    job_body,
    job_path,
    result_from_event,
    result_from_info,
    resume_headers,
)


class AsyncClient:
    """An asyncio client of one sdworker; see ``Client`` for what each call does."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_seconds: float = 30.0,
        stream_read_timeout_seconds: float = STREAM_READ_TIMEOUT_SECONDS,
        reconnect: Reconnect | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reconnect = reconnect or Reconnect()
        self._stream_timeout = httpx.Timeout(timeout_seconds, read=stream_read_timeout_seconds)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=client_headers(api_key), timeout=timeout_seconds, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object | TracebackType) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- jobs ----------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        wait_for_queue: bool = False,
        on_queue_full: Callable[[QueueFull], None] | None = None,
        **fields: Unpack[JobFields],
    ) -> AsyncJob:
        """See ``Client.submit``."""
        body = job_body(prompt, fields)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        failures = 0
        while True:
            try:
                response = await self._http.post("/v1/jobs", json=body, headers=headers)
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.reconnect.attempts:
                    raise ConnectionLost(f"cannot submit to {self.base_url}: {describe(exc)}") from exc
                await asyncio.sleep(self.reconnect.delay(failures))
                continue
            if response.is_success:
                return AsyncJob(self, Submitted.from_json(response.json()))
            error = error_from_response(response)
            if not (wait_for_queue and isinstance(error, QueueFull)):
                raise error
            if on_queue_full is not None:
                on_queue_full(error)
            await asyncio.sleep(error.retry_after_seconds)

    async def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        on_reconnect: Callable[[ReconnectNotice], None] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """See ``Client.events``."""
        resume = last_event_id
        seen: set[str] = set()
        failures = 0
        while True:
            try:
                async with self._http.stream(
                    "GET", job_path(job_id, "/stream"), headers=resume_headers(resume), timeout=self._stream_timeout
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        await response.aread()
                        error = error_from_response(response)
                        if response.status_code not in RETRYABLE_STATUSES:
                            raise error
                        problem = describe(error)
                    else:
                        decoder = SSEDecoder()
                        async for line in response.aiter_lines():
                            sse = decoder.feed(line)
                            if sse is None:
                                continue
                            if sse.id is not None:
                                if sse.id in seen:
                                    continue
                                seen.add(sse.id)
                                resume = sse.id
                            failures = 0
                            event = to_event(sse, job_id)
                            yield event
                            if isinstance(event, JobCompleted):
                                return
                        problem = "the stream ended before the job did"
            except httpx.TransportError as exc:
                problem = describe(exc)
                cause: BaseException | None = exc
            else:
                cause = None
            failures += 1
            if failures > self.reconnect.attempts:
                raise ConnectionLost(
                    f"lost the event stream of job {job_id} at {self.base_url} after {failures - 1} reconnects: "
                    f"{problem}"
                ) from cause
            delay = self.reconnect.delay(failures)
            if on_reconnect is not None:
                on_reconnect(ReconnectNotice(job_id, failures, delay, resume, problem))
            await asyncio.sleep(delay)

    async def wait(self, job_id: str, *, on_event: Callable[[Event], None] | None = None) -> GenerationResult:
        """See ``Client.wait``."""
        events = self.events(job_id)
        try:
            async for event in events:
                if on_event is not None:
                    on_event(event)
                if isinstance(event, JobCompleted):
                    return result_from_event(event)
        finally:
            await events.aclose()
        return await self._result_of_finished(job_id)

    async def generate(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        wait_for_queue: bool = False,
        on_event: Callable[[Event], None] | None = None,
        **fields: Unpack[JobFields],
    ) -> GenerationResult:
        """Submit and wait. Cancelled while waiting (task cancelled, Ctrl-C), it cancels the job on
        the server first."""
        job = await self.submit(prompt, idempotency_key=idempotency_key, wait_for_queue=wait_for_queue, **fields)
        try:
            return await self.wait(job.job_id, on_event=on_event)
        except (asyncio.CancelledError, KeyboardInterrupt):
            await self.cancel_quietly(job.job_id)
            raise

    async def cancel(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(await self._json("DELETE", job_path(job_id)))

    async def cancel_quietly(self, job_id: str, timeout_seconds: float = 5.0) -> JobInfo | None:
        try:
            return JobInfo.from_json(await self._json("DELETE", job_path(job_id), timeout=timeout_seconds))
        except Exception:
            return None

    async def get(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(await self._json("GET", job_path(job_id)))

    async def list(self, limit: int = 100) -> builtins.list[JobInfo]:
        body = await self._json("GET", "/v1/jobs", params={"limit": limit})
        return [JobInfo.from_json(job) for job in body["jobs"]]

    async def image(self, job_id: str, index: int = 0) -> bytes:
        response = await self._http.get(job_path(job_id, "/image"), params={"index": index})
        if not response.is_success:
            raise error_from_response(response)
        return response.content

    # --- the server ----------------------------------------------------------------------------

    async def info(self) -> ServerInfo:
        return ServerInfo.from_json(await self._json("GET", "/v1/info"))

    async def models(self) -> builtins.list[dict[str, Any]]:
        """``GET /v1/models``: each model's id, family (``architecture``), native size and ``default``."""
        body = await self._json("GET", "/v1/models")
        return list(body.get("data") or [])

    async def loras(self) -> builtins.list[dict[str, Any]]:
        """``GET /v1/loras``: the LoRAs a job may name, with their family."""
        body = await self._json("GET", "/v1/loras")
        return list(body.get("data") or [])

    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (``/openapi.json``)."""
        body: dict[str, Any] = await self._json("GET", "/openapi.json")
        return body

    async def health(self) -> Health:
        body = await self._json("GET", "/health")
        return Health(status=str(body.get("status")), timestamp=body.get("timestamp"))

    # --- helpers -------------------------------------------------------------------------------

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionLost(f"cannot reach {self.base_url}: {describe(exc)}") from exc
        if not response.is_success:
            raise error_from_response(response)
        return response.json()

    async def _result_of_finished(self, job_id: str) -> GenerationResult:
        info = await self.get(job_id)
        images = []
        if info.status == "completed":
            images = [await self.image(job_id, i) for i in range(max(1, len(info.seeds)))]
        return result_from_info(info, images.__getitem__)


class AsyncJob:
    """The handle ``AsyncClient.submit`` returns."""

    def __init__(self, client: AsyncClient, submitted: Submitted) -> None:
        self.client = client
        self.submitted = submitted
        self.job_id = submitted.job_id
        self.queue_position = submitted.queue_position

    def __repr__(self) -> str:
        return f"AsyncJob({self.job_id!r}, queue_position={self.queue_position})"

    def events(self, **kwargs: Any) -> AsyncGenerator[Event, None]:
        return self.client.events(self.job_id, **kwargs)

    async def wait(self, *, on_event: Callable[[Event], None] | None = None) -> GenerationResult:
        return await self.client.wait(self.job_id, on_event=on_event)

    async def cancel(self) -> JobInfo:
        return await self.client.cancel(self.job_id)

    async def get(self) -> JobInfo:
        return await self.client.get(self.job_id)
