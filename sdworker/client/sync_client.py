"""``Client``: the blocking client (httpx). ``AsyncClient`` in ``async_client`` mirrors it call for call."""

from __future__ import annotations

import builtins
import contextlib
import time
import uuid
from collections.abc import Callable, Generator
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


class Client:
    """A blocking client of one sdworker (a single ``sdworker serve`` or an API node of a fleet).

    ``submit`` returns a ``Job`` handle; ``events`` yields typed events, resuming a dropped stream
    with ``Last-Event-ID``; ``generate`` is submit + wait. Every request carries ``api_key`` as
    ``Authorization: Bearer``. Use it as a context manager, or call ``close``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_seconds: float = 30.0,
        stream_read_timeout_seconds: float = STREAM_READ_TIMEOUT_SECONDS,
        reconnect: Reconnect | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reconnect = reconnect or Reconnect()
        self._stream_timeout = httpx.Timeout(timeout_seconds, read=stream_read_timeout_seconds)
        self._http = httpx.Client(
            base_url=self.base_url, headers=client_headers(api_key), timeout=timeout_seconds, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- jobs ----------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        wait_for_queue: bool = False,
        on_queue_full: Callable[[QueueFull], None] | None = None,
        **fields: Unpack[JobFields],
    ) -> Job:
        """Queue a job. A full queue (429) raises ``QueueFull`` unless ``wait_for_queue``: then it waits
        ``Retry-After`` (telling ``on_queue_full`` first) and tries again, for as long as it takes.

        Every try carries one ``Idempotency-Key`` (``idempotency_key``, else a fresh random one), so
        a retry after a lost answer returns the job already made instead of running a second one;
        pass your own key to make a retry from another process just as safe.
        """
        body = job_body(prompt, fields)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        failures = 0
        while True:
            try:
                response = self._http.post("/v1/jobs", json=body, headers=headers)
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.reconnect.attempts:
                    raise ConnectionLost(f"cannot submit to {self.base_url}: {describe(exc)}") from exc
                time.sleep(self.reconnect.delay(failures))
                continue
            if response.is_success:
                return Job(self, Submitted.from_json(response.json()))
            error = error_from_response(response)
            if not (wait_for_queue and isinstance(error, QueueFull)):
                raise error
            if on_queue_full is not None:
                on_queue_full(error)
            time.sleep(error.retry_after_seconds)

    def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        on_reconnect: Callable[[ReconnectNotice], None] | None = None,
    ) -> Generator[Event, None, None]:
        """The job's events, from the first (or after ``last_event_id``) to ``JobCompleted``; an
        ``error`` event raises ``JobFailed``/``JobCancelled``. A dropped or silent connection is resumed
        with ``Last-Event-ID`` after a bounded back-off (``ConnectionLost`` once it is spent), so no
        event is lost and none is seen twice."""
        resume = last_event_id
        seen: set[str] = set()
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET", job_path(job_id, "/stream"), headers=resume_headers(resume), timeout=self._stream_timeout
                ) as response:
                    if response.status_code == 204:
                        return  # finished, and nothing after ``resume``
                    if response.status_code != 200:
                        response.read()
                        error = error_from_response(response)
                        if response.status_code not in RETRYABLE_STATUSES:
                            raise error
                        problem = describe(error)
                    else:
                        decoder = SSEDecoder()
                        for line in response.iter_lines():
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
            time.sleep(delay)

    def wait(self, job_id: str, *, on_event: Callable[[Event], None] | None = None) -> GenerationResult:
        """Follow the job to its end; its images and seeds, or ``JobFailed``/``JobCancelled``."""
        with contextlib.closing(self.events(job_id)) as events:
            for event in events:
                if on_event is not None:
                    on_event(event)
                if isinstance(event, JobCompleted):
                    return result_from_event(event)
        return self._result_of_finished(job_id)

    def generate(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        wait_for_queue: bool = False,
        on_event: Callable[[Event], None] | None = None,
        **fields: Unpack[JobFields],
    ) -> GenerationResult:
        """Submit and wait. Interrupted while waiting (Ctrl-C), it cancels the job on the server first."""
        job = self.submit(prompt, idempotency_key=idempotency_key, wait_for_queue=wait_for_queue, **fields)
        try:
            return self.wait(job.job_id, on_event=on_event)
        except KeyboardInterrupt:
            self.cancel_quietly(job.job_id)
            raise

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job (a queued one leaves the queue, a running one stops within a step); a finished
        job is returned unchanged."""
        return JobInfo.from_json(self._json("DELETE", job_path(job_id)))

    def cancel_quietly(self, job_id: str, timeout_seconds: float = 5.0) -> JobInfo | None:
        """Best-effort cancel on the way out (Ctrl-C): None when the server cannot be told."""
        try:
            return JobInfo.from_json(self._json("DELETE", job_path(job_id), timeout=timeout_seconds))
        except Exception:
            return None

    def get(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(self._json("GET", job_path(job_id)))

    def list(self, limit: int = 100) -> builtins.list[JobInfo]:
        """Recent and queued jobs, newest first."""
        return [JobInfo.from_json(job) for job in self._json("GET", "/v1/jobs", params={"limit": limit})["jobs"]]

    def image(self, job_id: str, index: int = 0) -> bytes:
        """The final PNG of a completed job (image ``index`` when it made several)."""
        response = self._http.get(job_path(job_id, "/image"), params={"index": index})
        if not response.is_success:
            raise error_from_response(response)
        return response.content

    # --- the server ----------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        return ServerInfo.from_json(self._json("GET", "/v1/info"))

    def models(self) -> builtins.list[dict[str, Any]]:
        """``GET /v1/models``: each model's id, family (``architecture``), native size and ``default``."""
        return list(self._json("GET", "/v1/models").get("data") or [])

    def loras(self) -> builtins.list[dict[str, Any]]:
        """``GET /v1/loras``: the LoRAs a job may name, with their family."""
        return list(self._json("GET", "/v1/loras").get("data") or [])

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (``/openapi.json``)."""
        body: dict[str, Any] = self._json("GET", "/openapi.json")
        return body

    def health(self) -> Health:
        body = self._json("GET", "/health")
        return Health(status=str(body.get("status")), timestamp=body.get("timestamp"))

    # --- helpers -------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionLost(f"cannot reach {self.base_url}: {describe(exc)}") from exc
        if not response.is_success:
            raise error_from_response(response)
        return response.json()

    def _result_of_finished(self, job_id: str) -> GenerationResult:
        """The stream ended without a ``complete`` we saw (e.g. resumed after it): ask for the job."""
        return result_from_info(self.get(job_id), lambda index: self.image(job_id, index))


class Job:
    """The handle ``submit`` returns: the job's id and queue position, and calls bound to it."""

    def __init__(self, client: Client, submitted: Submitted) -> None:
        self.client = client
        self.submitted = submitted
        self.job_id = submitted.job_id
        self.queue_position = submitted.queue_position

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, queue_position={self.queue_position})"

    def events(self, **kwargs: Any) -> Generator[Event, None, None]:
        return self.client.events(self.job_id, **kwargs)

    def wait(self, *, on_event: Callable[[Event], None] | None = None) -> GenerationResult:
        return self.client.wait(self.job_id, on_event=on_event)

    def cancel(self) -> JobInfo:
        return self.client.cancel(self.job_id)

    def get(self) -> JobInfo:
        return self.client.get(self.job_id)
