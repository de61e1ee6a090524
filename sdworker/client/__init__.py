"""A client for sdworker's HTTP API: submit jobs, follow their events, get the images.

Torch-free (httpx and Pillow only), so a laptop drives a GPU box with ``pip install sdworker``::

    from sdworker.client import Client, PreviewReady

    with Client("http://gpu-box:7833") as client:
        job = client.submit("a photo of a cat", steps=20, seed=1234, idempotency_key="cat-1")
        for event in job.events():
            if isinstance(event, PreviewReady):
                event.image().save(f"preview-{event.step}.jpg")
        result = job.wait()  # or client.generate(...) for submit + wait in one call
        result.images[0].save("cat.png")

``AsyncClient`` is the same for asyncio. Errors are in ``sdworker.client.errors``.
"""

from sdworker.client.async_client import AsyncClient, AsyncJob
from sdworker.client.errors import (
    APIError,
    BadRequest,
    ClientError,
    ConnectionLost,
    JobCancelled,
    JobFailed,
    NotFound,
    QueueFull,
    ServerError,
    Unauthorized,
)
from sdworker.client.events import (
    Event,
    JobCompleted,
    JobEvent,
    JobQueued,
    JobStarted,
    ModelLoading,
    OtherEvent,
    PreviewReady,
    StepProgressed,
)
from sdworker.client.records import GenerationResult, Health, JobInfo, ServerInfo, Submitted
from sdworker.client.sync_client import Client, Job
from sdworker.client.wire import ImageInput, JobFields, PreviewOptions, Reconnect, ReconnectNotice

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "BadRequest",
    "Client",
    "ClientError",
    "ConnectionLost",
    "Event",
    "GenerationResult",
    "Health",
    "ImageInput",
    "Job",
    "JobCancelled",
    "JobCompleted",
    "JobEvent",
    "JobFailed",
    "JobFields",
    "JobInfo",
    "JobQueued",
    "JobStarted",
    "ModelLoading",
    "NotFound",
    "OtherEvent",
    "PreviewOptions",
    "PreviewReady",
    "QueueFull",
    "Reconnect",
    "ReconnectNotice",
    "ServerError",
    "ServerInfo",
    "StepProgressed",
    "Submitted",
    "Unauthorized",
]
